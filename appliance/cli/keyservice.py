"""`appliance keyservice ...`: the operator's view of the key service (local keystore or Vault/OpenBao).

Nothing here prints key material: ``status`` shows names, types and versions; ``public-keys`` exports the
Ed25519 public keys an auditor needs to verify an exported audit trail offline; secret values are read from stdin
or a hidden prompt, never from the command line. Changes (create, rotate, secret-set) are recorded in the audit
trail before they are made; when the audit trail cannot record, nothing changes.
"""

from __future__ import annotations

import base64
import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from appliance.cli._common import console, settings_of
from appliance.errors import ApplianceError, ValidationFailed

if TYPE_CHECKING:
    from appliance.audit import AuditEventFields, OutcomeStatus

app = typer.Typer(no_args_is_help=True)

_JSON_HELP = "Print JSON instead of a table."


def _service(ctx: typer.Context) -> Any:
    from appliance.keys import open_key_service

    return open_key_service(settings_of(ctx))


def _event(action: str, status: OutcomeStatus, details: dict[str, Any], error: str | None = None) -> AuditEventFields:
    from appliance.audit import audit_event, cli_actor

    return audit_event(
        f"keys.{action}",
        actor=cli_actor(roles=["operator"]),
        action=action,
        status=status,
        error_class=error,
        details=details,
    )


@contextmanager
def _audited(ctx: typer.Context, keys: Any, action: str, details: dict[str, Any]) -> Iterator[None]:
    """Record the change before making it (fail closed), and its failure if it fails."""
    from appliance.audit import open_audit_log

    audit = open_audit_log(settings_of(ctx), keys=keys)
    try:
        audit.record_sync(_event(action, "success", details))
        try:
            yield
        except ApplianceError as exc:
            with suppress(ApplianceError):
                audit.record_sync(_event(action, "error", details, exc.code))
            raise
    finally:
        audit.close_sync()


@app.command("status")
def status(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=_JSON_HELP)) -> None:
    """Backend, location, seal state and each key's type and versions (never key material)."""
    report = _service(ctx).status()
    if as_json:
        data = {
            "backend": report.backend,
            "location": report.location,
            "sealed": report.sealed,
            "detail": report.detail,
            "keys": [k.__dict__ for k in report.keys],
        }
        console.print_json(json.dumps(data))
        return
    sealed = "[red]sealed[/]" if report.sealed else "[green]unsealed[/]"
    console.print(f"key service: {report.backend} at {report.location} ({sealed})")
    if report.detail:
        console.print(f"note: {report.detail}")
    table = Table("name", "type", "latest", "versions", "min decrypt")
    for key in report.keys:
        table.add_row(key.name, key.type, str(key.latest_version), str(key.versions), str(key.min_decryption_version))
    console.print(table)


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Key name, e.g. artifacts, checkpoints, audit-hmac, audit-signing."),
    key_type: str = typer.Option("aes256-gcm96", "--type", help="aes256-gcm96 (data keys, HMAC) or ed25519."),
) -> None:
    """Create a key ahead of use (services whose policy may not create keys need this)."""
    from appliance.keys._names import check_name

    keys = _service(ctx)
    with _audited(ctx, keys, "create", {"key": check_name(name), "key_type": key_type[:32]}):
        keys.create(name, key_type)
    console.print(f"[green]created[/] {name} ({key_type})")


@app.command("rotate")
def rotate(ctx: typer.Context, name: str = typer.Argument(..., help="Key name to rotate.")) -> None:
    """Make a new version of a key current; data wrapped or signed under older versions stays readable."""
    from appliance.keys._names import check_name

    keys = _service(ctx)
    with _audited(ctx, keys, "rotate", {"key": check_name(name)}):
        keys.rotate(name)
    latest = {k.name: k.latest_version for k in keys.status().keys}.get(name)
    console.print(f"[green]rotated[/] {name}" + (f": version {latest} is current" if latest else ""))


@app.command("public-keys")
def public_keys(
    ctx: typer.Context,
    name: str = typer.Argument("audit-signing", help="Signing key name."),
    out: Path | None = typer.Option(None, "--out", help="Write the JSON here instead of stdout."),
) -> None:
    """Every version's Ed25519 public key (base64) for offline verification of exported audit logs."""
    keys = _service(ctx).public_keys(name)
    doc = {
        "key": name,
        "algorithm": "ed25519",
        "public_keys": {str(v): base64.b64encode(raw).decode() for v, raw in sorted(keys.items())},
    }
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"[green]wrote[/] {out}")


@app.command("secret-set")
def secret_set(
    ctx: typer.Context,
    path: str = typer.Argument(..., help="Secret path, e.g. gateway/oidc."),
    field: str = typer.Argument(..., help="Field name, e.g. client_secret."),
) -> None:
    """Store one secret field; the value is read from stdin (or a hidden prompt), never from the command line."""
    from appliance.keys._names import check_secret_path

    check_secret_path(path)
    value = getpass.getpass(f"value of {path}:{field}: ") if sys.stdin.isatty() else sys.stdin.readline()
    value = value.rstrip("\r\n")
    if not value or not field:
        raise ValidationFailed("an empty secret value or field name is refused")
    keys = _service(ctx)
    with _audited(ctx, keys, "secret_set", {"path": path, "field": field[:64]}):
        keys.put_secret(path, {field: value})
    console.print(f"[green]stored[/] {path}:{field}")
