"""The HTTP edge of the gateway: errors mapped once (an ``ApplianceError`` becomes its ``http_status`` and
``{"error": message, "error_type": code}``, plus ``Retry-After`` and ``X-Audit-Id``), the request class with one
JSON decoding point, the security headers, and the middleware that counts requests and audits the refusals
Litestar makes before a handler runs."""

from __future__ import annotations

import time
from typing import Any

import structlog
from litestar import Request, Response
from litestar.datastructures import MutableScopeHeaders, ResponseHeader
from litestar.exceptions import ClientException, HTTPException, NotFoundException, ValidationException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from appliance.errors import (
    ApplianceError,
    AuditUnavailable,
    RequestMalformed,
    RequestTooLarge,
    ValidationFailed,
)
from appliance.gateway._service import Gateway

log = structlog.get_logger("appliance.gateway")
SECURITY_HEADERS = [
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="Referrer-Policy", value="no-referrer"),
    ResponseHeader(
        name="Content-Security-Policy",
        value="default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self' http: https:; base-uri 'none'",
    ),
]
HSTS = "max-age=31536000"
REFUSAL = "appliance.refusal"  # scope key: a refusal made before the handler ran, audited by refusal_middleware


async def hsts(message: Message, scope: Scope) -> None:
    """Served over HTTPS (gateway.secure_cookies, required in production): browsers must not fall back to HTTP.
    A before-send hook of this app, not a response header (those are resolved once per handler, for every app)."""
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)["Strict-Transport-Security"] = HSTS


class GatewayRequest(Request[Any, Any, Any]):
    """Litestar's request, with one JSON decoding point for every route: a body nested deeper than the decoder can
    follow (msgspec raises RecursionError past Python's recursion limit, about 1,000 levels) is refused with 400
    REQUEST_MALFORMED, not a 500. Shallower bodies reach the route's schema (422 for a shape it does not take). No
    walk over the decoded value: its cost would grow with the body (a 1 MiB body of small objects is ~0.1 s)."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ClientException("request body nested too deeply") from None


def _mark_refusal(request: Request[Any, Any, Any], exc: ApplianceError) -> ApplianceError:
    """Have :func:`refusal_middleware` audit a refusal that Litestar made before any handler code ran."""
    if request.scope.get("path_template"):  # a route matched: an identifiable request, not a scan of unknown paths
        request.scope[REFUSAL] = exc  # type: ignore[literal-required]
    return exc


def _error_response(exc: ApplianceError) -> Response[Any]:
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(int(max(1, exc.retry_after)))
    headers["X-Audit-Id"] = exc.audit_id or "-"
    headers["X-Adapter-Fingerprint"] = "-"
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="appliance"'
    return Response({"error": exc.message, "error_type": exc.code}, status_code=exc.http_status, headers=headers)


def appliance_error(request: Request[Any, Any, Any], exc: ApplianceError) -> Response[Any]:
    if exc.http_status >= 500:
        log.warning("request.failed", error_type=exc.code, status=exc.http_status)
    return _error_response(exc)


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    # Name the fields, never echo the submitted values (they may be prompt text).
    fields = sorted({str(e.get("key", "body")) for e in (exc.extra or []) if isinstance(e, dict)})
    where = ", ".join(fields) if fields else "body"
    return _error_response(_mark_refusal(request, ValidationFailed(f"invalid request: check {where}")))


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == 413:
        return _error_response(_mark_refusal(request, RequestTooLarge("request body too large")))
    if exc.status_code == 400:  # a body that cannot be decoded (malformed, nested too deeply)
        refused = RequestMalformed("invalid request: the body is not valid JSON or is nested too deeply")
        return _error_response(_mark_refusal(request, refused))
    if isinstance(exc, NotFoundException):
        return Response(
            {"error": "not found", "error_type": "NOT_FOUND"},
            status_code=404,
            headers={"X-Audit-Id": "-", "X-Adapter-Fingerprint": "-"},
        )
    code = "VALIDATION_FAILED" if exc.status_code in (400, 422) else f"HTTP_{exc.status_code}"
    detail = exc.detail if exc.status_code < 500 and exc.status_code not in (400, 422) else "bad request"
    if exc.status_code >= 500:
        detail = "internal error"
    return Response(
        {"error": detail, "error_type": code},
        status_code=exc.status_code,
        headers={**(exc.headers or {}), "X-Audit-Id": "-", "X-Adapter-Fingerprint": "-"},
    )


class PageAnswer(Exception):
    """A page answered before its handler ran: the login page (no session, or it ended) or the refusal page. Raised
    by a page's ``ctx`` dependency (``routes/_deps.py``); sent as the handler's own return would have been."""

    def __init__(self, response: Response[Any]) -> None:
        super().__init__("the page was answered before its handler ran")
        self.response = response


def page_answer(request: Request[Any, Any, Any], exc: PageAnswer) -> Response[Any]:
    """The page's answer as its handler would have returned it: Litestar adds the app's response headers and the
    handler's media type (where the answer sets none) to what a handler returns, not to what an error handler does."""
    response = exc.response
    for header in SECURITY_HEADERS:
        response.headers.setdefault(header.name, str(header.value))
    if response.media_type is None:
        response.media_type = request.route_handler.media_type
    return response


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("request.crashed", error_class=type(exc).__name__)  # the class only: messages may carry input
    return Response(
        {"error": "internal error", "error_type": "INTERNAL"},
        status_code=500,
        headers={"X-Audit-Id": "-", "X-Adapter-Fingerprint": "-"},
    )


def metrics_middleware(gateway: Gateway) -> Any:
    """Count requests by route template and status, and time them to the last byte."""

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = [500]

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                route = scope.get("path_template") or "unmatched"
                gateway.metrics.requests.labels(route, str(status[0])).inc()
                gateway.metrics.latency.labels(route).observe(time.perf_counter() - started)

        return middleware

    return factory


def refusal_middleware(gateway: Gateway) -> Any:
    """Audit the refusals Litestar makes before a handler runs (a body that does not decode or validate, one too
    large) as ``gateway.denied`` of an anonymous caller, durable before the answer, whose id goes out in
    ``X-Audit-Id``. If the trail cannot record it, the answer is 503 ``AUDIT_UNAVAILABLE`` instead."""

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            replaced = [False]

            async def send_wrapper(message: Message) -> None:
                if replaced[0]:
                    return  # the original body of an answer replaced by a 503
                refused = scope.get(REFUSAL) if message["type"] == "http.response.start" else None
                if isinstance(refused, ApplianceError):
                    request: Request[Any, Any, Any] = Request(scope)
                    try:
                        audited = await gateway.deny(refused, request=request, path=scope.get("path_template"))
                    except AuditUnavailable as exc:
                        replaced[0] = True
                        await _error_response(exc).to_asgi_response(app=None, request=request)(scope, receive, send)
                        return
                    headers = MutableScopeHeaders.from_message(message)
                    headers["X-Audit-Id"] = audited.audit_id or "-"
                await send(message)

            await app(scope, receive, send_wrapper)

        return middleware

    return factory


EXCEPTION_HANDLERS: dict[Any, Any] = {
    PageAnswer: page_answer,
    ApplianceError: appliance_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: internal_error,
}
