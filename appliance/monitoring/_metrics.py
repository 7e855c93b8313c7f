"""The monitor's Prometheus gauges (``appliance_adapter_eval_*``), per adapter and version.

``monitor run --once`` is a short process, so its gauges are written to a text file (Prometheus's exposition
format, replaced atomically by ``prometheus_client.write_to_textfile``) that the gateway's ``/metrics`` re-exposes
(:class:`TextfileCollector`: only ``appliance_adapter_eval_*`` families, so the file cannot inject other series)
and node_exporter's textfile collector can read. Labels: adapter name, version, reference set, replica; never a
record, prompt or subject.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["PREFIX", "MonitorGauges", "TextfileCollector", "metrics_path"]

log = structlog.get_logger("appliance.monitoring")

PREFIX = "appliance_adapter_eval_"
CANARY_EXPOSURE = "appliance_adapter_canary_exposure"  # the canary phase's gauge (also re-exposed)


def metrics_path(data_dir: Path) -> Path:
    """Where the monitor writes its gauges."""
    return Path(data_dir) / "monitoring" / "metrics.prom"


class MonitorGauges:
    """One run's gauges in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        version = ["adapter", "version"]
        per_set = [*version, "reference"]
        self.loss = Gauge(PREFIX + "loss", "Mean response-token loss through serving (nats)", per_set, registry=r)
        self.exact_match = Gauge(PREFIX + "exact_match", "Exact-match fraction through serving", per_set, registry=r)
        self.comparable = Gauge(
            PREFIX + "comparable",
            "1 when the backend received every record as the evaluator scored it",
            per_set,
            registry=r,
        )
        self.passed = Gauge(
            PREFIX + "passed", "1 when the measurement passed, 0 failed, -1 not judged", per_set, registry=r
        )
        self.failing_runs = Gauge(PREFIX + "failing_runs", "Consecutive failing monitor runs", version, registry=r)
        self.degraded = Gauge(PREFIX + "degraded", "1 when the version is degraded", version, registry=r)
        self.rolled_back = Gauge(PREFIX + "rolled_back", "1 when this run rolled the version back", version, registry=r)
        self.fingerprint_ok = Gauge(
            PREFIX + "fingerprint_ok",
            "1 when the replica serves the published fingerprint, 0 when it serves another or not at all",
            [*version, "replica"],
            registry=r,
        )
        self.last_run = Gauge(PREFIX + "last_run_timestamp_seconds", "When the last monitor run ended", registry=r)
        self.alerts = Gauge(PREFIX + "alerts", "Alerts the last monitor run raised", ["kind"], registry=r)
        self.canary_exposure = Gauge(
            CANARY_EXPOSURE, "Highest canary exposure (bits) the last production probe measured", version, registry=r
        )

    def write(self, path: Path) -> None:
        """Replace the text file atomically (``write_to_textfile`` writes a temporary file and renames it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), self.registry)


class TextfileCollector:
    """Re-exposes the monitor's gauges from its text file (read on every scrape; absent file: nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def collect(self) -> Iterator[Metric]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("monitoring.metrics_unreadable", error=exc.strerror)
            return
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            log.warning("monitoring.metrics_malformed")
            return
        for family in families:
            if family.name.startswith((PREFIX, CANARY_EXPOSURE)):
                yield family
