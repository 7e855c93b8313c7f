"""Server-rendered pages: login (OIDC code + PKCE), the analyst console, the compliance pages and the admin page.

Every page needs a live server-side session; an idle or expired one sends the browser to the login page with
the reason (and an ``auth.logout`` audit event). Every form carries the session's CSRF token.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body, Parameter
from litestar.response import Redirect, Stream, Template

from appliance.audit import SourceFields, actor_fields
from appliance.errors import ApplianceError, PermissionDenied, Unauthenticated, ValidationFailed
from appliance.gateway._context import SESSION_COOKIE, Ctx, client_ip
from appliance.gateway._service import Gateway
from appliance.gateway.auth.oidc import NO_IDP_SESSION, same_state
from appliance.gateway.auth.sessions import Session
from appliance.gateway.routes import admin as admin_api
from appliance.gateway.routes._common import error_body, gateway_of, trace_headers
from appliance.gateway.schemas import MAX_PROMPT_CHARS, BreakGlassCreate, InferenceParameters

FORM = Body(media_type=RequestEncodingType.URL_ENCODED)
MESSAGES = {
    "idle": "You were signed out after a period of inactivity.",
    "absolute": "Your session reached its maximum length. Please sign in again.",
    "logged_out": "You have signed out.",
    "login_failed": "Sign-in failed. Please try again.",
    "expired": "Your session has ended. Please sign in again.",
}
# What a browser's sign-out did at the IdP, kept server-side in the browser's (signed-out) session: the page says
# only what the IdP showed us, never more. Anything but "confirmed" makes the next sign-in here ask the IdP for
# the password again (prompt=login), so the next person at a shared workstation is not signed in as this one.
SIGNED_OUT_OF_IDP = "You have signed out of the appliance and of the identity provider."
SIGNOUT_WARNINGS = {
    "pending": "You have signed out of the appliance, but the identity provider has not confirmed that it ended "
    "your session there.",
    "unconfirmed": "You have signed out of the appliance, but the identity provider did not end your session there.",
    "unsupported": "You have signed out of the appliance, but the identity provider offers no sign-out: your "
    "session there goes on.",
    "unreachable": "You have signed out of the appliance, but the identity provider could not be reached to end "
    "your session there.",
}
SIGNOUT_ADVICE = "Close the browser before you leave this workstation. The next sign-in here will ask for a password."
PAGES = (
    ("console", "/console", "Console"),
    ("audit.search", "/compliance", "Compliance"),
    ("admin.keys", "/admin", "Admin"),
)


def _cookie(gw: Gateway, value: str, *, max_age: int | None = None) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        path="/",
        httponly=True,
        secure=gw.settings.gateway.secure_cookies,
        samesite="lax",
        max_age=max_age,
    )


def _clear_cookie(gw: Gateway) -> Cookie:
    return _cookie(gw, "", max_age=0)


async def _page_ctx(
    request: Request[Any, Any, Any], route: str | None, *, csrf: str | None = None
) -> Ctx | Redirect | Template:
    """The session's context for a page, or a redirect to the login page (auditing an idle logoff)."""
    gw = gateway_of(request)
    found = await gw.lookup_session(request)  # an ended session is audited (auth.logout) there
    if found.expired is not None:
        resp = Redirect(f"/login?m={found.expired}")
        resp.cookies.append(_clear_cookie(gw))
        return resp
    if found.session is None or not found.session.authenticated:
        return Redirect("/login")
    try:
        return await gw.require(request, route, csrf=csrf)
    except PermissionDenied as exc:  # already audited by require(); an HTML page says why
        signed_in = None
        if request.method in ("GET", "HEAD"):  # the header (pages, sign-out) for who is signed in; no second record
            try:
                signed_in = await gw.require(request, None, audit_denial=False)
            except ApplianceError:
                signed_in = None
        denied = _render(request, "error.html", signed_in, exc.http_status, message=exc.message)
        denied.headers["X-Audit-Id"] = exc.audit_id or "-"
        return denied


def _nav(gw: Gateway, ctx: Ctx) -> list[dict[str, str]]:
    policy = gw.policy.current
    return [{"href": href, "label": label} for route, href, label in PAGES if policy.may_route(ctx.roles, route)]


