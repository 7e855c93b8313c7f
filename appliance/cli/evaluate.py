"""`appliance eval`: a base model (and an adapter) on a prepared split; prints figures only, never record text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from appliance.cli._common import console


def _ci(values: list[float] | None, digits: int) -> str:
    return "" if not values else f" [{values[0]:.{digits}f}, {values[1]:.{digits}f}]"


def _cell(figures: dict[str, Any], key: str, digits: int) -> str:
    value = figures.get(key)
    return "-" if value is None else f"{value:.{digits}f}{_ci(figures.get(key + '_ci'), digits)}"


def print_report(result: dict[str, Any]) -> None:
    """The report as a table: one row per figure, base / adapter / delta columns, 95% intervals in brackets."""
    from rich.table import Table

    table = Table(title=f"evaluation on {result['n']} records ({result['exact_match_n']} with short answers)")
    table.add_column("")
    columns = [k for k in ("base", "adapter", "delta") if k in result]
    for name in columns:
        table.add_column(name)
    for key, digits in (("loss", 4), ("perplexity", 2), ("exact_match", 3)):
        table.add_row(key.replace("_", " "), *(_cell(result[c], key, digits) for c in columns))
    console.print(table)
    console.print("  brackets: bootstrap 95% intervals (delta = adapter - base, paired)")


def evaluate(
    base: Path = typer.Option(..., "--base", help="Base model directory."),
    dataset: Path = typer.Option(..., "--dataset", help="Prepared dataset directory (from `appliance data prepare`)."),
    adapter: Path | None = typer.Option(None, "--adapter", help="Adapter directory: base and adapter side by side."),
    split: str = typer.Option("eval", "--split", help="eval or train."),
    max_records: int | None = typer.Option(None, "--max-records", min=1, help="Score only the first N records."),
    max_length: int = typer.Option(256, "--max-length", help="Tokens per record, as in training."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Loss, perplexity and exact match of a base model (and an adapter) on a prepared split, with 95% intervals."""
    from appliance.evaluation import EvalOptions, evaluate_dirs

    result = evaluate_dirs(
        base,
        dataset,
        adapter=adapter,
        split=split,
        max_records=max_records,
        options=EvalOptions(max_length=max_length),
    )
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
    else:
        print_report(result)
