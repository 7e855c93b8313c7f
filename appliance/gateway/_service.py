"""The request flow (README.md in this package, "The request flow"), independent of the HTTP routes:

authenticate -> authorise (policy + the registry's published set) -> rate limits and the extraction detector ->
``await audit.record(request)`` (raises: 503, nothing reaches the backend) -> backend -> record the outcome
(status, tokens, latency, HMAC digests of prompt and output) before the final byte -> headers.

Every refusal after the caller could be identified is itself an audit event (``gateway.denied``) and carries
the audit id back to the client in ``X-Audit-Id``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import structlog
from litestar import Request

from appliance.audit import (
    ActorFields,
    AuditEventFields,
    OutcomeStatus,
    SourceFields,
    actor_fields,
    adapter_fields,
    anonymous_actor,
    audit_event,
)
from appliance.config import Settings
from appliance.errors import (
    ApplianceError,
    AuditUnavailable,
    BackendError,
    BackendUnavailable,
    BackendValidation,
    KeyUnavailable,
    NotFound,
    PermissionDenied,
    PolicyViolation,
    RateLimited,
    StateStoreUnavailable,
    Unauthenticated,
)
from appliance.gateway.auth.apikeys import ApiKeyStore, key_subject
from appliance.gateway.auth.jwt import JWTValidator
from appliance.gateway.auth.oidc import OIDCClient
from appliance.gateway.auth.principal import Principal
from appliance.gateway.auth.sessions import Ended, Expiry, Lookup, Session, SessionStore
from appliance.gateway.breakglass import BreakGlass
from appliance.gateway.limits import THROTTLED, LimitStore, MemoryLimitStore
from appliance.gateway.metrics import GatewayMetrics
from appliance.gateway.policy import ADAPTER_NAME, Entitlement, PolicyStore
from appliance.gateway.ports import AdapterCatalog, AdapterRef, AuditReader, parse_version, resolve
from appliance.gateway.state import State
from appliance.ids import random_uuid
from appliance.protocols import (
    AuditLog,
    Backend,
    Generation,
    GenerationParams,
    KeyService,
    TokenEvent,
    WrittenRecord,
)
from appliance.serving import ReplicaStatus, begin_routing, current_routing

log = structlog.get_logger("appliance.gateway")

SESSION_COOKIE = "appliance_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CLIENT_CLOSED = "CLIENT_CLOSED"  # the outcome's error_class when the client left a stream before its end
MAX_UNRECORDED_LOGOFFS = 10_000  # swept sessions whose auth.logout waits for the audit trail to come back
Digest = Callable[[str], str]
VersionedDigest = Callable[[str, int | None], tuple[int | None, str]]  # (text, key version) -> (version used, hex)
T = TypeVar("T")


@dataclass
class Ctx:
    """One authenticated, route-authorised request."""

    principal: Principal
    roles: frozenset[str]
    route: str  # the policy route name
    path: str  # the HTTP route template
    ip: str | None
    user_agent: str | None
    request_id: str = field(default_factory=lambda: random_uuid().hex)
    session: Session | None = None
    prompt_digest: tuple[int | None, str] | None = None  # (audit key version, hex), made by admit()

    @property
    def actor(self) -> ActorFields:
        return self.principal.actor(self.roles)

    @property
    def source(self) -> SourceFields:
        return {"ip": self.ip, "user_agent": self.user_agent}


def _ua(request: Request[Any, Any, Any]) -> str | None:
    ua = request.headers.get("user-agent")
    return ua[:200] if ua else None


def _ip(request: Request[Any, Any, Any]) -> str | None:
    return _canonical_ip(request.client.host) if request.client else None


@functools.lru_cache(maxsize=4096)
def _canonical_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:  # e.g. a unix socket or a test client's placeholder name
        return None


def _attempted_method(request: Request[Any, Any, Any] | None) -> Literal["oidc", "api_key", "jwt"]:
    header = request.headers.get("authorization", "") if request is not None else ""
    if not header:
        return "oidc"
    return "api_key" if header.partition(" ")[2].strip().startswith("apk_") else "jwt"


def refusal(exc: ApplianceError, audit_id: str | None = None) -> ApplianceError:
    """Attach the audit id of the denial record, for the error handler's ``X-Audit-Id``."""
    if audit_id is not None:
        exc.audit_id = audit_id
    return exc