def _render(
    request: Request[Any, Any, Any], template: str, ctx: Ctx | None, status: int = 200, **values: Any
) -> Template:
    gw = gateway_of(request)
    base: dict[str, Any] = {"user": None, "nav": [], "csrf": "", "roles": []}
    if ctx is not None and ctx.session is not None:
        base.update(
            user=ctx.principal.display_name or ctx.principal.subject,
            nav=_nav(gw, ctx),
            csrf=ctx.session.csrf,
            roles=sorted(ctx.roles),
            breakglass=ctx.principal.breakglass_id,
            idle_timeout_s=gw.sessions.idle_timeout_s,
        )
    base.update(values)
    return Template(
        template_name=template,
        context=base,
        status_code=status,
        headers={"Cache-Control": "no-store"},
        media_type="text/html; charset=utf-8",
    )


# --- login / logout -----------------------------------------------------------------------------------------------
@get("/", include_in_schema=False)
async def home(request: Request[Any, Any, Any]) -> Any:
    gw = gateway_of(request)
    ctx = await _page_ctx(request, None)
    if not isinstance(ctx, Ctx):
        return ctx
    nav = _nav(gw, ctx)
    return (
        Redirect(nav[0]["href"])
        if nav
        else _render(request, "error.html", ctx, 403, message="No pages for your roles.")
    )


@get("/login", include_in_schema=False)
async def login_page(request: Request[Any, Any, Any], m: str | None = None) -> Template:
    gw = gateway_of(request)
    message, warning, cookies = MESSAGES.get(m or ""), None, []
    browser = await gw.session_of(request)
    signout = browser.data.get("signout") if browser is not None and not browser.authenticated else None
    if signout == "confirmed":  # said once, from the server's record (a query parameter could claim it)
        assert browser is not None
        await gw.sessions.delete(browser.id)
        message = SIGNED_OUT_OF_IDP
        cookies.append(_clear_cookie(gw))
    elif signout in SIGNOUT_WARNINGS:
        warning = f"{SIGNOUT_WARNINGS[signout]} {SIGNOUT_ADVICE}"
    page = _render(
        request,
        "login.html",
        None,
        message=message,
        warning=warning,
        oidc=gw.oidc is not None,
        demo_idp=gw.settings.environment == "development",
    )
    page.cookies.extend(cookies)
    return page


def _must_reauthenticate(session: Session | None) -> bool:
    """Whether this browser's last sign-out left the IdP's session possibly alive (then the IdP must ask again)."""
    return session is not None and not session.authenticated and bool(session.data.get("force_login"))


@get("/auth/login", include_in_schema=False)
async def auth_login(request: Request[Any, Any, Any]) -> Redirect:
    gw = gateway_of(request)
    if gw.oidc is None:
        raise Unauthenticated("browser sign-in is not configured (gateway.oidc_issuer)")
    old = await gw.session_of(request)
    if old is not None and old.authenticated:  # signed in: a GET (a link from any site) must not end the session
        return Redirect("/")
    force = _must_reauthenticate(old)
    start = await gw.oidc.begin(prompt="login" if force else None)
    flow = {"state": start.state, "nonce": start.nonce, "verifier": start.code_verifier}
    pre = await gw.sessions.rotate(old, {"oidc": flow, **({"force_login": True} if force else {})})
    resp = Redirect(start.url)
    resp.cookies.append(_cookie(gw, pre.id))
    return resp


async def _signed_out(gw: Gateway, browser: Session | None, outcome: str) -> Redirect:
    """To the login page, with what the sign-out did at the IdP kept in a fresh signed-out session."""
    data: dict[str, Any] = {"signout": outcome, **({} if outcome == "confirmed" else {"force_login": True})}
    marker = await gw.sessions.rotate(browser if browser is not None and not browser.authenticated else None, data)
    resp = Redirect("/login", status_code=303)
    resp.cookies.append(_cookie(gw, marker.id))
    return resp


