"""Whether one measurement passes, and when a run of failures makes a version degraded (pure functions).

Two references (README "What degraded means"):
- against the version's **approval-time figure** (its run's evaluation of the adapter on the eval split): the loss
  may rise by at most ``tolerated_drop.loss``, exact match fall by at most ``tolerated_drop.exact_match``;
- on a **reference set**, also against the **previous two-person-approved version** on the same records: worse
  when the paired bootstrap 95% interval of the per-record differences lies entirely on the worse side of 0 (the
  shared evaluator's ``bootstrap``), so noise alone never fails a run.
A measurement the backend received differently (``mismatched``) is ``not_comparable``: it neither passes nor fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.evaluation import bootstrap
from appliance.monitoring._policy import MonitoringPolicy

__all__ = ["EVAL_SPLIT_REF", "Comparison", "Verdict", "failing_streak", "judge"]

EVAL_SPLIT_REF = "eval-split"  # the series' name for a version's own kept eval split


@dataclass(frozen=True)
class Comparison:
    """The per-record scores of the previous approved version on the same records."""

    version: int
    losses: Sequence[float | None]
    matches: Sequence[float | None]


@dataclass(frozen=True)
class Verdict:
    """One measurement's outcome, the reasons for a failure, and the figures compared (numbers only)."""

    outcome: str  # "pass" | "fail" | "not_comparable"
    reasons: list[str]
    compared: dict[str, Any]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _paired(current: Sequence[float | None], previous: Sequence[float | None]) -> list[float]:
    pairs = []
    for c, p in zip(current, previous, strict=False):
        c_num, p_num = _number(c), _number(p)
        if c_num is not None and p_num is not None:
            pairs.append(c_num - p_num)
    return pairs


def judge(
    figures: dict[str, Any],
    *,
    mismatched: int,
    n: int,
    approval: dict[str, Any] | None,
    losses: Sequence[float | None],
    matches: Sequence[float | None],
    previous: Comparison | None,
    policy: MonitoringPolicy,
) -> Verdict:
    """The verdict on one version scored on one record set (``figures``: the evaluator's model figures)."""
    if mismatched:
        return Verdict(
            "not_comparable",
            [f"{mismatched} of {n} records reached the backend tokenised or truncated differently than scored"],
            {},
        )
    reasons: list[str] = []
    compared: dict[str, Any] = {}
    tol = policy.tolerated_drop
    loss, em = _number(figures.get("loss")), _number(figures.get("exact_match"))
    approved = approval or {}
    approved_loss, approved_em = _number(approved.get("loss")), _number(approved.get("exact_match"))
    if loss is not None and approved_loss is not None:
        compared["approval_loss"] = approved_loss
        if loss - approved_loss > tol.loss:
            reasons.append(
                f"loss {loss:.4f} is {loss - approved_loss:.4f} above the approval-time {approved_loss:.4f} "
                f"(tolerated {tol.loss:.4f})"
            )
    if em is not None and approved_em is not None:
        compared["approval_exact_match"] = approved_em
        if approved_em - em > tol.exact_match + 1e-12:
            reasons.append(
                f"exact match {em:.4f} is {approved_em - em:.4f} below the approval-time {approved_em:.4f} "
                f"(tolerated {tol.exact_match:.4f})"
            )
    if previous is not None:
        compared["previous_version"] = previous.version
        loss_diff = _paired(losses, previous.losses)
        if len(loss_diff) >= 2:
            est = bootstrap(loss_diff)
            compared["loss_vs_previous"] = [round(est.mean, 6), round(est.low, 6), round(est.high, 6)]
            if est.low > 0:
                reasons.append(
                    f"loss is {est.mean:.4f} above v{previous.version}'s on the same records "
                    f"(95% interval {est.low:.4f} to {est.high:.4f})"
                )
        em_diff = _paired(matches, previous.matches)
        if len(em_diff) >= 2:
            est = bootstrap(em_diff)
            compared["exact_match_vs_previous"] = [round(est.mean, 6), round(est.low, 6), round(est.high, 6)]
            if est.high < 0:
                reasons.append(
                    f"exact match is {-est.mean:.4f} below v{previous.version}'s on the same records "
                    f"(95% interval {est.low:.4f} to {est.high:.4f})"
                )
    return Verdict("fail" if reasons else "pass", reasons, compared)


def failing_streak(runs: Sequence[Sequence[str]]) -> int:
    """Consecutive failing runs, newest first: a run fails when any of its measurements failed and passes when
    one passed and none failed; a run with neither (not comparable, errors only) is no evidence and is skipped."""
    streak = 0
    for outcomes in runs:
        if "fail" in outcomes:
            streak += 1
        elif "pass" in outcomes:
            break
    return streak
