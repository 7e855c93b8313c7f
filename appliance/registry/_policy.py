"""The approval limits the registry enforces, read from ``policies/privacy.yaml`` (its ``approval`` section).

The training stage owns the file and validates all of it; the registry reads only the section it enforces with
its own small model, so that approving an adapter never imports the training stack. A missing or invalid file
refuses approvals (fail closed): an adapter is never approved against limits nobody could read.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import ConfigError
from appliance.policy_files import read_yaml_mapping, validation_problems

__all__ = ["ApprovalLimits", "load_approval_limits"]


class ApprovalLimits(BaseModel):
    """Limits an adapter must meet before it may be approved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon: float = Field(gt=0)  # the run's epsilon must not exceed this
    max_canary_exposure: float = Field(gt=0)  # bits; the run's max canary exposure must not exceed this
    require_dp: bool = True  # adapters trained without DP cannot be approved


def load_approval_limits(policies_dir: Path) -> ApprovalLimits:
    """The ``approval`` section of ``<policies_dir>/privacy.yaml``; a ConfigError names the file and field."""
    path = Path(policies_dir) / "privacy.yaml"
    data = read_yaml_mapping(path, "privacy policy", missing_hint=" (approvals are refused without limits)")
    section = data.get("approval")
    if not isinstance(section, dict):
        raise ConfigError(f"privacy policy {path}: no 'approval' section (approvals are refused without limits)")
    try:
        return ApprovalLimits.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(f"privacy policy {path}: {validation_problems(exc, prefix='approval.')}") from exc