class Gateway:
    """Everything a request needs, built once by :func:`appliance.gateway.create_app`."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend,
        audit: AuditLog,
        catalog: AdapterCatalog,
        keys: KeyService | None,
        policy: PolicyStore,
        apikeys: ApiKeyStore,
        breakglass: BreakGlass,
        sessions: SessionStore,
        jwt: JWTValidator | None,
        oidc: OIDCClient | None,
        digest: Digest,
        digest_inline: bool = False,
        audit_reader: AuditReader | None = None,
        versioned_digest: VersionedDigest | None = None,
        state: State | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.audit = audit
        self.catalog = catalog
        self.keys = keys
        self.policy = policy
        self.apikeys = apikeys
        self.breakglass = breakglass
        self.sessions = sessions
        self.jwt = jwt
        self.oidc = oidc
        self.digest = digest
        # True when the digest is an in-memory HMAC (local keystore): computed on the loop, no thread hop.
        self.digest_inline = digest_inline
        # Prompt and output digests under one audit key version, recorded with them (appliance.audit.versioned_digest).
        self.versioned_digest: VersionedDigest = versioned_digest or (lambda text, _: (None, digest(text)))
        self.audit_reader = audit_reader
        self.state = state  # None: this process's memory (limits); sessions is then a memory store too
        self.limits: LimitStore = state.limits if state is not None else MemoryLimitStore()
        self.metrics = GatewayMetrics()
        replica_metrics = getattr(backend, "metrics", None)
        if replica_metrics is not None and hasattr(replica_metrics, "collect"):  # a ReplicaSet: per-replica series
            self.metrics.registry.register(replica_metrics)
        from appliance.monitoring import TextfileCollector, metrics_path  # the monitor's appliance_adapter_eval_*

        self.metrics.registry.register(TextfileCollector(metrics_path(settings.data_dir)))
        self.replica_status: ReplicaStatus | None = None  # the last readiness check over replicas (/readyz)
        self._salts: dict[str, str] = {}  # subject -> vLLM prefix-cache salt (see _cache_salt())
        self._served: set[str] = set()
        self._served_at = 0.0
        self._background: set[asyncio.Future[str]] = set()  # outcomes of streams their clients left
        self.bounded_denial_s = 60.0  # see deny_bounded()
        self._bounded_denials: dict[tuple[str, str | None, str, str], tuple[float, int]] = {}
        self._unrecorded_logoffs: list[AuditEventFields] = []  # see sweep_sessions()
        self.session_sweeper: asyncio.Task[None] | None = None  # started and stopped by the app's lifespan

    # --- audit ----------------------------------------------------------------------------------------------
    async def record(self, event: AuditEventFields) -> str:
        """Make an event durable; AuditUnavailable (503) when it cannot be."""
        receipt = await self._audited(self.audit.record(event), event["type"])
        return receipt.event_id

    async def record_ahead(self, event: AuditEventFields) -> WrittenRecord:
        """Write an event into the chain (its sync still running); AuditUnavailable (503) when the store refuses."""
        return await self._audited(self.audit.record_ahead(event), event["type"])

    async def durable(self, written: WrittenRecord, event_type: str = "gateway.request") -> None:
        """Wait until a record from :meth:`record_ahead` is on stable storage; AuditUnavailable (503) if not."""
        await self._audited(written.durable, event_type)

    async def _audited(self, pending: Awaitable[T], event_type: str) -> T:
        try:
            result = await pending
        except AuditUnavailable:
            self.metrics.audit_failures.inc()
            log.error("audit.unavailable", event_type=event_type)
            raise
        except Exception as exc:  # a foreign error from a sink is still a failure to make it durable
            self.metrics.audit_failures.inc()
            log.error("audit.unavailable", event_type=event_type, error_class=type(exc).__name__)
            raise AuditUnavailable("the audit log cannot record this request") from exc
        return result

    def event(
        self,
        type_: str,
        *,
        ctx: Ctx | None = None,
        actor: ActorFields | None = None,
        source: SourceFields | None = None,
        action: str,
        route: str | None = None,
        adapter: AdapterRef | None = None,
        status: OutcomeStatus | None = None,
        http_status: int | None = None,
        error_class: str | None = None,
        tokens: Mapping[str, int] | None = None,
        latency_ms: float | None = None,
        digests: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEventFields:
        """An event of this request (``ctx``: its actor, source, route and request id, unless given)."""
        d: dict[str, Any] = dict(details or {})
        if ctx is not None and ctx.principal.breakglass_id:
            d.update(breakglass=ctx.principal.breakglass_id, review_required=True)
        return audit_event(
            type_,
            actor=actor if actor is not None else (ctx.actor if ctx else anonymous_actor()),
            source=source if source is not None else (ctx.source if ctx else {"ip": None, "user_agent": None}),
            action=action,
            route=route if route is not None else (ctx.path if ctx else None),
            adapter=adapter_fields(adapter.name, adapter.version, adapter.fingerprint) if adapter else None,
            status=status or "success",
            http_status=http_status,
            error_class=error_class,
            tokens=tokens,
            latency_ms=latency_ms,
            request_id=ctx.request_id if ctx else None,
            digests=digests,
            details=d,
        )

    async def deny(
        self,
        exc: ApplianceError,
        *,
        ctx: Ctx | None = None,
        request: Request[Any, Any, Any] | None = None,
        path: str | None = None,
        adapter: AdapterRef | None = None,
        action: str = "request",
        details: Mapping[str, Any] | None = None,
    ) -> ApplianceError:
        """Record a refusal and return the error to raise (with its audit id)."""
        self.metrics.denied.labels(exc.code).inc()
        if isinstance(exc, RateLimited):
            self.metrics.rate_limited.labels(exc.kind.replace(".", " ")).inc()  # "principal requests", "extraction"
        source: SourceFields | None = {"ip": _ip(request), "user_agent": _ua(request)} if request is not None else None
        event = self.event(
            "gateway.denied",
            ctx=ctx,
            actor=None if ctx is not None else anonymous_actor(_attempted_method(request)),
            source=source,
            action=action,
            route=path,
            adapter=adapter,
            status="denied" if exc.http_status < 500 else "error",
            http_status=exc.http_status,
            error_class=exc.code,
            details=details,
        )
        audit_id = await self.record(event)
        return refusal(exc, audit_id)

    async def deny_bounded(
        self, exc: ApplianceError, *, request: Request[Any, Any, Any], path: str, ctx: Ctx | None = None
    ) -> ApplianceError:
        """:meth:`deny` at most once per ``bounded_denial_s`` for one route, source address, subject and error, so a
        client repeating a refusal all day (a scraper with a wrong token) cannot flood the trail. The next record
        counts the refusals left unrecorded in between (``details.unrecorded``); each is counted in the metrics."""
        subject = ctx.principal.subject if ctx is not None else "anonymous"
        key = (path, _ip(request), subject, exc.code)
        now = time.monotonic()
        last, unrecorded = self._bounded_denials.get(key, (-math.inf, 0))
        if now - last < self.bounded_denial_s:
            self._bounded_denials[key] = (last, unrecorded + 1)
            self.metrics.denied.labels(exc.code).inc()
            return exc
        if len(self._bounded_denials) > 10_000:  # bounded memory; a reset records more, never less
            self._bounded_denials.clear()
        self._bounded_denials[key] = (now, 0)
        return await self.deny(exc, ctx=ctx, request=request, path=path, details={"unrecorded": unrecorded})

    # --- authentication --------------------------------------------------------------------------------------
    async def authenticate(self, request: Request[Any, Any, Any]) -> tuple[Principal, Session | None]:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credential = header.partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential or len(credential) > 8192:
                raise Unauthenticated("use 'Authorization: Bearer <token or API key>'")
            if credential.startswith("apk_"):
                info = self.apikeys.verify(credential)
                return (
                    Principal(
                        subject=key_subject(info.id),
                        auth_method="api_key",
                        scopes=frozenset(info.scopes),
                        client_id=info.name,
                        key_id=info.id,
                    ),
                    None,
                )
            if self.jwt is None:
                raise Unauthenticated("bearer JWTs are not accepted here (no identity provider configured)")
            claims = await self.jwt.validate(credential)
            scope = claims.get("scope", "")
            # a space-separated string (RFC 8693) or a list; any other shape grants no scope
            scopes = frozenset(
                scope.split() if isinstance(scope, str) else [str(s) for s in scope] if isinstance(scope, list) else ()
            )
            groups = claims.get("groups") or []
            return (
                Principal(
                    subject=str(claims["sub"]),
                    auth_method="jwt",
                    groups=frozenset(str(g) for g in groups) if isinstance(groups, list) else frozenset(),
                    scopes=scopes,
                    client_id=str(claims.get("client_id") or claims.get("azp") or "") or None,
                ),
                None,
            )
        session = await self.session_of(request)
        if session is None or not session.authenticated:
            raise Unauthenticated("sign in, or send a bearer token or API key")
        d = session.data
        return (
            Principal(
                subject=d["subject"],
                auth_method="oidc",
                groups=frozenset(d.get("groups", [])),
                scopes=frozenset(),
                client_id=self.settings.gateway.oidc_client_id,
                session_id=session.handle,
                display_name=d.get("name"),
            ),
            session,
        )

    async def lookup_session(self, request: Request[Any, Any, Any]) -> Lookup:
        """The request's session, or why it ended. An idle or absolute expiry is an ``auth.logout`` event here,
        whichever request sees it first (a page, the console's API call, a logout): the store deletes it as it
        reports it, so no later request could."""
        found = await self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if found.expired is not None and found.expired_subject:
            await self.record(
                self.expiry_event(
                    found.expired,
                    found.expired_subject,
                    found.expired_handle,
                    ip=_ip(request),
                    route=request.scope.get("path_template") or "/login",
                )
            )
        return found

    def expiry_event(
        self, reason: Expiry, subject: str, handle: str | None, *, ip: str | None, route: str | None
    ) -> AuditEventFields:
        """The ``auth.logout`` of an idle or absolute expiry, seen by a request or by the sweeper (no ip, no route)."""
        actor = actor_fields(subject, "oidc", client_id=self.settings.gateway.oidc_client_id, session_id=handle)
        return self.event(
            "auth.logout",
            actor=actor,
            source={"ip": ip, "user_agent": None},
            action="logout",
            route=route,
            details={"reason": reason},
        )

    async def sweep_sessions(self) -> int:
        """End every session past its idle or absolute limit that no request has seen since, and record each
        signed-in one's ``auth.logout`` (HIPAA automatic logoff, evidenced without the user coming back); returns
        how many were recorded. The store deletes a session before it is reported, once across every gateway
        (a request seeing it at the same moment reports it instead, never both), so access ends even when the
        record cannot be written: such records are counted, logged and kept in this process (at most
        MAX_UNRECORDED_LOGOFFS, the oldest dropped and counted) to be tried again at the next sweep."""
        ended: list[Ended] = await self.sessions.sweep()
        for e in ended:
            self.metrics.sessions_expired.labels(e.reason).inc()
        fresh = [self.expiry_event(e.reason, e.subject, e.handle, ip=None, route=None) for e in ended]
        pending, self._unrecorded_logoffs = self._unrecorded_logoffs + fresh, []
        recorded = 0
        for n, event in enumerate(pending):
            try:
                await self.record(event)
            except AuditUnavailable:  # counted and logged by _audited(); the rest waits for the next sweep
                self._keep_unrecorded(pending[n:])
                break
            recorded += 1
        else:
            self.metrics.logoffs_unrecorded.set(0)
        return recorded

    def _keep_unrecorded(self, events: list[AuditEventFields]) -> None:
        dropped = max(0, len(events) - MAX_UNRECORDED_LOGOFFS)
        self._unrecorded_logoffs = events[dropped:]
        self.metrics.logoffs_unrecorded.set(len(self._unrecorded_logoffs))
        if dropped:
            self.metrics.logoffs_dropped.inc(dropped)
        log.error("session.logoff_unrecorded", pending=len(self._unrecorded_logoffs), dropped=dropped)

    async def run_session_sweeper(self, interval_s: float, stop: asyncio.Event) -> None:
        """:meth:`sweep_sessions` every ``interval_s`` until ``stop`` is set (the app's shutdown). A sweep that fails
        (the shared store unreachable) is logged by class and tried again next time."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.sweep_sessions()
            except Exception as exc:
                log.error("session.sweep_failed", error_class=type(exc).__name__)

    async def session_of(self, request: Request[Any, Any, Any]) -> Session | None:
        return (await self.lookup_session(request)).session

    def with_breakglass(self, principal: Principal) -> Principal:
        grants = self.breakglass.active_for(principal.subject)
        if not grants:
            return principal
        self.metrics.breakglass_uses.inc()
        from dataclasses import replace

        return replace(
            principal,
            extra_roles=frozenset(g.role for g in grants),
            breakglass_id=",".join(sorted(g.id for g in grants)),
        )

    def roles_of(self, principal: Principal) -> frozenset[str]:
        return self.policy.current.roles_for(principal.groups, principal.scopes) | principal.extra_roles

    async def require(
        self,
        request: Request[Any, Any, Any],
        route: str | None,
        *,
        csrf: str | None = None,
        audit_denial: bool = True,
    ) -> Ctx:
        """Authenticate and check the route against the policy (None: any signed-in principal); refusals are
        audited and raised."""
        path = request.scope.get("path_template") or request.url.path
        try:
            principal, session = await self.authenticate(request)
        except (Unauthenticated, StateStoreUnavailable) as unauth:
            if audit_denial:
                raise await self.deny(unauth, request=request, path=path) from None
            raise
        principal = self.with_breakglass(principal)
        roles = self.roles_of(principal)
        ctx = Ctx(principal, roles, route or "page", path, _ip(request), _ua(request), session=session)
        if session is not None and request.method not in SAFE_METHODS:
            token = csrf or request.headers.get("x-csrf-token")
            if not session.csrf_ok(token):
                raise await self.deny(PermissionDenied("missing or invalid CSRF token"), ctx=ctx)
        if route is not None and not self.policy.current.may_route(roles, route):
            refused = PolicyViolation(f"your roles do not allow '{route}' (policies/access.yaml)")
            raise (await self.deny(refused, ctx=ctx)) if audit_denial else refused
        return ctx

    # --- adapters ---------------------------------------------------------------------------------------------
    async def visible_adapters(self, ctx: Ctx) -> list[AdapterRef]:
        policy = self.policy.current
        return [
            a
            for a in await self.catalog.published()
            if policy.may_adapter(ctx.roles, a.name, a.version, is_production=a.is_production)
        ]

    async def authorize_adapter(self, ctx: Ctx, name: str, version: str) -> AdapterRef:
        """The published adapter the caller may use. The policy is asked about the requested name and version
        before the catalog, so an adapter the roles do not allow is the same 403 whether or not it exists (no
        enumeration); a caller they allow gets a 404 for a version that is not published."""
        policy = self.policy.current
        try:
            if not ADAPTER_NAME.match(name):
                raise NotFound("no such adapter (names are lowercase letters, digits, '-' and '_')")
            entitlement = policy.adapter_entitlement(ctx.roles, name, parse_version(version))
            refused = PolicyViolation(f"your roles do not allow adapter {name!r} version {version}")
            published = await self.catalog.published()  # read before refusing too: existence does not change the timing
            if entitlement is Entitlement.NONE:
                raise refused
            try:
                ref = resolve(published, name, version)
            except NotFound:
                if entitlement is Entitlement.IF_PRODUCTION:  # what is not published is no production version
                    raise refused from None
                raise
            if not policy.may_adapter(ctx.roles, ref.name, ref.version, is_production=ref.is_production):
                raise refused
        except (NotFound, PolicyViolation) as exc:
            raise await self.deny(exc, ctx=ctx) from None
        return ref

    async def _ensure_served(self, ref: AdapterRef) -> None:
        """Refuse an adapter the backend does not serve (TGI would silently run the base model instead)."""
        now = time.monotonic()
        if ref.served_id in self._served and now - self._served_at < 5.0:
            return
        self._served = set(await self.backend.adapters())
        self._served_at = now
        if ref.served_id not in self._served:
            raise BackendValidation(f"adapter {ref.name!r} version {ref.version} is published but not loaded yet")

    async def _cache_salt(self, ctx: Ctx) -> str | None:
        """vLLM's prefix-cache salt for the principal (None when no replica is vLLM): the audit HMAC of its subject,
        so tenants never share cached prefixes (timing) and no client can choose a salt. Cached per subject."""
        if not getattr(self.backend, "wants_cache_salt", False):
            return None
        subject = ctx.principal.subject
        salt = self._salts.get(subject)
        if salt is None:
            text = "vllm.cache_salt\x00" + subject
            try:
                salt = self.digest(text) if self.digest_inline else await asyncio.to_thread(self.digest, text)
            except Exception as exc:  # fail closed: no salt, no request
                raise BackendUnavailable("the prefix-cache salt cannot be derived (key service)") from exc
            if len(self._salts) >= 10_000:
                self._salts.clear()
            self._salts[subject] = salt
        return salt

    # --- admission ---------------------------------------------------------------------------------------------
    async def admit(self, ctx: Ctx, ref: AdapterRef, prompt: str, *, wants_logprobs: bool) -> WrittenRecord:
        """Logprob rights, rate limits, extraction detector, then the request record, written into the chain.

        The backend may be called once this returns; the record's sync runs meanwhile, and :meth:`generate` and
        :meth:`stream` wait for it (:meth:`durable`) before they answer anything.
        """
        policy = self.policy.current
        try:  # the key service answers before the backend is asked: a stream cannot start that could not be audited
            ctx.prompt_digest = await self._digest(prompt, None)
        except ApplianceError as exc:
            raise await self.deny(exc, ctx=ctx, adapter=ref, action="generate") from None
        try:
            if wants_logprobs and not policy.may_logprobs(ctx.roles):
                raise PolicyViolation("your roles do not allow logprob-style outputs (details, top_n_tokens)")
            flag = await self.limits.admit(  # throttle, buckets, detector: one step (one round trip to Redis)
                ctx.principal.subject,
                policy.limit_profile(ctx.roles),
                ref.served_id,
                policy.limits.adapter,
                prompt,
                policy.limits.extraction,
            )
            if flag is not None:
                self.metrics.extraction.labels(flag.reason).inc()
                log.warning("extraction.suspected", reason=flag.reason, count=flag.count)
                await self.record(
                    self.event(
                        "gateway.extraction_suspected",
                        ctx=ctx,
                        action="throttle",
                        adapter=ref,
                        status="denied",
                        http_status=429,
                        error_class=RateLimited.code,
                        details={"reason": flag.reason, "count": flag.count, "throttle_s": flag.throttle_s},
                    )
                )
                raise RateLimited(THROTTLED, kind="extraction", retry_after=flag.throttle_s)
        except (PolicyViolation, RateLimited, StateStoreUnavailable) as exc:
            raise await self.deny(exc, ctx=ctx, adapter=ref, action="generate") from None
        return await self.record_ahead(
            self.event(
                "gateway.request",
                ctx=ctx,
                action="generate",
                adapter=ref,
                details={"prompt_chars": len(prompt)},
            )
        )

    async def _outcome(
        self,
        ctx: Ctx,
        ref: AdapterRef,
        request_audit_id: str,
        started: float,
        *,
        prompt: str,
        gen: Generation | None,
        error: ApplianceError | None,
        closed: bool = False,
    ) -> str:
        """Record how the request ended. A step before the record that fails (the output's digest: the key service;
        charging the tokens: the state store) is recorded as the outcome's error and then raised, with the request's
        audit id, so the caller answers it instead of the generation (fail closed, but never unrecorded)."""
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        output = gen.text if gen else ""
        version, prompt_digest = ctx.prompt_digest or await self._digest(prompt, None)
        digests: dict[str, Any] = {"key_version": version, "prompt": prompt_digest, "output": None}
        failed: ApplianceError | None = None
        try:
            digests["output"] = (await self._digest(output, version))[1]
        except ApplianceError as exc:
            failed = exc
        tokens = {"prompt": gen.prompt_tokens, "generated": gen.generated_tokens} if gen else None
        if gen is not None:
            try:
                await self.limits.charge_tokens(
                    ctx.principal.subject, ref.served_id, gen.prompt_tokens + gen.generated_tokens
                )
            except ApplianceError as exc:
                failed = failed or exc
            self.metrics.tokens.labels(ref.name, "prompt").inc(gen.prompt_tokens)
            self.metrics.tokens.labels(ref.name, "generated").inc(gen.generated_tokens)
        error = error or failed
        audit_id = await self.record(
            self.event(
                "gateway.response",
                ctx=ctx,
                action="generate",
                adapter=ref,
                status="success" if error is None and not closed else "error",
                http_status=(499 if closed else 200) if error is None else error.http_status,  # 499: client closed
                error_class=(CLIENT_CLOSED if closed else None) if error is None else error.code,
                tokens=tokens,
                latency_ms=latency_ms,
                digests=digests,
                details=_with_replica(
                    {"request_event": request_audit_id, "finish_reason": gen.finish_reason if gen else None}
                ),
            )
        )
        if failed is not None:
            log.error("gateway.outcome_failed", error_type=failed.code)
            raise refusal(failed, request_audit_id)
        return audit_id

    async def _digest(self, text: str, version: int | None) -> tuple[int | None, str]:
        """(audit key version, HMAC digest) of text through the key service; any failure is a KeyUnavailable."""
        try:
            if self.digest_inline:
                return self.versioned_digest(text, version)
            return await asyncio.to_thread(self.versioned_digest, text, version)  # Vault transit: off the loop
        except ApplianceError:
            raise
        except Exception as exc:  # a foreign error on the digest path still fails closed
            raise KeyUnavailable(f"audit digest failed ({type(exc).__name__})") from exc

    # --- generation ----------------------------------------------------------------------------------------------
    async def generate(
        self, ctx: Ctx, ref: AdapterRef, prompt: str, params: GenerationParams, admitted: WrittenRecord
    ) -> Generation:
        """The backend's answer, returned only once the request and outcome records are durable."""
        audit_id = admitted.receipt.event_id
        started = time.perf_counter()
        try:
            await self._ensure_served(ref)
            begin_routing(ref.fingerprint, await self._cache_salt(ctx))
            gen = await self.backend.generate(ref.served_id, prompt, params)
        except BackendError as exc:
            await self.durable(admitted)
            await self._outcome(ctx, ref, audit_id, started, prompt=prompt, gen=None, error=exc)
            raise refusal(exc, audit_id) from None
        await self.durable(admitted)
        await self._outcome(ctx, ref, audit_id, started, prompt=prompt, gen=gen, error=None)
        return gen

    async def stream(
        self, ctx: Ctx, ref: AdapterRef, prompt: str, params: GenerationParams, admitted: WrittenRecord
    ) -> AsyncGenerator[TokenEvent | ApplianceError, None]:
        """Token events, the first once the request record is durable, the last once the outcome is (else an
        error is yielded in their place). A client that leaves mid-stream still gets an outcome record (what it
        was sent, CLIENT_CLOSED) and is charged the tokens it was sent."""
        audit_id = admitted.receipt.event_id
        started = time.perf_counter()
        first = True
        sent: list[str] = []  # the text the client has been given
        settled = False  # an outcome is recorded (or cannot be): nothing is left to record on the way out
        try:
            await self._ensure_served(ref)
            begin_routing(ref.fingerprint, await self._cache_salt(ctx))
            async for ev in self.backend.stream(ref.served_id, prompt, params):
                try:
                    if first:
                        await self.durable(admitted)
                        first = False
                    if ev.final is not None:
                        settled = True
                        await self._outcome(ctx, ref, audit_id, started, prompt=prompt, gen=ev.final, error=None)
                except ApplianceError as exc:  # the trail, the key service or the state store: its error event ends it
                    settled = True
                    yield exc
                    return
                sent.append(ev.text)
                yield ev
                if ev.final is not None:
                    return
            raise BackendError("the backend ended the stream without a final event")
        except BackendError as exc:
            settled = True
            try:
                await self.durable(admitted)
                await self._outcome(ctx, ref, audit_id, started, prompt=prompt, gen=None, error=exc)
            except ApplianceError as audit_exc:
                yield audit_exc
                return
            yield exc
        except (GeneratorExit, asyncio.CancelledError):
            if not settled:  # the client went away: a task, since a cancelled request's own awaits are cancelled
                gen = Generation("".join(sent), len(sent), 0, "client_closed")  # prompt tokens: only the final knows
                left = self._outcome(ctx, ref, audit_id, started, prompt=prompt, gen=gen, error=None, closed=True)
                task = asyncio.ensure_future(left)
                self._background.add(task)
                task.add_done_callback(self._forget)
            raise

    async def open_stream(
        self, ctx: Ctx, ref: AdapterRef, prompt: str, params: GenerationParams, admitted: WrittenRecord
    ) -> AsyncIterator[TokenEvent | ApplianceError]:
        """:meth:`stream` with its first event already in hand, for the routes to call before they send a status line:
        the request record is then durable (GW-07: durable before the first byte of the answer) and the backend has
        started. A failure before that is raised (503 ``AUDIT_UNAVAILABLE``, the backend's error with the request's
        audit id), so a stream that could not be audited never answers 200."""
        events = self.stream(ctx, ref, prompt, params, admitted)
        first = await anext(events)
        if isinstance(first, ApplianceError):
            await events.aclose()
            raise first if isinstance(first, AuditUnavailable) else refusal(first, admitted.receipt.event_id)
        return _primed(first, events)

    def _forget(self, task: asyncio.Future[str]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an audit failure is already logged and counted by _audited()

    # --- health ---------------------------------------------------------------------------------------------------
    async def readiness(self) -> dict[str, bool]:
        async def backend_ok() -> bool:
            try:
                healthy = bool(await asyncio.wait_for(self.backend.health(), 2.0))
                status = getattr(self.backend, "status", None)
                if status is None or not healthy:
                    return healthy
                production = [
                    (a.served_id, a.fingerprint or None) for a in await self.catalog.published() if a.is_production
                ]
                self.replica_status = status(production)  # each production adapter needs one healthy holder
                return bool(self.replica_status.ready)
            except Exception:
                return False

        def keys_ok() -> bool:
            try:
                self.digest("readiness-probe")  # the audit HMAC key, through the key service
                return True
            except Exception:
                return False

        async def audit_ok() -> bool:
            try:
                await asyncio.to_thread(self.audit.check_writable)
                return True
            except Exception:
                return False

        return {
            "backend": await backend_ok(),
            "keys": await asyncio.to_thread(keys_ok),
            "audit": await audit_ok(),
            "state": await self.state.ping() if self.state is not None else True,  # the shared store answers
        }


def _with_replica(details: dict[str, Any]) -> dict[str, Any]:
    """An outcome's details with the replica that answered, when the backend routed over replicas."""
    note = current_routing()
    if note is not None and note.replica is not None:
        details["replica"] = note.replica
    return details


async def _primed(first: T, rest: AsyncGenerator[T, None]) -> AsyncIterator[T]:
    """first, then rest; closing this closes rest (a client that leaves still gets its outcome recorded)."""
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(a.encode()).digest(), hashlib.sha256(b.encode()).digest())
