"""The quality gate: approve and publish refuse an adapter not better than its base model, with an audit record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import IntegrityViolation, PolicyViolation
from appliance.registry import Registry
from tests.registry.conftest import APPROVERS, OPERATOR, RecordingAudit, RunFactory, evaluation, snapshot

ALICE, BOB = APPROVERS


def _policy(tmp_path: Path, loss: float = 0.0, em: float = 0.0) -> Path:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "privacy.yaml").write_text(
        "approval:\n  max_epsilon: 8.0\n  max_canary_exposure: 12.0\n"
        f"  min_loss_improvement: {loss}\n  min_exact_match_gain: {em}\n"
    )
    return policies


def _denials(audit: RecordingAudit, event_type: str) -> list[dict[str, object]]:
    return [e for e in audit.events if e["type"] == event_type and e["outcome"]["status"] == "denied"]  # type: ignore[index]


def test_an_unchanged_adapter_is_refused_even_at_zero_thresholds(
    registry: Registry, make_run: RunFactory, audit: RecordingAudit, tmp_path: Path
) -> None:
    """Delta 0 (an adapter identical to its base) fails with thresholds of 0; both losses are in the message."""
    registry.policies_dir = _policy(tmp_path, loss=0.0, em=0.0)
    same = evaluation(base_loss=4.1, adapter_loss=4.1, base_em=0.2, adapter_em=0.2)
    registry.add(make_run(evaluation=same), "triage", OPERATOR)
    before = snapshot(registry)
    with pytest.raises(PolicyViolation, match=r"approval\.min_loss_improvement") as exc:
        registry.approve("triage", 1, ALICE)
    assert "0.0000" in exc.value.message and "base 4.1000, adapter 4.1000" in exc.value.message
    assert snapshot(registry) == before
    denied = _denials(audit, "registry.approve")
    assert denied and denied[-1]["outcome"]["error_class"] == "POLICY_VIOLATION"  # type: ignore[index]


def test_a_better_adapter_passes(registry: Registry, make_run: RunFactory, tmp_path: Path) -> None:
    """Lower loss by more than the threshold and at least the exact-match gain: approved and published."""
    registry.policies_dir = _policy(tmp_path, loss=0.1, em=0.1)
    better = evaluation(base_loss=4.1, adapter_loss=3.6, base_em=0.0, adapter_em=0.4)
    registry.add(make_run(evaluation=better), "triage", OPERATOR)
    registry.approve("triage", 1, ALICE)
    assert registry.approve("triage", 1, BOB).status == "approved"
    registry.publish("triage", 1, "embedded", OPERATOR)
    assert registry.show("triage", 1).status == "production"


@pytest.mark.parametrize(
    ("figures", "rule", "numbers"),
    [
        ((4.1, 4.3, 0.0, 0.5), "min_loss_improvement", "-0.2000"),  # worse than the base
        ((4.1, 4.05, 0.0, 0.5), "min_loss_improvement", "0.0500 (base 4.1000, adapter 4.0500)"),  # below 0.1
        ((4.1, 3.0, 0.3, 0.35), "min_exact_match_gain", "0.0500 in exact match (base 0.3000, adapter 0.3500)"),
    ],
)
def test_below_the_thresholds_is_refused(
    registry: Registry,
    make_run: RunFactory,
    tmp_path: Path,
    figures: tuple[float, float, float, float],
    rule: str,
    numbers: str,
) -> None:
    """Each rule names itself, the measured improvement with both models' figures, and the threshold."""
    registry.policies_dir = _policy(tmp_path, loss=0.1, em=0.1)
    b, a, bem, aem = figures
    registry.add(
        make_run(evaluation=evaluation(base_loss=b, adapter_loss=a, base_em=bem, adapter_em=aem)), "t", OPERATOR
    )
    with pytest.raises(PolicyViolation, match=rf"approval\.{rule}") as exc:
        registry.approve("t", 1, ALICE)
    assert numbers in exc.value.message and "0.1000" in exc.value.message


def test_no_exact_match_measured_is_judged_by_loss(registry: Registry, make_run: RunFactory, tmp_path: Path) -> None:
    """An eval split of free text only (exact match None) passes on the loss alone."""
    registry.policies_dir = _policy(tmp_path, loss=0.1, em=0.5)
    free_text = evaluation(base_loss=4.1, adapter_loss=3.0, base_em=None, adapter_em=None)
    registry.add(make_run(evaluation=free_text), "t", OPERATOR)
    assert registry.approve("t", 1, ALICE).status == "staged"


def test_a_run_without_evaluation_is_refused(registry: Registry, make_run: RunFactory) -> None:
    """No numbers, no approval (a run trained before every run was evaluated)."""
    registry.add(make_run(evaluation=None), "t", OPERATOR)
    with pytest.raises(PolicyViolation, match="no evaluation against its base model"):
        registry.approve("t", 1, ALICE)


def test_publish_rechecks_a_tightened_gate(
    registry: Registry, make_run: RunFactory, audit: RecordingAudit, tmp_path: Path
) -> None:
    """Approved under a loose gate, refused at publish once the policy asks for more, with an audit record."""
    registry.policies_dir = _policy(tmp_path, loss=0.0)
    registry.add(
        make_run(evaluation=evaluation(base_loss=4.1, adapter_loss=4.0, base_em=0.0, adapter_em=0.0)), "t", OPERATOR
    )
    registry.approve("t", 1, ALICE)
    registry.approve("t", 1, BOB)
    registry.policies_dir = _policy(tmp_path, loss=0.5)
    with pytest.raises(PolicyViolation, match=r"improves the eval loss by 0\.1000.*at least 0\.5000"):
        registry.publish("t", 1, "embedded", OPERATOR)
    assert registry.show("t", 1).status == "approved" and _denials(audit, "registry.publish")


def test_an_edited_evaluation_does_not_register(registry: Registry, make_run: RunFactory) -> None:
    """metadata.json claiming a better evaluation than the ledger recorded is an integrity violation at add."""
    run = make_run(evaluation=evaluation(base_loss=4.1, adapter_loss=4.1, base_em=0.0, adapter_em=0.0))
    metadata = json.loads((run / "metadata.json").read_text())
    metadata["evaluation"]["adapter"]["loss"] = 1.0
    (run / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(IntegrityViolation, match="evaluation"):
        registry.add(run, "t", OPERATOR)


def test_show_prints_the_evaluation(registry: Registry, make_run: RunFactory) -> None:
    """The registered run's evaluation is part of what `registry show` prints (AdapterInfo.to_dict)."""
    registry.add(make_run(), "t", OPERATOR)
    shown = registry.show("t", 1).to_dict()["evaluation"]
    assert shown["base"]["loss"] == 5.4 and shown["adapter"]["loss"] == 5.1 and shown["delta"]["loss"] == -0.3
