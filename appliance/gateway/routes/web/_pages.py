"""What every page shares: the session cookie, the navigation and the layout (a page's session context is its
``ctx`` dependency, ``routes/_deps.py``)."""

from __future__ import annotations

from typing import Any, TypeAlias

from litestar import Request
from litestar.datastructures import Cookie
from litestar.params import URLEncodedBody
from litestar.response import Template

from appliance.gateway._context import SESSION_COOKIE, Ctx
from appliance.gateway._service import Gateway
from appliance.gateway.routes._common import gateway_of

FormData: TypeAlias = URLEncodedBody[dict[str, str]]  # a page's form (its CSRF token in ``_csrf``)
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
