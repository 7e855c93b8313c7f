"""The ``appliance`` command: one thin sub-app per stage of the data's path.

Sub-apps parse arguments, call their stage and print. Heavy imports (torch, transformers) happen inside the
commands, so ``appliance --help`` stays fast. Errors are mapped here, once: ``CODE: message`` on stderr and the
error's exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from appliance.cli import (
    audit,
    config_cmd,
    data,
    evaluate,
    gateway,
    keys,
    keyservice,
    ledger,
    models,
    monitor,
    registry,
    serve,
    train,
)
from appliance.cli._common import err_console
from appliance.errors import ApplianceError

app = typer.Typer(
    name="appliance",
    help="Private fine-tuning and serving of language models on hospital data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", help="TOML settings file (else $APPLIANCE_CONFIG)."),
) -> None:
    ctx.obj = {"config_file": config}


app.add_typer(config_cmd.app, name="config", help="Show the effective settings (secrets redacted).")
app.add_typer(models.app, name="models", help="Base models: bootstrap and inspect.")
app.add_typer(data.app, name="data", help="Intake: check, scrub and prepare JSONL datasets.")
app.command("train", help="Train a DP-LoRA adapter on a prepared dataset.")(train.train)
app.command("eval", help="Evaluate a base model and an adapter on a prepared split.")(evaluate.evaluate)
app.add_typer(ledger.app, name="ledger", help="The privacy-budget ledger.")
app.add_typer(registry.app, name="registry", help="The adapter registry: add, approve, publish, retire.")
app.add_typer(monitor.app, name="monitor", help="Continuous evaluation of production adapters; rollback.")
app.add_typer(registry.erasure_app, name="erasure", help="GDPR erasure planning.")
app.command("serve", help="Run the embedded TGI-protocol inference engine.")(serve.serve)
app.command("serve-launch", help="Start TGI or vLLM with the registry's signed adapter list, checked first.")(
    serve.serve_launch
)
app.add_typer(gateway.app, name="gateway", help="Run the gateway.")
app.add_typer(keys.app, name="keys", help="Appliance API keys for services.")
app.add_typer(keyservice.app, name="keyservice", help="Key service: status, create, rotate, public keys, secrets.")
app.add_typer(audit.app, name="audit", help="The audit trail: export, verify, hash, purge.")


def main() -> None:
    """Console-script entry point: run the app and map domain errors to exit codes."""
    try:
        code = app(standalone_mode=False)  # a command's `raise typer.Exit(n)` comes back as n in this mode
    except ApplianceError as exc:
        err_console.print(f"[bold red]{exc.code}[/]: {exc.message}", highlight=False, markup=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("Aborted.")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors arrive here in standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
