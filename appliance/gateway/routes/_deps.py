"""The route's context as a Litestar dependency, as litestar-fullstack provides its domains' ``deps.py``: each
handler declares who may call it once (``routes/_access.py``), and :func:`bind_access`, run once by the app,
gives every handler that is not public its ``ctx`` dependency, which authenticates and authorises the request
before the handler body runs. A handler that declares nothing, or declares a route but takes no ``ctx`` (Litestar
resolves only the dependencies a handler asks for), stops start-up: no handler can skip its authorisation.

Order, kept from when each handler asked for its authorisation first: Litestar decodes the body before any
dependency (400 undecodable, 413 too large) and validates the handler's parameters before the handler runs (422).
The provider takes the handler's own parameters, so they are validated before the provider authenticates: a bad
body gets the same answer with or without a good credential, audited as an anonymous refusal. A provider is never
cached (``use_cache`` off): every request authenticates.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable
from copy import copy
from typing import Any

from litestar import Request, Router
from litestar.di import Provide
from litestar.enums import RequestEncodingType
from litestar.exceptions import ImproperlyConfiguredException
from litestar.handlers import HTTPRouteHandler
from litestar.params import BodyKwarg
from litestar.response import Redirect

from appliance.errors import ApplianceError, PermissionDenied
from appliance.gateway._context import Ctx
from appliance.gateway._http import PageAnswer
from appliance.gateway._service import Gateway
from appliance.gateway.routes._access import ACCESS, Access
from appliance.gateway.routes._common import GatewayDep
from appliance.gateway.routes.web._pages import clear_cookie, render

CTX = "ctx"  # the parameter a handler takes its context as
CtxProvider = Callable[..., Awaitable[Ctx]]


def bind_access(handlers: Iterable[HTTPRouteHandler | Router]) -> list[HTTPRouteHandler | Router]:
    """The handlers, each that is not public with its ``ctx`` dependency bound; an undeclared one raises."""
    return [_check_router(h) if isinstance(h, Router) else _bind(h) for h in handlers]


def _declared(opt: dict[str, Any], name: str) -> Access:
    access = opt.get(ACCESS)
    if not isinstance(access, Access):
        raise ImproperlyConfiguredException(
            f"{name}: declare who may call it (opt=api(route), page(route) or public(), routes/_access.py)"
        )
    return access


def _check_router(router: Router) -> Router:
    """A router (the static files) is bound as a whole: it can only be public."""
    if _declared(router.opt, f"router {router.path!r}").kind != "public":
        raise ImproperlyConfiguredException(f"router {router.path!r}: only a handler can be authorised")
    return router


def _bind(handler: HTTPRouteHandler) -> HTTPRouteHandler:
    name = handler.handler_name
    access = _declared(handler.opt, name)
    takes_ctx = CTX in inspect.signature(handler.fn).parameters
    if access.kind == "public":
        if takes_ctx:
            raise ImproperlyConfiguredException(f"{name} is public but takes {CTX!r}: declare its route")
        return handler
    if not takes_ctx:
        raise ImproperlyConfiguredException(
            f"{name} declares {access.route!r} but takes no {CTX!r}: it would run unchecked"
        )
    if CTX in (handler.dependencies or {}):
        raise ImproperlyConfiguredException(f"{name} provides its own {CTX!r}: access is bound here only")
    bound = copy(handler)  # the module's handler stays as declared; each app binds its own copy
    bound.dependencies = {**(handler.dependencies or {}), CTX: Provide(_provider(handler, access))}
    return bound


def _provider(handler: HTTPRouteHandler, access: Access) -> CtxProvider:
    """The handler's ``ctx`` provider, taking the handler's own parameters (so Litestar validates them first)."""
    hints = typing.get_type_hints(handler.fn, include_extras=True)
    params = {
        n: p.replace(annotation=hints[n], kind=inspect.Parameter.KEYWORD_ONLY)
        for n, p in inspect.signature(handler.fn).parameters.items()
        if n != CTX
    }
    params.setdefault("request", inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request))
    params.setdefault("gw", inspect.Parameter("gw", inspect.Parameter.KEYWORD_ONLY, annotation=GatewayDep))
    form = _is_form(hints.get("data"))

    async def provide_ctx(**kwargs: Any) -> Ctx:
        request: Request[Any, Any, Any] = kwargs["request"]
        gw: Gateway = kwargs["gw"]
        csrf = (kwargs.get("data") or {}).get("_csrf") if form else None  # a form carries its CSRF token as a field
        if access.kind == "page":
            return await page_ctx(gw, request, access.route, csrf=csrf)
        return await gw.require(request, access.route, csrf=csrf)

    provide_ctx.__signature__ = inspect.Signature(list(params.values()), return_annotation=Ctx)  # type: ignore[attr-defined]
    provide_ctx.__annotations__ = {**{n: p.annotation for n, p in params.items()}, "return": Ctx}
    provide_ctx.__name__ = provide_ctx.__qualname__ = f"{handler.handler_name}_ctx"
    return provide_ctx


def _is_form(annotation: Any) -> bool:
    return any(
        isinstance(m, BodyKwarg) and m.media_type == RequestEncodingType.URL_ENCODED
        for m in getattr(annotation, "__metadata__", ())
    )


async def page_ctx(gw: Gateway, request: Request[Any, Any, Any], route: str | None, *, csrf: str | None) -> Ctx:
    """The session's context for a page; otherwise the page is answered here (:class:`PageAnswer`): the login page
    (an ended session audited as ``auth.logout`` on the way), or the refusal page."""
    found = await gw.lookup_session(request)
    if found.expired is not None:
        resp = Redirect(f"/login?m={found.expired}")
        resp.cookies.append(clear_cookie(gw))
        raise PageAnswer(resp)
    if found.session is None or not found.session.authenticated:
        raise PageAnswer(Redirect("/login"))
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
        raise PageAnswer(denied) from None
