"""`appliance gateway run|check-policy|breakglass`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from appliance.cli._common import console, settings_of

app = typer.Typer(no_args_is_help=True)


def configure_logging(level: str) -> None:
    """JSON log lines (structlog) for the gateway process; uvicorn's access log is off (URLs may carry ids)."""
    import structlog

    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )


@app.command("run")
def run(
    ctx: typer.Context,
    host: str | None = typer.Option(None, help="Listen address (default: gateway.host)."),
    port: int | None = typer.Option(None, help="Listen port (default: gateway.port)."),
    workers: int = typer.Option(1, min=1, max=64, help="uvicorn worker processes (1: limits are per process)."),
) -> None:
    """Run the gateway (uvicorn). Production requires TLS (gateway.tls_cert_file / tls_key_file)."""
    import structlog
    import uvicorn

    from appliance.errors import ConfigError
    from appliance.gateway import create_app

    settings = settings_of(ctx)
    g = settings.gateway
    tls = bool(g.tls_cert_file and g.tls_key_file)
    if settings.environment == "production" and not tls:
        raise ConfigError("production requires gateway.tls_cert_file and gateway.tls_key_file (164.312(e)(1))")
    if settings.environment == "production" and not g.secure_cookies:
        raise ConfigError("production requires gateway.secure_cookies = true")
    configure_logging(settings.log_level)
    log = structlog.get_logger("appliance.gateway")
    if not tls:
        log.warning("gateway.plaintext_http", reason="development environment: no TLS configured")
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host or g.host,
        port=port or g.port,
        ssl_certfile=g.tls_cert_file if tls else None,
        ssl_keyfile=g.tls_key_file if tls else None,
        access_log=False,
        log_level=settings.log_level.lower(),
        server_header=False,
        proxy_headers=False,
        workers=None if workers == 1 else workers,
    )


@app.command("check-policy")
def check_policy(
    ctx: typer.Context,
    path: Path | None = typer.Argument(None, help="Policy file (default: <policies_dir>/access.yaml)."),
) -> None:
    """Validate an access policy file; exit 78 with every problem listed when it is invalid."""
    from appliance.gateway.policy import PolicyStore, policy_path

    target = path or policy_path(settings_of(ctx).policies_dir)
    store = PolicyStore(target)
    roles = ", ".join(sorted(store.current.roles))
    console.print(f"[green]valid[/] {target} sha256={store.sha256[:16]} roles: {roles}")


@app.command("breakglass")
def breakglass(
    ctx: typer.Context,
    subject: str = typer.Argument(..., help="The user (IdP subject) who needs emergency access."),
    role: str = typer.Option(..., "--role", help="A role from breakglass.grantable_roles."),
    reason: str = typer.Option(..., "--reason", help="The written reason (recorded and flagged for review)."),
    minutes: int = typer.Option(60, "--minutes", min=1, help="How long the elevation lasts."),
) -> None:
    """Grant time-boxed emergency access from the console (when the web admin page is unreachable)."""
    from appliance.cli.keys import _audit, _operator
    from appliance.gateway._db import GatewayDB, db_path
    from appliance.gateway.breakglass import BreakGlass
    from appliance.gateway.policy import PolicyStore, policy_path

    settings = settings_of(ctx)
    rules = PolicyStore(policy_path(settings.policies_dir)).current.breakglass
    bg = BreakGlass(GatewayDB(db_path(settings.data_dir)))
    grant = bg.grant(subject, role, reason, minutes * 60, granted_by=_operator(), rules=rules)
    try:
        _audit(
            ctx,
            "admin.breakglass.grant",
            "grant",
            {"grant_id": grant.id, "subject": subject, "role": role, "review_required": True},
        )
    except Exception:
        bg.revoke(grant.id, revoked_by="audit-failure")
        raise
    console.print(f"[red]emergency access[/] {grant.id}: {subject} holds {role} for {minutes} min (flagged for review)")
