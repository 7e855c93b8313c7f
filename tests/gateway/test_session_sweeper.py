"""The session sweeper (HIPAA automatic logoff, GW-02) on the in-memory store: a session past its idle or absolute
limit is ended and its ``auth.logout`` recorded without the user coming back, once; a normal logout is not
recorded again; an audit trail that refuses the record still ends the session; the sweeper stops with the app.
The Redis store's sweeper (two gateways racing) is in test_state_redis.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from litestar.testing import TestClient
from structlog.testing import capture_logs

from appliance.config import Settings
from appliance.gateway._service import SESSION_COOKIE
from appliance.gateway.auth.sessions import Session
from tests.gateway.conftest import Harness

ANALYST = {"subject": "alice", "name": "Alice Analyst", "groups": ["analysts"]}


def with_sessions(settings: Settings, **gateway: Any) -> Settings:
    return settings.model_copy(update={"gateway": settings.gateway.model_copy(update=gateway)})


def create_session(h: Harness, data: dict[str, Any]) -> Session:
    session: Session = h.client.blocking_portal.call(h.gateway.sessions.create, data)
    return session


def sweep(h: Harness) -> int:
    recorded: int = h.client.blocking_portal.call(h.gateway.sweep_sessions)
    return recorded


def logouts(h: Harness) -> list[dict[str, Any]]:
    return h.audit.of_type("auth.logout")


def test_idle_session_is_logged_off_by_the_background_sweeper(
    make_harness: Callable[..., Harness], settings: Settings
) -> None:
    """Idle 1 s, sweep every 0.2 s: with no further request the session ends and one auth.logout (reason idle,
    the user as actor, the session's handle) is recorded; a sign-in never completed is deleted unrecorded; no
    record or log line holds the cookie's id or the CSRF token; the cookie arriving later is told why (once) and
    not recorded again."""
    h = make_harness(with_sessions(settings, session_idle_timeout_s=1, session_sweep_interval_s=0.2))
    with capture_logs() as logs:
        session = create_session(h, ANALYST)
        create_session(h, {"oidc": {"state": "s", "nonce": "n", "verifier": "v"}})
        deadline = time.monotonic() + 5
        while not logouts(h) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # more sweeps: still one record
    (logout,) = logouts(h)
    assert logout["details"] == {"reason": "idle"} and logout["action"] == "logout"
    assert logout["actor"]["subject"] == "alice" and logout["actor"]["session_id"] == session.handle
    assert logout["actor"]["auth_method"] == "oidc" and logout["source"] == {"ip": None, "user_agent": None}
    assert len(h.gateway.sessions) == 0  # type: ignore[arg-type]  # the memory store; nothing lingers
    blob = repr(h.audit.events) + repr(logs)
    assert session.id not in blob and session.csrf not in blob
    h.client.cookies.set(SESSION_COOKIE, session.id)
    assert h.client.get("/console", follow_redirects=False).headers["location"] == "/login?m=idle"
    h.client.cookies.set(SESSION_COOKIE, session.id)
    assert h.client.get("/console", follow_redirects=False).headers["location"] == "/login"
    assert len(logouts(h)) == 1


def test_absolute_lifetime_is_recorded_by_the_sweeper(make_harness: Callable[..., Harness], settings: Settings) -> None:
    """Absolute 2 s, idle 1 h: a session used a moment ago still ends at 2 s, recorded as 'absolute'."""
    h = make_harness(with_sessions(settings, session_idle_timeout_s=3600, session_absolute_timeout_s=2))
    session = create_session(h, ANALYST)
    h.client.cookies.set(SESSION_COOKIE, session.id)
    time.sleep(1.0)
    assert h.client.get("/console").status_code == 200
    assert sweep(h) == 0
    time.sleep(1.2)
    assert sweep(h) == 1 and sweep(h) == 0
    (logout,) = logouts(h)
    assert logout["details"] == {"reason": "absolute"} and logout["actor"]["session_id"] == session.handle


def test_a_normal_logout_is_not_recorded_again(make_harness: Callable[..., Harness], settings: Settings) -> None:
    """Signed out by the user, then past the idle limit: the sweeper records nothing (the only record is 'user')."""
    h = make_harness(with_sessions(settings, session_idle_timeout_s=1))
    session = create_session(h, ANALYST)
    h.client.cookies.set(SESSION_COOKIE, session.id)
    r = h.client.post("/auth/logout", data={"_csrf": session.csrf}, follow_redirects=False)
    assert r.status_code == 303
    time.sleep(1.2)
    assert sweep(h) == 0
    assert [e["details"]["reason"] for e in logouts(h)] == ["user"]


def test_an_unrecordable_logoff_still_ends_the_session_and_is_retried(
    make_harness: Callable[..., Harness], settings: Settings
) -> None:
    """The audit trail refuses: the session is ended all the same (fail closed for access), the failure counted
    and logged without the user's name or the session's secrets; the record is written at the next sweep."""
    h = make_harness(with_sessions(settings, session_idle_timeout_s=1))
    session = create_session(h, ANALYST)
    time.sleep(1.2)
    h.audit.fail = True
    with capture_logs() as logs:
        assert sweep(h) == 0
    assert len(h.gateway.sessions) == 0  # type: ignore[arg-type]
    metrics = h.gateway.metrics
    assert metrics.logoffs_unrecorded._value.get() == 1 and metrics.audit_failures._value.get() == 1
    assert any(e["event"] == "session.logoff_unrecorded" and e["pending"] == 1 for e in logs)
    blob = repr(logs)
    assert "alice" not in blob and session.id not in blob and session.csrf not in blob
    h.audit.fail = False
    h.client.cookies.set(SESSION_COOKIE, session.id)
    assert h.client.get("/console", follow_redirects=False).headers["location"] == "/login?m=idle"  # access is gone
    assert sweep(h) == 1 and metrics.logoffs_unrecorded._value.get() == 0
    (logout,) = logouts(h)
    assert logout["details"] == {"reason": "idle"} and logout["actor"]["session_id"] == session.handle


def test_the_sweeper_starts_and_stops_with_the_app(make_harness: Callable[..., Harness]) -> None:
    """The lifespan starts one sweeper task; shutting the app down stops it (not left running or cancelled)."""
    h = make_harness()
    task = h.gateway.session_sweeper
    assert task is not None and not task.done()
    client: TestClient[Any] = h.client
    client.__exit__(None, None, None)
    assert task.done() and not task.cancelled() and task.exception() is None
