"""``ReplicaSet``: one Backend over several inference servers (``serving.replicas``).

Routing, per request: the replicas that hold the adapter with the published fingerprint (the routing note's,
``_routing.py``), healthy ones first, least outstanding requests per unit of weight, ties broken by a
rendezvous hash of the adapter id so an adapter keeps landing on the same replica (its prefix/KV cache stays
warm). A replica that refuses connections, times out or answers 503 is taken out and probed back in on
``/health`` with a doubling back-off; what each replica holds is re-read every ``refresh_s``.

Failover: a request that failed on one replica before any token reached the caller (connection refused or
dropped, timeout, 503, 429) is sent once more to another replica that holds the adapter; a stream that has
yielded a token is never replayed, its error goes to the caller. With no healthy holder left, an unhealthy one
is tried anyway (so a single replica behaves as the plain client did).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import Protocol, cast
from urllib.parse import urlsplit

import structlog
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from appliance.contracts import GenerationParams
from appliance.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    BackendValidation,
)
from appliance.protocols import Generation, TokenEvent
from appliance.serving._routing import Routing, current_routing

__all__ = ["Replica", "ReplicaSet", "ReplicaStatus", "replica_name"]

log = structlog.get_logger(__name__)

_MISSING = "\x00missing"


class ReplicaClient(Protocol):
    """A Backend that also says what it holds: adapter id -> weights fingerprint (None: the server reports none)."""

    async def generate(self, adapter: str | None, prompt: str, params: GenerationParams) -> Generation: ...

    def stream(self, adapter: str | None, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent]: ...

    async def health(self) -> bool: ...

    async def holdings(self) -> dict[str, str | None]: ...

    async def aclose(self) -> None: ...


def replica_name(url: str) -> str:
    """``host:port`` of a base URL (the default replica name)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


@dataclass(eq=False)
class Replica:
    """One server and what the router knows of it."""

    name: str
    client: ReplicaClient
    weight: float = 1.0
    healthy: bool = True
    inflight: int = 0
    holdings: dict[str, str | None] = field(default_factory=dict)
    holdings_at: float = -math.inf  # monotonic time of the last read (or failed try)
    known: bool = False  # its holdings were read at least once
    misses: int = 0  # failed probes since it was taken out
    next_probe: float = 0.0

    def holds(self, adapter: str | None, fingerprint: str | None) -> bool:
        """Whether it serves the adapter, with that fingerprint when both sides know one."""
        if adapter is None:
            return True
        held = self.holdings.get(adapter, _MISSING)
        if held == _MISSING:
            return False
        if fingerprint is None or held is None:
            return True
        return hmac.compare_digest(held, fingerprint)


@dataclass(frozen=True)
class ReplicaStatus:
    """Readiness over replicas: ready while every listed adapter has a healthy holder."""

    ready: bool
    degraded: list[str]  # replicas taken out
    uncovered: list[str]  # adapters no healthy replica holds


def _failover_worthy(exc: BackendError) -> bool:
    return isinstance(exc, BackendUnavailable | BackendTimeout | BackendOverloaded)


def _takes_out(exc: BackendError) -> bool:
    return isinstance(exc, BackendUnavailable | BackendTimeout)


