"""The monitoring policy's validation and the judge: approval-time tolerance, the previous version, streaks."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.errors import ConfigError
from appliance.monitoring import (
    Comparison,
    MonitoringPolicy,
    failing_streak,
    judge,
    load_monitoring_policy,
    policy_path,
)
from tests.conftest import REPO_ROOT

POLICY = MonitoringPolicy(tolerated_drop={"loss": 0.25, "exact_match": 0.1})  # type: ignore[arg-type]
APPROVAL = {"loss": 2.0, "exact_match": 0.5}


def _judge(figures: dict[str, float | None], **kw: object) -> object:
    args: dict[str, object] = {
        "mismatched": 0,
        "n": 4,
        "approval": APPROVAL,
        "losses": [2.0] * 4,
        "matches": [1.0, 0.0, 1.0, 0.0],
        "previous": None,
        "policy": POLICY,
    }
    args.update(kw)
    return judge(figures, **args)  # type: ignore[arg-type]


class TestPolicy:
    def test_shipped_policy_is_valid(self) -> None:
        """policies/monitoring.yaml validates and turns automatic rollback on explicitly."""
        policy = load_monitoring_policy(policy_path(REPO_ROOT / "policies"))
        assert policy.auto_rollback is True and policy.consecutive_failures >= 1

    def test_every_problem_is_named(self, tmp_path: Path) -> None:
        """Unknown keys and out-of-range values are refused, each named with its field (exit 78 on the CLI)."""
        bad = tmp_path / "monitoring.yaml"
        bad.write_text("sample_size: 0\ntolerated_drop: {loss: -1}\nauto_rollbak: true\n")
        with pytest.raises(ConfigError) as caught:
            load_monitoring_policy(bad)
        for field in ("sample_size", "tolerated_drop.loss", "auto_rollbak"):
            assert field in caught.value.message
        result = CliRunner().invoke(app, ["monitor", "check-policy", str(bad)])
        assert isinstance(result.exception, ConfigError)

    def test_missing_file_stops_the_monitor(self, tmp_path: Path) -> None:
        """No policy file, no monitor run (fail closed)."""
        with pytest.raises(ConfigError, match="not found"):
            load_monitoring_policy(tmp_path / "monitoring.yaml")


class TestJudge:
    def test_within_the_tolerated_drop_passes(self) -> None:
        """A loss 0.2 above and exact match 0.1 below the approval-time figures pass (tolerances 0.25 / 0.1)."""
        verdict = _judge({"loss": 2.2, "exact_match": 0.4})
        assert verdict.outcome == "pass" and verdict.reasons == []  # type: ignore[attr-defined]

    def test_beyond_the_tolerated_drop_fails_naming_both_figures(self) -> None:
        """A loss 0.3 above the approval-time figure fails; the reason names the figure and the tolerance."""
        verdict = _judge({"loss": 2.3, "exact_match": 0.5})
        assert verdict.outcome == "fail"  # type: ignore[attr-defined]
        assert "2.3000" in verdict.reasons[0] and "2.0000" in verdict.reasons[0]  # type: ignore[attr-defined]
        assert _judge({"loss": 2.0, "exact_match": 0.35}).outcome == "fail"  # type: ignore[attr-defined]

    def test_clearly_worse_than_the_previous_version_fails(self) -> None:
        """Per-record losses consistently above the previous version's fail; identical ones and noise do not."""
        previous = Comparison(1, [1.0, 1.2, 0.9, 1.1], [1.0, 1.0, 1.0, 1.0])
        worse = _judge({"loss": 2.0}, approval=None, losses=[1.6, 1.9, 1.4, 1.8], previous=previous)
        assert worse.outcome == "fail" and "v1" in worse.reasons[0]  # type: ignore[attr-defined]
        same = _judge({"loss": 1.05}, approval=None, losses=[1.0, 1.2, 0.9, 1.1], matches=[1.0] * 4, previous=previous)
        assert same.outcome == "pass"  # type: ignore[attr-defined]
        noisy = _judge({"loss": 1.05}, approval=None, losses=[1.3, 0.9, 1.2, 0.8], matches=[1.0] * 4, previous=previous)
        assert noisy.outcome == "pass"  # type: ignore[attr-defined]

    def test_exact_match_clearly_below_the_previous_version_fails(self) -> None:
        """Every record the previous version answered right and this one wrong: the paired interval is below 0."""
        previous = Comparison(3, [1.0] * 4, [1.0] * 4)
        verdict = _judge({"loss": 1.0}, approval=None, losses=[1.0] * 4, matches=[0.0] * 4, previous=previous)
        assert verdict.outcome == "fail" and "exact match" in verdict.reasons[0]  # type: ignore[attr-defined]

    def test_mismatched_records_are_not_comparable(self) -> None:
        """However bad the figures, a measurement the backend received differently is not judged."""
        verdict = _judge({"loss": 9.0, "exact_match": 0.0}, mismatched=1)
        assert verdict.outcome == "not_comparable"  # type: ignore[attr-defined]
        assert "1 of 4" in verdict.reasons[0]  # type: ignore[attr-defined]


class TestStreak:
    @pytest.mark.parametrize(
        ("runs", "streak"),
        [
            ([["fail"], ["fail"], ["pass"]], 2),
            ([["fail", "pass"], ["pass"]], 1),
            ([["fail"], ["not_comparable"], ["fail"], ["pass"], ["fail"]], 2),
            ([["pass"], ["fail"], ["fail"]], 0),
            ([["error"], ["not_comparable"]], 0),
        ],
    )
    def test_consecutive_failing_runs_newest_first(self, runs: list[list[str]], streak: int) -> None:
        """A run fails when any measurement failed; not comparable or errors alone neither count nor break it."""
        assert failing_streak(runs) == streak
