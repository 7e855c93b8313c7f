"""The composition root: ``create_app(settings, *, backend=None, audit=None, registry=None, keys=None)``.

Named configure steps, run in order (as litestar-fullstack's ``ApplicationCore`` wires its app in one place):
the neighbours (each left as ``None`` is opened from settings through its stage's factory, contracts.md; a stage
that cannot be opened stops start-up, fail closed), the state store, the audit, the authentication, the
admission and the inference collaborators, the :class:`Gateway` façade over them; then the Litestar app: routes,
errors, web pages, OpenAPI, limits and headers, middleware, lifespan. Errors are mapped once, in ``_http.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from appliance.audit import digest, open_audit_log, reader_for, versioned_digest
from appliance.config import Settings
from appliance.gateway._admission import Admission
from appliance.gateway._auditing import AuditDigests, RequestAuditor
from appliance.gateway._authn import ApiKeyAuth, Authenticator, BearerJWTAuth, SessionAuth
from appliance.gateway._db import GatewayDB, db_path
from appliance.gateway._http import (
    EXCEPTION_HANDLERS,
    SECURITY_HEADERS,
    GatewayRequest,
    hsts,
    metrics_middleware,
    refusal_middleware,
)
from appliance.gateway._inference import Inference
from appliance.gateway._logoff import SessionLogoffs
from appliance.gateway._service import Gateway
from appliance.gateway.auth.apikeys import ApiKeyStore
from appliance.gateway.auth.jwt import JWKSCache, JWKSFetcher, JWTValidator
from appliance.gateway.auth.oidc import OIDCClient
from appliance.gateway.breakglass import BreakGlass
from appliance.gateway.metrics import GatewayMetrics
from appliance.gateway.policy import PolicyStore, policy_path
from appliance.gateway.ports import AuditReader, CachedCatalog, RegistryCatalog
from appliance.gateway.routes import admin, inference, openai, ops, web
from appliance.gateway.routes._access import public
from appliance.gateway.routes._deps import bind_access
from appliance.gateway.state import State, open_state
from appliance.keys import open_key_service
from appliance.protocols import AuditLog, Backend, KeyService
from appliance.registry import open_registry
from appliance.serving import open_backend

log = structlog.get_logger("appliance.gateway")
WEB_DIR = Path(__file__).parent / "web"
SWEEPER_STOP_S = 10.0  # how long shutdown waits for a session sweep under way
Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class Neighbours:
    """The stages the gateway talks to, opened once."""

    keys: KeyService
    audit: AuditLog
    registry: Any
    backend: Backend


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


# --- the gateway's parts ------------------------------------------------------------------------------------------
def configure_neighbours(
    settings: Settings,
    *,
    keys: KeyService | None,
    audit: AuditLog | None,
    registry: Any,
    backend: Backend | None,
) -> Neighbours:
    """Open each neighbour not given through its stage's factory (a stage that cannot be opened stops start-up)."""
    keys = keys if keys is not None else open_key_service(settings)
    audit = audit if audit is not None else open_audit_log(settings, keys=keys)
    registry = registry if registry is not None else open_registry(settings, keys=keys, audit=audit)
    backend = backend if backend is not None else open_backend(settings)
    return Neighbours(keys, audit, registry, backend)


def configure_state(settings: Settings, keys: KeyService, state: State | None) -> State:
    """gateway.state_store: rate limits, the extraction detector and sessions in this process or a shared Redis."""
    return state if state is not None else open_state(settings, keys)


def configure_audit(settings: Settings, n: Neighbours) -> tuple[RequestAuditor, AuditDigests]:
    """The request auditor (its metrics count the backend's replicas and re-expose the monitor's gauges too) and
    the audit key's digests."""
    from appliance.monitoring import TextfileCollector, metrics_path  # appliance_adapter_eval_*, canary exposure

    metrics = GatewayMetrics()
    replica_metrics = getattr(n.backend, "metrics", None)
    if replica_metrics is not None and hasattr(replica_metrics, "collect"):  # a ReplicaSet: per-replica series
        metrics.registry.register(replica_metrics)
    metrics.registry.register(TextfileCollector(metrics_path(settings.data_dir)))
    keys = n.keys
    digests = AuditDigests(
        lambda text: digest(keys, text),
        lambda text, version: versioned_digest(keys, text, version),
        inline=getattr(keys, "backend", None) == "local",  # Vault's HMAC is a network call
    )
    return RequestAuditor(n.audit, metrics), digests


