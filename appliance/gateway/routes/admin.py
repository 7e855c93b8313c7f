"""The admin API: API keys, break-glass grants, policy reload. Every change is an audit event."""

from __future__ import annotations

import time
from typing import Any

from litestar import Response, delete, get, post
from litestar.params import FromPath, JSONBody

from appliance.audit import system_actor
from appliance.errors import AuditUnavailable, ConfigError, PolicyViolation, Unauthenticated, ValidationFailed
from appliance.gateway._service import Ctx, Gateway
from appliance.gateway.auth.apikeys import ApiKeyInfo, check_new_key, scopes_detail
from appliance.gateway.breakglass import Grant
from appliance.gateway.routes._access import api
from appliance.gateway.routes._common import CtxDep, GatewayDep
from appliance.gateway.schemas import ApiKeyCreate, BreakGlassCreate

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
SYSTEM_ACTOR = system_actor("gateway")


def key_json(info: ApiKeyInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "scopes": list(info.scopes),
        "created_by": info.created_by,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "state": info.state(time.time()),
    }


def grant_json(g: Grant) -> dict[str, Any]:
    return {
        "id": g.id,
        "subject": g.subject,
        "role": g.role,
        "reason": g.reason,
        "granted_by": g.granted_by,
        "granted_at": g.granted_at,
        "expires_at": g.expires_at,
        "active": g.active(time.time()),
    }


async def create_key(gw: Gateway, ctx: Ctx, name: str, scopes: list[str], ttl_s: int) -> tuple[str, ApiKeyInfo, str]:
    """Create a key no more powerful than its creator (no scope escalation through keys). It is checked against
    what its audit record can hold before it is stored, and revoked when that record still fails."""
    try:
        check_new_key(name, scopes, ttl_s)
    except ValidationFailed as exc:
        raise await gw.deny(exc, ctx=ctx, action="create") from None
    granted = gw.policy.current.roles_for((), scopes)
    own = gw.roles_of(ctx.principal) - ctx.principal.extra_roles
    if not granted:
        raise await gw.deny(PolicyViolation("these scopes grant no role in the access policy"), ctx=ctx)
    if not granted <= own:
        extra = ", ".join(sorted(granted - own))
        raise await gw.deny(PolicyViolation(f"a key cannot carry roles its creator does not hold: {extra}"), ctx=ctx)
    try:
        key, info = gw.apikeys.create(
            name,
            scopes,
            ttl_s=ttl_s,
            created_by=ctx.principal.subject,
            creator_key_id=ctx.principal.key_id,  # a key made by a key cannot outlive or survive it
        )
    except Unauthenticated as exc:  # the creating key was revoked or expired since it was verified
        raise await gw.deny(exc, ctx=ctx, action="create") from None
    try:
        audit_id = await gw.record(
            gw.event(
                "admin.apikey.create",
                ctx=ctx,
                action="create",
                details={"key_id": info.id, "scopes": scopes_detail(info.scopes)},
            )
        )
    except AuditUnavailable:  # a key whose creation could not be audited must not work
        gw.apikeys.revoke(info.id, revoked_by=SYSTEM_ACTOR["subject"])
        raise
    return key, info, audit_id


async def revoke_key(gw: Gateway, ctx: Ctx, key_id: str) -> tuple[ApiKeyInfo, str]:
    """Revoke a key and the keys created by it (transitively); each revocation is an audit event."""
    info, *cascaded = gw.apikeys.revoke(key_id, revoked_by=ctx.principal.subject)
    audit_id = await gw.record(gw.event("admin.apikey.revoke", ctx=ctx, action="revoke", details={"key_id": key_id}))
    for child in cascaded:
        details = {"key_id": child.id, "revoked_with": key_id}
        await gw.record(gw.event("admin.apikey.revoke", ctx=ctx, action="revoke", details=details))
    return info, audit_id


async def grant_breakglass(gw: Gateway, ctx: Ctx, body: BreakGlassCreate) -> tuple[Grant, str]:
    try:
        g = gw.breakglass.grant(
            body.subject,
            body.role,
            body.reason,
            body.duration_s,
            granted_by=ctx.principal.subject,
            rules=gw.policy.current.breakglass,
        )
    except (PolicyViolation, ValidationFailed) as exc:  # a refused elevation is itself an audit event
        raise await gw.deny(exc, ctx=ctx, action="grant") from None
    try:
        audit_id = await gw.record(
            gw.event(
                "admin.breakglass.grant",
                ctx=ctx,
                action="grant",
                details={
                    "grant_id": g.id,
                    "subject": g.subject,
                    "role": g.role,
                    "expires_at": g.expires_at,
                    "reason_chars": len(g.reason),
                    "review_required": True,
                },
            )
        )
    except AuditUnavailable:  # an elevation that could not be audited must not stay in force
        gw.breakglass.revoke(g.id, revoked_by=SYSTEM_ACTOR["subject"])
        raise
    return g, audit_id


