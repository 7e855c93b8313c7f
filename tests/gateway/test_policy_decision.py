"""``AccessPolicy.decide``: the policy's one answer for a request (adapter entitlement, the grants that check the
resolved version, logprob rights, limit profile and shared limits), and admission asking it once per request."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from appliance.gateway.policy import AccessPolicy, AdmissionDecision, Entitlement, LimitProfile, parse_policy
from tests.conftest import REPO_ROOT
from tests.gateway.conftest import Harness

STREAM = "/v1/inference/adapter/triage/production/stream"


@pytest.fixture(scope="module")
def policy() -> AccessPolicy:
    """The shipped policy (policies/access.yaml)."""
    return parse_policy((REPO_ROOT / "policies" / "access.yaml").read_text())


def test_the_decision_is_frozen(policy: AccessPolicy) -> None:
    """A decision cannot be changed after the policy gave it."""
    decision = policy.decide({"analyst"}, "triage", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.logprobs = True  # type: ignore[misc]


def test_an_analyst_decision(policy: AccessPolicy) -> None:
    """Production versions of its adapters only, no logprobs, its own profile, the policy's shared limits."""
    decision = policy.decide({"analyst"}, "triage", None)
    assert decision.entitlement is Entitlement.FULL
    assert decision.logprobs is False
    assert decision.profile == policy.limits.profiles["analyst"]
    assert decision.adapter_limits == policy.limits.adapter and decision.extraction == policy.limits.extraction
    assert policy.decide({"analyst"}, "triage", 2).entitlement is Entitlement.IF_PRODUCTION
    assert policy.decide({"analyst"}, "oncology", None).entitlement is Entitlement.NONE
    assert decision.allows("triage", 2, is_production=True) and not decision.allows("triage", 1, is_production=False)


def test_several_roles_take_the_widest_rights(policy: AccessPolicy) -> None:
    """Roles add up: any role's logprob right, the most generous profile, every role's grants."""
    decision = policy.decide({"analyst", "researcher"}, "oncology", 1)
    assert decision.entitlement is Entitlement.FULL and decision.logprobs is True
    assert decision.profile == policy.limits.profiles["service"]
    assert decision.allows("oncology", 1, is_production=False)


@pytest.mark.parametrize("roles", [set(), {"no-such-role"}, {"compliance"}])
def test_no_grant_means_no_adapter_and_the_default_profile(policy: AccessPolicy, roles: set[str]) -> None:
    """Roles without grants (or unknown to the policy) are entitled to nothing; without a role's profile the
    default profile applies."""
    decision = policy.decide(roles, "triage", None)
    assert decision.entitlement is Entitlement.NONE and decision.grants == () and decision.logprobs is False
    assert not decision.allows("triage", 2, is_production=True)
    assert decision.profile == policy.limits.profiles["default"]  # compliance names no profile: 'default'


def test_a_policy_without_a_default_profile_still_decides() -> None:
    """A principal with no role under a policy that names no 'default' profile gets the built-in defaults."""
    policy = AccessPolicy.model_validate(
        {
            "roles": {"a": {"scopes": ["a"], "limits": "p"}},
            "limits": {"profiles": {"p": {"requests_per_minute": 5, "tokens_per_minute": 50}}},
        }
    )
    assert policy.decide(set(), "x", None).profile == LimitProfile()
    assert policy.decide({"a"}, "x", None).profile.requests_per_minute == 5


def test_allows_agrees_with_the_listing(policy: AccessPolicy) -> None:
    """The decision's check of a resolved version is the same as the one /v1/models lists adapters with."""
    for roles in ({"analyst"}, {"researcher"}, {"service"}, {"emergency-clinician"}, set()):
        decision = policy.decide(roles, "triage", None)
        for name in ("triage", "oncology", "discharge-summary"):
            for version, production in ((1, False), (2, True), (3, False)):
                assert decision.allows(name, version, is_production=production) == policy.may_adapter(
                    roles, name, version, is_production=production
                ), (roles, name, version)


def _count_decisions(monkeypatch: pytest.MonkeyPatch) -> list[AdmissionDecision]:
    made: list[AdmissionDecision] = []
    decide = AccessPolicy.decide

    def counting(self: AccessPolicy, *args: Any, **kwargs: Any) -> AdmissionDecision:
        made.append(decide(self, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(AccessPolicy, "decide", counting)
    return made


@pytest.mark.parametrize(("scope", "logprob"), [("research", -0.5), ("inference", None)])
def test_a_stream_is_decided_once_and_its_logprobs_follow_that_decision(
    h: Harness, monkeypatch: pytest.MonkeyPatch, scope: str, logprob: float | None
) -> None:
    """One question to the policy per request; the stream's events carry logprobs as that decision says."""
    made = _count_decisions(monkeypatch)
    r = h.client.post(STREAM, json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}, headers=h.bearer(scope=scope))
    events = [json.loads(line[5:]) for line in r.text.split("\n\n") if line.startswith("data:")]
    assert r.status_code == 200 and len(made) == 1
    assert made[0].logprobs is (logprob is not None)
    assert events and all(e["token"]["logprob"] == logprob for e in events)


def test_a_refused_logprob_request_is_decided_once(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """An analyst asking for details is refused on the same single decision, audited, and never reaches the backend."""
    made = _count_decisions(monkeypatch)
    body = {"inputs": "x", "parameters": {"details": True}}
    r = h.client.post("/v1/inference/adapter/triage/production", json=body, headers=h.bearer())
    assert r.status_code == 403 and len(made) == 1 and made[0].logprobs is False
    assert h.audit.of_type("gateway.denied")[-1]["outcome"]["http_status"] == 403 and h.backend.calls == []
