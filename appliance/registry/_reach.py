"""After a publish, unpublish or retire: bring the change to every replica of the targets it touched.

The publication is already committed (and its event durable) when this runs: what the replicas do cannot undo it,
and the gateway never routes to a replica that lacks the adapter's published fingerprint. For each target, under
the publish lock (so no other change rewrites the list meanwhile): each replica with its own ``list_path`` gets a
copy of the target's signed list (the signature covers the bytes, so the copy verifies as the original), then
every replica is asked to load it (``appliance.serving.reload_replicas``); a replica on another host whose copy a
push delivers (``sync_receipt``) is asked only once the push says it delivered that copy (``_delivery.py``). One
``registry.reload`` audit event records the outcome per replica; nothing in it is free text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from appliance._fs import atomic_write
from appliance.config import Settings
from appliance.errors import ApplianceError, AuditUnavailable
from appliance.registry._delivery import PendingDelivery, await_deliveries
from appliance.registry._lists import entries
from appliance.registry._service import Registry
from appliance.registry._types import Actor
from appliance.serving import (
    ReplicaReload,
    reload_replicas,
    replica_list_path,
    replica_name,
    replicas_of,
    signature_path,
)

__all__ = ["PublicationReport", "reach_replicas"]

log = structlog.get_logger("appliance.registry")

_MAX_DETAIL = 128  # an audit identifier's length cap


@dataclass(frozen=True)
class PublicationReport:
    """What every replica of the touched targets did with a publication change."""

    change: str  # publish | unpublish | retire
    name: str
    version: int
    targets: tuple[str, ...]
    replicas: list[ReplicaReload] = field(default_factory=list)
    reloaded: bool = True  # False: only the lists were written (--no-reload)

    @property
    def failed(self) -> list[ReplicaReload]:
        return [r for r in self.replicas if r.outcome == "failed"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "adapter": self.name,
            "version": self.version,
            "targets": list(self.targets),
            "replicas": [r.as_dict() for r in self.replicas],
            "reloaded": self.reloaded,
        }


def _joined(items: Sequence[str]) -> str | None:
    """``a|b|c`` within an audit identifier's cap (then ``|+N``: the N left out); None for none."""
    kept: list[str] = []
    for item in items:
        if len("|".join([*kept, item])) > _MAX_DETAIL - 8:  # room for "|+NNNNN"
            break
        kept.append(item)
    left = len(items) - len(kept)
    return "|".join(kept + ([f"+{left}"] if left else [])) or None


def _copy_lists(
    registry: Registry, settings: Settings, target: str
) -> tuple[dict[str, ReplicaReload], list[PendingDelivery]]:
    """Write each replica's own copy of ``target``'s signed list: the replicas whose copy failed, by name, and the
    copies written that a push must still deliver to their replica's host (``sync_receipt``)."""
    failed: dict[str, ReplicaReload] = {}
    pending: list[PendingDelivery] = []
    source = registry.publisher.list_path(target)
    for replica in replicas_of(settings, target):
        if not replica.list_path:
            continue
        name = replica.name or replica_name(replica.url)
        dest = replica_list_path(replica, source)
        try:
            data, signature = source.read_bytes(), signature_path(source).read_bytes()
            atomic_write(dest, data, mode=0o644)
            atomic_write(signature_path(dest), signature, mode=0o644)  # last: the push watches the signature
            written_ns = signature_path(dest).stat().st_mtime_ns
        except OSError as exc:
            failed[name] = ReplicaReload(name, target, "failed", f"cannot write its list: {exc.strerror}")
            continue
        if replica.sync_receipt:
            pending.append(PendingDelivery(name, target, Path(replica.sync_receipt), data, signature, written_ns))
    return failed, pending


def reach_replicas(
    registry: Registry,
    settings: Settings,
    *,
    change: str,
    name: str,
    version: int,
    targets: Sequence[str],
    actor: Actor,
    reload: bool = True,
) -> PublicationReport:
    """Make every replica of ``targets`` load what is published there now; record and return what each did.

    A replica whose copy a push delivers to its host (``sync_receipt``) is asked only once the push has delivered
    that copy; one it did not reach within ``serving.sync_timeout_s`` is ``failed``, never asked.
    ``reload=False`` only writes (and waits for the delivery of) the replicas' own list copies (servers not started
    yet read them at start): the report then lists only replicas whose copy could not be written or delivered."""
    with registry.lists.lock():
        with registry.db.session("reading what is published") as s:
            published = {t: {e.served_id: e.fingerprint for e in entries(s, t)} for t in targets}
        copied = {t: _copy_lists(registry, settings, t) for t in targets}
        undelivered = await_deliveries(
            [d for t in targets for d in copied[t][1]], settings.serving.sync_timeout_s
        )  # a replica whose host did not get the list is not asked to load it
        unwritten = {t: copied[t][0] | {d.replica: d for d in undelivered if d.kind == t} for t in targets}
        results = [r for t in targets for r in unwritten[t].values()]
        if reload:  # every target's replicas at once: one that is down holds up nobody

            async def reach_all() -> list[list[ReplicaReload]]:
                return await asyncio.gather(
                    *(reload_replicas(settings, t, published[t], skip=set(unwritten[t])) for t in targets)
                )

            results += [r for reached in asyncio.run(reach_all()) for r in reached]
    report = PublicationReport(change, name, version, tuple(targets), results, reload)
    if results:  # no replica of these targets configured: nothing was asked, nothing to record
        _record(registry, report, actor)
    for r in report.failed:
        log.warning("registry.replica_not_loaded", replica=r.replica, kind=r.kind, change=change)
    return report


def _record(registry: Registry, report: PublicationReport, actor: Actor) -> None:
    failed = [r.replica for r in report.failed]
    event = registry.context.event(
        "registry.reload",
        "reload",
        actor,
        None,
        "error" if failed else "success",
        error_class="REPLICA_RELOAD_FAILED" if failed else None,
        details={
            "change": report.change,
            "targets": "|".join(report.targets) or None,
            "replicas": len(report.replicas),
            "loaded": sum(r.outcome == "loaded" for r in report.replicas),
            "restarting": sum(r.outcome == "restarting" for r in report.replicas),
            "failed": len(failed),
            "outcomes": _joined([f"{r.replica}={r.outcome}" for r in report.replicas]),
            "failed_replicas": _joined(failed),
        },
    )
    event["adapter"] = {"name": report.name, "version": report.version, "fingerprint": None}
    try:
        registry.audit.record_sync(event)
    except AuditUnavailable:
        raise
    except ApplianceError as exc:
        raise AuditUnavailable(f"the audit trail refused the registry.reload event: {exc.message}") from exc
