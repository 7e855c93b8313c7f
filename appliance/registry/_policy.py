"""The approval limits the registry enforces, read from ``policies/privacy.yaml`` (its ``approval`` section).

The training stage owns the file and validates all of it; the registry reads only the section it enforces, with
the one model of it (``appliance.contracts.ApprovalLimits``), so that approving never imports the training stack.
A missing or invalid file refuses approvals (fail closed): an adapter is never approved against limits nobody
could read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from appliance.contracts import ApprovalLimits
from appliance.errors import ConfigError, PolicyViolation
from appliance.policy_files import read_yaml_mapping, validation_problems

__all__ = ["ApprovalLimits", "check_privacy_audit", "check_quality", "load_approval_limits"]


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


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def check_quality(where: str, evaluation: dict[str, Any] | None, limits: ApprovalLimits) -> None:
    """The quality gate: the adapter must lower the eval loss of its base by more than 0 and by at least
    ``min_loss_improvement``, and (where exact match was measured) gain at least ``min_exact_match_gain``.

    An adapter identical to its base (delta 0) is always refused, whatever the thresholds; a run without an
    evaluation is refused (no numbers, no approval). PolicyViolation names the rule and both numbers.
    """
    base = (evaluation or {}).get("base") or {}
    adapter = (evaluation or {}).get("adapter") or {}
    base_loss, adapter_loss = _number(base.get("loss")), _number(adapter.get("loss"))
    if base_loss is None or adapter_loss is None:
        raise PolicyViolation(
            f"rule approval.min_loss_improvement: {where} has no evaluation against its base model (train it again)"
        )
    improvement = base_loss - adapter_loss
    if not improvement > 0 or improvement < limits.min_loss_improvement:
        raise PolicyViolation(
            f"rule approval.min_loss_improvement: {where} improves the eval loss by {improvement:.4f} (base "
            f"{base_loss:.4f}, adapter {adapter_loss:.4f}); the policy requires more than 0 and at least "
            f"{limits.min_loss_improvement:.4f}"
        )
    base_em, adapter_em = _number(base.get("exact_match")), _number(adapter.get("exact_match"))
    if base_em is None or adapter_em is None:
        return  # no short answers in the eval split: nothing exact match could score
    gain = adapter_em - base_em
    if gain < limits.min_exact_match_gain - 1e-12:
        raise PolicyViolation(
            f"rule approval.min_exact_match_gain: {where} gains {gain:.4f} in exact match (base {base_em:.4f}, "
            f"adapter {adapter_em:.4f}); the policy requires at least {limits.min_exact_match_gain:.4f}"
        )


def check_privacy_audit(where: str, claimed_epsilon: float | None, audit: dict[str, Any] | None) -> None:
    """The audit gate: an empirical epsilon lower bound above the accountant's epsilon means the DP implementation
    (or its accounting) is broken, so the adapter is refused, with both numbers. A run without an audit, or
    without DP (``require_dp`` refuses it already), has nothing to compare.
    """
    info = audit or {}
    bound = _number(info.get("epsilon_lower_bound"))
    if bound is None or claimed_epsilon is None:
        return
    if bound > claimed_epsilon:
        raise PolicyViolation(
            f"rule privacy_audit: {where} has an empirical epsilon lower bound of {bound:.4f} (one-run audit, "
            f"{info.get('correct')}/{info.get('guesses')} guesses of {info.get('m')} canaries, delta "
            f"{info.get('delta')}) above the epsilon {claimed_epsilon:.4f} its accountant claims: the DP "
            "implementation is broken; do not approve"
        )
