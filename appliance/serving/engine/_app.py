"""The engine's ASGI app (Litestar): TGI's HTTP API, its OpenAI-compatible routes, health, info and metrics.

Routes (``routes/``): POST ``/`` (``stream`` selects SSE), ``/generate``, ``/generate_stream``, ``/tokenize``
(``tgi``); ``/v1/completions``, ``/v1/chat/completions`` (``openai``); GET ``/info``, ``/health``, ``/metrics``,
``/v1/models`` and POST ``/admin/reload`` (bearer token from settings, else loopback callers only) (``ops``).
Errors are TGI's ``{"error", "error_type"}`` with 422 (validation), 424 (generation), 429 (overloaded); on SSE
routes they arrive as an event after the 200, as TGI sends them. A client that disconnects cancels its generation.
The routes reach the engine through the ``engine_state`` dependency (``app.state``), never a closure.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException

from appliance.errors import ApplianceError
from appliance.serving.engine._engine import Engine
from appliance.serving.engine._protocol import error_body
from appliance.serving.engine.routes import openai, ops, tgi
from appliance.serving.engine.routes._common import (
    STATE_KEY,
    EngineState,
    Metrics,
    error_response,
    provide_engine_state,
)

log = structlog.get_logger(__name__)

# TGI's --payload-limit default (Litestar's own is 10 MB): a larger body is a 413 before it is read, parsed
# and tokenized (10 MB of inputs took ~10 s to tokenize).
MAX_BODY_BYTES = 2_000_000


def _on_appliance_error(_: Request[Any, Any, Any], exc: ApplianceError) -> Response[Any]:
    return error_response(exc)


def _on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    kind = "validation" if exc.status_code in (400, 422) else "http"
    return Response(content=error_body(str(exc.detail), kind), status_code=exc.status_code)


def _on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("engine.unexpected_error", error=type(exc).__name__)
    return Response(content=error_body("internal error", "generation"), status_code=500)


def _install_sighup(app: Litestar) -> None:
    """SIGHUP reloads the published list (failures are logged; the engine keeps what it serves)."""
    es: EngineState = app.state[STATE_KEY]
    loop = asyncio.get_running_loop()

    def reload_on_signal() -> None:
        async def run() -> None:
            try:
                await es.engine.reload()
            except ApplianceError as exc:
                log.error("engine.reload_failed", code=exc.code, reason=exc.message)

        task = loop.create_task(run())
        es.pending.add(task)
        task.add_done_callback(es.pending.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload_on_signal)
    except (NotImplementedError, RuntimeError, ValueError):
        log.warning("engine.sighup_unavailable")


def create_app(engine: Engine, *, admin_token: str | None = None, install_sighup: bool = False) -> Litestar:
    """The ASGI app serving ``engine``."""
    es = EngineState(engine=engine, metrics=Metrics(engine), admin_token=admin_token)
    return Litestar(
        route_handlers=[*tgi.ROUTES, *openai.ROUTES, *ops.ROUTES],
        dependencies={"engine_state": Provide(provide_engine_state, sync_to_thread=False)},
        state=State({STATE_KEY: es}),
        exception_handlers={
            ApplianceError: _on_appliance_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
        on_startup=[_install_sighup] if install_sighup else [],
        openapi_config=None,
        request_max_body_size=MAX_BODY_BYTES,
        debug=False,
    )
