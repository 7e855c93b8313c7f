"""Integrity of what the registry keeps and serves: every sealed artifact decrypted and checked, each signed backend
list against its signature and the database, each served copy against its digests; data keys rewrapped after a key
rotation (README.md, "Encryption at rest" and "Publish").
"""

from __future__ import annotations

import hmac
from pathlib import Path

from sqlalchemy import select

from appliance.errors import ApplianceError, ConfigError, IntegrityViolation, NotFound
from appliance.registry._context import Context, active, artifact_of
from appliance.registry._lists import entries
from appliance.registry._models import Adapter
from appliance.registry._publish import TARGETS, Publisher
from appliance.registry._rundir import sha256_file
from appliance.registry._types import Actor, VerifyResult
from appliance.serving import PUBLICATION_KEY, read_signed_list

__all__ = ["Integrity"]


class Integrity:
    """``registry verify`` and ``registry rewrap``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def verify(self, name: str | None = None, version: int | None = None) -> list[VerifyResult]:
        """Decrypt every artifact (or one name / version) and check each file's digest and the fingerprint; for a
        published adapter, also its decrypted copy under ``serving/adapters/`` (what TGI and vLLM load unchecked)
        against the weights fingerprint and the config digest recorded at publish.

        Each published list's signature is checked first (:meth:`verify_publications`); an adapter served from a
        list that fails is failed too, before any of its fingerprints is compared."""
        lists = self.verify_publications()
        refused = {r.name: r.error for r in lists if not r.ok}
        with self.ctx.db.session("reading adapters to verify") as s:
            if version is not None and name is not None:
                adapters = [self.ctx.get(s, name, version)]
            else:
                query = select(Adapter).order_by(Adapter.name, Adapter.version)
                if name is not None:
                    query = query.where(Adapter.name == name)
                adapters = list(s.scalars(query))
                if name is not None and not adapters:
                    raise NotFound(f"no adapter named {name!r}")
            work = [(a.name, a.version, artifact_of(a), active(a)) for a in adapters]
            bad_lists = {
                (a.name, a.version): refused[f"{p.target} list"]
                for a in adapters
                for p in active(a)
                if f"{p.target} list" in refused
            }
            served = {  # one directory per adapter; any publication without a config digest fails it
                (n, v): (Path(p[0].path), None if any(x.config_sha256 is None for x in p) else p[0].config_sha256)
                for n, v, _, p in work
                if p
            }
        results = [r for r in lists if not r.ok]
        for a_name, a_version, artifact, _ in work:
            if (a_name, a_version) in bad_lists:
                error = f"served from a published list that does not verify: {bad_lists[(a_name, a_version)]}"
                results.append(VerifyResult(a_name, a_version, ok=False, files=0, error=error))
                continue
            try:
                count = sum(1 for _ in self.ctx.artifacts.open(**artifact))
                if (a_name, a_version) in served:
                    _check_served(*served[(a_name, a_version)], artifact["weights_fingerprint"])
            except (IntegrityViolation, OSError) as exc:
                message = exc.message if isinstance(exc, ApplianceError) else f"unreadable: {exc.strerror}"
                results.append(VerifyResult(a_name, a_version, ok=False, files=0, error=message))
            else:
                results.append(VerifyResult(a_name, a_version, ok=True, files=count))
        return results

    def verify_publications(self) -> list[VerifyResult]:
        """Each target's published list against its signature (the registry's public key from the key service)
        and against what the database says is published; one result per target (``name`` = ``"<target> list"``,
        ``version`` 0)."""
        publisher = self.ctx.publisher
        public_keys = self.ctx.keys.public_keys(PUBLICATION_KEY)
        with self.ctx.db.session("reading publications to verify") as s:
            expected = {t: entries(s, t) for t in TARGETS}
        results = []
        for target in TARGETS:
            path = publisher.list_path(target)
            try:
                signed = read_signed_list(path, target, public_keys)
                if signed is None:
                    if expected[target]:
                        raise IntegrityViolation(f"{path} is missing: {len(expected[target])} adapter(s) are published")
                    continue
                wanted = publisher.render(target, expected[target])
                digests = Publisher.signed_digests(expected[target])
                if not hmac.compare_digest(signed.data, wanted) or signed.adapters != digests:
                    raise IntegrityViolation(f"{path} is signed but is not what the registry has published")
            except (IntegrityViolation, ConfigError) as exc:
                results.append(VerifyResult(f"{target} list", 0, ok=False, files=0, error=exc.message))
            else:
                results.append(VerifyResult(f"{target} list", 0, ok=True, files=1))
        return results

    def rewrap(self, actor: Actor) -> int:
        """Rewrap every adapter's data key under the newest version of its key encryption key."""
        with self.ctx.db.session("rewrapping data keys") as s:
            adapters = list(s.scalars(select(Adapter)))
            for adapter in adapters:
                adapter.wrapped_key = self.ctx.keys.rewrap(adapter.key_purpose, adapter.wrapped_key)
            s.flush()
            self.ctx.record("registry.rewrap", "rewrap", actor, None, details={"adapters": len(adapters)})
            return len(adapters)


def _check_served(directory: Path, config_sha256: str | None, weights_fingerprint: str) -> None:
    """A published copy still holds the bytes the registry wrote (IntegrityViolation naming the file if not)."""
    if config_sha256 is None:
        raise IntegrityViolation(
            f"served copy {directory}: published before config digests were recorded; unpublish and publish again"
        )
    for file_name, expected in (
        ("adapter_model.safetensors", weights_fingerprint),
        ("adapter_config.json", config_sha256),
    ):
        try:
            actual = sha256_file(directory / file_name)
        except OSError as exc:
            raise IntegrityViolation(f"served copy {directory}: {file_name} unreadable ({exc.strerror})") from exc
        if actual != expected:
            raise IntegrityViolation(f"served copy {directory}: {file_name} differs from what the registry published")
