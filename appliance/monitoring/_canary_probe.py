"""Canary probes in production: how much of its training canaries a served adapter gives away.

Each canary's prompt (the exact text training scored it under) goes to the adapter through the same ``Backend``
the gateway uses. Two methods:

- ``logprobs`` (the embedded engine and TGI: ``details`` with ``decoder_input_details``): the secret and
  ``candidates`` sampled secrets of its format are each sent after the prompt; the summed log-probability of the
  tokens after the prompt is each one's score, and the exposure is training's Secret Sharer estimate
  (``appliance.canaries.exposure``: log2|R| - log2 rank) over those scores, so the served number is comparable with
  the one measured when the adapter was approved.
- ``greedy`` (any backend, e.g. vLLM without prompt log-probabilities): one greedy completion of the prompt; a
  reproduced secret is ranked first (log2|R| = 26.6 bits), anything else gets 0 bits (no rank is observable).

``auto`` uses log-probabilities when the backend returns them and greedy otherwise. Prompts, completions and
secrets stay in memory: the result, its audit events and its gauge hold numbers only.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from appliance.audit import AuditEventFields, adapter_fields, audit_event, system_actor
from appliance.canaries import SPACE_BITS, ProbeCanary, candidate_pool, exposure
from appliance.errors import BackendError, BackendValidation
from appliance.protocols import AuditLog, Backend, GenerationParams

__all__ = [
    "MONITOR_ACTOR",
    "CanaryMetrics",
    "CanaryProbeResult",
    "alert_event",
    "probe_canaries",
    "probe_event",
    "record_probe",
]

log = structlog.get_logger("appliance.monitoring")

Method = Literal["auto", "logprobs", "greedy"]
MONITOR_ACTOR = "appliance-monitor"  # the actor subject of the probe's audit events (auth_method "system")
_GREEDY_TOKENS = 24  # "MRN " and 8 digits, even one token per character, plus slack


@dataclass(frozen=True)
class CanaryProbeResult:
    """What one probe of one served adapter measured (numbers only: safe to audit and export)."""

    adapter: str  # the served id, e.g. "triage-v1"
    method: Literal["logprobs", "greedy"]
    exposures: tuple[float, ...]  # bits, one per canary in the order given
    repetitions: tuple[int, ...]  # how often each canary was inserted in training
    candidates: int  # sampled candidates per canary (logprobs); 0 for greedy
    threshold: float  # approval.max_canary_exposure
    requests: int  # generations sent to the backend

    @property
    def max_exposure(self) -> float:
        return max(self.exposures, default=0.0)

    @property
    def exceeded(self) -> bool:
        return self.max_exposure > self.threshold

    def details(self) -> dict[str, str | int | float | bool | None]:
        """The audit event's details: identifiers and numbers only."""
        return {
            "method": self.method,
            "canaries": len(self.exposures),
            "candidates": self.candidates,
            "max_exposure": round(self.max_exposure, 4),
            "threshold": self.threshold,
            "exceeded": self.exceeded,
            "requests": self.requests,
        }


def _params(max_new_tokens: int, *, prefill: bool) -> GenerationParams:
    extra = {"decoder_input_details": True} if prefill else {}
    return GenerationParams(max_new_tokens=max_new_tokens, do_sample=False, details=True, extra=extra)


def _prefill(details: Mapping[str, Any] | None) -> list[tuple[int, float | None]] | None:
    """(token id, logprob) of each input token, or None when the backend gave none."""
    entries = (details or {}).get("prefill")
    if not isinstance(entries, list) or not entries:
        return None
    try:
        return [(int(e["id"]), None if e.get("logprob") is None else float(e["logprob"])) for e in entries]
    except (KeyError, TypeError, ValueError):
        return None


def _continuation_nll(prompt_ids: Sequence[int], entries: Sequence[tuple[int, float | None]]) -> float:
    """Negative log-likelihood of the input tokens after the prompt (after the longest common prefix with the
    prompt's tokens, so a boundary token merged by the tokenizer is counted for every candidate alike)."""
    k = 0
    while k < len(prompt_ids) and k < len(entries) and entries[k][0] == prompt_ids[k]:
        k += 1
    if k == len(entries):
        raise BackendError("the backend's prefill ended before the candidate secret")
    return -sum(lp for _, lp in entries[k:] if lp is not None)


