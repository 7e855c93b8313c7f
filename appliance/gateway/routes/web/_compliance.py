"""The compliance pages: search the audit trail, export it, verify its chain."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.params import FromQuery

from appliance.errors import ValidationFailed
from appliance.gateway.routes._access import page
from appliance.gateway.routes._common import CtxDep, GatewayDep
from appliance.gateway.routes.web._pages import FormData, render

_FILTER_KEYS = ("since", "until", "actor", "adapter", "outcome")
MAX_ACTOR_FILTER_CHARS = 1024  # the audit stage records an identity bounded; a longer one matches its bounded form
_SAFE_FILTER = re.compile(r"^[A-Za-z0-9_.:@+\-]{0,128}$")


def _filters(request: Request[Any, Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k in _FILTER_KEYS:
        v = (request.query_params.get(k) or "").strip()
        if v:
            if k == "actor":  # an identity as the IdP names it (spaces, accents); the trail's form is compared
                if len(v) > MAX_ACTOR_FILTER_CHARS or not v.isprintable():
                    raise ValidationFailed(f"filter {k!r} has characters that are not allowed")
                out[k] = v
                continue
            if not _SAFE_FILTER.match(v):
                raise ValidationFailed(f"filter {k!r} has characters that are not allowed")
            if k in ("since", "until"):
                try:  # in UTC (a time with no offset is UTC); one that UTC cannot hold is refused, not a 500
                    t = datetime.fromisoformat(v)
                    v = (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
                except (ValueError, OverflowError) as exc:
                    raise ValidationFailed(f"filter {k!r} must be an ISO date or time") from exc
            out[k] = v
    if out.get("outcome") and out["outcome"] not in ("success", "denied", "error"):
        raise ValidationFailed("outcome must be success, denied or error")
    return out


@get("/compliance", include_in_schema=False, opt=page("audit.search"))
async def compliance(request: Request[Any, Any, Any], ctx: CtxDep, gw: GatewayDep) -> Any:
    try:
        filters = _filters(request)
    except ValidationFailed as exc:
        return render(request, "compliance.html", ctx, 422, error=exc.message, filters={}, rows=None, available=True)
    reader = gw.audit_reader
    rows = None
    if reader is not None and request.query_params.get("search"):
        rows = await reader.search(filters, 200)
        await gw.record(gw.event("audit.search", ctx=ctx, action="search", details=dict(filters)))
    return render(
        request,
        "compliance.html",
        ctx,
        filters=filters,
        rows=[_row(r) for r in rows] if rows is not None else None,
        available=reader is not None,
        query=urlencode(filters),  # percent-encoded: a time's '+' (UTC offset) must not arrive as a space
    )


def _row(event: dict[str, Any]) -> dict[str, Any]:
    actor, adapter, outcome = event.get("actor") or {}, event.get("adapter") or {}, event.get("outcome") or {}
    return {
        "time": str(event.get("time", ""))[:23],
        "type": event.get("type"),
        "actor": actor.get("subject"),
        "adapter": f"{adapter.get('name')} v{adapter.get('version')}" if adapter.get("name") else "",
        "outcome": outcome.get("status"),
        "http_status": outcome.get("http_status"),
        "event_id": event.get("event_id"),
        "breakglass": bool((event.get("details") or {}).get("breakglass")),
    }


@get("/compliance/export", include_in_schema=False, opt=page("audit.export"))
async def compliance_export(
    request: Request[Any, Any, Any], ctx: CtxDep, gw: GatewayDep, fmt: FromQuery[str] = "jsonl"
) -> Any:
    if fmt not in ("jsonl", "csv"):
        raise ValidationFailed("format must be jsonl or csv")
    if gw.audit_reader is None:
        raise ValidationFailed("this audit store does not support export")
    filters = _filters(request)
    data = await gw.audit_reader.export(filters, fmt)
    audit_id = await gw.record(
        gw.event(
            "audit.export",
            ctx=ctx,
            action="export",
            details={"format": fmt, "bytes": len(data), **filters},
        )
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return Response(
        data,
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="audit-{stamp}.{fmt}"',
            "X-Audit-Id": audit_id,
            "Cache-Control": "no-store",
        },
    )


@post("/compliance/verify", include_in_schema=False, status_code=200, opt=page("audit.verify"))
async def compliance_verify(request: Request[Any, Any, Any], ctx: CtxDep, gw: GatewayDep, data: FormData) -> Any:
    if gw.audit_reader is None:
        raise ValidationFailed("this audit store does not support verification")
    result = await gw.audit_reader.verify()
    await gw.record(gw.event("audit.verify", ctx=ctx, action="verify", details={"ok": bool(result.get("ok"))}))
    return render(request, "compliance.html", ctx, filters={}, rows=None, available=True, verify=result)
