"""The one factory: ``create_app(settings, *, backend=None, audit=None, registry=None, keys=None)``.

Each neighbour left as ``None`` is opened from settings through its stage's factory (contracts.md); a stage that
cannot be opened stops start-up (fail closed). Errors are mapped here, once: an ``ApplianceError`` becomes its
``http_status`` and ``{"error": message, "error_type": code}`` (plus ``Retry-After`` and ``X-Audit-Id``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import structlog
from litestar import Litestar, Request, Response
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.datastructures import MutableScopeHeaders, ResponseHeader
from litestar.exceptions import ClientException, HTTPException, NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from appliance.audit import digest, open_audit_log, reader_for, versioned_digest
from appliance.config import Settings
from appliance.errors import (
    ApplianceError,
    AuditUnavailable,
    RequestMalformed,
    RequestTooLarge,
    ValidationFailed,
)
from appliance.gateway._db import GatewayDB, db_path
from appliance.gateway._service import Gateway
from appliance.gateway.auth.apikeys import ApiKeyStore
from appliance.gateway.auth.jwt import JWKSCache, JWKSFetcher, JWTValidator
from appliance.gateway.auth.oidc import OIDCClient
from appliance.gateway.breakglass import BreakGlass
from appliance.gateway.policy import PolicyStore, policy_path
from appliance.gateway.ports import AuditReader, CachedCatalog, RegistryCatalog
from appliance.gateway.routes import admin, inference, openai, ops, web
from appliance.gateway.state import State, open_state
from appliance.keys import open_key_service
from appliance.protocols import AuditLog, Backend, KeyService
from appliance.registry import open_registry
from appliance.serving import open_backend

log = structlog.get_logger("appliance.gateway")
WEB_DIR = Path(__file__).parent / "web"
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
REFUSAL = "appliance.refusal"  # scope key: a refusal made before the handler ran, audited by _refusal_middleware
SWEEPER_STOP_S = 10.0  # how long shutdown waits for a session sweep under way


async def _hsts(message: Message, scope: Scope) -> None:
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
    """Have :func:`_refusal_middleware` audit a refusal that Litestar made before any handler code ran."""
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


def _appliance_error(request: Request[Any, Any, Any], exc: ApplianceError) -> Response[Any]:
    if exc.http_status >= 500:
        log.warning("request.failed", error_type=exc.code, status=exc.http_status)
    return _error_response(exc)


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    # Name the fields, never echo the submitted values (they may be prompt text).
    fields = sorted({str(e.get("key", "body")) for e in (exc.extra or []) if isinstance(e, dict)})
    where = ", ".join(fields) if fields else "body"
    return _error_response(_mark_refusal(request, ValidationFailed(f"invalid request: check {where}")))


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
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


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("request.crashed", error_class=type(exc).__name__)  # the class only: messages may carry input
    return Response(
        {"error": "internal error", "error_type": "INTERNAL"},
        status_code=500,
        headers={"X-Audit-Id": "-", "X-Adapter-Fingerprint": "-"},
    )


def _metrics_middleware(gateway: Gateway) -> Any:
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


def _refusal_middleware(gateway: Gateway) -> Any:
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


def discovery_jwks_fetcher(issuer: str, *, timeout_s: float = 5.0, verify: bool | str = True) -> JWKSFetcher:
    """Find ``jwks_uri`` through the issuer's discovery document, then fetch the JWKS."""

    async def fetch() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=timeout_s, verify=verify) as client:
            meta = (await client.get(f"{issuer.rstrip('/')}/.well-known/openid-configuration")).json()
            resp = await client.get(meta["jwks_uri"])
            resp.raise_for_status()
            data = resp.json()
        if not isinstance(data, dict):
            raise ValueError("JWKS is not an object")
        return data

    return fetch


def _audit_reader(audit: AuditLog) -> AuditReader | None:
    """The compliance pages' reader: the audit log itself when it is one (the in-memory log), else its store's."""
    if isinstance(audit, AuditReader):
        return audit
    return reader_for(audit)