@get("/auth/logged-out", include_in_schema=False)
async def auth_logged_out(
    request: Request[Any, Any, Any], oidc_state: Annotated[str | None, Parameter(query="state")] = None
) -> Redirect:
    """The registered ``post_logout_redirect_uri``: the IdP is back from its end-session page. Whether its session
    really ended is then asked of the IdP itself (``prompt=none``: no page; "login_required" means it ended)."""
    gw = gateway_of(request)
    browser = await gw.session_of(request)
    pending = browser.data if browser is not None and not browser.authenticated else {}
    if (
        gw.oidc is None
        or pending.get("signout") != "pending"
        or not same_state(oidc_state, pending.get("signout_state"))
    ):
        return await _signed_out(gw, browser, "unconfirmed")
    try:
        start = await gw.oidc.begin(prompt="none")
    except Unauthenticated:
        return await _signed_out(gw, browser, "unreachable")
    check = {"state": start.state, "nonce": start.nonce, "verifier": start.code_verifier}
    checking = await gw.sessions.rotate(browser, {"signout": "pending", "force_login": True, "idp_check": check})
    resp = Redirect(start.url)
    resp.cookies.append(_cookie(gw, checking.id))
    return resp


@get("/auth/callback", include_in_schema=False)
async def auth_callback(
    request: Request[Any, Any, Any],
    code: str | None = None,
    oidc_state: Annotated[str | None, Parameter(query="state")] = None,
    error: str | None = None,
) -> Redirect:
    gw = gateway_of(request)
    pre = await gw.session_of(request)
    flow = pre.data.get("oidc") if pre else None
    source: SourceFields = {
        "ip": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent", "")[:200],
    }
    check = pre.data.get("idp_check") if pre is not None and not pre.authenticated else None
    if gw.oidc is not None and check:  # the answer to the sign-out's prompt=none: a code is never exchanged
        ended = same_state(oidc_state, check.get("state")) and error in NO_IDP_SESSION
        return await _signed_out(gw, pre, "confirmed" if ended else "unconfirmed")
    if gw.oidc is None or pre is None or not flow or not code or not oidc_state or error:
        return Redirect("/login?m=login_failed")
    try:
        login = await gw.oidc.finish(
            code=code,
            state=oidc_state,
            expected_state=flow["state"],
            code_verifier=flow["verifier"],
            nonce=flow["nonce"],
        )
    except Unauthenticated as exc:
        await gw.sessions.delete(pre.id)
        await gw.record(
            gw.event(
                "auth.login",
                actor=actor_fields("anonymous", "oidc", client_id=gw.oidc.client_id),
                source=source,
                action="login",
                route="/auth/callback",
                status="denied",
                http_status=401,
                error_class=exc.code,
            )
        )
        resp = Redirect("/login?m=login_failed")
        resp.cookies.append(_clear_cookie(gw))
        return resp
    claims = login.claims
    groups = claims.get("groups") or []
    data = {
        "subject": str(claims["sub"]),
        "name": str(claims.get("name") or claims.get("preferred_username") or claims["sub"])[:120],
        "groups": [str(g) for g in groups] if isinstance(groups, list) else [],
        "id_token": login.id_token,  # the id_token_hint of the sign-out (server-side only)
    }
    session = await gw.sessions.rotate(pre, data)  # session fixation defence: a new id at login
    roles = gw.policy.current.roles_for(data["groups"], ())
    await gw.record(
        gw.event(
            "auth.login",
            actor=actor_fields(
                str(data["subject"]), "oidc", client_id=gw.oidc.client_id, session_id=session.handle, roles=roles
            ),
            source=source,
            action="login",
            route="/auth/callback",
        )
    )
    resp = Redirect("/")
    resp.cookies.append(_cookie(gw, session.id))
    return resp


@post("/auth/logout", include_in_schema=False, status_code=303)
async def auth_logout(request: Request[Any, Any, Any], data: dict[str, str] = FORM) -> Redirect:
    gw = gateway_of(request)
    session = await gw.session_of(request)
    if session is not None and session.authenticated:
        await gw.require(request, None, csrf=data.get("_csrf"))  # a forged sign-out is refused and audited
        await gw.record(
            gw.event(
                "auth.logout",
                actor=actor_fields(
                    session.data["subject"],
                    "oidc",
                    client_id=gw.settings.gateway.oidc_client_id,
                    session_id=session.handle,
                ),
                source={"ip": client_ip(request), "user_agent": None},
                action="logout",
                route="/auth/logout",
                details={"reason": "user"},
            )
        )
        await gw.sessions.delete(session.id)
        if gw.oidc is not None:  # end the IdP's session too, or the next "Sign in" on this browser (a shared
            # workstation) comes straight back as the same user without a password
            state = secrets.token_urlsafe(24)
            try:
                await gw.oidc.metadata()
                idp_logout = gw.oidc.end_session_url(
                    f"{gw.settings.gateway.public_url.rstrip('/')}/auth/logged-out",
                    id_token_hint=session.data.get("id_token"),
                    state=state,
                )
            except Unauthenticated:  # IdP unreachable: signed out here, and the page says the IdP is not
                return await _signed_out(gw, None, "unreachable")
            if idp_logout is None:
                return await _signed_out(gw, None, "unsupported")
            pending = await gw.sessions.create({"signout": "pending", "signout_state": state, "force_login": True})
            resp = Redirect(idp_logout, status_code=303)
            resp.cookies.append(_cookie(gw, pending.id))
            return resp
    resp = Redirect("/login?m=logged_out", status_code=303)
    resp.cookies.append(_clear_cookie(gw))
    return resp


