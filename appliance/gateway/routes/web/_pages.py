"""What every page shares: the session cookie, the page's session context (or the login page), the layout."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from appliance.errors import ApplianceError, PermissionDenied
from appliance.gateway._context import SESSION_COOKIE, Ctx
from appliance.gateway._service import Gateway
from appliance.gateway.routes._common import gateway_of

FORM = Body(media_type=RequestEncodingType.URL_ENCODED)
PAGES = (
    ("console", "/console", "Console"),
    ("audit.search", "/compliance", "Compliance"),
    ("admin.keys", "/admin", "Admin"),
)


def cookie(gw: Gateway, value: str, *, max_age: int | None = None) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        path="/",
        httponly=True,
        secure=gw.settings.gateway.secure_cookies,
        samesite="lax",
        max_age=max_age,
    )


def clear_cookie(gw: Gateway) -> Cookie:
    return cookie(gw, "", max_age=0)


async def page_ctx(
    request: Request[Any, Any, Any], route: str | None, *, csrf: str | None = None
) -> Ctx | Redirect | Template:
    """The session's context for a page, or a redirect to the login page (auditing an idle logoff)."""
    gw = gateway_of(request)
    found = await gw.lookup_session(request)  # an ended session is audited (auth.logout) there
    if found.expired is not None:
        resp = Redirect(f"/login?m={found.expired}")
        resp.cookies.append(clear_cookie(gw))
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
        denied = render(request, "error.html", signed_in, exc.http_status, message=exc.message)
        denied.headers["X-Audit-Id"] = exc.audit_id or "-"
        return denied


def nav_links(gw: Gateway, ctx: Ctx) -> list[dict[str, str]]:
    policy = gw.policy.current
    return [{"href": href, "label": label} for route, href, label in PAGES if policy.may_route(ctx.roles, route)]


def render(
    request: Request[Any, Any, Any], template: str, ctx: Ctx | None, status: int = 200, **values: Any
) -> Template:
    gw = gateway_of(request)
    base: dict[str, Any] = {"user": None, "nav": [], "csrf": "", "roles": []}
    if ctx is not None and ctx.session is not None:
        base.update(
            user=ctx.principal.display_name or ctx.principal.subject,
            nav=nav_links(gw, ctx),
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
