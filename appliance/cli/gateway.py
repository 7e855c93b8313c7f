"""`appliance gateway run|check-policy|breakglass`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer

from appliance.cli._common import console, invoking_user, settings_of

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
    workers: int | None = typer.Option(None, min=1, max=64, help="Gateway processes (default: gateway.workers)."),
) -> None:
    """Run the gateway (uvicorn). Several processes, here or on other hosts, share limits and sessions through
    gateway.state_store = "redis". Production requires TLS (and rediss:// with a password to Redis)."""
    import os

    import structlog
    import uvicorn

    from appliance.errors import ConfigError

    settings = settings_of(ctx)
    g = settings.gateway
    processes = workers or g.workers
    tls = bool(g.tls_cert_file and g.tls_key_file)
    if settings.environment == "production" and not tls:
        raise ConfigError("production requires gateway.tls_cert_file and gateway.tls_key_file (164.312(e)(1))")
    if settings.environment == "production" and not g.secure_cookies:
        raise ConfigError("production requires gateway.secure_cookies = true")
    if processes > 1 and g.state_store != "redis":
        raise ConfigError(
            f"{processes} gateway processes need gateway.state_store = 'redis': with 'memory' each process would "
            "keep its own rate limits and sessions"
        )
    configure_logging(settings.log_level)
    log = structlog.get_logger("appliance.gateway")
    if not tls:
        log.warning("gateway.plaintext_http", reason="development environment: no TLS configured")
    target: Any
    if processes > 1:
        # Each worker is a fresh interpreter: it loads the same settings (the config file through the
        # environment, APPLIANCE_* as inherited) and opens its own audit lane, backend pool and store client.
        config_file = (ctx.find_root().obj or {}).get("config_file")
        if config_file is not None:
            os.environ["APPLIANCE_CONFIG"] = str(Path(config_file).resolve())
        target = "appliance.cli.gateway:worker_app"
    else:
        from appliance.gateway import create_app

        target = create_app(settings)
        freeze_startup_heap()
    uvicorn.run(
        target,
        factory=processes > 1,
        workers=processes if processes > 1 else None,
        host=host or g.host,
        port=port or g.port,
        ssl_certfile=g.tls_cert_file if tls else None,
        ssl_keyfile=g.tls_key_file if tls else None,
        access_log=False,
        log_level=settings.log_level.lower(),
        server_header=False,
        proxy_headers=False,
    )


def worker_app() -> Any:
    """The app of one gateway worker process (``gateway run --workers N``): settings from the environment."""
    from appliance.config import load_settings
    from appliance.gateway import create_app

    settings = load_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    freeze_startup_heap()
    return app


def freeze_startup_heap() -> None:
    """Move what start-up built (modules, app, policy: ~100k objects, alive as long as the process) out of the
    garbage collector's generations: a full collection then scans ~25k objects. Measured without it: 37-43 ms
    pauses every ~2,000 requests, each a latency spike for every request in flight."""
    import gc

    gc.collect()
    gc.freeze()


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
    from appliance.cli.keys import _audit
    from appliance.gateway._db import GatewayDB, db_path
    from appliance.gateway.breakglass import BreakGlass
    from appliance.gateway.policy import PolicyStore, policy_path

    settings = settings_of(ctx)
    rules = PolicyStore(policy_path(settings.policies_dir)).current.breakglass
    bg = BreakGlass(GatewayDB(db_path(settings.data_dir)))
    grant = bg.grant(subject, role, reason, minutes * 60, granted_by=invoking_user(), rules=rules)
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


# one record of the bundled task (urgency from the vital signs: systolic BP below 90 -> high), for the demo's curl
EXAMPLE_PROMPT = (
    "Triage: classify the urgency of this note as low, medium or high.\n\n"
    "67-year-old seen with community-acquired pneumonia. Vitals: BP 86/50 mmHg, HR 118 bpm, SpO2 91%, "
    "temperature 38.6 C. Discharged on amoxicillin 875 mg every 12 hours. Follow up with primary care in 2 weeks."
)
DEMO_ACCOUNTS = {
    "alice": {"name": "Alice Analyst (demo)", "groups": ["analysts"]},
    "carol": {"name": "Carol Compliance (demo)", "groups": ["compliance"]},
    "adam": {"name": "Adam Admin (demo)", "groups": ["appliance-admins"]},
}


def _start_demo_idp(port: int, gateway_url: str, client_secret: str, log_path: Path) -> Any:
    """The LOCAL DEMO identity provider (npm oidc-provider; any password is accepted). Never for production."""
    import json
    import os
    import shutil
    import subprocess

    from appliance.errors import ConfigError

    idp_dir = Path(__file__).resolve().parents[2] / "examples" / "demo-idp"
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None or not (idp_dir / "server.mjs").is_file():
        raise ConfigError("the demo identity provider needs node, npm and examples/demo-idp (a source checkout)")
    if not (idp_dir / "node_modules" / "oidc-provider").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=idp_dir, check=True, capture_output=True)
    config = {
        "audience": "appliance",
        "scopes": "inference service.inference",
        "accounts": DEMO_ACCOUNTS,
        "clients": [
            {
                "client_id": "appliance-demo",
                "client_secret": client_secret,
                "redirect_uris": [f"{gateway_url}/auth/callback"],
                # RP-initiated logout comes back here; an unregistered one is refused (invalid_request)
                "post_logout_redirect_uris": [f"{gateway_url}/auth/logged-out"],
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
            }
        ],
    }
    env = {**os.environ, "OIDC_PORT": str(port), "OIDC_CONFIG": json.dumps(config)}
    return subprocess.Popen(
        [node, "server.mjs"],
        cwd=idp_dir,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,  # prctl only, between fork and exec
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the demo process dies, even by SIGKILL (Linux prctl)."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@app.command("demo")
def demo(
    ctx: typer.Context,
    adapter: str = typer.Option("triage", help="The adapter the printed curl command calls."),
    version: str = typer.Option("production", help="Its version (a number or production)."),
    port: int = typer.Option(8443, help="Gateway port (loopback)."),
    idp_port: int = typer.Option(8444, help="Demo identity provider port (loopback)."),
) -> None:
    """Run the gateway with a LOCAL DEMO identity provider, a demo API key and a ready curl command (development)."""
    import secrets
    import time

    import httpx
    import uvicorn

    from appliance.config import load_settings
    from appliance.errors import ConfigError
    from appliance.gateway import create_app
    from appliance.gateway._db import GatewayDB, db_path
    from appliance.gateway.auth.apikeys import ApiKeyStore

    base = settings_of(ctx)
    if base.environment == "production":
        raise ConfigError("`gateway demo` runs a demo identity provider and is refused in production")
    gateway_url, issuer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{idp_port}"
    client_secret = secrets.token_urlsafe(24)
    base.data_dir.mkdir(parents=True, exist_ok=True)
    idp = _start_demo_idp(idp_port, gateway_url, client_secret, base.data_dir / "demo-idp.log")
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise ConfigError(f"the demo identity provider did not start (see {base.data_dir / 'demo-idp.log'})")
        overrides = base.model_dump()
        overrides["gateway"].update(
            oidc_issuer=issuer,
            oidc_client_id="appliance-demo",
            oidc_client_secret=client_secret,
            public_url=gateway_url,
            secure_cookies=False,
            host="127.0.0.1",
            port=port,
        )
        settings = load_settings(**overrides)
        key, info = ApiKeyStore(GatewayDB(db_path(settings.data_dir))).create(
            "demo-service", ["service.inference"], ttl_s=86_400, created_by="gateway-demo"
        )
        from appliance.cli.keys import _audit

        _audit(ctx, "admin.apikey.create", "create", {"key_id": info.id, "scopes": "service.inference"})
        app_ = create_app(settings)
        console.print("\n[bold red]LOCAL DEMO identity provider[/] (accepts any password; never for production)")
        console.print(
            f"  sign in at [bold]{gateway_url}/login[/] as alice (analyst), carol (compliance) or adam (admin)"
        )
        console.print(f"  demo API key {info.id} (scope service.inference, 24 h): ready curl command:\n")
        # the bundled task's format (appliance/intake/_synthetic.py); the chat route applies the chat template the
        # adapter was trained with. Expected answer by the task's rules: high (systolic BP below 90).
        body = json.dumps(
            {
                "model": f"{adapter}@{version}",
                "messages": [{"role": "user", "content": EXAMPLE_PROMPT}],
                "max_tokens": 16,
            }
        )
        typer.echo(
            f"curl -s -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            f"-d '{body}' {gateway_url}/v1/chat/completions\n"
        )
        uvicorn.run(app_, host="127.0.0.1", port=port, access_log=False, log_level="warning", server_header=False)
    finally:
        idp.terminate()
