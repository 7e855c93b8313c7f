"""`appliance monitor run|add-reference|references|series|check-policy`: continuous evaluation (figures only)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from appliance.cli._common import console, err_console, invoking_user, settings_of

app = typer.Typer(no_args_is_help=True)


def _policy(settings: Any, path: Path | None = None) -> Any:
    from appliance.monitoring import load_monitoring_policy, policy_path

    return load_monitoring_policy(path or policy_path(settings.policies_dir))


def _print_report(report: Any) -> None:
    table = Table(title=f"monitor run {report.run_id}")
    for column in ("adapter", "set", "n", "loss", "exact match", "outcome"):
        table.add_column(column)
    for p in report.points:
        loss = "-" if p.loss is None else f"{p.loss:.4f}"
        em = "-" if p.exact_match is None else f"{p.exact_match:.3f}"
        table.add_row(f"{p.name}-v{p.version}", p.reference, str(p.n), loss, em, p.outcome)
    console.print(table)
    for r in report.rollbacks:
        console.print(f"rolled back {r.name}: v{r.from_version} -> v{r.to_version} ({', '.join(r.targets)})")
    for alert in report.alerts:
        err_console.print(f"ALERT {alert.kind}: {alert.message}", highlight=False, markup=False)


async def _run(settings: Any, policy: Any, adapter: str | None) -> Any:
    from appliance.monitoring import Monitor
    from appliance.registry import open_registry
    from appliance.serving import open_backend

    registry = await asyncio.to_thread(open_registry, settings)
    backend = open_backend(settings)
    try:
        return await Monitor(settings, registry, backend, policy).run_once(adapter)
    finally:
        await backend.aclose()
        await asyncio.to_thread(registry.close)


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="One pass, then exit (the systemd timer's way)."),
    adapter: str | None = typer.Option(None, "--adapter", help="Only this adapter's published versions."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Score every production adapter through serving, store the series, act on degradation (exit 1 on alerts)."""
    import structlog

    from appliance.cli.registry import _Stderr

    settings = settings_of(ctx)
    saved = structlog.get_config()
    if as_json:  # stdout carries the report alone; log lines go to stderr while the command runs
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(_Stderr()))  # type: ignore[arg-type]
    try:
        while True:
            policy = _policy(settings)  # re-read every pass: an edited policy applies at the next one
            report = asyncio.run(_run(settings, policy, adapter))
            if as_json:
                typer.echo(json.dumps(report.to_dict(), sort_keys=True, default=str))
            else:
                _print_report(report)
            if once:
                raise typer.Exit(0 if report.ok else 1)
            time.sleep(policy.schedule.interval_minutes * 60)
    finally:
        if as_json:
            structlog.configure(**saved)


@app.command("add-reference")
def add_reference_cmd(
    ctx: typer.Context,
    name: str,
    prepared_dir: Path,
    actor: str | None = typer.Option(None, "--actor", help="Who registers it (recorded); default: the invoking user."),
) -> None:
    """Keep a newer labelled reference set (a prepared dataset) encrypted for the monitor."""
    from appliance.registry import Actor, open_registry
    from appliance.registry._service import check_subject

    who = Actor(subject=check_subject(actor or invoking_user()), auth_method="cli")
    registry = open_registry(settings_of(ctx))
    try:
        info = registry.add_reference(name, prepared_dir, who)
    finally:
        registry.close()
    console.print(f"reference set {info.name}: {info.records} records ({info.dataset_fingerprint[:16]}...)")


@app.command("references")
def references_cmd(ctx: typer.Context) -> None:
    """The reference sets (names and counts, never records)."""
    from appliance.registry import open_registry

    registry = open_registry(settings_of(ctx))
    try:
        infos = registry.references()
    finally:
        registry.close()
    for info in infos:
        console.print(f"{info.name}\t{info.records}\t{info.dataset_fingerprint[:16]}\t{info.registered_at.isoformat()}")


@app.command("series")
def series_cmd(
    ctx: typer.Context,
    adapter: str | None = typer.Option(None, "--adapter"),
    version: int | None = typer.Option(None, "--version"),
    reference: str | None = typer.Option(None, "--reference"),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The monitor's time series, newest first."""
    from appliance.registry import open_registry

    registry = open_registry(settings_of(ctx))
    try:
        points = registry.series(adapter, version, reference, limit)
    finally:
        registry.close()
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in p.to_dict().items() if k != "figures"} for p in points]))
        return
    for p in points:
        loss = "-" if p.loss is None else f"{p.loss:.4f}"
        when = p.measured_at.isoformat() if p.measured_at else ""
        console.print(f"{when}\t{p.name}-v{p.version}\t{p.reference}\t{loss}\t{p.outcome}")


@app.command("check-policy")
def check_policy_cmd(ctx: typer.Context, path: Path | None = typer.Argument(None)) -> None:
    """Validate policies/monitoring.yaml (every problem listed; exit 78 when invalid)."""
    policy = _policy(settings_of(ctx), path)
    console.print(
        f"monitoring policy valid: every {policy.schedule.interval_minutes} min, auto_rollback "
        f"{str(policy.auto_rollback).lower()}"
    )