async def revoke_breakglass(gw: Gateway, ctx: Ctx, grant_id: str) -> tuple[Grant, str]:
    g = gw.breakglass.revoke(grant_id, revoked_by=ctx.principal.subject)
    audit_id = await gw.record(
        gw.event("admin.breakglass.revoke", ctx=ctx, action="revoke", details={"grant_id": grant_id})
    )
    return g, audit_id


async def reload_policy(gw: Gateway, ctx: Ctx | None) -> tuple[bool, str, str]:
    """Reload access.yaml; a bad file keeps the last good policy. Either way an audit event says what happened."""

    async def record(details: dict[str, str], **outcome: Any) -> None:
        event = gw.event(
            "policy.reload",
            ctx=ctx,
            actor=None if ctx else SYSTEM_ACTOR,
            action="reload",
            route="/v1/admin/policy/reload",
            details=details,
            **outcome,
        )
        await gw.record(event)

    try:
        old, new = gw.policy.reload()
    except ConfigError as exc:
        gw.metrics.policy_reloads.labels("refused").inc()
        await record(
            {"kept_sha256": gw.policy.sha256[:16]},
            status="error",
            http_status=ConfigError.http_status,
            error_class=ConfigError.code,
        )
        return False, exc.message, gw.policy.sha256
    try:
        await record({"old_sha256": old[:16], "new_sha256": new[:16]})
    except AuditUnavailable:  # a policy change that could not be audited is not applied
        gw.policy.undo_reload()
        raise
    gw.metrics.policy_reloads.labels("applied").inc()
    return True, "policy reloaded", new


@get(
    "/v1/admin/keys",
    summary="List API keys (never their secrets)",
    tags=["admin"],
    security=SECURITY,
    opt=api("admin.keys"),
)
async def list_keys(ctx: CtxDep, gw: GatewayDep) -> dict[str, Any]:
    return {"keys": [key_json(i) for i in gw.apikeys.list()]}


@post(
    "/v1/admin/keys",
    summary="Create an API key (shown once)",
    tags=["admin"],
    security=SECURITY,
    status_code=201,
    opt=api("admin.keys"),
)
async def post_key(ctx: CtxDep, gw: GatewayDep, data: JSONBody[ApiKeyCreate]) -> Response[Any]:
    key, info, audit_id = await create_key(gw, ctx, data.name, data.scopes, data.ttl_s)
    return Response(
        {"key": key, **key_json(info)}, status_code=201, headers={"X-Audit-Id": audit_id, "Cache-Control": "no-store"}
    )


@delete(
    "/v1/admin/keys/{key_id:str}",
    summary="Revoke an API key",
    tags=["admin"],
    security=SECURITY,
    status_code=200,
    opt=api("admin.keys"),
)
async def delete_key(ctx: CtxDep, gw: GatewayDep, key_id: FromPath[str]) -> Response[Any]:
    info, audit_id = await revoke_key(gw, ctx, key_id)
    return Response(key_json(info), headers={"X-Audit-Id": audit_id})


@get(
    "/v1/admin/breakglass",
    summary="List break-glass grants",
    tags=["admin"],
    security=SECURITY,
    opt=api("admin.breakglass"),
)
async def list_grants(ctx: CtxDep, gw: GatewayDep) -> dict[str, Any]:
    return {"grants": [grant_json(g) for g in gw.breakglass.list()]}


@post(
    "/v1/admin/breakglass",
    summary="Grant time-boxed emergency access",
    tags=["admin"],
    security=SECURITY,
    status_code=201,
    opt=api("admin.breakglass"),
)
async def post_grant(ctx: CtxDep, gw: GatewayDep, data: JSONBody[BreakGlassCreate]) -> Response[Any]:
    g, audit_id = await grant_breakglass(gw, ctx, data)
    return Response(grant_json(g), status_code=201, headers={"X-Audit-Id": audit_id})


@delete(
    "/v1/admin/breakglass/{grant_id:str}",
    summary="End emergency access now",
    tags=["admin"],
    security=SECURITY,
    status_code=200,
    opt=api("admin.breakglass"),
)
async def delete_grant(ctx: CtxDep, gw: GatewayDep, grant_id: FromPath[str]) -> Response[Any]:
    g, audit_id = await revoke_breakglass(gw, ctx, grant_id)
    return Response(grant_json(g), headers={"X-Audit-Id": audit_id})


@post(
    "/v1/admin/policy/reload",
    summary="Reload policies/access.yaml",
    tags=["admin"],
    security=SECURITY,
    status_code=200,
    opt=api("admin.policy"),
)
async def post_reload(ctx: CtxDep, gw: GatewayDep) -> Response[Any]:
    ok, message, sha = await reload_policy(gw, ctx)
    return Response({"applied": ok, "message": message, "sha256": sha}, status_code=200 if ok else 422)
