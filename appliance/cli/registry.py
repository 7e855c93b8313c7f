"""`appliance registry ...` and `appliance erasure ...` (commands are added by the registry stage)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
erasure_app = typer.Typer(no_args_is_help=True)
