"""Scale-out state: two gateways (two ``create_app`` instances) sharing one real Redis enforce one limit, one
extraction detector and one session table; Redis down fails closed (503, audited, not ready); Redis holds no
prompt text and no session secret. The in-memory store passes the same limiter test (parametrised)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from structlog.testing import capture_logs

from appliance.config import GatewaySettings, Settings
from appliance.errors import ConfigError, RateLimited, StateStoreUnavailable
from appliance.gateway._service import SESSION_COOKIE
from appliance.gateway.limits import LimitStore, MemoryLimitStore
from appliance.gateway.policy import AdapterLimits, ExtractionRules, LimitProfile
from appliance.gateway.state import check_production, fingerprint_salt
from appliance.gateway.state_redis import RedisLimitStore, RedisState, connect
from appliance.testing import FakeKeyService
from tests.fixtures.redisd import RedisServer, start_redis
from tests.gateway.conftest import Harness

pytestmark = pytest.mark.redis

URL = "/v1/inference/adapter/triage/production"
BODY = {"inputs": "hello", "parameters": {"max_new_tokens": 2}}
ANALYST = {"subject": "alice", "name": "Alice Analyst", "groups": ["analysts"]}


def redis_settings(base: Settings, root: Path, url: str, prefix: str, **gateway: Any) -> Settings:
    """The test settings with their own data directory and the shared Redis as the state store."""
    root.mkdir(parents=True)
    g = base.gateway.model_copy(
        update={"state_store": "redis", "redis_url": SecretStr(url), "redis_key_prefix": prefix, **gateway}
    )
    return base.model_copy(update={"data_dir": root, "gateway": g})


@pytest.fixture
def make_pair(
    make_harness: Callable[..., Harness],
    settings: Settings,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_prefix: str,
) -> Callable[..., tuple[Harness, Harness]]:
    """Two gateways (each its own app, data directory, audit log and backend) on one Redis and key prefix."""
    made = 0

    def make(**gateway: Any) -> tuple[Harness, Harness]:
        nonlocal made
        made += 1
        pair = tuple(
            make_harness(
                redis_settings(settings, tmp_path / f"gw{made}{n}", redis_server.url(), redis_prefix, **gateway)
            )
            for n in "ab"
        )
        return pair[0], pair[1]

    return make


@pytest.fixture
def pair(make_pair: Callable[..., tuple[Harness, Harness]]) -> tuple[Harness, Harness]:
    return make_pair()


def set_profile(hs: tuple[Harness, ...], **limits: int) -> None:
    for h in hs:
        profiles = h.gateway.policy.current.limits.profiles  # frozen model, mutable dict: test-only tweak
        for name in list(profiles):
            profiles[name] = LimitProfile(**{"requests_per_minute": 10_000, "tokens_per_minute": 10**6, **limits})


def set_limits(hs: tuple[Harness, ...], field: str, value: Any) -> None:
    for h in hs:
        object.__setattr__(h.gateway.policy.current.limits, field, value)


def post(h: Harness, sub: str = "svc-1", body: dict[str, Any] | None = None) -> Any:
    return h.client.post(URL, json=body or BODY, headers=h.bearer(sub=sub))


def create_session(h: Harness, data: dict[str, Any]) -> Any:
    return h.client.blocking_portal.call(h.gateway.sessions.create, data)


def page(h: Harness, session_id: str) -> Any:
    h.client.cookies.set(SESSION_COOKIE, session_id)
    return h.client.get("/console", follow_redirects=False)


# --- limits ---------------------------------------------------------------------------------------------------------
def test_two_gateways_enforce_one_combined_request_limit(pair: tuple[Harness, Harness]) -> None:
    """4 requests/min spread over two gateways: the 5th and 6th are 429 (each gateway alone saw only 2 or 3)."""
    a, b = pair
    set_profile(pair, requests_per_minute=4)
    answers = [post(a if i % 2 == 0 else b) for i in range(6)]
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 429, 429]
    refused = answers[4]
    assert int(refused.headers["Retry-After"]) >= 1 and refused.json()["error_type"] == "RATE_LIMITED"
    assert "principal requests" in refused.json()["error"]
    denied = a.audit.of_type("gateway.denied")
    assert [d["outcome"]["error_class"] for d in denied] == ["RATE_LIMITED"]
    assert denied[0]["event_id"] == refused.headers["X-Audit-Id"]
    assert len(b.audit.of_type("gateway.denied")) == 1


def test_adapter_limit_and_token_charge_are_shared(
    make_pair: Callable[..., tuple[Harness, Harness]], redis_prefix: str
) -> None:
    """The per-adapter bucket counts every principal on every gateway; tokens charged on A make B refuse."""
    a, b = make_pair()
    set_limits((a, b), "adapter", AdapterLimits(requests_per_minute=3, tokens_per_minute=10**6))
    codes = [post(a, "svc-1").status_code, post(b, "svc-2").status_code, post(a, "svc-3").status_code]
    r = post(b, "svc-4")
    assert codes == [200, 200, 200] and r.status_code == 429 and "adapter requests" in r.json()["error"]

    c, d = make_pair(redis_key_prefix=f"{redis_prefix}t:")  # own keys: a larger limit does not refill a bucket
    set_limits((c, d), "adapter", AdapterLimits())
    set_profile((c, d), tokens_per_minute=10)
    big = {"inputs": "one two three", "parameters": {"max_new_tokens": 8}}  # 3 prompt + 8 generated > 10
    assert post(c, "svc-5", big).status_code == 200
    r = post(d, "svc-5")
    assert r.status_code == 429 and "principal tokens" in r.json()["error"]
    assert post(d, "svc-6").status_code == 200  # another principal is not charged


def test_extraction_burst_split_across_gateways_is_flagged(pair: tuple[Harness, Harness]) -> None:
    """A burst of 4 (limit 3) sent half to each gateway is flagged once, audited where it tipped, and throttles the
    principal on both gateways."""
    a, b = pair
    set_limits(pair, "extraction", ExtractionRules(burst_max_requests=3, throttle_s=120))
    codes = [post(a if i % 2 == 0 else b).status_code for i in range(6)]
    assert codes == [200, 200, 200, 429, 429, 429]
    flagged = b.audit.of_type("gateway.extraction_suspected")  # the 4th request went to B
    assert len(flagged) == 1 and flagged[0]["details"]["reason"] == "burst"
    assert a.audit.of_type("gateway.extraction_suspected") == []
    r = post(a)
    assert r.status_code == 429 and "throttled" in r.json()["error"] and int(r.headers["Retry-After"]) > 100
    assert post(a, "svc-2").status_code == 200  # only the flagged principal is throttled
    metrics = b.client.get("/metrics", headers=b.bearer(scope="admin")).text
    assert 'appliance_gateway_extraction_flags_total{reason="burst"} 1.0' in metrics


def test_distinct_prompts_counted_across_gateways_with_one_salt(pair: tuple[Harness, Harness]) -> None:
    """The same prompt on A and B is one fingerprint (the salt is shared); 4 distinct prompts (limit 3) on two
    gateways are flagged."""
    a, b = pair
    set_limits(pair, "extraction", ExtractionRules(burst_max_requests=1000, distinct_max_prompts=3, throttle_s=60))
    same = {"inputs": "the same question", "parameters": {"max_new_tokens": 1}}
    assert [post(h, "svc-1", same).status_code for h in (a, b, a, b, a, b)] == [200] * 6
    asks = [{"inputs": f"question {i}", "parameters": {"max_new_tokens": 1}} for i in range(3)]
    codes = [post(h, "svc-1", body).status_code for h, body in zip((a, b, a), asks, strict=True)]
    assert codes == [200, 200, 429]  # the same question + 3 new ones = 4 distinct > 3
    flagged = a.audit.of_type("gateway.extraction_suspected")
    assert len(flagged) == 1 and flagged[0]["details"] == {"reason": "distinct_prompts", "count": 4, "throttle_s": 60}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def limit_store(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[tuple[LimitStore, Clock]]:
    clock = Clock()
    if request.param == "memory":
        yield MemoryLimitStore(clock=clock), clock
        return
    client = Redis.from_url(redis_server.url())
    yield RedisLimitStore(client, prefix=redis_prefix, salt=fingerprint_salt(FakeKeyService()), clock=clock), clock
    await client.aclose()


async def test_token_bucket_refills_and_charges_on_both_stores(limit_store: tuple[LimitStore, Clock]) -> None:
    """The Lua buckets behave as the in-memory ones: refill, Retry-After, tokens charged after the generation."""
    store, clock = limit_store
    profile, adapter, rules = (
        LimitProfile(requests_per_minute=2, tokens_per_minute=100),
        AdapterLimits(),
        ExtractionRules(),
    )
    assert await store.admit("p", profile, "a", adapter, "x", rules) is None
    assert await store.admit("p", profile, "a", adapter, "x", rules) is None
    with pytest.raises(RateLimited) as exc:
        await store.admit("p", profile, "a", adapter, "x", rules)
    assert exc.value.retry_after == 30
    clock.now += 30
    await store.admit("p", profile, "a", adapter, "x", rules)
    await store.charge_tokens("p", "a", 250)  # over the token budget: the balance goes negative
    clock.now += 60
    with pytest.raises(RateLimited, match="tokens") as exc:
        await store.admit("p", profile, "a", adapter, "x", rules)
    assert exc.value.retry_after == 30  # -50 tokens at 100/min: 30 s
    distinct = ExtractionRules(burst_max_requests=1000, distinct_max_prompts=2, throttle_s=60)
    flags = [await store.admit("q", profile, "a", adapter, f"prompt {i}", distinct) for i in range(2)]
    clock.now += 60
    flags.append(await store.admit("q", profile, "a", adapter, "prompt 2", distinct))
    assert flags[:2] == [None, None] and flags[2] is not None and flags[2].reason == "distinct_prompts"
    with pytest.raises(RateLimited, match="throttled"):
        await store.admit("q", profile, "a", adapter, "prompt 0", distinct)


async def test_switching_limit_profiles_does_not_refill_the_buckets(limit_store: tuple[LimitStore, Clock]) -> None:
    """A principal whose profile changes between requests (bearer tokens with other scopes, a policy reload) keeps
    its balance: alternating two profiles must not hand out a full bucket, or a forgiven token debt, each time."""
    store, _clock = limit_store  # the clock stands still: nothing refills by time
    rules = ExtractionRules(burst_max_requests=1000, distinct_max_prompts=1000)
    small, large = (LimitProfile(requests_per_minute=n, tokens_per_minute=1000) for n in (2, 3))
    admitted = 0
    for i in range(20):
        try:
            await store.admit("p", small if i % 2 else large, "a", AdapterLimits(), "x", rules)
            admitted += 1
        except RateLimited:
            pass
    assert admitted == 3  # the larger bucket once, never refilled by a switch
    await store.admit("q", small, "a", AdapterLimits(), "x", rules)
    await store.charge_tokens("q", "a", 5000)  # 4,000 tokens over a 1,000/min budget
    with pytest.raises(RateLimited, match="tokens"):
        await store.admit(
            "q", LimitProfile(requests_per_minute=5, tokens_per_minute=2000), "a", AdapterLimits(), "x", rules
        )


async def test_concurrent_admissions_from_two_gateways_are_atomic(redis_server: RedisServer, redis_prefix: str) -> None:
    """40 concurrent admissions through two gateways' clients (2 pooled connections each: the rest wait, none
    fails) against a budget of 15: exactly 15 pass, 25 are rate limited."""
    clock, salt = Clock(), fingerprint_salt(FakeKeyService())
    g = GatewaySettings(state_store="redis", redis_url=SecretStr(redis_server.url()), redis_max_connections=2)
    clients = [connect(g) for _ in range(2)]
    stores = [RedisLimitStore(c, prefix=redis_prefix, salt=salt, clock=clock) for c in clients]
    profile, rules = (
        LimitProfile(requests_per_minute=15, tokens_per_minute=10**6),
        ExtractionRules(burst_max_requests=1000),
    )

    async def one(i: int) -> bool:
        try:
            await stores[i % 2].admit("p", profile, "a", AdapterLimits(), "x", rules)
        except RateLimited:
            return False
        return True

    results = await asyncio.gather(*(one(i) for i in range(40)))
    assert sum(results) == 15
    for c in clients:
        await c.aclose()


# --- sessions -------------------------------------------------------------------------------------------------------
def test_session_from_a_is_valid_on_b_and_logout_on_a_ends_it(pair: tuple[Harness, Harness]) -> None:
    """A session made on gateway A serves pages and CSRF-checked calls on B; login rotation on B invalidates the
    pre-login id on A; logout on A ends the session on B."""
    a, b = pair
    pre = create_session(a, {"oidc": {"state": "s", "nonce": "n", "verifier": "v"}})
    session = b.client.blocking_portal.call(b.gateway.sessions.rotate, pre, ANALYST)  # the login on B
    assert session.id != pre.id and session.csrf != pre.csrf
    assert page(a, pre.id).headers["location"] == "/login"
    assert page(b, session.id).status_code == 200
    r = page(a, session.id)
    assert r.status_code == 200 and session.csrf in r.text  # A renders B's session with its CSRF token
    answer = b.client.post(
        "/console/generate", json={"model": "triage@production", "prompt": "hi"}, headers={"X-CSRF-Token": session.csrf}
    )
    assert answer.status_code == 200 and '"done": true' in answer.text
    forged = b.client.post("/console/generate", json={"model": "triage@production", "prompt": "hi"})
    assert forged.status_code == 403
    r = a.client.post("/auth/logout", data={"_csrf": session.csrf}, follow_redirects=False)
    assert r.status_code == 303 and a.audit.of_type("auth.logout")[0]["details"]["reason"] == "user"
    r = page(b, session.id)
    assert r.status_code in (302, 303, 307) and r.headers["location"] == "/login"


def test_idle_timeout_is_the_key_ttl_refreshed_on_any_gateway(
    make_pair: Callable[..., tuple[Harness, Harness]], redis_server: RedisServer, redis_prefix: str
) -> None:
    """Idle 2 s: use on B, then A, keeps it alive past 2 s in all; 2.5 s unused ends it (idle logoff audited)."""
    a, b = make_pair(session_idle_timeout_s=2, session_absolute_timeout_s=3600)
    session = create_session(a, ANALYST)
    client = redis_server.client()
    (key,) = client.keys(f"{redis_prefix}s:*")
    assert 0 < client.pttl(key) <= 2000
    time.sleep(1.2)
    assert page(b, session.id).status_code == 200
    time.sleep(1.2)
    assert page(a, session.id).status_code == 200  # 2.4 s after creation: B's use refreshed the TTL
    assert client.pttl(key) > 1500
    time.sleep(2.5)
    assert client.exists(key) == 0  # Redis expired it by itself
    r = page(b, session.id)
    assert r.status_code in (302, 303, 307) and r.headers["location"] == "/login?m=idle"
    (logout,) = b.audit.of_type("auth.logout")
    assert logout["details"]["reason"] == "idle" and logout["actor"]["subject"] == "alice"
    assert logout["actor"]["session_id"] == session.handle
    assert page(b, session.id).headers["location"] == "/login"  # reported once
    client.close()


def test_absolute_lifetime_caps_the_ttl(
    make_pair: Callable[..., tuple[Harness, Harness]], redis_server: RedisServer, redis_prefix: str
) -> None:
    """Absolute 3 s, idle 2 s: a session used every second still ends at 3 s, as 'absolute'."""
    a, b = make_pair(session_idle_timeout_s=2, session_absolute_timeout_s=3)
    session = create_session(a, ANALYST)
    client = redis_server.client()
    (key,) = client.keys(f"{redis_prefix}s:*")
    started = time.monotonic()
    time.sleep(1.0)
    assert page(b, session.id).status_code == 200
    time.sleep(1.0)
    assert page(a, session.id).status_code == 200
    remaining = 3.0 - (time.monotonic() - started)
    assert 0 < client.pttl(key) <= remaining * 1000 + 50  # capped below the 2 s idle timeout
    time.sleep(max(0.0, 3.2 - (time.monotonic() - started)))
    r = page(b, session.id)
    assert r.status_code in (302, 303, 307) and r.headers["location"] == "/login?m=absolute"
    client.close()


def sweep(h: Harness) -> int:
    recorded: int = h.client.blocking_portal.call(h.gateway.sweep_sessions)
    return recorded


def test_sweeper_logs_off_idle_and_absolute_sessions_without_a_request(
    make_pair: Callable[..., tuple[Harness, Harness]], redis_server: RedisServer, redis_prefix: str
) -> None:
    """A session made on A and never used again: B's sweeper ends it and records one auth.logout (idle; the user as
    actor, the session's handle), and leaves of it only when and why it ended; A's sweeper finds nothing; the
    cookie arriving afterwards is told why (once), not recorded again. The same for a session past its absolute
    lifetime ('absolute')."""
    a, b = make_pair(session_idle_timeout_s=1, session_absolute_timeout_s=3600)
    session = create_session(a, ANALYST)
    create_session(a, {"oidc": {"state": "s", "nonce": "n", "verifier": "v"}})  # never signed in: not recorded
    assert sweep(b) == 0  # not due yet
    time.sleep(1.2)
    assert sweep(b) == 1 and sweep(a) == 0
    assert a.audit.of_type("auth.logout") == []
    (logout,) = b.audit.of_type("auth.logout")
    assert logout["details"] == {"reason": "idle"} and logout["actor"]["subject"] == "alice"
    assert logout["actor"]["session_id"] == session.handle and logout["source"] == {"ip": None, "user_agent": None}
    assert session.id not in repr(logout) and session.csrf not in repr(logout)
    client = redis_server.client()
    assert client.keys(f"{redis_prefix}s:*") == [] and client.zcard(f"{redis_prefix}sx") == 0
    markers = [client.hgetall(k) for k in client.keys(f"{redis_prefix}st:*")]  # the pre-login one's: by its TTL
    assert sorted(sorted(m) for m in markers) == [[b"c", b"d"], [b"c", b"r"]]
    assert page(a, session.id).headers["location"] == "/login?m=idle"
    assert page(a, session.id).headers["location"] == "/login" and len(b.audit.of_type("auth.logout")) == 1

    c, d = make_pair(session_idle_timeout_s=2, session_absolute_timeout_s=3, redis_key_prefix=f"{redis_prefix}x:")
    used = create_session(c, ANALYST)  # indexed as due at 2 s
    time.sleep(1.2)
    assert page(d, used.id).status_code == 200  # its key now expires at 3 s (the absolute lifetime)
    time.sleep(1.1)
    assert sweep(d) == 0  # due but live: re-indexed at its key's expiry
    time.sleep(1.0)
    assert sweep(d) == 1
    (logout,) = d.audit.of_type("auth.logout")
    assert logout["details"] == {"reason": "absolute"} and logout["actor"]["session_id"] == used.handle
    client.close()


def test_racing_sweepers_and_cookies_report_each_expiry_once(redis_server: RedisServer, redis_prefix: str) -> None:
    """30 expired sessions, two gateways' sweepers and a third gateway seeing 10 of the cookies, all at once: every
    session is reported exactly once (to one sweeper or to the request), none twice, none lost."""
    g = GatewaySettings(
        state_store="redis",
        redis_url=SecretStr(redis_server.url()),
        redis_key_prefix=redis_prefix,
        session_idle_timeout_s=1,
    )
    salt = fingerprint_salt(FakeKeyService())

    async def run() -> tuple[list[str], list[str]]:
        states = [RedisState(g, salt=salt) for _ in range(3)]
        try:
            sessions = [await states[0].sessions.create({"subject": f"user-{i}"}) for i in range(30)]
            await asyncio.sleep(1.2)
            results = await asyncio.gather(
                states[0].sessions.sweep(),
                states[1].sessions.sweep(),
                *(states[2].sessions.get(s.id) for s in sessions[::3]),
            )
            swept = [e.handle for r in results[:2] for e in r]  # type: ignore[union-attr]
            # a request reports (records) an expiry only with its subject; after a sweep it learns only why
            seen = [r.expired_handle for r in results[2:] if r.expired_subject]  # type: ignore[union-attr]
            return [s.handle for s in sessions], swept + [h for h in seen if h is not None]
        finally:
            for state in states:
                await state.aclose()

    made, reported = asyncio.run(run())
    assert sorted(reported) == sorted(made)


def test_two_gateways_sweeping_at_once_record_each_logoff_once(
    make_pair: Callable[..., tuple[Harness, Harness]],
) -> None:
    """Both gateways' sweepers run at the same moment (threads): 20 expired sessions, 20 auth.logout records
    between the two audit trails, one per session."""
    a, b = make_pair(session_idle_timeout_s=1)
    sessions = [create_session(a if i % 2 else b, {**ANALYST, "subject": f"user-{i}"}) for i in range(20)]
    time.sleep(1.2)
    barrier = threading.Barrier(2)

    def run(h: Harness) -> None:
        barrier.wait()
        sweep(h)

    threads = [threading.Thread(target=run, args=(h,)) for h in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = a.audit.of_type("auth.logout") + b.audit.of_type("auth.logout")
    assert sorted(r["actor"]["session_id"] for r in records) == sorted(s.handle for s in sessions)
    assert {r["details"]["reason"] for r in records} == {"idle"}


# --- failure and secrecy --------------------------------------------------------------------------------------------
def test_redis_down_is_503_audited_not_ready_and_recovers(
    make_harness: Callable[..., Harness], settings: Settings, tmp_path: Path
) -> None:
    """Redis stops: inference is refused with 503 STORAGE_STATE_UNAVAILABLE (audited, backend not called), pages
    are 503 (not a silent logout), /readyz says state false; Redis back: requests pass again. No log line holds the
    Redis URL or password."""
    server = start_redis()
    try:
        h = make_harness(redis_settings(settings, tmp_path / "gw", server.url(), "down:", redis_timeout_s=0.5))
        with capture_logs() as logs:
            assert post(h).status_code == 200
            session = create_session(h, ANALYST)
            ready = h.client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["state"] is True
            server.stop()
            calls = len(h.backend.calls)
            r = post(h)
            assert r.status_code == 503 and r.json()["error_type"] == StateStoreUnavailable.code
            (denied,) = h.audit.of_type("gateway.denied")
            assert denied["event_id"] == r.headers["X-Audit-Id"]
            assert denied["outcome"] == {
                "status": "error",
                "http_status": 503,
                "error_class": StateStoreUnavailable.code,
            }
            assert denied["actor"]["subject"] == "svc-1" and denied["adapter"]["name"] == "triage"
            assert len(h.backend.calls) == calls
            assert page(h, session.id).status_code == 503
            ready = h.client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["state"] is False
            server.start()
            assert post(h).status_code == 200
            assert page(h, session.id).headers["location"] == "/login"  # a Redis without persistence forgot it
        assert any(e.get("event") == "state.unavailable" for e in logs)
        blob = repr(logs)
        assert server.password not in blob and "redis://" not in blob
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def test_redis_holds_no_prompt_text_or_session_secrets(
    pair: tuple[Harness, Harness], redis_server: RedisServer, redis_prefix: str
) -> None:
    """After requests, sessions, a login rotation and console use on two gateways, no key or value holds the
    prompt, a session id, a CSRF token, the OIDC flow's secrets, a user's subject or name; every key has a TTL."""
    a, b = pair
    prompt = "Patient ZEBRA-4711 reports chest pain since Tuesday"
    secrets_ = [prompt, "ZEBRA-4711", "chest pain", "alice", "Alice Analyst", "svc-1"]
    assert post(a, body={"inputs": prompt, "parameters": {"max_new_tokens": 2}}).status_code == 200
    flow = {"state": "STATE-Q7x9", "nonce": "NONCE-Z2k4", "verifier": "VERIFIER-P8m1"}
    pre = create_session(b, {"oidc": flow})
    session = a.client.blocking_portal.call(a.gateway.sessions.rotate, pre, ANALYST)
    other = create_session(b, {"oidc": flow})
    assert page(b, session.id).status_code == 200
    r = b.client.post(
        "/console/generate",
        json={"model": "triage@production", "prompt": prompt},
        headers={"X-CSRF-Token": session.csrf},
    )
    assert r.status_code == 200 and '"done": true' in r.text
    secrets_ += [*flow.values(), session.id, session.csrf, other.id, other.csrf, pre.id, pre.csrf]
    client = redis_server.client()
    blob = b""
    keys = list(client.scan_iter(match="*"))
    assert any(k.startswith(f"{redis_prefix}s:".encode()) for k in keys)
    assert any(k.startswith(f"{redis_prefix}xp:".encode()) for k in keys)
    for key in keys:
        kind = client.type(key)
        if kind == b"hash":
            value = b"".join(k + v for k, v in client.hgetall(key).items())
        elif kind == b"zset":
            value = b"".join(m + str(s).encode() for m, s in client.zrange(key, 0, -1, withscores=True))
        elif kind == b"string":
            value = client.get(key) or b""
        else:
            raise AssertionError(f"unexpected Redis type {kind!r}")
        assert client.pttl(key) > 0, key
        blob += key + b"\n" + value + b"\n"
    for secret in secrets_:
        assert secret.encode() not in blob, secret
        assert secret.lower().encode() not in blob.lower(), secret
    client.close()


def test_production_requires_tls_and_password_to_redis(settings: Settings, tmp_path: Path) -> None:
    """In production a plaintext redis:// URL or one without a password is refused, and the message quotes none."""
    prod = settings.model_copy(update={"environment": "production"})
    for url, problem in (("redis://:pw-SECRET@10.0.0.5:6379/0", "rediss://"), ("rediss://10.0.0.5:6379/0", "password")):
        s = redis_settings(prod, tmp_path / problem.strip(":/"), url, "p:")
        with pytest.raises(ConfigError, match=problem) as exc:
            check_production(s)
        assert "SECRET" not in str(exc.value) and "10.0.0.5" not in str(exc.value)
    check_production(redis_settings(prod, tmp_path / "ok", "rediss://gw:pw@10.0.0.5:6380/0", "p:"))


@pytest.mark.parametrize(
    ("url", "client", "problem"),
    [
        ("rediss://gw:pw-SECRET@10.0.0.5:6380/0", {"redis_client_cert": "/etc/appliance/c.pem"}, "together"),
        ("rediss://gw:pw-SECRET@10.0.0.5:6380/0", {"redis_client_key": "/etc/appliance/c.key"}, "together"),
        (
            "redis://gw:pw-SECRET@10.0.0.5:6379/0",
            {"redis_client_cert": "/etc/appliance/c.pem", "redis_client_key": "/etc/appliance/c.key"},
            "rediss://",
        ),
    ],
)
def test_client_certificate_settings_are_checked(
    settings: Settings, tmp_path: Path, url: str, client: dict[str, str], problem: str
) -> None:
    """A client certificate without its key (or the reverse), or one for a plaintext URL, is a configuration error
    at start-up that quotes no secret (mutual TLS itself runs against the real server in tests/ansible)."""
    from appliance.gateway.state_redis import connect

    s = redis_settings(settings, tmp_path / "s", url, "p:", **client)
    with pytest.raises(ConfigError, match=problem) as exc:
        connect(s.gateway)
    assert "SECRET" not in str(exc.value)
