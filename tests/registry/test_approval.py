"""Two-person approval: roles, self-approval, repeat approvals, privacy limits, and who may grant roles."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import Conflict, PermissionDenied, PolicyViolation, Unauthenticated, ValidationFailed
from appliance.registry import Actor, Registry
from tests.registry.conftest import APPROVERS, OPERATOR, TRAINER, RecordingAudit, RunFactory, snapshot

ALICE, BOB = APPROVERS
CAROL = Actor("carol", frozenset({"approver"}))


def test_approver_role_required(registry: Registry, make_run: RunFactory, audit: RecordingAudit) -> None:
    """Someone without the approver role is refused, the refusal is audited, and nothing changes."""
    registry.add(make_run(), "triage", OPERATOR)
    before = snapshot(registry)
    with pytest.raises(PermissionDenied, match="does not hold the approver role"):
        registry.approve("triage", 1, Actor("eve", frozenset({"admin"})))
    assert snapshot(registry) == before
    assert audit.events[-1]["type"] == "registry.approve" and audit.events[-1]["outcome"]["status"] == "denied"


def test_trainer_cannot_approve(registry: Registry, make_run: RunFactory) -> None:
    """The person who trained an adapter cannot approve it, even holding the approver role."""
    registry.add(make_run(), "triage", OPERATOR)
    with pytest.raises(PolicyViolation, match="rule two-person-approval: trainer-tom trained"):
        registry.approve("triage", 1, Actor(TRAINER, frozenset({"approver"})))


def test_same_person_twice_is_one_approval(registry: Registry, make_run: RunFactory) -> None:
    """A second approval by the same person is refused and the adapter stays staged."""
    registry.add(make_run(), "triage", OPERATOR)
    registry.approve("triage", 1, ALICE)
    with pytest.raises(Conflict, match="must come from a different person"):
        registry.approve("triage", 1, ALICE)
    info = registry.show("triage", 1)
    assert info.status == "staged" and len(info.approvals) == 1


def test_publish_needs_two_approvals(registry: Registry, make_run: RunFactory) -> None:
    """A staged adapter (zero or one approval) cannot be published."""
    registry.add(make_run(), "triage", OPERATOR)
    with pytest.raises(Conflict, match="only approved adapters publish"):
        registry.publish("triage", 1, "embedded", OPERATOR)
    registry.approve("triage", 1, ALICE)
    with pytest.raises(Conflict, match="staged"):
        registry.publish("triage", 1, "embedded", OPERATOR)
    assert not (registry.publisher.serving_dir / "adapters" / "triage-v1").exists()


def test_revoked_approver_no_longer_counts_at_publish(
    registry: Registry, make_run: RunFactory, audit: RecordingAudit
) -> None:
    """An approval by someone whose approver role was revoked since does not count: publish is refused (audited)
    until a current approver approves; the approvals of a published adapter are re-checked on each publish."""
    registry.add(make_run(), "triage", OPERATOR)
    registry.approve("triage", 1, ALICE)
    registry.approve("triage", 1, BOB)
    registry.revoke("alice", "approver", OPERATOR)
    before = snapshot(registry)
    with pytest.raises(
        PolicyViolation, match=r"rule two-person-approval: .*\(alice no longer holds the approver role\)"
    ):
        registry.publish("triage", 1, "embedded", OPERATOR)
    assert snapshot(registry) == before
    assert not (registry.publisher.serving_dir / "adapters" / "triage-v1").exists()
    last = audit.events[-1]
    assert (last["type"], last["outcome"]["status"], last["outcome"]["error_class"]) == (
        "registry.publish",
        "denied",
        "POLICY_VIOLATION",
    )
    with pytest.raises(Conflict, match="already approved"):
        registry.approve("triage", 1, BOB)
    registry.grant("carol", "approver", OPERATOR)
    assert registry.approve("triage", 1, CAROL).status == "approved"
    assert registry.publish("triage", 1, "embedded", OPERATOR).status == "production"
    registry.revoke("bob", "approver", OPERATOR)
    with pytest.raises(PolicyViolation, match="bob no longer holds"):
        registry.publish("triage", 1, "tgi", OPERATOR)


def test_staged_adapter_counts_only_current_approvers(registry: Registry, make_run: RunFactory) -> None:
    """An approval that lapsed before the second one does not move the adapter to approved."""
    registry.add(make_run(), "triage", OPERATOR)
    registry.approve("triage", 1, ALICE)
    registry.revoke("alice", "approver", OPERATOR)
    assert registry.approve("triage", 1, BOB).status == "staged"


@pytest.mark.parametrize(
    ("run_kwargs", "rule"),
    [
        ({"dp": {"enabled": False, "epsilon": None, "delta": None}}, "approval.require_dp"),
        ({"dp": {"epsilon": 9.5}}, "approval.max_epsilon"),
        ({"max_exposure": 20.0}, "approval.max_canary_exposure"),
        ({"max_exposure": None}, "approval.max_canary_exposure"),
        ({"canaries": {"count": 0, "exposures": [], "max_exposure": 0.0}}, "approval.max_canary_exposure"),
    ],
)
def test_privacy_limits_refuse_approval(
    registry: Registry, make_run: RunFactory, run_kwargs: dict[str, object], rule: str
) -> None:
    """No DP, epsilon or canary exposure above policies/privacy.yaml's limits: refused, naming the rule."""
    registry.add(make_run(**run_kwargs), "triage", OPERATOR)
    before = snapshot(registry)
    with pytest.raises(PolicyViolation, match=f"rule {rule}"):
        registry.approve("triage", 1, ALICE)
    assert snapshot(registry) == before


