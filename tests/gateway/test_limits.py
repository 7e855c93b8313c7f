"""Rate limits, the extraction detector, and the policy store's last-good behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError, RateLimited
from appliance.gateway.limits import ExtractionDetector, RateLimiter
from appliance.gateway.policy import AdapterLimits, ExtractionRules, LimitProfile, PolicyStore
from tests.conftest import REPO_ROOT
from tests.gateway.conftest import Harness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_and_charges_tokens() -> None:
    """Requests/min refill continuously; a generation's tokens are charged afterwards and make the next wait."""
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    profile, adapter = LimitProfile(requests_per_minute=2, tokens_per_minute=100), AdapterLimits()
    limiter.check("p", profile, "a", adapter)
    limiter.check("p", profile, "a", adapter)
    with pytest.raises(RateLimited) as exc:
        limiter.check("p", profile, "a", adapter)
    assert exc.value.retry_after == 30
    assert exc.value.kind == "principal.requests"
    clock.now += 30
    limiter.check("p", profile, "a", adapter)
    limiter.charge_tokens("p", "a", 250)  # over the token budget: the balance goes negative
    clock.now += 60
    with pytest.raises(RateLimited, match="tokens") as tokens:
        limiter.check("p", profile, "a", adapter)
    assert tokens.value.kind == "principal.tokens"


def test_refusals_carry_their_kind_typed() -> None:
    """A bucket refusal names its bucket, a throttle says extraction; a kind no store produces is a misuse error."""
    from appliance.gateway.limits import rate_limited, throttled

    assert rate_limited("adapter.tokens", 2.5).kind == "adapter.tokens"
    assert "adapter tokens per minute" in rate_limited("adapter.tokens", 2.5).message
    assert throttled(30).kind == "extraction"
    with pytest.raises(ValueError):
        rate_limited("principal.coffee", 1)


def test_extraction_detector_flags_distinct_prompts_and_throttles() -> None:
    """Very many distinct prompts within the window flag the principal once and throttle it for throttle_s."""
    clock = Clock()
    detector = ExtractionDetector(clock=clock)
    rules = ExtractionRules(burst_max_requests=1000, distinct_max_prompts=5, throttle_s=60)
    flags = [detector.observe("p", f"prompt {i}", rules) for i in range(6)]
    assert [f is not None for f in flags] == [False] * 5 + [True]
    assert flags[-1] is not None and flags[-1].reason == "distinct_prompts"
    with pytest.raises(RateLimited):
        detector.check_throttle("p")
    detector.check_throttle("someone-else")
    clock.now += 61
    detector.check_throttle("p")
    assert all(detector.observe("q", "same prompt", rules) is None for _ in range(20))


def test_extraction_detector_throttles_and_audits(h: Harness) -> None:
    """A burst from one principal is throttled (429), audited as gateway.extraction_suspected and counted."""
    gw = h.gateway
    object.__setattr__(gw.policy.current.limits, "extraction", ExtractionRules(burst_max_requests=3, throttle_s=120))
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 1}}
    codes = [
        h.client.post("/v1/inference/adapter/triage/production", json=body, headers=h.bearer()).status_code
        for _ in range(5)
    ]
    assert codes == [200, 200, 200, 429, 429]
    flagged = h.audit.of_type("gateway.extraction_suspected")
    assert len(flagged) == 1 and flagged[0]["details"]["reason"] == "burst"
    metrics = h.client.get("/metrics", headers=h.bearer(scope="admin")).text
    assert 'appliance_gateway_extraction_flags_total{reason="burst"} 1.0' in metrics


def test_invalid_policy_refused_last_good_kept(tmp_path: Path) -> None:
    """A reload of an invalid file raises ConfigError naming the problem, and the old policy stays in force."""
    path = tmp_path / "access.yaml"
    path.write_text((REPO_ROOT / "policies" / "access.yaml").read_text())
    store = PolicyStore(path)
    before = store.sha256
    path.write_text("version: 1\nroles:\n  x:\n    groups: [g]\n    adapters: [{name: '../etc'}]\n")
    with pytest.raises(ConfigError, match="adapter name"):
        store.reload()
    assert store.sha256 == before and "analyst" in store.current.roles
    path.write_text("roles: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        store.reload()
    assert store.sha256 == before


def test_policy_reload_that_cannot_be_audited_is_not_applied(h: Harness, tmp_path: Path) -> None:
    """A valid reload whose policy.reload record cannot be written is a 503 and the old policy stays in force."""
    from appliance.errors import AuditUnavailable

    path = tmp_path / "access.yaml"
    path.write_text((REPO_ROOT / "policies" / "access.yaml").read_text())
    gw = h.gateway
    gw.policy = PolicyStore(path)
    before = gw.policy.sha256
    path.write_text(path.read_text().replace("scopes: [inference]", "scopes: [inference, admin]"))
    real = gw.audit.record

    async def refuse_reloads(event):  # type: ignore[no-untyped-def]
        if event["type"] == "policy.reload":
            raise AuditUnavailable("disk full (test)")
        return await real(event)

    gw.audit.record = refuse_reloads
    r = h.client.post("/v1/admin/policy/reload", headers=h.bearer(scope="admin"))
    assert r.status_code == 503 and r.json()["error_type"] == "AUDIT_UNAVAILABLE"
    assert gw.policy.sha256 == before and "admin" not in gw.policy.current.roles["analyst"].scopes
    gw.audit.record = real
    r = h.client.post("/v1/admin/policy/reload", headers=h.bearer(scope="admin"))
    assert r.status_code == 200 and r.json()["applied"] is True and gw.policy.sha256 != before
