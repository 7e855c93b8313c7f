"""Monitoring of production adapters (``appliance monitor``): canary probes through the serving backend.

``probe_canaries(backend, adapter, canaries, max_exposure=..., candidates=...)`` measures what a served adapter
exposes of its training canaries; ``record_probe`` audits the result (numbers only) and raises the alert.
"""

from appliance.monitoring._canary_probe import (
    MONITOR_ACTOR,
    CanaryMetrics,
    CanaryProbeResult,
    alert_event,
    probe_canaries,
    probe_event,
    record_probe,
)

__all__ = [
    "MONITOR_ACTOR",
    "CanaryMetrics",
    "CanaryProbeResult",
    "alert_event",
    "probe_canaries",
    "probe_event",
    "record_probe",
]
