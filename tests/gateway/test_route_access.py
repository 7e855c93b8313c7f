"""Each handler declares who may call it, and its ``ctx`` dependency authorises the request before the handler
body runs (``routes/_access.py``, ``routes/_deps.py``): no handler can be served without its declaration, the
context is never cached across requests, and a bad body gets the same answer whatever the credential."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from litestar import get
from litestar.exceptions import ImproperlyConfiguredException
from litestar.handlers import HTTPRouteHandler

from appliance.gateway._http import SECURITY_HEADERS
from appliance.gateway.routes import web
from appliance.gateway.routes._access import ACCESS, api, public
from appliance.gateway.routes._common import CtxDep
from appliance.gateway.routes._deps import CTX, bind_access
from tests.gateway.conftest import Harness

URL = "/v1/inference/adapter/triage/production"
BODY = {"inputs": "hello", "parameters": {"max_new_tokens": 2}}
SECURITY_HEADER_NAMES = {header.name.lower() for header in SECURITY_HEADERS}
PUBLIC_PATHS = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/login",
    "/auth/login",
    "/auth/callback",
    "/auth/logout",
    "/auth/logged-out",
    "/docs",
    "/static/{file_path:path}",
}


@get("/undeclared", include_in_schema=False)
async def undeclared(ctx: CtxDep) -> str:
    return ctx.principal.subject


@get("/declared-without-ctx", include_in_schema=False, opt=api("admin.keys"))
async def declared_without_ctx() -> str:
    return "unchecked"


@get("/public-with-ctx", include_in_schema=False, opt=public())
async def public_with_ctx(ctx: CtxDep) -> str:
    return ctx.principal.subject


@get("/plain", include_in_schema=False)
async def plain() -> str:
    return "no declaration"


@pytest.mark.parametrize(
    ("handler", "says"),
    [
        (undeclared, "declare who may call it"),
        (plain, "declare who may call it"),
        (declared_without_ctx, "takes no 'ctx'"),
        (public_with_ctx, "is public but takes 'ctx'"),
    ],
)
def test_a_handler_without_its_access_stops_app_construction(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch, handler: HTTPRouteHandler, says: str
) -> None:
    """An undeclared handler, one that declares a route but takes no ctx (Litestar would never resolve the
    dependency, so it would run unchecked) and a public one that takes ctx all stop create_app."""
    monkeypatch.setattr(web, "ROUTES", [*web.ROUTES, handler])
    with pytest.raises(ImproperlyConfiguredException, match=says):
        make_harness()


def test_every_served_handler_is_declared_and_only_the_expected_ones_are_public(h: Harness) -> None:
    """Every handler the app serves declares its access; the non-public ones take ctx from their bound provider;
    the public ones are exactly health, readiness, metrics, sign-in, docs and static files."""
    public_paths, authorised = set(), set()
    for route in h.app.routes:
        if route.path.startswith("/schema"):  # Litestar's OpenAPI document: public, and not one of our handlers
            continue
        for handler in route.route_handlers:  # type: ignore[attr-defined]
            if handler.http_methods == {"OPTIONS"}:  # Litestar's own answer to OPTIONS (the Allow header)
                continue
            access = handler.opt[ACCESS]
            if access.kind == "public":
                public_paths.add(route.path)
                assert CTX not in handler.resolve_dependencies()
                continue
            authorised.add(route.path)
            assert CTX in handler.parsed_fn_signature.parameters
            assert not handler.resolve_dependencies()[CTX].use_cache  # a context is never shared by two requests
    assert public_paths == PUBLIC_PATHS
    assert {
        "/",
        "/console",
        "/admin",
        "/v1/models",
        "/v1/admin/keys",
        "/v1/inference/adapter/{name:str}/{version:str}",
    } <= (authorised)


def test_bind_access_leaves_the_declared_handler_as_it_was(h: Harness) -> None:
    """Binding gives each app its own copy: the module's handler keeps no provider (apps built later bind anew)."""
    from appliance.gateway.routes import inference

    assert CTX not in (inference.inference.dependencies or {})
    bound = bind_access([inference.inference])[0]
    assert bound is not inference.inference and CTX in (bound.dependencies or {})


def test_the_context_is_not_cached_across_requests(h: Harness) -> None:
    """An admin's authorised context does not carry over to the next caller: an analyst after an admin is refused."""
    assert h.client.get("/v1/admin/keys", headers=h.bearer(scope="admin")).status_code == 200
    r = h.client.get("/v1/admin/keys", headers=h.bearer(scope="inference"))
    assert r.status_code == 403 and r.json()["error_type"] == "POLICY_VIOLATION"
    assert h.client.get("/v1/admin/keys").status_code == 401


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer a.b.c"}, {"Authorization": "Basic dXNlcjpwYXNz"}, "analyst", "admin"],
)
def test_a_bad_body_is_refused_before_the_credential_is_looked_at(h: Harness, headers: Any) -> None:
    """A body that does not decode is 400, one the schema refuses 422, whatever the credential (none, broken, or
    valid with or without the route): one anonymous gateway.denied, nothing reaches the backend."""
    if headers == "analyst":
        headers = h.bearer()
    elif headers == "admin":  # a valid token whose roles lack the inference route
        headers = h.bearer(scope="admin")
    for content, status, code in [
        (b'{"inputs": ', 400, "REQUEST_MALFORMED"),
        (b'{"inputs": 5}', 422, "VALIDATION_FAILED"),
    ]:
        before = len(h.audit.events)
        r = h.client.post(URL, content=content, headers={**headers, "Content-Type": "application/json"})
        assert (r.status_code, r.json()["error_type"]) == (status, code)
        denied = h.audit.events[before:]
        assert len(denied) == 1 and denied[0]["actor"]["subject"] == "anonymous"
        assert r.headers["X-Audit-Id"] == denied[0]["event_id"]
    assert h.backend.calls == []


def test_a_good_body_with_a_bad_credential_is_401_and_audited(h: Harness) -> None:
    """With the body valid the provider authenticates: a broken token is 401, recorded with the scheme it tried."""
    before = len(h.audit.events)
    r = h.client.post(URL, json=BODY, headers={"Authorization": "Bearer a.b.c"})
    assert r.status_code == 401 and r.headers["X-Audit-Id"] == h.audit.events[-1]["event_id"]
    assert [e["type"] for e in h.audit.events[before:]] == ["gateway.denied"]


def test_pages_answered_by_their_dependency_carry_the_app_headers(h: Harness) -> None:
    """The login redirect and the refusal page, answered before the page's handler, carry the security headers
    a handler's own answer carries."""
    r = h.client.get("/admin", follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "/login"
    assert {k.lower() for k in r.headers} >= SECURITY_HEADER_NAMES
    session = h.client.blocking_portal.call(h.gateway.sessions.create, {"subject": "ann", "groups": ["analysts"]})
    h.client.cookies.set("appliance_session", session.id)
    r = h.client.get("/admin", follow_redirects=False)
    assert r.status_code == 403 and "text/html" in r.headers["content-type"]
    assert r.headers["X-Audit-Id"] == h.audit.of_type("gateway.denied")[-1]["event_id"]
    assert {k.lower() for k in r.headers} >= SECURITY_HEADER_NAMES and r.headers["Cache-Control"] == "no-store"
