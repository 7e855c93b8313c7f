"""Admission: who may do what. The route is authorised once (the policy read once into the request's ``Ctx``);
the adapter and the request (logprob rights, rate limits, extraction detector) are then decided under that same
policy, and every refusal is audited before it is raised."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import structlog
from litestar import Request

from appliance.errors import (
    ApplianceError,
    NotFound,
    PermissionDenied,
    PolicyViolation,
    RateLimited,
    StateStoreUnavailable,
    Unauthenticated,
)
from appliance.gateway._auditing import AuditDigests, RequestAuditor
from appliance.gateway._authn import Authenticator
from appliance.gateway._context import SAFE_METHODS, Admitted, Ctx, client_ip, user_agent_of
from appliance.gateway.auth.principal import Principal
from appliance.gateway.breakglass import BreakGlass
from appliance.gateway.limits import THROTTLED, LimitStore
from appliance.gateway.metrics import GatewayMetrics
from appliance.gateway.policy import ADAPTER_NAME, AdmissionDecision, Entitlement, PolicyStore
from appliance.gateway.ports import AdapterCatalog, AdapterRef, parse_version, resolve
from appliance.protocols import WrittenRecord

log = structlog.get_logger("appliance.gateway")


class Admission:
    """Authorise a request's route, its adapter and its generation; the request record is its last step."""

    def __init__(
        self,
        *,
        policy: PolicyStore,
        authenticator: Authenticator,
        breakglass: BreakGlass,
        catalog: AdapterCatalog,
        limits: LimitStore,
        auditor: RequestAuditor,
        digests: AuditDigests,
        metrics: GatewayMetrics,
    ) -> None:
        self.policy = policy
        self.authenticator = authenticator
        self.breakglass = breakglass
        self.catalog = catalog
        self.limits = limits
        self.auditor = auditor
        self.digests = digests
        self.metrics = metrics

    def with_breakglass(self, principal: Principal) -> Principal:
        grants = self.breakglass.active_for(principal.subject)
        if not grants:
            return principal
        self.metrics.breakglass_uses.inc()
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
            principal, session = await self.authenticator.authenticate(request)
        except (Unauthenticated, StateStoreUnavailable) as unauth:
            if audit_denial:
                raise await self.auditor.deny(unauth, request=request, path=path) from None
            raise
        principal = self.with_breakglass(principal)
        policy = self.policy.current
        roles = policy.roles_for(principal.groups, principal.scopes) | principal.extra_roles
        ctx = Ctx(
            principal,
            roles,
            route or "page",
            path,
            client_ip(request),
            user_agent_of(request),
            policy,
            session=session,
        )
        if session is not None and request.method not in SAFE_METHODS:
            token = csrf or request.headers.get("x-csrf-token")
            if not session.csrf_ok(token):
                raise await self.auditor.deny(PermissionDenied("missing or invalid CSRF token"), ctx=ctx)
        if route is not None and not policy.may_route(roles, route):
            refused = PolicyViolation(f"your roles do not allow '{route}' (policies/access.yaml)")
            raise (await self.auditor.deny(refused, ctx=ctx)) if audit_denial else refused
        return ctx

    async def visible_adapters(self, ctx: Ctx) -> list[AdapterRef]:
        policy = ctx.policy
        return [
            a
            for a in await self.catalog.published()
            if policy.may_adapter(ctx.roles, a.name, a.version, is_production=a.is_production)
        ]

    async def authorize_adapter(self, ctx: Ctx, name: str, version: str) -> tuple[AdapterRef, AdmissionDecision]:
        """The published adapter the caller may use, and the policy's decision for the request (asked once). The
        policy is asked about the requested name and version before the catalog, so an adapter the roles do not
        allow is the same 403 whether or not it exists (no enumeration); a caller they allow gets a 404 for a
        version that is not published."""
        try:
            if not ADAPTER_NAME.match(name):
                raise NotFound("no such adapter (names are lowercase letters, digits, '-' and '_')")
            decision = ctx.policy.decide(ctx.roles, name, parse_version(version))
            refused = PolicyViolation(f"your roles do not allow adapter {name!r} version {version}")
            published = await self.catalog.published()  # read before refusing too: existence does not change the timing
            if decision.entitlement is Entitlement.NONE:
                raise refused
            try:
                ref = resolve(published, name, version)
            except NotFound:
                if decision.entitlement is Entitlement.IF_PRODUCTION:  # what is not published is no production version
                    raise refused from None
                raise
            if not decision.allows(ref.name, ref.version, is_production=ref.is_production):
                raise refused
        except (NotFound, PolicyViolation) as exc:
            raise await self.auditor.deny(exc, ctx=ctx) from None
        return ref, decision

    async def admit(self, ctx: Ctx, name: str, version: str, prompt: str, *, wants_logprobs: bool) -> Admitted:
        """The adapter (:meth:`authorize_adapter`), then the request (:meth:`_admit_request`): one decision.

        The backend may be called once this returns; the record's sync runs meanwhile, and the inference
        waits for it (``RequestAuditor.durable``) before it answers anything.
        """
        ref, decision = await self.authorize_adapter(ctx, name, version)
        record = await self._admit_request(ctx, ref, decision, prompt, wants_logprobs=wants_logprobs)
        return Admitted(ctx, ref, prompt, record, decision)

    async def _admit_request(
        self, ctx: Ctx, ref: AdapterRef, decision: AdmissionDecision, prompt: str, *, wants_logprobs: bool
    ) -> WrittenRecord:
        """Logprob rights, rate limits, extraction detector, then the request record, written into the chain."""
        try:  # the key service answers before the backend is asked: a stream cannot start that could not be audited
            ctx.prompt_digest = await self.digests.versioned_digest(prompt, None)
        except ApplianceError as exc:
            raise await self.auditor.deny(exc, ctx=ctx, adapter=ref, action="generate") from None
        try:
            if wants_logprobs and not decision.logprobs:
                raise PolicyViolation("your roles do not allow logprob-style outputs (details, top_n_tokens)")
            flag = await self.limits.admit(  # throttle, buckets, detector: one step (one round trip to Redis)
                ctx.principal.subject,
                decision.profile,
                ref.served_id,
                decision.adapter_limits,
                prompt,
                decision.extraction,
            )
            if flag is not None:
                self.metrics.extraction.labels(flag.reason).inc()
                log.warning("extraction.suspected", reason=flag.reason, count=flag.count)
                await self.auditor.record(
                    self.auditor.event(
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
            raise await self.auditor.deny(exc, ctx=ctx, adapter=ref, action="generate") from None
        return await self.auditor.record_ahead(
            self.auditor.event(
                "gateway.request",
                ctx=ctx,
                action="generate",
                adapter=ref,
                details={"prompt_chars": len(prompt)},
            )
        )
