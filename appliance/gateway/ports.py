"""What the gateway needs from its neighbours beyond ``appliance.protocols``: the published adapters and the
compliance view of the audit log. Small protocols, with adapters over the real registry and audit stages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from appliance.errors import NotFound


@dataclass(frozen=True)
class AdapterRef:
    """A published, approved adapter version the backend serves as ``served_id`` (``{name}-v{version}``)."""

    name: str
    version: int
    fingerprint: str
    is_production: bool = False

    @property
    def served_id(self) -> str:
        return f"{self.name}-v{self.version}"


@runtime_checkable
class AdapterCatalog(Protocol):
    """The registry's published set, as the gateway sees it."""

    async def published(self) -> list[AdapterRef]: ...


@runtime_checkable
class AuditReader(Protocol):
    """The compliance pages' view of the audit trail (search, export, verify)."""

    async def search(self, filters: Mapping[str, Any], limit: int) -> list[dict[str, Any]]: ...

    async def export(self, filters: Mapping[str, Any], fmt: str) -> bytes: ...

    async def verify(self) -> dict[str, Any]: ...


def parse_version(version: str) -> int | None:
    """A requested version: its number, or None for ``production``; NotFound when it is neither."""
    if version == "production":
        return None
    if not (version.isascii() and version.isdigit()) or len(version) > 9:  # str.isdigit() also takes '²', '١'
        raise NotFound("version must be a number or 'production'")
    return int(version)


def resolve(published: Iterable[AdapterRef], name: str, version: str) -> AdapterRef:
    """The published adapter ``name`` at ``version`` (a number or ``production``), else NotFound with the reason."""
    number = parse_version(version)
    matching = [a for a in published if a.name == name]
    if not matching:
        raise NotFound(f"adapter {name!r} is not published")
    if number is None:
        prod = [a for a in matching if a.is_production]
        if not prod:
            raise NotFound(f"adapter {name!r} has no production version")
        return max(prod, key=lambda a: a.version)
    for a in matching:
        if a.version == number:
            return a
    raise NotFound(f"adapter {name!r} version {number} is not published")


class CachedCatalog:
    """Wraps a catalog and keeps its published set for ``ttl_s`` seconds (un-publishing takes effect within it)."""

    def __init__(self, inner: AdapterCatalog, *, ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.inner = inner
        self.ttl_s = ttl_s
        self._clock = clock
        self._cached: list[AdapterRef] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def published(self) -> list[AdapterRef]:
        if self._cached is not None and self._clock() - self._at < self.ttl_s:
            return self._cached
        async with self._lock:
            if self._cached is None or self._clock() - self._at >= self.ttl_s:
                self._cached = await self.inner.published()
                self._at = self._clock()
        return self._cached

    def invalidate(self) -> None:
        self._cached = None


def _get(obj: Any, *names: str) -> Any:
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return None


def adapter_ref_of(item: Any) -> AdapterRef:
    """Convert the registry's description of a published version into an AdapterRef (attribute or key access)."""
    is_prod = _get(item, "is_production")
    return AdapterRef(
        name=str(_get(item, "name")),
        version=int(_get(item, "version")),
        fingerprint=str(_get(item, "fingerprint", "weights_fingerprint", "sha256") or ""),
        is_production=bool(is_prod),
    )


class RegistryCatalog:
    """An :class:`AdapterCatalog` over ``appliance.registry``'s service (``published()``; sync or async)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    async def published(self) -> list[AdapterRef]:
        result = self.registry.published()
        if asyncio.iscoroutine(result):
            result = await result
        else:
            result = await asyncio.to_thread(lambda: list(result))
        refs = [adapter_ref_of(item) for item in result]
        if not any(r.is_production for r in refs):  # the registry publishes "production" status for every version
            newest: dict[str, int] = {}
            for r in refs:
                newest[r.name] = max(newest.get(r.name, 0), r.version)
            refs = [replace(r, is_production=r.version == newest[r.name]) for r in refs]
        return refs