def configure_jwt(settings: Settings, jwks_fetcher: JWKSFetcher | None, jwt_issuer: str | None) -> JWTValidator | None:
    """Bearer JWTs from the identity provider, when one is configured."""
    g = settings.gateway
    issuer = jwt_issuer or g.oidc_issuer
    if issuer is None:
        return None
    fetcher = jwks_fetcher or discovery_jwks_fetcher(issuer, verify=g.oidc_ca_cert or True)
    return JWTValidator(
        JWKSCache(fetcher, ttl_s=g.jwks_cache_ttl_s),
        issuer=issuer,
        audience=g.jwt_audience,
        algorithms=g.jwt_algorithms,
    )


def configure_oidc(settings: Settings) -> OIDCClient | None:
    """The browser's sign-in (authorization code + PKCE), when a client is configured."""
    g = settings.gateway
    if not (g.oidc_issuer and g.oidc_client_id):
        return None
    secret = g.oidc_client_secret.get_secret_value() if g.oidc_client_secret else None
    return OIDCClient(
        g.oidc_issuer,
        g.oidc_client_id,
        secret,
        f"{g.public_url.rstrip('/')}/auth/callback",
        algorithms=g.jwt_algorithms,
        jwks_ttl_s=g.jwks_cache_ttl_s,
        verify=g.oidc_ca_cert or True,
    )


def configure_auth(
    settings: Settings, db: GatewayDB, store: State, auditor: RequestAuditor, jwt: JWTValidator | None
) -> tuple[Authenticator, SessionLogoffs]:
    """One strategy per scheme: API keys, bearer JWTs, the session cookie (with its logoff records)."""
    client_id = settings.gateway.oidc_client_id
    logoffs = SessionLogoffs(store.sessions, auditor, auditor.metrics, client_id)
    authenticator = Authenticator(ApiKeyAuth(ApiKeyStore(db)), BearerJWTAuth(jwt), SessionAuth(logoffs, client_id))
    return authenticator, logoffs


def configure_gateway(
    settings: Settings,
    n: Neighbours,
    *,
    jwks_fetcher: JWKSFetcher | None,
    jwt_issuer: str | None,
    audit_reader: AuditReader | None,
    catalog_ttl_s: float | None,
    state: State | None,
) -> tuple[Gateway, GatewayDB]:
    """The collaborators, each of one concern, and the façade the routes call."""
    g = settings.gateway
    store = configure_state(settings, n.keys, state)
    db = GatewayDB(db_path(settings.data_dir))
    auditor, digests = configure_audit(settings, n)
    authenticator, logoffs = configure_auth(
        settings, db, store, auditor, configure_jwt(settings, jwks_fetcher, jwt_issuer)
    )
    catalog = CachedCatalog(
        RegistryCatalog(n.registry), ttl_s=g.catalog_ttl_s if catalog_ttl_s is None else catalog_ttl_s
    )
    admission = Admission(
        policy=PolicyStore(policy_path(settings.policies_dir)),
        authenticator=authenticator,
        breakglass=BreakGlass(db),
        catalog=catalog,
        limits=store.limits,
        auditor=auditor,
        digests=digests,
        metrics=auditor.metrics,
    )
    inference_ = Inference(n.backend, limits=store.limits, auditor=auditor, digests=digests, metrics=auditor.metrics)
    gateway = Gateway(
        settings,
        auditor=auditor,
        digests=digests,
        authenticator=authenticator,
        logoffs=logoffs,
        admission=admission,
        inference=inference_,
        catalog=catalog,
        oidc=configure_oidc(settings),
        audit_reader=audit_reader or _audit_reader(n.audit),
        state=store,
    )
    return gateway, db


