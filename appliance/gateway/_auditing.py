"""Request auditing: every gateway event built through :func:`appliance.audit.audit_event`, made durable or refused
(503), refusals recorded as ``gateway.denied``, and the audit HMAC digests through the key service."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import structlog
from litestar import Request

from appliance.audit import (
    ActorFields,
    AuditEventFields,
    OutcomeStatus,
    SourceFields,
    adapter_fields,
    anonymous_actor,
    audit_event,
)
from appliance.errors import ApplianceError, AuditUnavailable, KeyUnavailable, RateLimited
from appliance.gateway._context import Ctx, attempted_method, client_ip, refusal, user_agent_of
from appliance.gateway.metrics import GatewayMetrics
from appliance.gateway.ports import AdapterRef
from appliance.protocols import AuditLog, WrittenRecord

log = structlog.get_logger("appliance.gateway")
Digest = Callable[[str], str]
VersionedDigest = Callable[[str, int | None], tuple[int | None, str]]  # (text, key version) -> (version used, hex)
T = TypeVar("T")


class RequestAuditor:
    """The gateway's events: built, written durably, refusals recorded and bounded."""

    def __init__(self, audit: AuditLog, metrics: GatewayMetrics) -> None:
        self.audit = audit
        self.metrics = metrics
        self.bounded_denial_s = 60.0  # see deny_bounded()
        self._bounded_denials: dict[tuple[str, str | None, str, str], tuple[float, int]] = {}

    async def record(self, event: AuditEventFields) -> str:
        """Make an event durable; AuditUnavailable (503) when it cannot be."""
        receipt = await self._audited(self.audit.record(event), event["type"])
        return receipt.event_id

    async def record_ahead(self, event: AuditEventFields) -> WrittenRecord:
        """Write an event into the chain (its sync still running); AuditUnavailable (503) when the store refuses."""
        return await self._audited(self.audit.record_ahead(event), event["type"])

    async def durable(self, written: WrittenRecord, event_type: str = "gateway.request") -> None:
        """Wait until a record from :meth:`record_ahead` is on stable storage; AuditUnavailable (503) if not."""
        await self._audited(written.durable, event_type)

    async def _audited(self, pending: Awaitable[T], event_type: str) -> T:
        try:
            result = await pending
        except AuditUnavailable:
            self.metrics.audit_failures.inc()
            log.error("audit.unavailable", event_type=event_type)
            raise
        except Exception as exc:  # a foreign error from a sink is still a failure to make it durable
            self.metrics.audit_failures.inc()
            log.error("audit.unavailable", event_type=event_type, error_class=type(exc).__name__)
            raise AuditUnavailable("the audit log cannot record this request") from exc
        return result

    def event(
        self,
        type_: str,
        *,
        ctx: Ctx | None = None,
        actor: ActorFields | None = None,
        source: SourceFields | None = None,
        action: str,
        route: str | None = None,
        adapter: AdapterRef | None = None,
        status: OutcomeStatus | None = None,
        http_status: int | None = None,
        error_class: str | None = None,
        tokens: Mapping[str, int] | None = None,
        latency_ms: float | None = None,
        digests: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEventFields:
        """An event of this request (``ctx``: its actor, source, route and request id, unless given)."""
        d: dict[str, Any] = dict(details or {})
        if ctx is not None and ctx.principal.breakglass_id:
            d.update(breakglass=ctx.principal.breakglass_id, review_required=True)
        return audit_event(
            type_,
            actor=actor if actor is not None else (ctx.actor if ctx else anonymous_actor()),
            source=source if source is not None else (ctx.source if ctx else {"ip": None, "user_agent": None}),
            action=action,
            route=route if route is not None else (ctx.path if ctx else None),
            adapter=adapter_fields(adapter.name, adapter.version, adapter.fingerprint) if adapter else None,
            status=status or "success",
            http_status=http_status,
            error_class=error_class,
            tokens=tokens,
            latency_ms=latency_ms,
            request_id=ctx.request_id if ctx else None,
            digests=digests,
            details=d,
        )

    async def deny(
        self,
        exc: ApplianceError,
        *,
        ctx: Ctx | None = None,
        request: Request[Any, Any, Any] | None = None,
        path: str | None = None,
        adapter: AdapterRef | None = None,
        action: str = "request",
        details: Mapping[str, Any] | None = None,
    ) -> ApplianceError:
        """Record a refusal and return the error to raise (with its audit id)."""
        self.metrics.denied.labels(exc.code).inc()
        if isinstance(exc, RateLimited):
            self.metrics.rate_limited.labels(exc.kind.replace(".", " ")).inc()  # "principal requests", "extraction"
        source: SourceFields | None = (
            {"ip": client_ip(request), "user_agent": user_agent_of(request)} if request is not None else None
        )
        event = self.event(
            "gateway.denied",
            ctx=ctx,
            actor=None if ctx is not None else anonymous_actor(attempted_method(request)),
            source=source,
            action=action,
            route=path,
            adapter=adapter,
            status="denied" if exc.http_status < 500 else "error",
            http_status=exc.http_status,
            error_class=exc.code,
            details=details,
        )
        audit_id = await self.record(event)
        return refusal(exc, audit_id)

    async def deny_bounded(
        self, exc: ApplianceError, *, request: Request[Any, Any, Any], path: str, ctx: Ctx | None = None
    ) -> ApplianceError:
        """:meth:`deny` at most once per ``bounded_denial_s`` for one route, source address, subject and error, so a
        client repeating a refusal all day (a scraper with a wrong token) cannot flood the trail. The next record
        counts the refusals left unrecorded in between (``details.unrecorded``); each is counted in the metrics."""
        subject = ctx.principal.subject if ctx is not None else "anonymous"
        key = (path, client_ip(request), subject, exc.code)
        now = time.monotonic()
        last, unrecorded = self._bounded_denials.get(key, (-math.inf, 0))
        if now - last < self.bounded_denial_s:
            self._bounded_denials[key] = (last, unrecorded + 1)
            self.metrics.denied.labels(exc.code).inc()
            return exc
        if len(self._bounded_denials) > 10_000:  # bounded memory; a reset records more, never less
            self._bounded_denials.clear()
        self._bounded_denials[key] = (now, 0)
        return await self.deny(exc, ctx=ctx, request=request, path=path, details={"unrecorded": unrecorded})


class AuditDigests:
    """HMAC digests under the audit key, through the key service: in process for the local keystore (``inline``),
    in a thread for Vault's transit. Any failure is a KeyUnavailable (fail closed)."""

    def __init__(self, digest: Digest, versioned: VersionedDigest | None = None, *, inline: bool = False) -> None:
        self.digest = digest
        self.versioned: VersionedDigest = versioned or (lambda text, _: (None, digest(text)))
        self.inline = inline  # True when the digest is an in-memory HMAC (local keystore): no thread hop

    async def versioned_digest(self, text: str, version: int | None) -> tuple[int | None, str]:
        """(audit key version, HMAC digest) of text; prompt and output are digested under one version."""
        try:
            if self.inline:
                return self.versioned(text, version)
            return await asyncio.to_thread(self.versioned, text, version)  # Vault transit: off the loop
        except ApplianceError:
            raise
        except Exception as exc:  # a foreign error on the digest path still fails closed
            raise KeyUnavailable(f"audit digest failed ({type(exc).__name__})") from exc

    async def plain(self, text: str) -> str:
        """The current key's digest of text (foreign errors raised as they are)."""
        return self.digest(text) if self.inline else await asyncio.to_thread(self.digest, text)