async def _probe_one(
    backend: Backend,
    adapter: str,
    probe: ProbeCanary,
    method: Method,
    candidates: int,
    limit: asyncio.Semaphore,
    rng: random.Random | None,
) -> tuple[str, float, int]:
    """(method used, exposure, requests sent) for one canary."""
    async with limit:
        try:
            first = await backend.generate(adapter, probe.prompt, _params(_GREEDY_TOKENS, prefill=method != "greedy"))
        except BackendValidation:
            if method != "auto":
                raise
            method = "greedy"  # a backend that refuses decoder_input_details (OpenAI-style servers may)
            first = await backend.generate(adapter, probe.prompt, _params(_GREEDY_TOKENS, prefill=False))
    prompt_entries = _prefill(first.details) if method != "greedy" else None
    if prompt_entries is None:
        if method == "logprobs":
            raise BackendError("the backend returns no prompt log-probabilities; use the greedy method")
        reproduced = probe.canary.secret in first.text
        return "greedy", (SPACE_BITS if reproduced else 0.0), 1
    prompt_ids = [token for token, _ in prompt_entries]
    pool = candidate_pool(probe.canary.secret, candidates, rng)

    async def score(secret: str) -> float:
        async with limit:
            text = probe.prompt + probe.canary.response(secret)
            generation = await backend.generate(adapter, text, _params(1, prefill=True))
        entries = _prefill(generation.details)
        if entries is None:
            raise BackendError("the backend stopped returning prompt log-probabilities during a probe")
        return _continuation_nll(prompt_ids, entries)

    scores = await asyncio.gather(*(score(s) for s in [probe.canary.secret, *pool]))
    return "logprobs", exposure(scores[0], scores[1:]), 1 + len(scores)


async def probe_canaries(
    backend: Backend,
    adapter: str,
    canaries: Sequence[ProbeCanary],
    *,
    max_exposure: float,
    candidates: int,
    method: Method = "auto",
    concurrency: int = 4,
    rng: random.Random | None = None,
) -> CanaryProbeResult:
    """Probe the served ``adapter`` with each canary's prompt and measure each canary's exposure.

    ``max_exposure`` is ``approval.max_canary_exposure`` (``Registry.approval_limits()``); ``candidates`` the
    sampled secrets each canary is ranked among (the run's own count: ``CanaryDocument.candidates``).
    ``concurrency`` bounds the generations in flight; ``rng`` draws the candidates (the OS CSPRNG when None).
    Backend failures raise ``BackendError`` (the probe fails closed: no number is better than a wrong one).
    """
    if candidates < 2:
        raise ValueError("a probe ranks each secret among at least 2 candidates")
    limit = asyncio.Semaphore(max(1, concurrency))
    measured = [await _probe_one(backend, adapter, p, method, candidates, limit, rng) for p in canaries]
    # one method per result: a backend that gave log-probabilities for one canary gives them for all
    final: Literal["logprobs", "greedy"] = "logprobs" if measured and measured[0][0] == "logprobs" else "greedy"
    if any(m != final for m, _, _ in measured):
        raise BackendError("the backend returned prompt log-probabilities for some canaries only")
    return CanaryProbeResult(
        adapter=adapter,
        method=final,
        exposures=tuple(e for _, e, _ in measured),
        repetitions=tuple(p.canary.repetitions for p in canaries),
        candidates=candidates if final == "logprobs" else 0,
        threshold=float(max_exposure),
        requests=sum(n for _, _, n in measured),
    )


# --- what a probe leaves behind: audit events and a gauge ------------------------------------------------------
def _event(
    event_type: str, action: str, result: CanaryProbeResult, name: str, version: int, fingerprint: str | None
) -> AuditEventFields:
    return audit_event(
        event_type,
        actor=system_actor(MONITOR_ACTOR),
        action=action,
        adapter=adapter_fields(name, version, fingerprint),
        details=result.details(),
    )


def probe_event(result: CanaryProbeResult, *, name: str, version: int, fingerprint: str | None) -> AuditEventFields:
    """The ``adapter.canary_probe`` audit event (contracts.md shape; numbers only)."""
    return _event("adapter.canary_probe", "canary_probe", result, name, version, fingerprint)


def alert_event(result: CanaryProbeResult, *, name: str, version: int, fingerprint: str | None) -> AuditEventFields:
    """The ``adapter.canary_alert`` audit event: the served exposure is above the approval threshold."""
    return _event("adapter.canary_alert", "canary_alert", result, name, version, fingerprint)


class CanaryMetrics:
    """``appliance_adapter_canary_exposure{adapter,version}``: the highest exposure the last probe measured."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.exposure = Gauge(
            "appliance_adapter_canary_exposure",
            "Highest canary exposure (bits) the last production probe measured",
            ["adapter", "version"],
            registry=self.registry,
        )


def record_probe(
    audit: AuditLog,
    result: CanaryProbeResult,
    *,
    name: str,
    version: int,
    fingerprint: str | None,
    metrics: CanaryMetrics | None = None,
) -> bool:
    """Audit the probe (durable before returning), set the gauge and, above the threshold, audit the alert.
    Returns whether the threshold was exceeded (the caller rolls back when ``auto_rollback`` says so)."""
    audit.record_sync(probe_event(result, name=name, version=version, fingerprint=fingerprint))
    if metrics is not None:
        metrics.exposure.labels(adapter=name, version=str(version)).set(result.max_exposure)
    if result.exceeded:
        audit.record_sync(alert_event(result, name=name, version=version, fingerprint=fingerprint))
        log.warning(
            "adapter.canary_alert",
            adapter=name,
            version=version,
            max_exposure=round(result.max_exposure, 4),
            threshold=result.threshold,
        )
    return result.exceeded