def test_tightened_policy_blocks_publish(registry: Registry, make_run: RunFactory, tmp_path: Path) -> None:
    """An adapter approved under old limits is not published once the policy's limits exclude it."""
    registry.add(make_run(dp={"epsilon": 6.0}), "triage", OPERATOR)
    registry.approve("triage", 1, ALICE)
    registry.approve("triage", 1, BOB)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "privacy.yaml").write_text("approval:\n  max_epsilon: 3.0\n  max_canary_exposure: 12.0\n")
    registry.policies_dir = policies
    with pytest.raises(PolicyViolation, match=r"approval\.max_epsilon"):
        registry.publish("triage", 1, "tgi", OPERATOR)
    assert registry.show("triage", 1).status == "approved"


def test_missing_policy_fails_closed(registry: Registry, make_run: RunFactory, tmp_path: Path) -> None:
    """Without a readable approval section in privacy.yaml no adapter can be approved."""
    from appliance.errors import ConfigError

    registry.add(make_run(), "triage", OPERATOR)
    registry.policies_dir = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="privacy policy not found"):
        registry.approve("triage", 1, ALICE)
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "privacy.yaml").write_text("approval:\n  max_epsilon: -1\n")
    with pytest.raises(ConfigError, match=r"approval\.max_epsilon"):
        registry.approve("triage", 1, ALICE)


def test_retired_cannot_be_approved(registry: Registry, make_run: RunFactory) -> None:
    """Once retired, an adapter can be neither approved nor retired again."""
    registry.add(make_run(), "triage", OPERATOR)
    registry.retire("triage", 1, OPERATOR)
    with pytest.raises(Conflict, match="retired"):
        registry.approve("triage", 1, ALICE)
    with pytest.raises(Conflict, match="already retired"):
        registry.retire("triage", 1, OPERATOR)


class TestPeople:
    """Roles and personal tokens for CLI identities."""

    def test_bootstrap_then_admin_only(self, bare_registry: Registry) -> None:
        """The first admin needs no admin; after that only an admin grants, and tokens authenticate."""
        assert bare_registry.needs_bootstrap()
        olga_token = bare_registry.grant("olga", "admin", Actor("olga"))
        assert olga_token and not bare_registry.needs_bootstrap()
        with pytest.raises(PermissionDenied, match="admin role"):
            bare_registry.grant("mallory", "approver", Actor("mallory"))
        olga = bare_registry.authenticate("olga", olga_token)
        assert olga.roles == frozenset({"admin"})
        alice_token = bare_registry.grant("alice", "approver", olga)
        assert alice_token is not None
        assert bare_registry.authenticate("alice", alice_token).roles == frozenset({"approver"})
        with pytest.raises(Conflict, match="already holds"):
            bare_registry.grant("alice", "approver", olga)
        bare_registry.revoke("alice", "approver", olga)
        assert bare_registry.authenticate("alice", alice_token).roles == frozenset()

    def test_wrong_token_and_unknown_person_look_alike(self, bare_registry: Registry) -> None:
        """A wrong token and an unknown person give the same Unauthenticated error."""
        token = bare_registry.grant("olga", "admin", Actor("olga"))
        assert token is not None
        with pytest.raises(Unauthenticated, match="unknown person or wrong personal token"):
            bare_registry.authenticate("olga", token[:-1] + ("A" if token[-1] != "A" else "B"))
        with pytest.raises(Unauthenticated, match="unknown person or wrong personal token"):
            bare_registry.authenticate("nobody", token)

    def test_tokens_stored_hashed(self, bare_registry: Registry) -> None:
        """The people table holds a scrypt hash, never the token itself."""
        from sqlalchemy import text

        token = bare_registry.grant("olga", "admin", Actor("olga"))
        assert token is not None
        with bare_registry.db.engine.connect() as conn:
            stored = conn.execute(text("SELECT token_hash FROM people")).scalar_one()
        assert stored.startswith("scrypt$") and token not in stored

    def test_bad_subject_and_role(self, bare_registry: Registry) -> None:
        """Subjects with spaces and unknown roles are refused."""
        with pytest.raises(ValidationFailed, match="invalid person"):
            bare_registry.grant("alice smith", "admin", Actor("olga"))
        with pytest.raises(ValidationFailed, match="unknown role"):
            bare_registry.grant("alice", "superuser", Actor("olga"))
