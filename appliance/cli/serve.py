"""`appliance serve` (implemented by the serving stage)."""

from __future__ import annotations

import typer


def serve(ctx: typer.Context) -> None:
    """Run the embedded engine (not built yet)."""
    raise typer.Exit(2)