def create_app(
    settings: Settings,
    *,
    backend: Backend | None = None,
    audit: AuditLog | None = None,
    registry: Any = None,
    keys: KeyService | None = None,
    jwks_fetcher: JWKSFetcher | None = None,
    jwt_issuer: str | None = None,
    audit_reader: AuditReader | None = None,
    catalog_ttl_s: float | None = None,
    state: State | None = None,
) -> Litestar:
    """Build the gateway. Neighbours not given are opened from settings (their stages' factories)."""
    g = settings.gateway
    if keys is None:
        keys = open_key_service(settings)
    if audit is None:
        audit = open_audit_log(settings, keys=keys)
    if registry is None:
        registry = open_registry(settings, keys=keys, audit=audit)
    if backend is None:
        backend = open_backend(settings)

    # gateway.state_store: rate limits, the extraction detector and sessions in this process or a shared Redis
    store = state if state is not None else open_state(settings, keys)
    policy = PolicyStore(policy_path(settings.policies_dir))
    db = GatewayDB(db_path(settings.data_dir))
    issuer = jwt_issuer or g.oidc_issuer
    validator = None
    if issuer is not None:
        fetcher = jwks_fetcher or discovery_jwks_fetcher(issuer, verify=g.oidc_ca_cert or True)
        validator = JWTValidator(
            JWKSCache(fetcher, ttl_s=g.jwks_cache_ttl_s),
            issuer=issuer,
            audience=g.jwt_audience,
            algorithms=g.jwt_algorithms,
        )
    oidc = None
    if g.oidc_issuer and g.oidc_client_id:
        secret = g.oidc_client_secret.get_secret_value() if g.oidc_client_secret else None
        oidc = OIDCClient(
            g.oidc_issuer,
            g.oidc_client_id,
            secret,
            f"{g.public_url.rstrip('/')}/auth/callback",
            algorithms=g.jwt_algorithms,
            jwks_ttl_s=g.jwks_cache_ttl_s,
            verify=g.oidc_ca_cert or True,
        )
    gateway = Gateway(
        settings,
        backend=backend,
        audit=audit,
        catalog=CachedCatalog(
            RegistryCatalog(registry), ttl_s=g.catalog_ttl_s if catalog_ttl_s is None else catalog_ttl_s
        ),
        keys=keys,
        policy=policy,
        apikeys=ApiKeyStore(db),
        breakglass=BreakGlass(db),
        sessions=store.sessions,
        jwt=validator,
        oidc=oidc,
        digest=lambda text: digest(keys, text),
        digest_inline=getattr(keys, "backend", None) == "local",  # Vault's HMAC is a network call
        versioned_digest=lambda text, version: versioned_digest(keys, text, version),
        audit_reader=audit_reader or _audit_reader(audit),
        state=store,
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        log.info(
            "gateway.start",
            policy_sha256=policy.sha256[:16],
            oidc=oidc is not None,
            jwt=validator is not None,
            state_store=g.state_store,
        )
        stop_sweeper = asyncio.Event()
        sweeper = asyncio.create_task(gateway.run_session_sweeper(g.session_sweep_interval_s, stop_sweeper))
        gateway.session_sweeper = sweeper
        try:
            yield
        finally:
            stop_sweeper.set()  # a sweep under way finishes its records before the audit log closes
            try:
                await asyncio.wait_for(sweeper, SWEEPER_STOP_S)
            except Exception as exc:  # still running after SWEEPER_STOP_S: cancelled by wait_for
                log.warning("gateway.sweeper_stop_failed", error_class=type(exc).__name__)
            for closer in (backend.aclose, audit.close, store.aclose):
                try:
                    await closer()
                except Exception as exc:  # closing must not hide the shutdown
                    log.warning("gateway.close_failed", error_class=type(exc).__name__)
            db.close()

    app = Litestar(
        route_handlers=[
            inference.inference,
            inference.inference_stream,
            openai.chat_completions,
            openai.completions,
            openai.models,
            ops.healthz,
            ops.readyz,
            ops.metrics,
            admin.list_keys,
            admin.post_key,
            admin.delete_key,
            admin.list_grants,
            admin.post_grant,
            admin.delete_grant,
            admin.post_reload,
            *web.ROUTES,
            create_static_files_router(path="/static", directories=[WEB_DIR / "static"], include_in_schema=False),
        ],
        exception_handlers={
            ApplianceError: _appliance_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        template_config=TemplateConfig(directory=WEB_DIR / "templates", engine=JinjaTemplateEngine),
        openapi_config=OpenAPIConfig(
            title="Appliance gateway",
            version="1",
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
        ),
        request_max_body_size=g.max_body_bytes,
        response_headers=SECURITY_HEADERS,
        before_send=[_hsts] if g.secure_cookies else [],
        middleware=[_metrics_middleware(gateway), _refusal_middleware(gateway)],
        request_class=GatewayRequest,
        lifespan=[lifespan],
        debug=False,
        logging_config=None,
    )
    app.state.gateway = gateway
    return app
