"""The attack suite: forged and broken credentials, escalation, traversal, injection, oversized bodies, CSRF,
session fixation. Each attack must be refused with the right status and must never reach the backend."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from appliance.config import Settings
from appliance.gateway._service import SESSION_COOKIE
from tests.gateway.conftest import Harness

URL = "/v1/inference/adapter/triage/production"
BODY = {"inputs": "hello", "parameters": {"max_new_tokens": 2}}


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _post(h: Harness, token: str | None) -> tuple[int, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    r = h.client.post(URL, json=BODY, headers=headers)
    return r.status_code, r.json()


def test_missing_and_garbled_tokens(h: Harness) -> None:
    """No credential, a garbled token, a wrong scheme and a huge header are all 401 and audited."""
    assert _post(h, None)[0] == 401
    assert _post(h, "not-a-jwt")[0] == 401
    assert _post(h, "a.b.c")[0] == 401
    r = h.client.post(URL, json=BODY, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert h.client.post(URL, json=BODY, headers={"Authorization": "Bearer " + "x" * 9000}).status_code == 401
    assert h.backend.calls == []
    denied = h.audit.of_type("gateway.denied")
    assert len(denied) == 5 and all(e["actor"]["subject"] == "anonymous" for e in denied)


def test_alg_none_refused(h: Harness) -> None:
    """An unsigned token (alg: none) is refused before any key is looked up."""
    now = int(time.time())
    claims = {"iss": "https://idp.test.invalid", "aud": "appliance", "sub": "x", "exp": now + 60, "scope": "admin"}
    token = f"{_b64({'alg': 'none', 'kid': h.idp.key.kid})}.{_b64(claims)}."
    status, body = _post(h, token)
    assert status == 401 and "algorithm" in body["error"]


def test_hs256_signed_with_public_key_refused(h: Harness) -> None:
    """Key confusion: a token HMAC-signed with the RSA public key as the secret is refused."""
    public_pem = h.idp.key.as_pem(private=False)
    now = int(time.time())
    claims = {"iss": "https://idp.test.invalid", "aud": "appliance", "sub": "x", "exp": now + 60, "scope": "admin"}
    signing_input = f"{_b64({'alg': 'HS256', 'kid': h.idp.key.kid})}.{_b64(claims)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()  # joserfc refuses to do this
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    status, body = _post(h, token)
    assert status == 401 and "algorithm" in body["error"]


def test_deeply_nested_token_header_is_401_not_500(h: Harness) -> None:
    """A token header nested past the JSON parser's recursion limit is refused as malformed, not a crash."""
    header = b'{"alg":"RS256","kid":"k","x":' + b"[" * 2000 + b"]" * 2000 + b"}"
    token = f"{base64.urlsafe_b64encode(header).rstrip(b'=').decode()}.{_b64({'sub': 'x'})}.c2ln"
    status, body = _post(h, token)
    assert status == 401 and "malformed" in body["error"]
    assert h.audit.of_type("gateway.denied")[-1]["actor"]["subject"] == "anonymous"


@pytest.mark.parametrize("scope", [5, {"admin": True}, None])
def test_odd_scope_claim_grants_nothing_and_is_no_crash(h: Harness, scope: object) -> None:
    """A scope claim that is neither a string nor a list grants no scope (403 by policy), never a 500."""
    status, body = _post(h, h.idp.token({"scope": scope}))
    assert status == 403 and body["error_type"] == "POLICY_VIOLATION"
    assert h.backend.calls == []


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not yet valid"),
        ({"iss": "https://evil.invalid"}, "iss"),
        ({"aud": "someone-else"}, "aud"),
    ],
)
def test_bad_claims_refused(h: Harness, claims: dict[str, object], reason: str) -> None:
    """Expired, not-yet-valid, wrong-issuer and wrong-audience tokens are 401 with the reason."""
    status, body = _post(h, h.idp.token(claims))
    assert status == 401 and reason in body["error"]


