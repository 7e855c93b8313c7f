"""`appliance keys create|list|revoke`: appliance API keys for services (stored hashed, scoped, expiring).

Every change is an audit event; when the audit trail cannot record it, nothing is changed (fail closed).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import typer

from appliance.cli._common import console, invoking_user, settings_of

app = typer.Typer(no_args_is_help=True)


def _store(ctx: typer.Context) -> Any:
    from appliance.gateway._db import GatewayDB, db_path
    from appliance.gateway.auth.apikeys import ApiKeyStore

    return ApiKeyStore(GatewayDB(db_path(settings_of(ctx).data_dir)))


def _audit(ctx: typer.Context, type_: str, action: str, details: dict[str, Any]) -> None:
    """Record a CLI change in the audit trail (raises AuditUnavailable when it cannot)."""
    from appliance.audit import audit_event, cli_actor, open_audit_log

    audit = open_audit_log(settings_of(ctx))
    try:
        audit.record_sync(audit_event(type_, actor=cli_actor(), action=action, details=details))
    finally:
        audit.close_sync()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A label for the key (e.g. the calling system)."),
    scope: list[str] = typer.Option(..., "--scope", "-s", help="A scope from policies/access.yaml (repeatable)."),
    days: int = typer.Option(30, "--days", min=1, max=366, help="Lifetime in days."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the key is shown once)."),
) -> None:
    """Create an API key. It is printed once and stored only as a SHA-256 digest."""
    from appliance.errors import PolicyViolation
    from appliance.gateway.auth.apikeys import scopes_detail
    from appliance.gateway.policy import PolicyStore, policy_path

    settings = settings_of(ctx)
    policy = PolicyStore(policy_path(settings.policies_dir)).current
    if not policy.roles_for((), scope):
        raise PolicyViolation(f"scopes {scope} grant no role in {policy_path(settings.policies_dir)}")
    store = _store(ctx)
    key, info = store.create(name, scope, ttl_s=days * 86_400, created_by=invoking_user())
    try:
        _audit(ctx, "admin.apikey.create", "create", {"key_id": info.id, "scopes": scopes_detail(info.scopes)})
    except Exception:
        store.revoke(info.id, revoked_by="audit-failure")  # an unrecorded key must not work
        raise
    if as_json:
        typer.echo(json.dumps({"key": key, "id": info.id, "scopes": list(info.scopes), "expires_at": info.expires_at}))
        return
    console.print(
        f"[green]created[/] {info.id} ({name}) scopes={' '.join(info.scopes)} expires {_when(info.expires_at)}"
    )
    console.print("Copy the key now; it is not shown again:")
    typer.echo(key)


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List API keys (ids, names, scopes, state; never the keys)."""
    now = time.time()
    rows = [
        {
            "id": i.id,
            "name": i.name,
            "scopes": list(i.scopes),
            "state": i.state(now),
            "created_by": i.created_by,
            "expires_at": i.expires_at,
        }
        for i in _store(ctx).list()
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    from rich.table import Table

    table = Table("id", "name", "scopes", "state", "created by", "expires")
    for r in rows:
        table.add_row(r["id"], r["name"], " ".join(r["scopes"]), r["state"], r["created_by"], _when(r["expires_at"]))
    console.print(table)


@app.command("revoke")
def revoke(
    ctx: typer.Context, key_id: str = typer.Argument(..., help="The key id (from `appliance keys list`).")
) -> None:
    """Revoke an API key at once."""
    store = _store(ctx)
    store.get(key_id)  # NotFound before anything is recorded
    _audit(ctx, "admin.apikey.revoke", "revoke", {"key_id": key_id})
    info, *cascaded = store.revoke(key_id, revoked_by=invoking_user())  # with the keys it created, transitively
    for child in cascaded:
        _audit(ctx, "admin.apikey.revoke", "revoke", {"key_id": child.id, "revoked_with": key_id})
    console.print(f"[yellow]revoked[/] {info.id} ({info.name})")
    for child in cascaded:
        console.print(f"[yellow]revoked[/] {child.id} ({child.name}), created by {info.id} or a key it created")
