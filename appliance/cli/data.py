"""`appliance data check|scrub|prepare|synth|evaluate-scrub`: intake of JSONL datasets (counts, never values)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from appliance.cli._common import console, err_console, settings_of
from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.audit import AuditEventFields, OutcomeStatus
    from appliance.config import Settings
    from appliance.protocols import AuditLog

app = typer.Typer(no_args_is_help=True)

_PROGRESS_MIN_BYTES = 4 * 1024 * 1024  # show a progress bar for inputs at least this large


class _Bars:
    """Progress callbacks: bytes read, then records scrubbed (a rich bar for large inputs, silent otherwise)."""

    def __init__(self, progress: Progress | None, size: int, name: str) -> None:
        self._progress = progress
        self._read = progress.add_task(f"reading {name}", total=size) if progress else None
        self._scrub: TaskID | None = None

    def read(self, done: int) -> None:
        if self._progress is not None and self._read is not None:
            self._progress.update(self._read, completed=done)

    def scrubbed(self, done: int, total: int) -> None:
        if self._progress is None:
            return
        if self._scrub is None:
            self._scrub = self._progress.add_task("scrubbing records", total=total)
        self._progress.update(self._scrub, completed=done)


@contextmanager
def _bars(path: Path) -> Iterator[_Bars]:
    """Progress bars for a large input (at least 4 MiB), or no-op callbacks with a spinner for a small one."""
    size = path.stat().st_size if path.is_file() else 0
    if size < _PROGRESS_MIN_BYTES:
        with console.status(f"processing {path.name} ..."):
            yield _Bars(None, size, path.name)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield _Bars(progress, size, path.name)


def _report_table(title: str, counts: dict[str, int]) -> Table:
    table = Table(title=title, show_lines=False)
    table.add_column("placeholder")
    table.add_column("replaced", justify="right")
    for kind, count in counts.items():
        if count:
            table.add_row(f"[{kind}]", str(count), style=None)
    table.add_row("total", str(sum(counts.values())), style="bold")
    return table


def _event(status: OutcomeStatus, details: dict[str, Any], error_class: str | None = None) -> AuditEventFields:
    from appliance.audit import audit_event, cli_actor

    return audit_event(
        "data.prepare", actor=cli_actor(), action="prepare", status=status, error_class=error_class, details=details
    )


def open_intake_audit(settings: Settings) -> AuditLog:
    """The audit log for `data prepare` (the hook: ``appliance.audit.open_audit_log``); raises AuditUnavailable."""
    from appliance.audit import open_audit_log

    return open_audit_log(settings)


@app.command("check")
def check(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="JSONL file: instruction, response, optional subject_id and metadata."),
    phi: bool = typer.Option(False, "--phi", help="Also count the PHI the scrubber would replace (slower)."),
) -> None:
    """Validate a JSONL dataset; every problem is listed with its line and field."""
    from appliance.intake import Scrubber, ScrubReport, read_records

    settings = settings_of(ctx)
    with _bars(source) as bars:
        records, info = read_records(source, max_record_bytes=settings.intake.max_record_bytes, progress=bars.read)
    subjects = {r.subject_id for r in records if r.subject_id is not None}
    without = sum(1 for r in records if r.subject_id is None)
    console.print(
        f"[green]OK[/] {source.name}: {len(records)} records, {len(subjects)} subjects, "
        f"{without} records without subject_id, {info.bytes} bytes, sha256={info.sha256[:16]}"
    )
    if phi:
        scrubber, report = Scrubber(), ScrubReport(records=len(records))
        with console.status("scanning for PHI ..."):
            for rec in records:
                fields: dict[str, Any] = {"instruction": rec.instruction, "response": rec.response}
                if rec.metadata is not None:
                    fields["metadata"] = rec.metadata
                report.add(scrubber.scrub_fields(fields)[1])
        console.print(_report_table("PHI found (counts only)", report.as_dict()))


@app.command("scrub")
def scrub(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="JSONL file to scrub."),
    out: Path = typer.Option(..., "--out", help="Where to write the scrubbed JSONL (must not exist)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
    report_path: Path | None = typer.Option(None, "--report", help="Also write the counts per type as JSON here."),
) -> None:
    """Write the same records with PHI replaced by typed placeholders; print counts per type (never values)."""
    from appliance.intake import scrub_file

    settings = settings_of(ctx)
    with _bars(source) as bars:
        report = scrub_file(
            source,
            out,
            max_record_bytes=settings.intake.max_record_bytes,
            overwrite=force,
            progress=bars.read,
            on_record=bars.scrubbed,
        )
    console.print(
        _report_table(f"scrub report: {report.records} records, {report.records_changed} changed", report.as_dict())
    )
    if report_path is not None:
        body = {"records": report.records, "records_changed": report.records_changed, "counts": report.as_dict()}
        report_path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    console.print(f"[green]wrote[/] {out}  (subject_id kept; `data prepare` replaces it with a salted digest)")


@app.command("prepare")
def prepare(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="JSONL file to prepare for training."),
    out: Path = typer.Option(..., "--out", help="Directory for the prepared dataset (must not exist or be empty)."),
    eval_fraction: float | None = typer.Option(None, "--eval-fraction", help="Share held out (by subject)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the train/eval split."),
    near_threshold: float | None = typer.Option(
        None, "--near-threshold", help="MinHash Jaccard threshold for near duplicates (1.0 disables)."
    ),
) -> None:
    """Validate, scrub, deduplicate, split by subject, fingerprint; record `data.prepare` in the audit trail."""
    from appliance.intake import PrepareOptions
    from appliance.intake import prepare as run_prepare

    settings = settings_of(ctx)
    cfg = settings.intake
    options = PrepareOptions(
        eval_fraction=cfg.eval_fraction if eval_fraction is None else eval_fraction,
        split_seed=cfg.split_seed if seed is None else seed,
        near_duplicate_threshold=cfg.near_duplicate_threshold if near_threshold is None else near_threshold,
        minhash_num_perm=cfg.minhash_num_perm,
        max_record_bytes=cfg.max_record_bytes,
        max_residual_per_1000_records=cfg.max_residual_per_1000_records,
    )
    audit = open_intake_audit(settings)  # fails closed: no audit trail, no prepared dataset

    def record(manifest: dict[str, Any]) -> None:
        counts = manifest["counts"]
        details = {
            "fingerprint": manifest["fingerprint"],
            "source_sha256": manifest["source"]["sha256"],
            "subjects": len(manifest["subjects"]["digests"]),
            **{k: int(v) for k, v in counts.items()},
            "phi_replaced": int(sum(manifest["scrub_report"].values())),
            "residual_suspected": int(manifest["residual"]["total"]),
        }
        audit.record_sync(_event("success", details))

    try:
        with _bars(source) as bars:
            result = run_prepare(
                source, out, options, progress=bars.read, on_record=bars.scrubbed, before_commit=record
            )
    except ApplianceError as exc:
        if exc.code != "AUDIT_UNAVAILABLE":
            with suppress(ApplianceError):  # the original error is what the operator needs to see
                audit.record_sync(_event("error", {"output": out.name[:128] or None}, exc.code))
        raise
    finally:
        audit.close_sync()
    m = result.manifest
    c = m["counts"]
    summary = Table(title=f"prepared {out}", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    for label, value in (
        ("input records", c["input"]),
        ("exact duplicates removed", c["exact_duplicates"]),
        ("near duplicates removed", c["near_duplicates"]),
        ("train records", c["train"]),
        ("eval records", c["eval"]),
        ("subjects (salted digests)", len(m["subjects"]["digests"])),
        ("suspected identifiers left (second pass)", m["residual"]["total"]),
    ):
        summary.add_row(label, str(value))
    console.print(summary)
    console.print(_report_table("scrub report (counts only)", m["scrub_report"]))
    console.print(f"[green]fingerprint[/] {result.fingerprint}")


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Where to write the synthetic JSONL."),
    records: int = typer.Option(600, "--records", min=10, max=1_000_000, help="About how many records."),
    seed: int = typer.Option(2024, "--seed", help="Generator seed (the output is a pure function of it)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
    labelled: bool = typer.Option(
        False, "--labelled", help="Write labelled evaluation notes (phi and keep lists) for `data evaluate-scrub`."
    ),
) -> None:
    """Write a synthetic clinical dataset with fake PHI (no real patients) for demos and tests."""
    from appliance.errors import Conflict
    from appliance.intake import write_labelled_notes, write_synthetic

    if out.exists() and not force:
        raise Conflict(f"output {out} already exists; pass --force to replace it")
    if labelled:
        n = write_labelled_notes(out, n=records, seed=seed)
        console.print(f"[green]wrote[/] {out}: {n} labelled evaluation notes (fake PHI, every identifier labelled)")
        return
    n = write_synthetic(out, n=records, seed=seed)
    console.print(f"[green]wrote[/] {out}: {n} synthetic records (fake PHI, shared subjects, some duplicates)")


def _recall_row(table: Table, label: str, tally: dict[str, Any], style: str | None = None) -> None:
    recall = tally.get("recall", tally.get("rate"))
    shown = "-" if recall is None else f"{recall:.3f}"
    caught = tally.get("caught", tally.get("kept", 0))
    table.add_row(label, str(caught), str(tally["total"]), shown, style=style)


@app.command("evaluate-scrub")
def evaluate_scrub(
    labelled: Path = typer.Argument(..., help="Labelled JSONL: intake fields plus phi [{type, value, role?}], keep."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (counts and ratios only)."),
    show_misses: Path | None = typer.Option(
        None,
        "--show-misses",
        help="Write the missed values (type, role, value, record line) to this file, mode 0600; never printed.",
    ),
) -> None:
    """Measure the scrubber on annotated notes: recall per type and role, kept rate, speed (no value printed)."""
    from appliance.intake import evaluate_scrubber, read_labelled, write_misses

    with console.status(f"scrubbing {labelled.name} ..."):
        records = read_labelled(labelled)
        result = evaluate_scrubber(records)
    if show_misses is not None:
        write_misses(show_misses, result.misses)
    report = result.as_dict()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        table = Table(title=f"scrubber recall on {labelled.name}: {report['records']} records (counts only)")
        for column in ("what", "caught", "total", "recall"):
            table.add_column(column, justify="left" if column == "what" else "right")
        for kind, tally in report["recall_by_type"].items():
            _recall_row(table, kind, tally)
        for role, tally in report["names_by_role"].items():
            _recall_row(table, f"NAME ({role})", tally)
        _recall_row(table, "names, all roles", report["names"], "bold")
        _recall_row(table, "structured identifiers", report["structured"], "bold")
        _recall_row(table, "clinical phrases kept", report["kept"], "bold")
        console.print(table)
        console.print(f"{report['records_per_cpu_second']} records per CPU-second ({report['cpu_seconds']} s of CPU)")
    if show_misses is not None:
        err_console.print(f"wrote {len(result.misses)} missed values to {show_misses} (mode 0600; holds PHI)")
