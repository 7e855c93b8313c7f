"""``/healthz`` (process up), ``/readyz`` (backend, audit store, key service), ``/metrics`` (not public)."""

from __future__ import annotations

import ipaddress
from typing import Any

from litestar import Request, Response, get

from appliance.errors import PermissionDenied, Unauthenticated
from appliance.gateway._service import constant_time_equals
from appliance.gateway.routes._common import gateway_of


@get("/healthz", summary="Liveness", tags=["ops"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: backend, audit store and key service", tags=["ops"])
async def readyz(request: Request[Any, Any, Any]) -> Response[Any]:
    checks = await gateway_of(request).readiness()
    ok = all(checks.values())
    return Response({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


def _loopback(request: Request[Any, Any, Any]) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@get("/metrics", summary="Prometheus metrics (metrics token, a role with 'metrics', or loopback)", tags=["ops"])
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    gw = gateway_of(request)
    token = gw.settings.gateway.metrics_token
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
    allowed = False
    if token is not None and presented and constant_time_equals(presented, token.get_secret_value()):
        allowed = True
    elif presented or request.cookies:
        try:
            await gw.require(request, "metrics", audit_denial=False)
            allowed = True
        except (Unauthenticated, PermissionDenied):
            allowed = False
    elif token is None and _loopback(request):
        allowed = True
    if not allowed:
        raise PermissionDenied("metrics are not public")
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")