# --- analyst console ------------------------------------------------------------------------------------------------
@get("/console", include_in_schema=False)
async def console(request: Request[Any, Any, Any]) -> Any:
    ctx = await _page_ctx(request, "console")
    if not isinstance(ctx, Ctx):
        return ctx
    gw = gateway_of(request)
    adapters = await gw.visible_adapters(ctx)
    options = []
    for a in sorted(adapters, key=lambda a: (a.name, a.version)):
        options.append(
            {
                "value": f"{a.name}@{a.version}",
                "label": f"{a.name} v{a.version}" + (" (production)" if a.is_production else ""),
            }
        )
    return _render(request, "console.html", ctx, adapters=options, max_chars=MAX_PROMPT_CHARS)


@post("/console/generate", include_in_schema=False, status_code=200)
async def console_generate(request: Request[Any, Any, Any], data: dict[str, Any]) -> Any:
    """The console's streamed answer: ``{"model": "name@version", "prompt": str}`` -> SSE ``{"text": ...}`` events."""
    gw = gateway_of(request)
    ctx = await gw.require(request, "console")  # session + CSRF header
    model, prompt = str(data.get("model", "")), data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise ValidationFailed(f"write a prompt of 1 to {MAX_PROMPT_CHARS} characters")
    max_new = data.get("max_new_tokens", 128)
    if not isinstance(max_new, int) or not 1 <= max_new <= 1024:
        raise ValidationFailed("max_new_tokens must be 1-1024")
    name, _, version = model.partition("@")
    ref = await gw.authorize_adapter(ctx, name, version or "production")
    admitted = await gw.admit(ctx, ref, prompt, wants_logprobs=False)
    events = await gw.open_stream(ctx, ref, prompt, InferenceParameters(max_new_tokens=max_new).to_params(), admitted)

    async def body() -> AsyncIterator[bytes]:
        async for ev in events:
            if isinstance(ev, ApplianceError):
                yield b"data:" + json.dumps(error_body(ev)).encode() + b"\n\n"
                return
            payload = {"text": ev.text, "done": ev.final is not None}
            yield b"data:" + json.dumps(payload).encode() + b"\n\n"

    return Stream(
        body(),
        media_type="text/event-stream",
        headers={**trace_headers(admitted.receipt.event_id, ref), "Cache-Control": "no-store"},
    )


# --- compliance -----------------------------------------------------------------------------------------------------
_FILTER_KEYS = ("since", "until", "actor", "adapter", "outcome")
MAX_ACTOR_FILTER_CHARS = 1024  # the audit stage records an identity bounded; a longer one matches its bounded form
_SAFE_FILTER = re.compile(r"^[A-Za-z0-9_.:@+\-]{0,128}$")


