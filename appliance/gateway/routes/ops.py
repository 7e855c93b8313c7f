"""``/healthz`` (process up), ``/readyz`` (backend, audit store, key service), ``/metrics`` (not public)."""

from __future__ import annotations

import ipaddress
from typing import Any

from litestar import Request, Response, get

from appliance.errors import PermissionDenied, StateStoreUnavailable, Unauthenticated
from appliance.gateway._service import Ctx, constant_time_equals
from appliance.gateway.routes._access import public
from appliance.gateway.routes._common import GatewayDep


@get("/healthz", summary="Liveness", tags=["ops"], opt=public())
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: backend, audit store and key service", tags=["ops"], opt=public())
async def readyz(request: Request[Any, Any, Any], gw: GatewayDep) -> Response[Any]:
    checks = await gw.readiness()
    ok = all(checks.values())
    body: dict[str, Any] = {"ready": ok, "checks": checks}
    if gw.replica_status is not None:  # replicas taken out, and production adapters no healthy replica holds
        body["degraded"] = gw.replica_status.degraded
        body["uncovered"] = gw.replica_status.uncovered
    return Response(body, status_code=200 if ok else 503)


METRICS_PATH = "/metrics"


def _loopback(request: Request[Any, Any, Any]) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@get(
    "/metrics",
    summary="Prometheus metrics (metrics token, a role with 'metrics', or loopback)",
    tags=["ops"],
    opt=public(),  # it checks its caller itself: a token, a role (asked here, refusals bounded) or loopback
)
async def metrics(request: Request[Any, Any, Any], gw: GatewayDep) -> Response[bytes]:
    token = gw.settings.gateway.metrics_token
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
    allowed = False
    ctx: Ctx | None = None
    if token is not None and presented and constant_time_equals(presented, token.get_secret_value()):
        allowed = True
    elif presented or request.cookies:
        try:
            ctx = await gw.require(request, None, audit_denial=False)  # who asks; the route is checked here
        except Unauthenticated:
            pass
        except StateStoreUnavailable as exc:
            raise await gw.deny_bounded(exc, request=request, path=METRICS_PATH) from None
        allowed = ctx is not None and gw.policy.current.may_route(ctx.roles, "metrics")
    elif token is None and _loopback(request):
        allowed = True
    if not allowed:  # audited, but bounded: scrapers retry a wrong token every few seconds
        raise await gw.deny_bounded(
            PermissionDenied("metrics are not public"), request=request, path=METRICS_PATH, ctx=ctx
        )
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")
