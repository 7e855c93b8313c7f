"""Inference: the backend call (plain or streamed) of an admitted request, answered only once its request record
is durable, and its outcome (``gateway.response``: status, tokens, latency, digests) durable before the last byte."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import structlog

from appliance.errors import ApplianceError, AuditUnavailable, BackendError, BackendUnavailable, BackendValidation
from appliance.gateway._auditing import AuditDigests, RequestAuditor
from appliance.gateway._context import Admitted, Ctx, refusal
from appliance.gateway.limits import LimitStore
from appliance.gateway.metrics import GatewayMetrics
from appliance.gateway.ports import AdapterRef
from appliance.protocols import Backend, Generation, GenerationParams, TokenEvent
from appliance.serving import begin_routing, current_routing

log = structlog.get_logger("appliance.gateway")
CLIENT_CLOSED = "CLIENT_CLOSED"  # the outcome's error_class when the client left a stream before its end
SERVED_CACHE_S = 5.0  # how long the backend's list of loaded adapters is trusted
MAX_CACHE_SALTS = 10_000
T = TypeVar("T")


class Inference:
    """Calls the backend for an admitted request and records how it ended."""

    def __init__(
        self,
        backend: Backend,
        *,
        limits: LimitStore,
        auditor: RequestAuditor,
        digests: AuditDigests,
        metrics: GatewayMetrics,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.auditor = auditor
        self.digests = digests
        self.metrics = metrics
        self._salts: dict[str, str] = {}  # subject -> vLLM prefix-cache salt (see _cache_salt())
        self._served: set[str] = set()
        self._served_at = 0.0
        self._background: set[asyncio.Future[str]] = set()  # outcomes of streams their clients left

    async def _ensure_served(self, ref: AdapterRef) -> None:
        """Refuse an adapter the backend does not serve (TGI would silently run the base model instead)."""
        now = time.monotonic()
        if ref.served_id in self._served and now - self._served_at < SERVED_CACHE_S:
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
            try:
                salt = await self.digests.plain("vllm.cache_salt\x00" + subject)
            except Exception as exc:  # fail closed: no salt, no request
                raise BackendUnavailable("the prefix-cache salt cannot be derived (key service)") from exc
            if len(self._salts) >= MAX_CACHE_SALTS:
                self._salts.clear()
            self._salts[subject] = salt
        return salt

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
        version, prompt_digest = ctx.prompt_digest or await self.digests.versioned_digest(prompt, None)
        digests: dict[str, Any] = {"key_version": version, "prompt": prompt_digest, "output": None}
        failed: ApplianceError | None = None
        try:
            digests["output"] = (await self.digests.versioned_digest(output, version))[1]
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
        audit_id = await self.auditor.record(
            self.auditor.event(
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

    async def generate(self, admitted: Admitted, params: GenerationParams) -> Generation:
        """The backend's answer, returned only once the request and outcome records are durable."""
        ctx, ref, prompt, record = admitted.ctx, admitted.ref, admitted.prompt, admitted.record
        audit_id = admitted.audit_id
        started = time.perf_counter()
        try:
            await self._ensure_served(ref)
            begin_routing(ref.fingerprint, await self._cache_salt(ctx))
            gen = await self.backend.generate(ref.served_id, prompt, params)
        except BackendError as exc:
            await self.auditor.durable(record)
            await self._outcome(ctx, ref, audit_id, started, prompt=prompt, gen=None, error=exc)
            raise refusal(exc, audit_id) from None
        await self.auditor.durable(record)
        await self._outcome(ctx, ref, audit_id, started, prompt=prompt, gen=gen, error=None)
        return gen

    async def stream(
        self, admitted: Admitted, params: GenerationParams
    ) -> AsyncGenerator[TokenEvent | ApplianceError, None]:
        """Token events, the first once the request record is durable, the last once the outcome is (else an
        error is yielded in their place). A client that leaves mid-stream still gets an outcome record (what it
        was sent, CLIENT_CLOSED) and is charged the tokens it was sent."""
        ctx, ref, prompt, record = admitted.ctx, admitted.ref, admitted.prompt, admitted.record
        audit_id = admitted.audit_id
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
                        await self.auditor.durable(record)
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
                await self.auditor.durable(record)
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
        self, admitted: Admitted, params: GenerationParams
    ) -> AsyncIterator[TokenEvent | ApplianceError]:
        """:meth:`stream` with its first event already in hand, for the routes to call before they send a status line:
        the request record is then durable (GW-07: durable before the first byte of the answer) and the backend has
        started. A failure before that is raised (503 ``AUDIT_UNAVAILABLE``, the backend's error with the request's
        audit id), so a stream that could not be audited never answers 200."""
        events = self.stream(admitted, params)
        first = await anext(events)
        if isinstance(first, ApplianceError):
            await events.aclose()
            raise first if isinstance(first, AuditUnavailable) else refusal(first, admitted.audit_id)
        return _primed(first, events)

    def _forget(self, task: asyncio.Future[str]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an audit failure is already logged and counted by the auditor


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