class _Metrics:
    """Per-replica Prometheus series; registered into the gateway's registry through :meth:`collect`."""

    def __init__(self, replicas: list[Replica]) -> None:
        self._replicas = replicas
        self.requests = Counter(
            "appliance_replica_requests", "Requests answered by a replica", ["replica"], registry=None
        )
        self.errors = Counter(
            "appliance_replica_errors", "Requests a replica failed", ["replica", "error"], registry=None
        )
        self.latency = Histogram(
            "appliance_replica_request_seconds",
            "Time a replica took, to the last byte",
            ["replica"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=None,
        )
        self.failovers = Counter("appliance_replica_failovers", "Requests sent again to another replica", registry=None)

    def collect(self) -> Iterator[Metric]:
        yield from self.requests.collect()
        yield from self.errors.collect()
        yield from self.latency.collect()
        yield from self.failovers.collect()
        inflight = GaugeMetricFamily("appliance_replica_in_flight", "Requests outstanding", labels=["replica"])
        healthy = GaugeMetricFamily(
            "appliance_replica_healthy", "1 while the replica is in rotation", labels=["replica"]
        )
        for r in self._replicas:
            inflight.add_metric([r.name], r.inflight)
            healthy.add_metric([r.name], 1.0 if r.healthy else 0.0)
        yield inflight
        yield healthy


class ReplicaSet:
    """A Backend routing over replicas (see the module docstring)."""

    name = "replicas"

    def __init__(
        self,
        replicas: list[Replica],
        *,
        probe_initial_s: float = 0.25,
        probe_max_s: float = 10.0,
        refresh_s: float = 2.0,
        probe_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError("a ReplicaSet needs at least one replica")
        names = [r.name for r in replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique: {names}")
        self.replicas = replicas
        self.probe_initial_s = probe_initial_s
        self.probe_max_s = probe_max_s
        self.refresh_s = refresh_s
        self.probe_timeout_s = probe_timeout_s
        self._clock = clock
        self.metrics = _Metrics(replicas)
        self._ranks: dict[str | None, list[int]] = {}  # adapter -> each replica's rendezvous rank
        self._refreshing: asyncio.Task[None] | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        # the gateway derives a per-principal prefix-cache salt only when some replica is vLLM (``cache_salt``)
        self.wants_cache_salt = any(getattr(r.client, "name", "") == "vllm" for r in replicas)

    # --- routing ------------------------------------------------------------------------------------------
    def choose(self, adapter: str | None, fingerprint: str | None, exclude: Iterable[Replica] = ()) -> Replica | None:
        """The replica for a request: healthy holders first, least load per weight, rendezvous tie-break."""
        ranks = self._ranks.get(adapter)
        if ranks is None:
            ranks = self._ranks[adapter] = self._rendezvous(adapter)
        best: Replica | None = None
        best_key: tuple[bool, float, int] = (True, math.inf, 0)
        for i, r in enumerate(self.replicas):
            if r in exclude or not r.holds(adapter, fingerprint):
                continue
            key = (not r.healthy, r.inflight / r.weight, ranks[i])
            if best is None or key < best_key:
                best, best_key = r, key
        return best

    def _rendezvous(self, adapter: str | None) -> list[int]:
        scores = [hashlib.blake2b(f"{adapter}\x00{r.name}".encode(), digest_size=8).digest() for r in self.replicas]
        order = sorted(range(len(scores)), key=lambda i: scores[i])
        ranks = [0] * len(scores)
        for rank, i in enumerate(order):
            ranks[i] = rank
        if len(self._ranks) > 4096:  # adapter ids come from the published set; bounded all the same
            self._ranks.clear()
        return ranks

    async def _first_choice(self, adapter: str | None, fingerprint: str | None) -> Replica:
        self._start_maintainer()
        if adapter == "":
            raise BackendValidation("an empty adapter id names no adapter (None is the base model)")
        if any(r.holdings_at == -math.inf for r in self.replicas):
            await self._refresh_all()
        replica = self.choose(adapter, fingerprint)
        if replica is None and self._clock() - self._oldest_holdings() > min(self.refresh_s, 0.5):
            await self._refresh_all()  # a fresh publication: look again before refusing
            replica = self.choose(adapter, fingerprint)
        if replica is None:
            if not all(r.known for r in self.replicas):  # unknown is not "not loaded": a 503
                raise BackendUnavailable("no replica that may hold the adapter answers")
            raise BackendValidation(f"adapter {adapter!r} is not loaded with its published fingerprint on any replica")
        return replica

    # --- the Backend protocol -----------------------------------------------------------------------------
    async def _route(self, adapter: str | None) -> tuple[Routing | None, str | None, Replica]:
        """The request's routing note, the fingerprint it must be served with, and the first replica to ask."""
        note = current_routing()
        fingerprint = note.fingerprint if note is not None and adapter is not None else None
        return note, fingerprint, await self._first_choice(adapter, fingerprint)

    @contextmanager
    def _attempt(self, note: Routing | None, replica: Replica) -> Iterator[None]:
        """One try on ``replica``: named in the routing note, counted in flight, its latency observed."""
        if note is not None:
            note.replica = replica.name
        started = time.perf_counter()
        replica.inflight += 1
        try:
            yield
        finally:
            replica.inflight -= 1
            self.metrics.latency.labels(replica.name).observe(time.perf_counter() - started)

    def _succeeded(self, replica: Replica) -> None:
        self.metrics.requests.labels(replica.name).inc()
        self._answered(replica)

    async def generate(self, adapter: str | None, prompt: str, params: GenerationParams) -> Generation:
        note, fingerprint, replica = await self._route(adapter)
        for attempt in (0, 1):
            current = replica
            try:
                with self._attempt(note, current):
                    gen = await current.client.generate(adapter, prompt, params)
            except BackendError as exc:
                again = await self._failed(current, exc, adapter, fingerprint, attempt)
                if again is None:
                    raise
                replica = again
                continue
            self._succeeded(current)
            return gen
        raise AssertionError("unreachable")  # pragma: no cover

    async def stream(self, adapter: str | None, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent]:
        note, fingerprint, replica = await self._route(adapter)
        for attempt in (0, 1):
            current = replica
            yielded = False
            try:
                with self._attempt(note, current):
                    async with aclosing(
                        cast(AsyncGenerator[TokenEvent], current.client.stream(adapter, prompt, params))
                    ) as events:
                        async for event in events:
                            yielded = True
                            yield event
            except BackendError as exc:
                if yielded:  # the caller has tokens: never replayed, the error ends its stream
                    self._count_error(current, exc)
                    if _takes_out(exc):
                        self._take_out(current, type(exc).__name__)
                    raise
                again = await self._failed(current, exc, adapter, fingerprint, attempt)
                if again is None:
                    raise
                replica = again
                continue
            self._succeeded(current)
            return

    async def health(self) -> bool:
        """Probe every replica now; True while at least one is healthy."""
        self._start_maintainer()
        await asyncio.gather(*(self._probe(r) for r in self.replicas))
        if self._clock() - self._oldest_holdings() > self.refresh_s:
            await self._refresh_all()  # readiness asks what they hold too
        return any(r.healthy for r in self.replicas)

    async def adapters(self) -> set[str]:
        """Every adapter some replica holds (healthy or not: a request for one whose holders are down is a 503).

        Re-read when older than half a second (as before refusing a request): the gateway asks only when an
        adapter is not in its cached set, and a publication that just reached the replicas must count at once."""
        self._start_maintainer()
        if self._clock() - self._oldest_holdings() > min(self.refresh_s, 0.5):
            await self._refresh_all()
        if not any(r.known for r in self.replicas):
            raise BackendUnavailable("no replica answers (what they hold is unknown)")
        return {a for r in self.replicas for a in r.holdings}

    async def aclose(self) -> None:
        for task in (self._maintainer, self._refreshing):
            if task is not None and not task.done():
                task.cancel()
        self._maintainer = self._refreshing = None
        for r in self.replicas:
            await r.client.aclose()

    # --- readiness ----------------------------------------------------------------------------------------
    def status(self, adapters: Iterable[tuple[str, str | None]]) -> ReplicaStatus:
        """Ready while each (adapter id, fingerprint) has a healthy holder; the replicas taken out."""
        uncovered = sorted({a for a, fp in adapters if not any(r.healthy and r.holds(a, fp) for r in self.replicas)})
        degraded = [r.name for r in self.replicas if not r.healthy]
        return ReplicaStatus(
            ready=not uncovered and len(degraded) < len(self.replicas), degraded=degraded, uncovered=uncovered
        )

    # --- health bookkeeping -------------------------------------------------------------------------------
    def _count_error(self, replica: Replica, exc: BackendError) -> None:
        self.metrics.errors.labels(replica.name, exc.code).inc()

    async def _failed(
        self, replica: Replica, exc: BackendError, adapter: str | None, fingerprint: str | None, attempt: int
    ) -> Replica | None:
        """Count the failure, take the replica out if it stopped answering; the replica to try next, if any.

        When no other replica is known to hold the adapter, what they hold is read again first: a publication
        that reached them since the last read (``registry publish`` reloads every replica) counts."""
        self._count_error(replica, exc)
        if _takes_out(exc):
            self._take_out(replica, type(exc).__name__)
        if attempt > 0 or not _failover_worthy(exc):
            return None
        again = self.choose(adapter, fingerprint, exclude=(replica,))
        if again is None and len(self.replicas) > 1:
            await self._refresh_all()
            again = self.choose(adapter, fingerprint, exclude=(replica,))
        if again is not None:
            self.metrics.failovers.inc()
            log.warning("replica.failover", replica=replica.name, to=again.name, error=exc.code)
        return again

    def _take_out(self, replica: Replica, why: str) -> None:
        if not replica.healthy:  # already out: its probe back-off runs on
            return
        log.warning("replica.down", replica=replica.name, error=why)
        replica.healthy = False
        replica.misses = 0
        replica.next_probe = self._clock() + self.probe_initial_s
        if self._wake is not None:
            self._wake.set()  # the probe loop may be asleep for refresh_s

    def _answered(self, replica: Replica) -> None:
        """An answer is health evidence too: a replica taken out that answers is back in rotation."""
        if not replica.healthy:
            log.info("replica.up", replica=replica.name)
            replica.healthy, replica.misses = True, 0

    async def _probe(self, replica: Replica) -> None:
        try:
            ok = bool(await asyncio.wait_for(replica.client.health(), self.probe_timeout_s))
        except Exception:
            ok = False
        if ok and not replica.healthy:
            try:
                await self._refresh(replica)
            except Exception:
                ok = False
        if ok:
            if not replica.healthy:
                log.info("replica.up", replica=replica.name)
            replica.healthy, replica.misses = True, 0
            return
        if replica.healthy:
            self._take_out(replica, "probe")
            return
        replica.misses += 1
        delay = min(self.probe_max_s, self.probe_initial_s * (2**replica.misses))
        replica.next_probe = self._clock() + delay

    async def _refresh(self, replica: Replica) -> None:
        replica.holdings = await asyncio.wait_for(replica.client.holdings(), self.probe_timeout_s)
        replica.holdings_at, replica.known = self._clock(), True

    async def _refresh_all(self) -> None:
        """Re-read what every healthy (or never read) replica holds; one refresh at a time, shared by callers."""
        running = self._refreshing
        if running is None or running.done() or running.get_loop() is not asyncio.get_running_loop():
            running = self._refreshing = asyncio.ensure_future(self._do_refresh_all())
        await asyncio.shield(running)

    async def _do_refresh_all(self) -> None:
        async def one(r: Replica) -> None:
            if not r.healthy and r.known:
                return
            try:
                await self._refresh(r)
            except BackendError as exc:
                if _takes_out(exc):
                    self._take_out(r, type(exc).__name__)
                r.holdings_at = max(r.holdings_at, self._clock() - self.refresh_s)  # read again soon, not at once
            except Exception as exc:  # a malformed answer: keep what we knew
                log.warning("replica.holdings_unreadable", replica=r.name, error=type(exc).__name__)
                r.holdings_at = max(r.holdings_at, self._clock() - self.refresh_s)

        await asyncio.gather(*(one(r) for r in self.replicas))

    def _oldest_holdings(self) -> float:
        return min(r.holdings_at for r in self.replicas if r.healthy) if any(r.healthy for r in self.replicas) else 0.0

    # --- the background probe loop ------------------------------------------------------------------------
    def _start_maintainer(self) -> None:
        loop = asyncio.get_running_loop()
        if self._maintainer is not None and not self._maintainer.done() and self._loop is loop:
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._maintainer = loop.create_task(self._maintain())

    async def _maintain(self) -> None:
        while True:
            now = self._clock()
            due = [r for r in self.replicas if not r.healthy and r.next_probe <= now]
            if due:
                await asyncio.gather(*(self._probe(r) for r in due))
            if now - self._oldest_holdings() >= self.refresh_s:
                try:
                    await self._refresh_all()
                except Exception as exc:
                    log.warning("replica.refresh_failed", error=type(exc).__name__)
            waits = [r.next_probe - self._clock() for r in self.replicas if not r.healthy]
            wake = self._wake
            if wake is None:
                return
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.02, min([self.refresh_s, *waits])))
