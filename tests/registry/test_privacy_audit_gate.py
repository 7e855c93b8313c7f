"""The audit gate: an empirical epsilon lower bound above the accountant's epsilon refuses approval and publish."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.errors import IntegrityViolation, PolicyViolation, ValidationFailed
from appliance.registry import Registry
from tests.registry.conftest import APPROVERS, OPERATOR, RecordingAudit, RunFactory, snapshot

ALICE, BOB = APPROVERS


def _audit(bound: float, claimed: float | None = 4.0, **extra: Any) -> dict[str, Any]:
    return {
        "m": 1000,
        "guesses": 200,
        "correct": 190,
        "epsilon_lower_bound": bound,
        "claimed_epsilon": claimed,
        "delta": 1e-5,
        "significance": 0.05,
        **extra,
    }


def test_a_bound_above_the_claim_is_refused_with_both_numbers(
    registry: Registry, make_run: RunFactory, audit: RecordingAudit
) -> None:
    """epsilon >= 4.5 measured against a claimed 4.0: refused, both numbers in the message, nothing changes."""
    registry.add(make_run(privacy_audit=_audit(4.5)), "triage", OPERATOR)
    before = snapshot(registry)
    with pytest.raises(PolicyViolation, match=r"rule privacy_audit") as exc:
        registry.approve("triage", 1, ALICE)
    assert "4.5000" in exc.value.message and "4.0000" in exc.value.message and "190/200" in exc.value.message
    assert snapshot(registry) == before
    denied = [e for e in audit.events if e["type"] == "registry.approve" and e["outcome"]["status"] == "denied"]  # type: ignore[index]
    assert denied and denied[-1]["outcome"]["error_class"] == "POLICY_VIOLATION"  # type: ignore[index]


def test_a_bound_below_the_claim_passes_and_is_shown(registry: Registry, make_run: RunFactory) -> None:
    """A bound under the accountant's epsilon is what a sound DP run shows: approved, and kept on the record."""
    registry.add(make_run(privacy_audit=_audit(1.2)), "triage", OPERATOR)
    registry.approve("triage", 1, ALICE)
    assert registry.approve("triage", 1, BOB).status == "approved"
    shown = registry.show("triage", 1)
    assert shown.privacy_audit is not None and shown.privacy_audit["epsilon_lower_bound"] == 1.2
    assert shown.to_dict()["privacy_audit"]["m"] == 1000


def test_the_claim_compared_is_the_accountants(registry: Registry, make_run: RunFactory) -> None:
    """The gate compares with the run's epsilon (checked against the ledger), not the audit's own claimed field."""
    registry.add(make_run(privacy_audit=_audit(4.5, claimed=9.0)), "t", OPERATOR)
    with pytest.raises(PolicyViolation, match=r"4\.5000.*4\.0000"):
        registry.approve("t", 1, ALICE)


def test_an_unaudited_run_is_judged_without_it(registry: Registry, make_run: RunFactory) -> None:
    """No audit canaries, no audit: the other rules decide."""
    registry.add(make_run(), "t", OPERATOR)
    assert registry.approve("t", 1, ALICE).status == "staged"
    assert registry.show("t", 1).privacy_audit is None


def test_an_edited_bound_does_not_register(registry: Registry, make_run: RunFactory) -> None:
    """metadata.json claiming a lower bound than the ledger recorded is an integrity violation at add."""
    run = make_run(privacy_audit=_audit(4.5))
    metadata = json.loads((run / "metadata.json").read_text())
    metadata["privacy_audit"]["epsilon_lower_bound"] = 0.1
    (run / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(IntegrityViolation, match="privacy_audit"):
        registry.add(run, "t", OPERATOR)


def test_a_removed_audit_does_not_register(registry: Registry, make_run: RunFactory) -> None:
    """Deleting the audit from metadata.json (to dodge the gate) disagrees with the ledger: refused at add."""
    run = make_run(privacy_audit=_audit(4.5))
    metadata = json.loads((run / "metadata.json").read_text())
    del metadata["privacy_audit"]
    (run / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(IntegrityViolation, match="privacy_audit"):
        registry.add(run, "t", OPERATOR)


def test_impossible_counts_are_refused(registry: Registry, make_run: RunFactory) -> None:
    """More correct guesses than guesses is not a run's audit: the metadata is invalid."""
    with pytest.raises(ValidationFailed, match="privacy_audit"):
        registry.add(make_run(privacy_audit=_audit(1.0, correct=300)), "t", OPERATOR)
