"""GET ``/info``, ``/health``, ``/metrics``, ``/v1/models``; POST ``/admin/reload`` (bearer token, else loopback)."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from litestar import Request, Response, get, post
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from appliance.errors import BackendUnavailable, PermissionDenied, Unauthenticated
from appliance.serving.engine._answers import VERSION
from appliance.serving.engine.routes._common import EngineStateDep, error_response


@get("/info", sync_to_thread=False)
def info(engine_state: EngineStateDep) -> dict[str, Any]:
    engine = engine_state.engine
    limits = engine.limits
    return {
        "model_id": engine.model_id,
        "model_sha": None,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": engine.scheduler.max_queue + engine.scheduler.max_batch_size,
        "max_best_of": limits.max_best_of,
        "max_stop_sequences": limits.max_stop_sequences,
        "max_input_tokens": limits.max_input_tokens,
        "max_total_tokens": limits.max_total_tokens,
        "validation_workers": engine.tokenizers.workers,
        "max_client_batch_size": limits.max_client_batch_size,
        "router": "appliance-embedded-engine",
        "version": VERSION,
        "sha": None,
        "docker_label": None,
        "adapters": [{"id": a, "fingerprint": f} for a, f in sorted(engine.fingerprints().items())],
    }


@get("/health", sync_to_thread=False)
def health(engine_state: EngineStateDep) -> Response[Any]:
    if engine_state.engine.healthy():
        return Response(content=b"", status_code=200)
    return error_response(BackendUnavailable("unhealthy"))


@get("/v1/models", sync_to_thread=False)
def models(engine_state: EngineStateDep) -> dict[str, Any]:
    engine = engine_state.engine
    created = 0
    base = {
        "id": engine.model_id,
        "object": "model",
        "created": created,
        "owned_by": "appliance",
        "root": engine.model_id,
        "parent": None,
    }
    fingerprints = engine.fingerprints()  # what each adapter was loaded with: the gateway routes on it
    data = [base] + [
        {
            "id": a,
            "object": "model",
            "created": created,
            "owned_by": "appliance",
            "root": a,
            "parent": engine.model_id,
            "fingerprint": fingerprints.get(a),
        }
        for a in sorted(engine.adapters())
    ]
    return {"object": "list", "data": data}


@get("/metrics", sync_to_thread=False)
def prometheus(engine_state: EngineStateDep) -> Response[bytes]:
    body = generate_latest(engine_state.metrics.registry)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST, status_code=200)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@post("/admin/reload", status_code=200)
async def admin_reload(request: Request[Any, Any, Any], engine_state: EngineStateDep) -> dict[str, Any]:
    token = engine_state.admin_token
    if token is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthenticated("a valid admin bearer token is required")
    elif not _is_loopback(request.client.host if request.client else None):
        raise PermissionDenied("reload is allowed from loopback only when no admin token is configured")
    return await engine_state.engine.reload()


ROUTES = [info, health, models, prometheus, admin_reload]
