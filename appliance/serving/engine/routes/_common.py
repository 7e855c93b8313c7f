"""What the engine's route modules share: the app state (a Litestar dependency), metrics, errors, bodies.

Each route takes ``engine_state: EngineStateDep`` (an EngineState), provided from ``app.state`` (``create_app``
puts it there).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import structlog
from litestar import Request, Response
from litestar.datastructures import State
from litestar.di import NamedDependency
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from appliance.errors import (
    ApplianceError,
    BackendOverloaded,
    BackendUnavailable,
    BackendValidation,
    IntegrityViolation,
    PermissionDenied,
    Unauthenticated,
    ValidationFailed,
)
from appliance.serving.engine._engine import Engine
from appliance.serving.engine._protocol import error_body
from appliance.serving.engine._scheduler import Finished

log = structlog.get_logger(__name__)

STATE_KEY = "engine_state"
SSE_HEADERS = {"x-accel-buffering": "no"}  # no proxy buffering of event streams


class Metrics:
    """TGI-named Prometheus metrics in a registry of this app's own."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tgi_request_count", "Generation requests received", registry=r)
        self.success = Counter("tgi_request_success", "Generation requests that succeeded", registry=r)
        self.failure = Counter("tgi_request_failure", "Generation requests that failed", ["err"], registry=r)
        self.duration = Histogram("tgi_request_duration", "Request duration (s)", registry=r)
        self.generated = Histogram(
            "tgi_request_generated_tokens", "Generated tokens per request", registry=r, buckets=(1, 8, 32, 128, 512)
        )
        self.cancelled = Counter("appliance_engine_disconnects", "Requests whose client went away", registry=r)
        dropped = Gauge("appliance_engine_cancelled_sequences", "Sequences dropped after a disconnect", registry=r)
        dropped.set_function(lambda: engine.scheduler.cancelled_total)
        queue = Gauge("tgi_queue_size", "Requests waiting", registry=r)
        batch = Gauge("tgi_batch_current_size", "Sequences in the running batch", registry=r)
        queue.set_function(lambda: engine.scheduler.waiting)
        batch.set_function(lambda: engine.scheduler.running)
        adapters = Gauge("appliance_engine_adapters_loaded", "LoRA adapters loaded", registry=r)
        adapters.set_function(lambda: len(engine.adapters()))
        mixed = Gauge("appliance_engine_mixed_adapter_steps", "Decode steps that mixed adapters", registry=r)
        mixed.set_function(lambda: engine.scheduler.batches_mixed)


@dataclass
class EngineState:
    """What every route needs: the engine, its metrics, the reload token; SIGHUP reloads still running."""

    engine: Engine
    metrics: Metrics
    admin_token: str | None = None
    pending: set[asyncio.Task[None]] = field(default_factory=set)

    async def record(self, work: Awaitable[Any]) -> Any:
        """Await a non-streamed generation, counting it (requests, success or failure by kind, duration)."""
        started = time.perf_counter()
        self.metrics.requests.inc()
        try:
            result = await work
        except ApplianceError as exc:
            self.metrics.failure.labels(err=error_type(exc)[1]).inc()
            raise
        self.metrics.success.inc()
        self.metrics.duration.observe(time.perf_counter() - started)
        return result

    def failed(self, exc: ApplianceError) -> dict[str, str]:
        """Count a failure that a stream reports as an event; the event's body."""
        kind = error_type(exc)[1]
        self.metrics.failure.labels(err=kind).inc()
        return error_body(exc.message, kind)


EngineStateDep: TypeAlias = NamedDependency[EngineState]  # a route's ``engine_state`` parameter


def provide_engine_state(state: State) -> EngineState:
    """The Litestar dependency ``engine_state``."""
    value = state[STATE_KEY]
    assert isinstance(value, EngineState)
    return value


def error_type(exc: ApplianceError) -> tuple[int, str]:
    """TGI's status and ``error_type`` of an error."""
    if isinstance(exc, BackendValidation | ValidationFailed):
        return 422, "validation"
    if isinstance(exc, BackendOverloaded):
        return 429, "overloaded"
    if isinstance(exc, IntegrityViolation):
        return 409, "integrity"
    if isinstance(exc, Unauthenticated):
        return 401, "unauthenticated"
    if isinstance(exc, PermissionDenied):
        return 403, "forbidden"
    if isinstance(exc, BackendUnavailable):
        return 503, "unhealthy"
    return 424, "generation"


def error_response(exc: ApplianceError) -> Response[Any]:
    status, kind = error_type(exc)
    return Response(content=error_body(exc.message, kind), status_code=status, media_type="application/json")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def json_body(request: Request[Any, Any, Any]) -> Any:
    try:  # NaN and Infinity are not JSON (serde refuses them; json.loads would not)
        return json.loads(await request.body(), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
        raise BackendValidation("Failed to parse the request body as JSON") from exc


async def _until_disconnect(request: Request[Any, Any, Any]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request[Any, Any, Any], work: Awaitable[Any], metrics: Metrics) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (which cancels the generation)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        metrics.cancelled.inc()
        log.info("engine.client_disconnected")
        raise asyncio.CancelledError
    finally:
        watcher.cancel()


async def all_or_none(works: list[Awaitable[Finished]]) -> list[Finished]:
    """``asyncio.gather``, except that when one fails the others are cancelled (gather lets them run on)."""
    tasks = [asyncio.ensure_future(w) for w in works]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
