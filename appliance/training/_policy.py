"""``policies/privacy.yaml``: privacy budgets per dataset and the approval limits the registry enforces."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliance.contracts import ApprovalLimits
from appliance.errors import ConfigError
from appliance.policy_files import read_yaml_mapping, validation_problems

__all__ = ["ApprovalLimits", "DatasetBudget", "PrivacyPolicy", "load_privacy_policy"]

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class DatasetBudget(BaseModel):
    """The total epsilon a dataset may spend across all runs, and the delta every run uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon_budget: float = Field(gt=0, le=100)  # total epsilon across runs
    delta: float = Field(gt=0, lt=1e-2)  # per run and for the composed guarantee
    note: str | None = None


class PrivacyPolicy(BaseModel):
    """The validated contents of ``policies/privacy.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = 1
    default: DatasetBudget
    datasets: dict[str, DatasetBudget] = Field(default_factory=dict)
    approval: ApprovalLimits | None = None  # the registry's; it refuses approvals while this is absent
    allow_no_dp: bool = False

    @field_validator("datasets")
    @classmethod
    def _fingerprints(cls, value: dict[str, DatasetBudget]) -> dict[str, DatasetBudget]:
        bad = [key for key in value if not _FINGERPRINT.match(key)]
        if bad:
            raise ValueError(f"dataset keys must be 64-hex fingerprints: {', '.join(sorted(bad))}")
        return value

    def budget_for(self, fingerprint: str, preparations: Iterable[str] = ()) -> DatasetBudget:
        """The budget of one dataset's spend, which it shares with ``preparations`` (the other datasets prepared
        from the same source file): the override of any of them (the strictest epsilon and delta when several
        apply), else the default. Re-preparing a source with an override does not fall back to the default."""
        overrides = [self.datasets[fp] for fp in sorted({fingerprint, *preparations}) if fp in self.datasets]
        if not overrides:
            return self.default
        if len(overrides) == 1:
            return overrides[0]
        return DatasetBudget(
            epsilon_budget=min(b.epsilon_budget for b in overrides),
            delta=min(b.delta for b in overrides),
            note="the strictest of the overrides on preparations of one source file",
        )


def load_privacy_policy(path: Path) -> PrivacyPolicy:
    """Load and validate a privacy policy file; any problem is a ConfigError naming the file and the field."""
    data = read_yaml_mapping(path, "privacy policy")
    try:
        return PrivacyPolicy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"privacy policy {path}: {validation_problems(exc)}") from exc
