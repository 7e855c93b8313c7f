"""``policies/monitoring.yaml``: when and how the monitor scores production adapters, and what it does about it.

Validated like the other policies (pydantic, unknown keys refused, every problem listed with its field); a
missing or invalid file stops the monitor (``ConfigError``): an adapter is never judged against limits nobody
could read.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import ConfigError
from appliance.policy_files import read_yaml_mapping, validation_problems

__all__ = ["MonitoringPolicy", "Schedule", "ToleratedDrop", "load_monitoring_policy", "policy_path"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Schedule(_Strict):
    """How often the monitor runs."""

    interval_minutes: int = Field(default=360, ge=5, le=60 * 24 * 7)


class ToleratedDrop(_Strict):
    """How much worse than its approval-time figure a version may score before the run fails."""

    loss: float = Field(default=0.25, ge=0)  # nats of mean response-token loss
    exact_match: float = Field(default=0.10, ge=0, le=1)  # exact-match fraction


class MonitoringPolicy(_Strict):
    """The whole file."""

    format_version: int = Field(default=1, ge=1, le=1)
    schedule: Schedule = Field(default_factory=Schedule)
    sample_size: int = Field(default=64, ge=1, le=100_000)  # records per set per run
    max_length: int = Field(default=256, ge=8, le=1_000_000)  # tokens per record when the run's is unknown
    tolerated_drop: ToleratedDrop = Field(default_factory=ToleratedDrop)
    consecutive_failures: int = Field(default=2, ge=1, le=100)  # failing runs in a row -> degraded
    auto_rollback: bool = False  # the file says so explicitly; absent means no automatic rollback


def policy_path(policies_dir: Path) -> Path:
    """Where the monitoring policy lives."""
    return Path(policies_dir) / "monitoring.yaml"


def load_monitoring_policy(path: Path) -> MonitoringPolicy:
    """The validated policy; a ConfigError names the file and every field that is wrong."""
    data = read_yaml_mapping(path, "monitoring policy", missing_hint=" (the monitor does not run without it)")
    try:
        return MonitoringPolicy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"monitoring policy {path}: {validation_problems(exc)}") from exc
