"""`appliance config show`."""

from __future__ import annotations

import json

import typer

from appliance.cli._common import console, settings_of

app = typer.Typer(no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context) -> None:
    """Print the effective settings as JSON, secrets redacted."""
    settings = settings_of(ctx)
    console.print_json(json.dumps(settings.redacted(), default=str))
