"""`appliance train` (implemented by the training stage)."""

from __future__ import annotations

import typer


def train(ctx: typer.Context) -> None:
    """Train a DP-LoRA adapter (not built yet)."""
    raise typer.Exit(2)
