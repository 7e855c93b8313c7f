"""`appliance models bootstrap|hash`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from appliance.cli._common import console

app = typer.Typer(no_args_is_help=True)


class BaseModelName(StrEnum):
    tiny = "tiny"
    smollm2_135m = "smollm2-135m"


@app.command("bootstrap")
def bootstrap(
    name: BaseModelName = typer.Argument(..., help="tiny (random, for tests) or smollm2-135m (from its GGUF)."),
    out: Path = typer.Option(..., "--out", help="Directory to write the model into (must not exist or be empty)."),
) -> None:
    """Write a base model directory without a model hub."""
    from appliance.models import bootstrap_smollm2, bootstrap_tiny, model_hash

    with console.status(f"building {name.value} ..."):
        path = bootstrap_tiny(out) if name is BaseModelName.tiny else bootstrap_smollm2(out)
    console.print(f"[green]wrote[/] {path}  sha256={model_hash(path)[:16]}")


@app.command("hash")
def hash_(model_dir: Path = typer.Argument(..., help="A Hugging Face model directory.")) -> None:
    """Print the content hash recorded as the base model's identity."""
    from appliance.models import model_hash

    console.print(model_hash(model_dir))