def _audit_reader(audit: AuditLog) -> AuditReader | None:
    """The compliance pages' reader: the audit log itself when it is one (the in-memory log), else its store's."""
    if isinstance(audit, AuditReader):
        return audit
    return reader_for(audit)


# --- the Litestar app ---------------------------------------------------------------------------------------------
def configure_routes(config: AppConfig, gateway: Gateway) -> None:
    """The API, the web pages and their static files; each handler gets the façade as the ``gw`` dependency and,
    unless it is public, its authorised request as ``ctx`` (declared on the handler, bound by ``bind_access``: an
    undeclared handler stops start-up)."""
    config.route_handlers += bind_access(
        [
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
            create_static_files_router(
                path="/static", directories=[WEB_DIR / "static"], include_in_schema=False, opt=public()
            ),
        ]
    )
    config.dependencies["gw"] = Provide(lambda: gateway, use_cache=True, sync_to_thread=False)
    config.signature_namespace["Gateway"] = Gateway
    config.state["gateway"] = gateway


def configure_errors(config: AppConfig) -> None:
    """Every error mapped once (``_http.py``); Litestar's debug pages and log config stay off."""
    config.exception_handlers.update(EXCEPTION_HANDLERS)
    config.debug = False
    config.logging_config = None


def configure_web(config: AppConfig) -> None:
    """Server-rendered pages (Jinja templates beside this file)."""
    config.template_config = TemplateConfig(directory=WEB_DIR / "templates", engine=JinjaTemplateEngine)


def configure_openapi(config: AppConfig) -> None:
    """``/schema/openapi.json`` (the server-rendered ``/docs`` page reads it; no CDN)."""
    config.openapi_config = OpenAPIConfig(
        title="Appliance gateway",
        version="1",
        path="/schema",
        render_plugins=[JsonRenderPlugin()],
        components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
    )


def configure_limits_and_headers(config: AppConfig, settings: Settings) -> None:
    """The body size limit, one JSON decoding point, security headers, HSTS when served over HTTPS."""
    config.request_max_body_size = settings.gateway.max_body_bytes
    config.request_class = GatewayRequest
    config.response_headers = list(SECURITY_HEADERS)
    if settings.gateway.secure_cookies:
        config.before_send.append(hsts)


def configure_middleware(config: AppConfig, gateway: Gateway) -> None:
    """Request metrics, and the audit of refusals Litestar makes before a handler runs."""
    config.middleware += [metrics_middleware(gateway), refusal_middleware(gateway)]


def configure_lifespan(config: AppConfig, settings: Settings, gateway: Gateway, n: Neighbours, db: GatewayDB) -> None:
    """Start the session sweeper; on shutdown stop it (a sweep under way finishes), then close what was opened."""
    g = settings.gateway

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        log.info(
            "gateway.start",
            policy_sha256=gateway.policy.sha256[:16],
            oidc=gateway.oidc is not None,
            jwt=gateway.jwt is not None,
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
            closers = [n.backend.aclose, n.audit.close]
            if gateway.state is not None:
                closers.append(gateway.state.aclose)
            for closer in closers:
                try:
                    await closer()
                except Exception as exc:  # closing must not hide the shutdown
                    log.warning("gateway.close_failed", error_class=type(exc).__name__)
            db.close()

    config.lifespan.append(lifespan)


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
    n = configure_neighbours(settings, keys=keys, audit=audit, registry=registry, backend=backend)
    gateway, db = configure_gateway(
        settings,
        n,
        jwks_fetcher=jwks_fetcher,
        jwt_issuer=jwt_issuer,
        audit_reader=audit_reader,
        catalog_ttl_s=catalog_ttl_s,
        state=state,
    )
    config = AppConfig()
    configure_routes(config, gateway)
    configure_errors(config)
    configure_web(config)
    configure_openapi(config)
    configure_limits_and_headers(config, settings)
    configure_middleware(config, gateway)
    configure_lifespan(config, settings, gateway, n, db)
    return Litestar.from_config(config)
