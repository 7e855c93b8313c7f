"""Sign-in (OIDC code + PKCE), the callback, sign-out (ending the IdP's session too) and the login page."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.params import FromQuery, QueryParameter
from litestar.response import Redirect, Template

from appliance.audit import SourceFields, actor_fields
from appliance.errors import Unauthenticated
from appliance.gateway._context import client_ip
from appliance.gateway._service import Gateway
from appliance.gateway.auth.oidc import NO_IDP_SESSION, same_state
from appliance.gateway.auth.sessions import Session
from appliance.gateway.routes._access import page, public
from appliance.gateway.routes._common import CtxDep, GatewayDep
from appliance.gateway.routes.web._pages import FormData, clear_cookie, cookie, nav_links, render

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


@get("/", include_in_schema=False, opt=page(None))
async def home(request: Request[Any, Any, Any], ctx: CtxDep, gw: GatewayDep) -> Any:
    nav = nav_links(gw, ctx)
    return (
        Redirect(nav[0]["href"]) if nav else render(request, "error.html", ctx, 403, message="No pages for your roles.")
    )


@get("/login", include_in_schema=False, opt=public())
async def login_page(request: Request[Any, Any, Any], gw: GatewayDep, m: FromQuery[str | None] = None) -> Template:
    message, warning, cookies = MESSAGES.get(m or ""), None, []
    browser = await gw.session_of(request)
    signout = browser.data.get("signout") if browser is not None and not browser.authenticated else None
    if signout == "confirmed":  # said once, from the server's record (a query parameter could claim it)
        assert browser is not None
        await gw.sessions.delete(browser.id)
        message = SIGNED_OUT_OF_IDP
        cookies.append(clear_cookie(gw))
    elif signout in SIGNOUT_WARNINGS:
        warning = f"{SIGNOUT_WARNINGS[signout]} {SIGNOUT_ADVICE}"
    page = render(
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


@get("/auth/login", include_in_schema=False, opt=public())
async def auth_login(request: Request[Any, Any, Any], gw: GatewayDep) -> Redirect:
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
    resp.cookies.append(cookie(gw, pre.id))
    return resp


async def _signed_out(gw: Gateway, browser: Session | None, outcome: str) -> Redirect:
    """To the login page, with what the sign-out did at the IdP kept in a fresh signed-out session."""
    data: dict[str, Any] = {"signout": outcome, **({} if outcome == "confirmed" else {"force_login": True})}
    marker = await gw.sessions.rotate(browser if browser is not None and not browser.authenticated else None, data)
    resp = Redirect("/login", status_code=303)
    resp.cookies.append(cookie(gw, marker.id))
    return resp


@get("/auth/logged-out", include_in_schema=False, opt=public())
async def auth_logged_out(
    request: Request[Any, Any, Any],
    gw: GatewayDep,
    oidc_state: Annotated[str | None, QueryParameter(name="state")] = None,
) -> Redirect:
    """The registered ``post_logout_redirect_uri``: the IdP is back from its end-session page. Whether its session
    really ended is then asked of the IdP itself (``prompt=none``: no page; "login_required" means it ended)."""
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
    resp.cookies.append(cookie(gw, checking.id))
    return resp


@get("/auth/callback", include_in_schema=False, opt=public())
async def auth_callback(
    request: Request[Any, Any, Any],
    gw: GatewayDep,
    code: FromQuery[str | None] = None,
    oidc_state: Annotated[str | None, QueryParameter(name="state")] = None,
    error: FromQuery[str | None] = None,
) -> Redirect:
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
        resp.cookies.append(clear_cookie(gw))
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
    resp.cookies.append(cookie(gw, session.id))
    return resp


@post("/auth/logout", include_in_schema=False, status_code=303, opt=public())  # signed in: checked here
async def auth_logout(request: Request[Any, Any, Any], gw: GatewayDep, data: FormData) -> Redirect:
    session = await gw.session_of(request)
    if session is not None and session.authenticated:  # signed out already: nothing to refuse, the same redirect
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
            resp.cookies.append(cookie(gw, pending.id))
            return resp
    resp = Redirect("/login?m=logged_out", status_code=303)
    resp.cookies.append(clear_cookie(gw))
    return resp
