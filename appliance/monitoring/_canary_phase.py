"""The monitor's canary phase: each production version's sealed canaries probed through the serving Backend.

A version registered without sealed canaries (trained before they were kept, or without a key service) is skipped
and counted; a backend failure is an alert (the probe fails closed: no number it did not measure). Above
``approval.max_canary_exposure`` the probe is an ``adapter.canary_alert`` (``record_probe``) and a
``canary_exposure`` alert, which the monitor treats as a degradation at once: one exceedance is a privacy event,
not noise to be confirmed by the next run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from appliance.errors import ApplianceError, NotFound
from appliance.monitoring._canary_probe import probe_canaries, record_probe
from appliance.monitoring._replicas import Alert
from appliance.protocols import Backend
from appliance.registry import Actor, PublishedAdapter, Registry

__all__ = ["CanaryOutcome", "probe_version"]

log = structlog.get_logger("appliance.monitoring")


@dataclass(frozen=True)
class CanaryOutcome:
    """One version's probe: the highest exposure measured (None: not probed) and the alert it raised, if any."""

    max_exposure: float | None
    alert: Alert | None = None


async def probe_version(registry: Registry, backend: Backend, adapter: PublishedAdapter, actor: Actor) -> CanaryOutcome:
    """Probe ``adapter`` (a production version) with its own canaries; audited by ``record_probe``."""
    try:
        document = await asyncio.to_thread(registry.canaries, adapter.name, adapter.version, actor)
    except NotFound:
        log.info("monitoring.canaries_absent", adapter=adapter.name, version=adapter.version)
        return CanaryOutcome(None)
    threshold = registry.approval_limits().max_canary_exposure
    try:
        result = await probe_canaries(
            backend,
            adapter.served_id,
            document.canaries,
            max_exposure=threshold,
            candidates=document.candidates,
        )
    except ApplianceError as exc:
        message = f"{adapter.served_id}: canary probe failed ({exc.code})"
        return CanaryOutcome(None, Alert("canary_probe_failed", message, adapter.name, adapter.version))
    exceeded = await asyncio.to_thread(
        record_probe,
        registry.audit,
        result,
        name=adapter.name,
        version=adapter.version,
        fingerprint=adapter.fingerprint,
    )
    if not exceeded:
        return CanaryOutcome(result.max_exposure)
    message = (
        f"{adapter.served_id}: canary exposure {result.max_exposure:.2f} bits through serving, above the approval "
        f"limit {threshold:.2f} ({result.method})"
    )
    return CanaryOutcome(result.max_exposure, Alert("canary_exposure", message, adapter.name, adapter.version))
