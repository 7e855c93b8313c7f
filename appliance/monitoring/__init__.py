"""Monitoring: continuous evaluation of production adapters through serving, degradation and rollback, and canary
probes of what a served adapter exposes.

``Monitor(settings, registry, backend, policy).run_once()`` is one pass (``appliance monitor run --once``);
``load_monitoring_policy`` reads ``policies/monitoring.yaml``; ``AdapterCheck`` is the shape of an extra per-adapter
check (``Monitor(checks=[...])``); ``probe_canaries`` measures a served adapter's canary exposure and
``record_probe`` audits it (numbers only). Design notes: ``appliance/monitoring/README.md``.
"""

from appliance.monitoring._canary_probe import (
    CanaryMetrics,
    CanaryProbeResult,
    alert_event,
    probe_canaries,
    probe_event,
    record_probe,
)
from appliance.monitoring._judge import EVAL_SPLIT_REF, Comparison, Verdict, failing_streak, judge
from appliance.monitoring._metrics import TextfileCollector, metrics_path
from appliance.monitoring._policy import MonitoringPolicy, load_monitoring_policy, policy_path
from appliance.monitoring._replicas import Alert
from appliance.monitoring._service import MONITOR_ACTOR, AdapterCheck, CheckContext, Monitor, RunReport

__all__ = [
    "EVAL_SPLIT_REF",
    "MONITOR_ACTOR",
    "AdapterCheck",
    "Alert",
    "CanaryMetrics",
    "CanaryProbeResult",
    "CheckContext",
    "Comparison",
    "Monitor",
    "MonitoringPolicy",
    "RunReport",
    "TextfileCollector",
    "Verdict",
    "alert_event",
    "failing_streak",
    "judge",
    "load_monitoring_policy",
    "metrics_path",
    "policy_path",
    "probe_canaries",
    "probe_event",
    "record_probe",
]
