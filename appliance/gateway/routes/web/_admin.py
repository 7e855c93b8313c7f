"""The admin page: API keys and break-glass grants, through the admin API's own functions."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Template

from appliance.errors import ApplianceError
from appliance.gateway._context import Ctx
from appliance.gateway.routes import admin as admin_api
from appliance.gateway.routes._access import page
from appliance.gateway.routes._common import CtxDep, GatewayDep, gateway_of
from appliance.gateway.routes.web._pages import FormData, render
from appliance.gateway.schemas import BreakGlassCreate


async def _admin_page(request: Request[Any, Any, Any], ctx: Ctx, status: int = 200, **values: Any) -> Template:
    gw = gateway_of(request)
    policy = gw.policy.current
    can_keys = policy.may_route(ctx.roles, "admin.keys")
    can_bg = policy.may_route(ctx.roles, "admin.breakglass")
    return render(
        request,
        "admin.html",
        ctx,
        status,
        keys=[admin_api.key_json(k) for k in gw.apikeys.list()] if can_keys else None,
        grants=[admin_api.grant_json(g) for g in gw.breakglass.list()] if can_bg else None,
        grantable=policy.breakglass.grantable_roles,
        max_duration_min=policy.breakglass.max_duration_s // 60,
        **values,
    )


@get("/admin", include_in_schema=False, opt=page("admin.keys"))
async def admin_page(request: Request[Any, Any, Any], ctx: CtxDep) -> Any:
    return await _admin_page(request, ctx)


@post("/admin/keys", include_in_schema=False, status_code=200, opt=page("admin.keys"))
async def admin_create_key(request: Request[Any, Any, Any], ctx: CtxDep, gw: GatewayDep, data: FormData) -> Any:
    try:
        days = int(data.get("ttl_days", "30") or "30")
        scopes = [s for s in re.split(r"[\s,]+", data.get("scopes", "")) if s]
        key, info, _ = await admin_api.create_key(gw, ctx, data.get("name", "").strip(), scopes, days * 86_400)
    except (ValueError, ApplianceError) as exc:
        message = exc.message if isinstance(exc, ApplianceError) else "lifetime must be a whole number of days"
        return await _admin_page(request, ctx, 422, error=message)
    return await _admin_page(request, ctx, new_key=key, new_key_id=info.id)


@post("/admin/keys/{key_id:str}/revoke", include_in_schema=False, status_code=200, opt=page("admin.keys"))
async def admin_revoke_key(
    request: Request[Any, Any, Any], ctx: CtxDep, gw: GatewayDep, key_id: FromPath[str], data: FormData
) -> Any:
    try:
        await admin_api.revoke_key(gw, ctx, key_id)
    except ApplianceError as exc:
        return await _admin_page(request, ctx, exc.http_status, error=exc.message)
    return await _admin_page(request, ctx, notice=f"Key {key_id} revoked.")


@post("/admin/breakglass", include_in_schema=False, status_code=200, opt=page("admin.breakglass"))
async def admin_breakglass(request: Request[Any, Any, Any], ctx: CtxDep, gw: GatewayDep, data: FormData) -> Any:
    try:
        body = BreakGlassCreate(
            subject=data.get("subject", "").strip(),
            role=data.get("role", ""),
            reason=data.get("reason", ""),
            duration_s=int(data.get("duration_min", "60") or "60") * 60,
        )
        g, _ = await admin_api.grant_breakglass(gw, ctx, body)
    except (ValueError, ApplianceError) as exc:
        message = exc.message if isinstance(exc, ApplianceError) else "check the subject, role, reason and duration"
        return await _admin_page(request, ctx, 422, error=message)
    return await _admin_page(request, ctx, notice=f"Emergency access {g.id} granted until it expires or is revoked.")


@post("/admin/breakglass/{grant_id:str}/revoke", include_in_schema=False, status_code=200, opt=page("admin.breakglass"))
async def admin_breakglass_revoke(
    request: Request[Any, Any, Any], ctx: CtxDep, gw: GatewayDep, grant_id: FromPath[str], data: FormData
) -> Any:
    try:
        await admin_api.revoke_breakglass(gw, ctx, grant_id)
    except ApplianceError as exc:
        return await _admin_page(request, ctx, exc.http_status, error=exc.message)
    return await _admin_page(request, ctx, notice=f"Emergency access {grant_id} ended.")