def _filters(request: Request[Any, Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k in _FILTER_KEYS:
        v = (request.query_params.get(k) or "").strip()
        if v:
            if k == "actor":  # an identity as the IdP names it (spaces, accents); the trail's form is compared
                if len(v) > MAX_ACTOR_FILTER_CHARS or not v.isprintable():
                    raise ValidationFailed(f"filter {k!r} has characters that are not allowed")
                out[k] = v
                continue
            if not _SAFE_FILTER.match(v):
                raise ValidationFailed(f"filter {k!r} has characters that are not allowed")
            if k in ("since", "until"):
                try:  # in UTC (a time with no offset is UTC); one that UTC cannot hold is refused, not a 500
                    t = datetime.fromisoformat(v)
                    v = (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
                except (ValueError, OverflowError) as exc:
                    raise ValidationFailed(f"filter {k!r} must be an ISO date or time") from exc
            out[k] = v
    if out.get("outcome") and out["outcome"] not in ("success", "denied", "error"):
        raise ValidationFailed("outcome must be success, denied or error")
    return out


@get("/compliance", include_in_schema=False)
async def compliance(request: Request[Any, Any, Any]) -> Any:
    ctx = await _page_ctx(request, "audit.search")
    if not isinstance(ctx, Ctx):
        return ctx
    gw = gateway_of(request)
    try:
        filters = _filters(request)
    except ValidationFailed as exc:
        return _render(request, "compliance.html", ctx, 422, error=exc.message, filters={}, rows=None, available=True)
    reader = gw.audit_reader
    rows = None
    if reader is not None and request.query_params.get("search"):
        rows = await reader.search(filters, 200)
        await gw.record(gw.event("audit.search", ctx=ctx, action="search", details=dict(filters)))
    return _render(
        request,
        "compliance.html",
        ctx,
        filters=filters,
        rows=[_row(r) for r in rows] if rows is not None else None,
        available=reader is not None,
        query=urlencode(filters),  # percent-encoded: a time's '+' (UTC offset) must not arrive as a space
    )


def _row(event: dict[str, Any]) -> dict[str, Any]:
    actor, adapter, outcome = event.get("actor") or {}, event.get("adapter") or {}, event.get("outcome") or {}
    return {
        "time": str(event.get("time", ""))[:23],
        "type": event.get("type"),
        "actor": actor.get("subject"),
        "adapter": f"{adapter.get('name')} v{adapter.get('version')}" if adapter.get("name") else "",
        "outcome": outcome.get("status"),
        "http_status": outcome.get("http_status"),
        "event_id": event.get("event_id"),
        "breakglass": bool((event.get("details") or {}).get("breakglass")),
    }


@get("/compliance/export", include_in_schema=False)
async def compliance_export(request: Request[Any, Any, Any], fmt: str = "jsonl") -> Any:
    ctx = await _page_ctx(request, "audit.export")
    if not isinstance(ctx, Ctx):
        return ctx
    gw = gateway_of(request)
    if fmt not in ("jsonl", "csv"):
        raise ValidationFailed("format must be jsonl or csv")
    if gw.audit_reader is None:
        raise ValidationFailed("this audit store does not support export")
    filters = _filters(request)
    data = await gw.audit_reader.export(filters, fmt)
    audit_id = await gw.record(
        gw.event(
            "audit.export",
            ctx=ctx,
            action="export",
            details={"format": fmt, "bytes": len(data), **filters},
        )
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return Response(
        data,
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="audit-{stamp}.{fmt}"',
            "X-Audit-Id": audit_id,
            "Cache-Control": "no-store",
        },
    )


@post("/compliance/verify", include_in_schema=False, status_code=200)
async def compliance_verify(request: Request[Any, Any, Any], data: dict[str, str] = FORM) -> Any:
    ctx = await _page_ctx(request, "audit.verify", csrf=data.get("_csrf"))
    if not isinstance(ctx, Ctx):
        return ctx
    gw = gateway_of(request)
    if gw.audit_reader is None:
        raise ValidationFailed("this audit store does not support verification")
    result = await gw.audit_reader.verify()
    await gw.record(gw.event("audit.verify", ctx=ctx, action="verify", details={"ok": bool(result.get("ok"))}))
    return _render(request, "compliance.html", ctx, filters={}, rows=None, available=True, verify=result)


# --- admin ------------------------------------------------------------------------------------------------------------
async def _admin_page(request: Request[Any, Any, Any], ctx: Ctx, status: int = 200, **values: Any) -> Template:
    gw = gateway_of(request)
    policy = gw.policy.current
    can_keys = policy.may_route(ctx.roles, "admin.keys")
    can_bg = policy.may_route(ctx.roles, "admin.breakglass")
    return _render(
        request,
        "admin.html",
        ctx,
        status,
        keys=[admin_api.key_json(k) for k in gw.apikeys.list()] if can_keys else None,
        grants=[admin_api.grant_json(g) for g in gw.breakglass.list()] if can_bg else None,
        grantable=policy.breakglass.grantable_roles,
        max_duration_min=policy.breakglass.max_duration_s // 60,
        **values,
    )


@get("/admin", include_in_schema=False)
async def admin_page(request: Request[Any, Any, Any]) -> Any:
    ctx = await _page_ctx(request, "admin.keys")
    if not isinstance(ctx, Ctx):
        return ctx
    return await _admin_page(request, ctx)


@post("/admin/keys", include_in_schema=False, status_code=200)
async def admin_create_key(request: Request[Any, Any, Any], data: dict[str, str] = FORM) -> Any:
    ctx = await _page_ctx(request, "admin.keys", csrf=data.get("_csrf"))
    if not isinstance(ctx, Ctx):
        return ctx
    gw = gateway_of(request)
    try:
        days = int(data.get("ttl_days", "30") or "30")
        scopes = [s for s in re.split(r"[\s,]+", data.get("scopes", "")) if s]
        key, info, _ = await admin_api.create_key(gw, ctx, data.get("name", "").strip(), scopes, days * 86_400)
    except (ValueError, ApplianceError) as exc:
        message = exc.message if isinstance(exc, ApplianceError) else "lifetime must be a whole number of days"
        return await _admin_page(request, ctx, 422, error=message)
    return await _admin_page(request, ctx, new_key=key, new_key_id=info.id)


@post("/admin/keys/{key_id:str}/revoke", include_in_schema=False, status_code=200)
async def admin_revoke_key(request: Request[Any, Any, Any], key_id: str, data: dict[str, str] = FORM) -> Any:
    ctx = await _page_ctx(request, "admin.keys", csrf=data.get("_csrf"))
    if not isinstance(ctx, Ctx):
        return ctx
    gw = gateway_of(request)
    try:
        await admin_api.revoke_key(gw, ctx, key_id)
    except ApplianceError as exc:
        return await _admin_page(request, ctx, exc.http_status, error=exc.message)
    return await _admin_page(request, ctx, notice=f"Key {key_id} revoked.")


@post("/admin/breakglass", include_in_schema=False, status_code=200)
async def admin_breakglass(request: Request[Any, Any, Any], data: dict[str, str] = FORM) -> Any:
    ctx = await _page_ctx(request, "admin.breakglass", csrf=data.get("_csrf"))
    if not isinstance(ctx, Ctx):
        return ctx
    gw = gateway_of(request)
    try:
        body = BreakGlassCreate(
            subject=data.get("subject", "").strip(),
            role=data.get("role", ""),
            reason=data.get("reason", ""),
            duration_s=int(data.get("duration_min", "60") or "60") * 60,
        )
        g, _ = await admin_api.grant_breakglass(gw, ctx, body)
    except (ValueError, ApplianceError) as exc:
        message = exc.message if isinstance(exc, ApplianceError) else "check the subject, role, reason and duration"
        return await _admin_page(request, ctx, 422, error=message)
    return await _admin_page(request, ctx, notice=f"Emergency access {g.id} granted until it expires or is revoked.")


@post("/admin/breakglass/{grant_id:str}/revoke", include_in_schema=False, status_code=200)
async def admin_breakglass_revoke(request: Request[Any, Any, Any], grant_id: str, data: dict[str, str] = FORM) -> Any:
    ctx = await _page_ctx(request, "admin.breakglass", csrf=data.get("_csrf"))
    if not isinstance(ctx, Ctx):
        return ctx
    gw = gateway_of(request)
    try:
        await admin_api.revoke_breakglass(gw, ctx, grant_id)
    except ApplianceError as exc:
        return await _admin_page(request, ctx, exc.http_status, error=exc.message)
    return await _admin_page(request, ctx, notice=f"Emergency access {grant_id} ended.")


@get("/docs", include_in_schema=False)
async def docs(request: Request[Any, Any, Any]) -> Template:
    """A server-rendered API reference from the OpenAPI schema (no scripts from a CDN: the appliance is offline)."""
    schema = request.app.openapi_schema.to_schema()
    ops = []
    for path, item in sorted(schema.get("paths", {}).items()):
        for method, op in item.items():
            if method in ("get", "post", "put", "delete", "patch"):
                ops.append(
                    {
                        "method": method.upper(),
                        "path": path,
                        "summary": op.get("summary", ""),
                        "tags": op.get("tags", []),
                    }
                )
    return _render(request, "docs.html", None, ops=ops)


ROUTES = [
    home,
    login_page,
    auth_login,
    auth_callback,
    auth_logout,
    auth_logged_out,
    console,
    console_generate,
    compliance,
    compliance_export,
    compliance_verify,
    admin_page,
    admin_create_key,
    admin_revoke_key,
    admin_breakglass,
    admin_breakglass_revoke,
    docs,
]
