"""Helpers the route modules share: the dependencies' types, the Gateway from app state, the audit/fingerprint
headers, SSE framing."""

from __future__ import annotations

import json
from typing import Any, TypeAlias

from litestar import Request
from litestar.di import NamedDependency

from appliance.gateway._context import Ctx
from appliance.gateway._service import Gateway
from appliance.gateway.ports import AdapterRef

GatewayDep: TypeAlias = NamedDependency[Gateway]  # the façade, provided by the app as the "gw" dependency
CtxDep: TypeAlias = NamedDependency[Ctx]  # the authorised request, the handler's "ctx" dependency (routes/_deps.py)


def gateway_of(request: Request[Any, Any, Any]) -> Gateway:
    gw = request.app.state.gateway
    assert isinstance(gw, Gateway)
    return gw


def trace_headers(audit_id: str | None, ref: AdapterRef | None) -> dict[str, str]:
    return {"X-Audit-Id": audit_id or "-", "X-Adapter-Fingerprint": ref.fingerprint if ref else "-"}


def sse(data: Any) -> bytes:
    return b"data:" + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def error_body(exc: Any) -> dict[str, str]:
    return {"error": str(getattr(exc, "message", exc)), "error_type": str(getattr(exc, "code", "ERROR"))}


FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
