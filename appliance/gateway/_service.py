"""The gateway façade the routes call (README.md in this package, "The request flow"): one object holding the
collaborators, each of one concern, built by the composition root in ``app.py``:

- :class:`~appliance.gateway._auditing.RequestAuditor`: events, durability, refusals (``gateway.denied``);
- :class:`~appliance.gateway._authn.Authenticator`: one strategy per scheme (API key, bearer JWT, session);
- :class:`~appliance.gateway._logoff.SessionLogoffs`: session lookups and the automatic-logoff sweeper;
- :class:`~appliance.gateway._admission.Admission`: route, adapter and request decided under one policy;
- :class:`~appliance.gateway._inference.Inference`: the backend call, streams, and the outcome record.

authenticate -> authorise (policy + the registry's published set) -> rate limits and the extraction detector ->
``await audit.record(request)`` (raises: 503, nothing reaches the backend) -> backend -> record the outcome
(status, tokens, latency, HMAC digests of prompt and output) before the final byte -> headers.
"""

from __future__ import annotations

import asyncio

from appliance.config import Settings
from appliance.gateway._admission import Admission
from appliance.gateway._auditing import AuditDigests, RequestAuditor
from appliance.gateway._authn import Authenticator
from appliance.gateway._context import SAFE_METHODS, SESSION_COOKIE, Ctx, constant_time_equals, refusal
from appliance.gateway._inference import CLIENT_CLOSED, Inference
from appliance.gateway._logoff import MAX_UNRECORDED_LOGOFFS, SessionLogoffs
from appliance.gateway.auth.oidc import OIDCClient
from appliance.gateway.policy import PolicyStore
from appliance.gateway.ports import AdapterCatalog, AuditReader
from appliance.gateway.state import State
from appliance.serving import ReplicaStatus

__all__ = [
    "CLIENT_CLOSED",
    "MAX_UNRECORDED_LOGOFFS",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "Ctx",
    "Gateway",
    "constant_time_equals",
    "refusal",
]


class Gateway:
    """Everything a request needs, composed once by :func:`appliance.gateway.create_app`."""

    def __init__(
        self,
        settings: Settings,
        *,
        auditor: RequestAuditor,
        digests: AuditDigests,
        authenticator: Authenticator,
        logoffs: SessionLogoffs,
        admission: Admission,
        inference: Inference,
        catalog: AdapterCatalog,
        oidc: OIDCClient | None,
        audit_reader: AuditReader | None,
        state: State | None,
    ) -> None:
        self.settings = settings
        self.auditor = auditor
        self.digests = digests
        self.authenticator = authenticator
        self.logoffs = logoffs
        self.admission = admission
        self.inference = inference
        self.catalog = catalog
        self.oidc = oidc
        self.audit_reader = audit_reader
        self.state = state  # None: this process's memory (limits); sessions is then a memory store too
        self.replica_status: ReplicaStatus | None = None  # the last readiness check over replicas (/readyz)
        self.session_sweeper: asyncio.Task[None] | None = None  # started and stopped by the app's lifespan
        # the routes' vocabulary, each answered by the collaborator that owns it
        self.metrics = auditor.metrics
        self.audit = auditor.audit
        self.backend = inference.backend
        self.limits = inference.limits
        self.apikeys = authenticator.api_key.apikeys
        self.jwt = authenticator.jwt.jwt
        self.sessions = logoffs.sessions
        self.breakglass = admission.breakglass
        self.record = auditor.record
        self.record_ahead = auditor.record_ahead
        self.durable = auditor.durable
        self.event = auditor.event
        self.deny = auditor.deny
        self.deny_bounded = auditor.deny_bounded
        self.authenticate = authenticator.authenticate
        self.lookup_session = logoffs.lookup
        self.session_of = logoffs.session_of
        self.expiry_event = logoffs.expiry_event
        self.sweep_sessions = logoffs.sweep
        self.run_session_sweeper = logoffs.run_sweeper
        self.with_breakglass = admission.with_breakglass
        self.roles_of = admission.roles_of
        self.require = admission.require
        self.visible_adapters = admission.visible_adapters
        self.authorize_adapter = admission.authorize_adapter
        self.admit = admission.admit
        self.generate = inference.generate
        self.stream = inference.stream
        self.open_stream = inference.open_stream

    @property
    def policy(self) -> PolicyStore:
        return self.admission.policy

    @policy.setter
    def policy(self, store: PolicyStore) -> None:
        self.admission.policy = store

    @property
    def bounded_denial_s(self) -> float:
        """How often one repeated refusal is recorded (``RequestAuditor.deny_bounded``)."""
        return self.auditor.bounded_denial_s

    @bounded_denial_s.setter
    def bounded_denial_s(self, seconds: float) -> None:
        self.auditor.bounded_denial_s = seconds

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
                self.digests.digest("readiness-probe")  # the audit HMAC key, through the key service
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