def test_unknown_kid_refetches_once_then_refuses(h: Harness) -> None:
    """A token signed by an unknown key makes the gateway refresh the JWKS (once) and then refuse it."""
    other = RSAKey.generate_key(2048, parameters={"kid": "attacker-key"})
    assert _post(h, h.idp.token())[0] == 200
    jwks = h.gateway.jwt.jwks
    later = time.monotonic() + 11  # past the minimum interval between refreshes
    jwks._clock = lambda: later
    before = h.idp.fetches
    status, body = _post(h, h.idp.token(header={"kid": "attacker-key"}, key=other))
    assert status == 401 and "unknown key" in body["error"]
    assert h.idp.fetches == before + 1
    _post(h, h.idp.token(header={"kid": "attacker-key-2"}, key=other))
    assert h.idp.fetches == before + 1  # refreshes are rate-limited: random kids cannot hammer the IdP


def test_forged_signature_with_known_kid_refused(h: Harness) -> None:
    """A token claiming the IdP's kid but signed by another key fails signature verification."""
    other = RSAKey.generate_key(2048, parameters={"kid": h.idp.key.kid})
    status, body = _post(h, h.idp.token(key=other))
    assert status == 401 and "signature" in body["error"]


def test_scope_escalation_refused(h: Harness) -> None:
    """An analyst token cannot reach admin routes, and an admin cannot mint a key with roles it lacks."""
    r = h.client.post("/v1/admin/keys", json={"name": "x", "scopes": ["admin"]}, headers=h.bearer())
    assert r.status_code == 403
    r = h.client.post("/v1/admin/keys", json={"name": "x", "scopes": ["research"]}, headers=h.bearer(scope="admin"))
    assert r.status_code == 403 and "does not hold" in r.json()["error"]
    r = h.client.post("/v1/admin/keys", json={"name": "svc", "scopes": ["admin"]}, headers=h.bearer(scope="admin"))
    assert r.status_code == 201
    key = r.json()["key"]
    # the API key holds "admin" only: inference is out of its scope
    r = h.client.post(URL, json=BODY, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403


def test_refused_breakglass_grant_is_audited(h: Harness) -> None:
    """An admin trying to grant a role that is not grantable (here: admin) is refused and the refusal audited."""
    grant = {"subject": "mallory", "role": "admin", "reason": "need admin for the weekend, thanks"}
    r = h.client.post("/v1/admin/breakglass", json=grant, headers=h.bearer(scope="admin", sub="adam"))
    assert r.status_code == 403 and r.json()["error_type"] == "POLICY_VIOLATION"
    denied = h.audit.of_type("gateway.denied")[-1]
    assert r.headers["X-Audit-Id"] == denied["event_id"]
    assert denied["actor"]["subject"] == "adam" and denied["action"] == "grant"
    assert h.gateway.breakglass.list() == []


def test_breakglass_grant_that_cannot_be_audited_is_not_in_force(h: Harness) -> None:
    """If the grant's audit record cannot be written the answer is 503 and the elevation is revoked at once."""
    from appliance.errors import AuditUnavailable

    real = h.gateway.audit.record

    async def refuse_grants(event):  # type: ignore[no-untyped-def]
        if event["type"] == "admin.breakglass.grant":
            raise AuditUnavailable("disk full (test)")
        return await real(event)

    h.gateway.audit.record = refuse_grants
    grant = {"subject": "alice", "role": "emergency-clinician", "reason": "Mass casualty incident, ED overflow"}
    r = h.client.post("/v1/admin/breakglass", json=grant, headers=h.bearer(scope="admin", sub="adam"))
    assert r.status_code == 503 and r.json()["error_type"] == "AUDIT_UNAVAILABLE"
    assert h.gateway.breakglass.active_for("alice") == []
    r = h.client.post("/v1/inference/adapter/oncology/production", json=BODY, headers=h.bearer(sub="alice"))
    assert r.status_code == 403


@pytest.mark.parametrize("name", ["..%2F..%2Fetc", "%2E%2E", "triage%00", "TRIAGE", "a" * 80])
def test_adapter_name_traversal_refused(h: Harness, name: str) -> None:
    """Traversal and malformed adapter names are 404 and never reach the backend."""
    r = h.client.post(f"/v1/inference/adapter/{name}/1", json=BODY, headers=h.bearer(scope="research"))
    assert r.status_code == 404
    assert h.backend.calls == []


@pytest.mark.parametrize("version", ["\u00b2", "\u0661", "\uff11"])
def test_non_ascii_digit_versions_are_404_not_500(h: Harness, version: str) -> None:
    """A version of Unicode digits ('²', Arabic-Indic or full-width 1) is a 404, never a crash or another version."""
    r = h.client.post(f"/v1/inference/adapter/triage/{version}", json=BODY, headers=h.bearer(scope="research"))
    assert r.status_code == 404 and r.json()["error_type"] == "NOT_FOUND"
    assert r.headers["X-Audit-Id"] == h.audit.of_type("gateway.denied")[-1]["event_id"]
    body = {"model": f"triage@{version}", "messages": [{"role": "user", "content": "hi"}]}
    assert h.client.post("/v1/chat/completions", json=body, headers=h.bearer(scope="research")).status_code == 404
    assert h.backend.calls == []


def test_openai_model_traversal_and_header_injection(h: Harness) -> None:
    """A model of '../x@1' or one carrying CR/LF is refused and injects no response header."""
    for model in ["../etc@1", "triage@1\r\nX-Injected: yes", "triage@../1"]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        r = h.client.post("/v1/chat/completions", json=body, headers=h.bearer(scope="research"))
        assert r.status_code in (404, 422), model
        assert "x-injected" not in {k.lower() for k in r.headers}
    assert h.backend.calls == []


def test_oversized_body_refused(h: Harness) -> None:
    """A body over gateway.max_body_bytes is 413 and never parsed or forwarded."""
    big = {"inputs": "x" * 2_000_000}
    r = h.client.post(URL, content=json.dumps(big), headers={**h.bearer(), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error_type"] == "REQUEST_TOO_LARGE"
    assert h.backend.calls == []


def _nested(depth: int, kind: str) -> bytes:
    """A TGI body whose ``parameters.stop`` nests arrays (or objects) ``depth`` levels deep."""
    open_, close = (b"[", b"]") if kind == "array" else (b'{"a":', b"}")
    return b'{"inputs":"x","parameters":{"stop":' + open_ * depth + b"1" + close * depth + b"}}"


JSON_ROUTES = [
    URL,
    URL + "/stream",
    "/v1/chat/completions",
    "/v1/completions",
    "/console/generate",
    "/v1/admin/keys",
    "/v1/admin/breakglass",
]


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("depth", [100_000, 2_000])
def test_deeply_nested_json_is_refused_and_audited_on_every_route(h: Harness, kind: str, depth: int) -> None:
    """A body nested deeper than the decoder can follow is a 400 on every JSON route, before authentication,
    recorded as a gateway.denied whose id is the answer's X-Audit-Id, never a 500."""
    for route in JSON_ROUTES:
        before = len(h.audit.events)
        r = h.client.post(route, content=_nested(depth, kind), headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (route, r.status_code, r.text)
        assert r.json()["error_type"] == "REQUEST_MALFORMED"
        denied = h.audit.events[before:]
        assert len(denied) == 1 and denied[0]["type"] == "gateway.denied", route
        assert denied[0]["outcome"]["http_status"] == 400 and denied[0]["outcome"]["error_class"] == "REQUEST_MALFORMED"
        assert denied[0]["actor"]["subject"] == "anonymous" and denied[0]["route"].startswith(route[:8]), denied[0]
        assert r.headers["X-Audit-Id"] == denied[0]["event_id"]
    assert h.backend.calls == []


def test_nesting_the_decoder_follows_is_refused_by_the_schema_and_audited(h: Harness) -> None:
    """900 levels decode and reach the route's schema: a 422 VALIDATION_FAILED, audited the same way."""
    r = h.client.post(URL, content=_nested(900, "array"), headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error_type"] == "VALIDATION_FAILED"
    assert r.headers["X-Audit-Id"] == h.audit.events[-1]["event_id"]
    assert h.audit.events[-1]["type"] == "gateway.denied" and h.audit.events[-1]["outcome"]["http_status"] == 422


def test_a_refusal_before_the_handler_fails_closed_when_the_trail_is_down(h: Harness) -> None:
    """A body refused before any handler ran whose record cannot be written is a 503 AUDIT_UNAVAILABLE."""
    h.audit.fail = True
    r = h.client.post(URL, content=_nested(100_000, "array"), headers={"Content-Type": "application/json"})
    assert r.status_code == 503 and r.json()["error_type"] == "AUDIT_UNAVAILABLE"
    h.audit.fail = False
    r = h.client.post(URL, content=b'{"inputs": 5}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.headers["X-Audit-Id"] == h.audit.events[-1]["event_id"]


def _login(h: Harness, groups: list[str]) -> str:
    session = h.client.blocking_portal.call(
        h.gateway.sessions.create, {"subject": "adam", "name": "Adam", "groups": groups}
    )
    h.client.cookies.set(SESSION_COOKIE, session.id)
    return str(session.csrf)


def test_csrf_required_on_forms_and_session_api(h: Harness) -> None:
    """With a session cookie, a form or API POST without the session's CSRF token is refused."""
    csrf = _login(h, ["appliance-admins"])
    r = h.client.post("/admin/keys", data={"name": "k", "scopes": "admin", "ttl_days": "1"})
    assert r.status_code == 403
    r = h.client.post("/admin/keys", data={"name": "k", "scopes": "admin", "ttl_days": "1", "_csrf": "forged"})
    assert r.status_code == 403
    assert h.gateway.apikeys.list() == []
    r = h.client.post("/admin/keys", data={"name": "k", "scopes": "admin", "ttl_days": "1", "_csrf": csrf})
    assert r.status_code == 200 and "apk_" in r.text
    csrf = _login(h, ["analysts"])
    body = {"model": "triage@production", "prompt": "hi"}
    assert h.client.post("/console/generate", json=body).status_code == 403
    r = h.client.post("/console/generate", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and '"done": true' in r.text


def test_forged_logout_is_refused_and_audited(h: Harness) -> None:
    """A sign-out POST without the session's CSRF token keeps the session and is a gateway.denied record."""
    csrf = _login(h, ["analysts"])
    r = h.client.post("/auth/logout", data={"_csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403
    denied = h.audit.of_type("gateway.denied")[-1]
    assert r.headers["X-Audit-Id"] == denied["event_id"] and denied["actor"]["subject"] == "adam"
    assert h.client.get("/console").status_code == 200  # still signed in
    r = h.client.post("/auth/logout", data={"_csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and h.audit.of_type("auth.logout")[-1]["details"]["reason"] == "user"


@pytest.fixture
def web(make_harness: Callable[..., Harness], settings: Settings) -> Harness:
    """A harness whose cookies travel over the test client's plain http (secure_cookies off), as a browser's would."""
    gateway = settings.gateway.model_copy(update={"secure_cookies": False})
    return make_harness(settings.model_copy(update={"gateway": gateway}))


def _idp(h: Harness, end_session: bool = True) -> Any:
    """An OIDC client whose discovery is already done (the IdP itself is not contacted by these tests)."""
    from appliance.gateway.auth.oidc import OIDCClient

    oidc = OIDCClient("https://idp.test.invalid", "web", None, "http://127.0.0.1:8443/auth/callback")
    oidc._meta = {
        "issuer": "https://idp.test.invalid",
        "authorization_endpoint": "https://idp.test.invalid/auth",
        **({"end_session_endpoint": "https://idp.test.invalid/session/end"} if end_session else {}),
    }
    oidc._meta_at = time.monotonic()
    h.gateway.oidc = oidc
    return oidc


def test_sign_out_also_ends_the_idp_session(web: Harness) -> None:
    """Signing out ends the gateway session and sends the browser to the IdP's end-session endpoint (RP-initiated
    logout) with the session's ID token as id_token_hint, the registered post_logout_redirect_uri and a state, so
    the next "Sign in" on a shared workstation asks for a password instead of reusing the IdP session."""
    from urllib.parse import parse_qs, urlsplit

    _idp(web)
    session = web.client.blocking_portal.call(
        web.gateway.sessions.create, {"subject": "adam", "groups": ["analysts"], "id_token": "the.id.token"}
    )
    web.client.cookies.set(SESSION_COOKIE, session.id)
    csrf = session.csrf
    r = web.client.post("/auth/logout", data={"_csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    where = urlsplit(r.headers["location"])
    query = {k: v[0] for k, v in parse_qs(where.query).items()}
    assert f"{where.scheme}://{where.netloc}{where.path}" == "https://idp.test.invalid/session/end"
    assert query.pop("state")
    assert query == {
        "id_token_hint": "the.id.token",
        "client_id": "web",
        "post_logout_redirect_uri": "http://127.0.0.1:8443/auth/logged-out",
    }
    assert web.client.get("/console", follow_redirects=False).headers["location"] == "/login"
    assert web.audit.of_type("auth.logout")[-1]["details"]["reason"] == "user"
    page = web.client.get("/login")  # the IdP has not come back: nothing claims its session ended
    assert "has not confirmed" in page.text and "of the identity provider." not in page.text


@pytest.mark.parametrize(
    ("end_session", "reachable", "says"),
    [(False, True, "offers no sign-out"), (True, False, "could not be reached")],
    ids=["no-end-session-endpoint", "idp-unreachable"],
)
def test_an_idp_that_cannot_end_its_session_is_said_so(
    web: Harness, end_session: bool, reachable: bool, says: str
) -> None:
    """When the IdP has no end-session endpoint or cannot be reached, the page says so (never "signed out of the
    identity provider") and the next sign-in asks the IdP for the password again (prompt=login)."""
    from urllib.parse import parse_qs, urlsplit

    from appliance.gateway.auth.oidc import OIDCClient

    oidc = _idp(web, end_session)
    csrf = _login(web, ["analysts"])
    if not reachable:  # a closed loopback port, and no discovery cached
        web.gateway.oidc = OIDCClient("http://127.0.0.1:9", "web", None, "http://127.0.0.1:8443/auth/callback")
    r = web.client.post("/auth/logout", data={"_csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert web.audit.of_type("auth.logout")[-1]["details"]["reason"] == "user"
    page = web.client.get("/login")
    assert says in page.text and "Close the browser" in page.text and "of the identity provider." not in page.text
    web.gateway.oidc = oidc
    r = web.client.get("/auth/login", follow_redirects=False)
    assert parse_qs(urlsplit(r.headers["location"]).query)["prompt"] == ["login"]


def test_a_forged_return_from_the_idp_does_not_claim_its_session_ended(web: Harness) -> None:
    """A request to the post-logout URI without the state the gateway sent (or from nowhere) says the IdP did not
    end its session, and a prompt=none answer with a wrong state is not taken as "signed out" either."""
    _idp(web)
    csrf = _login(web, ["analysts"])
    assert web.client.post("/auth/logout", data={"_csrf": csrf}, follow_redirects=False).status_code == 303
    r = web.client.get("/auth/logged-out?state=forged", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert "did not end your session" in web.client.get("/login").text
    web.client.cookies.clear()
    assert "did not end your session" in web.client.get("/auth/logged-out").text


def test_the_post_logout_return_is_checked_with_the_idp_itself(web: Harness) -> None:
    """Back from the end-session page with the right state, the gateway asks the IdP (prompt=none) whether its
    session ended: only "login_required" with the check's own state says "signed out of the identity provider";
    a code (the IdP still has a session) is never exchanged and says it did not end."""
    from urllib.parse import parse_qs, urlsplit

    for answer, says in [("error=login_required", "of the identity provider."), ("code=c", "did not end your")]:
        _idp(web)
        csrf = _login(web, ["analysts"])
        out = web.client.post("/auth/logout", data={"_csrf": csrf}, follow_redirects=False)
        state = parse_qs(urlsplit(out.headers["location"]).query)["state"][0]
        check = web.client.get(f"/auth/logged-out?state={state}", follow_redirects=False)
        query = parse_qs(urlsplit(check.headers["location"]).query)
        assert query["prompt"] == ["none"] and check.headers["location"].startswith("https://idp.test.invalid/auth")
        r = web.client.get(f"/auth/callback?{answer}&state={query['state'][0]}", follow_redirects=False)
        assert r.headers["location"] == "/login"
        assert says in web.client.get("/login").text


def test_session_fixation_and_forged_cookies(h: Harness) -> None:
    """A cookie the server never issued gets no session; rotating at login invalidates the old id."""
    h.client.cookies.set(SESSION_COOKIE, "attacker-chosen-session-id")
    r = h.client.get("/console", follow_redirects=False)
    assert r.status_code in (302, 303, 307) and r.headers["location"].startswith("/login")
    store, call = h.gateway.sessions, h.client.blocking_portal.call
    pre = call(store.create, {"oidc": {"state": "s"}})
    post = call(store.rotate, pre, {"subject": "alice", "groups": ["analysts"]})
    assert post.id != pre.id and post.csrf != pre.csrf
    assert call(store.get, pre.id).session is None and call(store.get, post.id).session is not None


def test_idle_logoff_first_seen_by_the_console_api_is_audited(h: Harness) -> None:
    """A session that went idle is an auth.logout (reason idle) even when the console's API call, not a page,
    is the first request to see it (the store deletes it then, so no later page could record it)."""
    csrf = _login(h, ["analysts"])
    store = h.gateway.sessions
    store._clock = lambda: time.monotonic() + store.idle_timeout_s + 60
    body = {"model": "triage@production", "prompt": "typed for a long time"}
    r = h.client.post("/console/generate", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 401
    logouts = h.audit.of_type("auth.logout")
    assert len(logouts) == 1 and logouts[0]["details"]["reason"] == "idle"
    assert logouts[0]["actor"]["subject"] == "adam" and logouts[0]["route"] == "/console/generate"
    r = h.client.get("/console", follow_redirects=False)
    assert r.headers["location"] == "/login" and len(h.audit.of_type("auth.logout")) == 1
    assert h.backend.calls == []


def test_sign_in_link_does_not_end_a_signed_in_session(h: Harness) -> None:
    """GET /auth/login (a link any site can make a browser follow) leaves a signed-in session alone; without one
    it starts the login with a fresh pre-login session."""
    from appliance.gateway.auth.oidc import LoginStart

    class FakeOIDC:
        async def begin(self, *, prompt: str | None = None) -> LoginStart:
            return LoginStart("https://idp.test.invalid/authorize?state=s", "s", "n", "v")

    h.gateway.oidc = FakeOIDC()
    _login(h, ["analysts"])
    r = h.client.get("/auth/login", follow_redirects=False)
    assert r.status_code in (302, 303, 307) and r.headers["location"] == "/"
    assert h.client.get("/console").status_code == 200  # still signed in
    h.client.cookies.clear()
    r = h.client.get("/auth/login", follow_redirects=False)
    assert r.headers["location"].startswith("https://idp.test.invalid/") and SESSION_COOKIE in r.cookies


def test_a_flood_of_started_sign_ins_does_not_end_signed_in_sessions() -> None:
    """Pre-login sessions (anyone can start one with GET /auth/login) are evicted before signed-in ones when the
    in-memory table is full, so an unauthenticated flood cannot log users off."""
    import asyncio

    from appliance.gateway.auth.sessions import MemorySessionStore

    async def run() -> tuple[list[bool], int]:
        store = MemorySessionStore(idle_timeout_s=900, absolute_timeout_s=3600, max_sessions=20)
        users = [await store.create({"subject": f"user-{i}", "groups": ["analysts"]}) for i in range(5)]
        for _ in range(100):
            await store.create({"oidc": {"state": "s", "nonce": "n", "verifier": "v"}})
        alive = [(await store.get(u.id)).session is not None for u in users]
        return alive, len(store)

    alive, size = asyncio.run(run())
    assert alive == [True] * 5 and size <= 20


def test_revoked_and_expired_api_keys_refused(h: Harness) -> None:
    """A revoked key, an expired key and a key with a wrong secret are all 401."""
    key, info = h.gateway.apikeys.create("svc", ["service.inference"], ttl_s=3600, created_by="test")
    ok = h.client.post(URL, json=BODY, headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200
    tampered = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert h.client.post(URL, json=BODY, headers={"Authorization": f"Bearer {tampered}"}).status_code == 401
    h.gateway.apikeys.revoke(info.id, revoked_by="test")
    assert h.client.post(URL, json=BODY, headers={"Authorization": f"Bearer {key}"}).status_code == 401
    key2, _ = h.gateway.apikeys.create("svc2", ["service.inference"], ttl_s=60, created_by="test")
    h.gateway.apikeys._clock = lambda: time.time() + 120
    assert h.client.post(URL, json=BODY, headers={"Authorization": f"Bearer {key2}"}).status_code == 401


def test_keys_made_by_a_key_cannot_outlive_or_survive_it(h: Harness) -> None:
    """A key created by an API key expires no later than its creator and is revoked with it (transitively, each
    revocation audited); a key created by a person is neither capped nor revoked with another key."""
    person = h.bearer(scope="admin", sub="adam")
    year = {"name": "svc", "scopes": ["admin"], "ttl_s": 366 * 86_400}
    r = h.client.post("/v1/admin/keys", json={**year, "ttl_s": 3600}, headers=person)
    parent_id, parent = r.json()["id"], {"Authorization": f"Bearer {r.json()['key']}"}
    r = h.client.post("/v1/admin/keys", json=year, headers=parent)
    assert r.status_code == 201 and r.json()["expires_at"] <= h.gateway.apikeys.get(parent_id).expires_at
    child_id, child = r.json()["id"], {"Authorization": f"Bearer {r.json()['key']}"}
    r = h.client.post("/v1/admin/keys", json=year, headers=child)
    grandchild_id, grandchild = r.json()["id"], {"Authorization": f"Bearer {r.json()['key']}"}
    r = h.client.post("/v1/admin/keys", json=year, headers=person)
    assert r.json()["expires_at"] > time.time() + 365 * 86_400
    other = {"Authorization": f"Bearer {r.json()['key']}"}

    assert h.client.delete(f"/v1/admin/keys/{parent_id}", headers=person).status_code == 200
    for key in (parent, child, grandchild):
        assert h.client.get("/v1/admin/keys", headers=key).status_code == 401
    assert h.client.get("/v1/admin/keys", headers=other).status_code == 200
    states = {k["id"]: k["state"] for k in h.client.get("/v1/admin/keys", headers=person).json()["keys"]}
    assert [states[i] for i in (parent_id, child_id, grandchild_id)] == ["revoked"] * 3
    revoked = [e["details"]["key_id"] for e in h.audit.of_type("admin.apikey.revoke")]
    assert sorted(revoked) == sorted([parent_id, child_id, grandchild_id])
