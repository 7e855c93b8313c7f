"""Sessions seen by requests and by the sweeper: each idle or absolute expiry recorded once as ``auth.logout``
(HIPAA automatic logoff), records the trail refused kept and tried again at the next sweep."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from litestar import Request

from appliance.audit import AuditEventFields, actor_fields
from appliance.errors import AuditUnavailable
from appliance.gateway._auditing import RequestAuditor
from appliance.gateway._context import SESSION_COOKIE, client_ip
from appliance.gateway.auth.sessions import Ended, Expiry, Lookup, Session, SessionStore
from appliance.gateway.metrics import GatewayMetrics

log = structlog.get_logger("appliance.gateway")
MAX_UNRECORDED_LOGOFFS = 10_000  # swept sessions whose auth.logout waits for the audit trail to come back


class SessionLogoffs:
    """The request's session or why it ended, and the sweeper that ends the rest."""

    def __init__(
        self, sessions: SessionStore, auditor: RequestAuditor, metrics: GatewayMetrics, client_id: str | None
    ) -> None:
        self.sessions = sessions
        self.auditor = auditor
        self.metrics = metrics
        self.client_id = client_id  # the OIDC client the sessions were signed in through
        self._unrecorded: list[AuditEventFields] = []  # see sweep()

    async def lookup(self, request: Request[Any, Any, Any]) -> Lookup:
        """The request's session, or why it ended. An idle or absolute expiry is an ``auth.logout`` event here,
        whichever request sees it first (a page, the console's API call, a logout): the store deletes it as it
        reports it, so no later request could."""
        found = await self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if found.expired is not None and found.expired_subject:
            await self.auditor.record(
                self.expiry_event(
                    found.expired,
                    found.expired_subject,
                    found.expired_handle,
                    ip=client_ip(request),
                    route=request.scope.get("path_template") or "/login",
                )
            )
        return found

    async def session_of(self, request: Request[Any, Any, Any]) -> Session | None:
        return (await self.lookup(request)).session

    def expiry_event(
        self, reason: Expiry, subject: str, handle: str | None, *, ip: str | None, route: str | None
    ) -> AuditEventFields:
        """The ``auth.logout`` of an idle or absolute expiry, seen by a request or by the sweeper (no ip, no route)."""
        actor = actor_fields(subject, "oidc", client_id=self.client_id, session_id=handle)
        return self.auditor.event(
            "auth.logout",
            actor=actor,
            source={"ip": ip, "user_agent": None},
            action="logout",
            route=route,
            details={"reason": reason},
        )

    async def sweep(self) -> int:
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
        pending, self._unrecorded = self._unrecorded + fresh, []
        recorded = 0
        for n, event in enumerate(pending):
            try:
                await self.auditor.record(event)
            except AuditUnavailable:  # counted and logged by the auditor; the rest waits for the next sweep
                self._keep_unrecorded(pending[n:])
                break
            recorded += 1
        else:
            self.metrics.logoffs_unrecorded.set(0)
        return recorded

    def _keep_unrecorded(self, events: list[AuditEventFields]) -> None:
        dropped = max(0, len(events) - MAX_UNRECORDED_LOGOFFS)
        self._unrecorded = events[dropped:]
        self.metrics.logoffs_unrecorded.set(len(self._unrecorded))
        if dropped:
            self.metrics.logoffs_dropped.inc(dropped)
        log.error("session.logoff_unrecorded", pending=len(self._unrecorded), dropped=dropped)

    async def run_sweeper(self, interval_s: float, stop: asyncio.Event) -> None:
        """:meth:`sweep` every ``interval_s`` until ``stop`` is set (the app's shutdown). A sweep that fails
        (the shared store unreachable) is logged by class and tried again next time."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.sweep()
            except Exception as exc:
                log.error("session.sweep_failed", error_class=type(exc).__name__)
