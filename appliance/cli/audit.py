"""`appliance audit export|verify|hash|purge|tail`: the audit trail for investigators and operators.

Thin: parse, call ``appliance.audit``, print. ``verify`` exits non-zero (INTEGRITY_VIOLATION, 65) on any problem
and prints each one with where it is. ``hash`` reads the text from stdin unless given, so a prompt need not appear
in the shell history or the process list. Export and purge are themselves audit events.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from appliance.cli._common import console, err_console, settings_of

if TYPE_CHECKING:
    from appliance.audit import AuditEventFields

app = typer.Typer(no_args_is_help=True)


def _cli_event(type_: str, action: str, details: dict[str, Any], error_class: str | None = None) -> AuditEventFields:
    from appliance.audit import audit_event, cli_actor

    return audit_event(
        type_,
        actor=cli_actor(),  # the person behind sudo, not the service account the command runs as
        action=action,
        status="success" if error_class is None else "error",
        error_class=error_class,
        details=details,
    )


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="A new (or empty) directory for the records and the manifest."),
    since: str | None = typer.Option(None, "--from", help="First time, ISO-8601 (UTC when no zone is given)."),
    until: str | None = typer.Option(None, "--to", help="Last time, ISO-8601 (inclusive)."),
    actor: str | None = typer.Option(None, "--actor", help="Only this actor subject (checkpoints always travel)."),
    adapter: str | None = typer.Option(None, "--adapter", help="Only this adapter name."),
    type_: str | None = typer.Option(None, "--type", help="Only this event type (e.g. gateway.request)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (verbatim records) or csv (readable columns + record)."),
) -> None:
    """Export records and a signed manifest that `appliance audit verify DIR` checks offline."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    from appliance.audit import open_audit_log
    from appliance.audit._export import ExportFilter, export, parse_time
    from appliance.audit._factory import open_audit_store, open_key_service_for_audit
    from appliance.errors import ValidationFailed

    if fmt not in ("jsonl", "csv"):
        raise ValidationFailed("--format must be jsonl or csv")
    settings = settings_of(ctx)
    filters = ExportFilter(
        since=parse_time(since) if since else None,
        until=parse_time(until) if until else None,
        actor=actor,
        adapter=adapter,
        type=type_,
    )
    keys = open_key_service_for_audit(settings)
    audit = open_audit_log(settings, keys)
    try:
        details = {k: v for k, v in filters.as_dict().items() if v is not None and k not in ("since", "until")}
        audit.record_sync(_cli_event("audit.export", "export", {"format": fmt, **details}))
    finally:
        audit.close_sync()
    store = open_audit_store(settings)
    columns = (TextColumn("exporting"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("export", total=None)
        manifest = export(
            store,
            keys,
            out,
            filters=filters,
            fmt=fmt,  # type: ignore[arg-type]
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            signer=audit.writer_id,  # this process's own writer key signs the manifest (Vault: its only one)
        )
    console.print(
        f"exported {manifest['count']} records from {len(manifest['writers'])} chain(s) to {out} "
        f"({manifest['range']['first_time']} .. {manifest['range']['last_time']}); "
        f"key fingerprint {manifest['key_fingerprint']}",
        soft_wrap=True,
    )


@app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    directory: Path | None = typer.Argument(None, help="An export directory; without it, the live log."),
    expect_key: str | None = typer.Option(
        None, "--expect-key", help="The audit key fingerprint you trust (compare it out of band)."
    ),
    writer: str | None = typer.Option(None, "--writer", help="Only this writer's chain (live log)."),
    witness_history: bool = typer.Option(
        False, "--witness-history", help="Compare every checkpoint a Vault witness kept, not only the newest."
    ),
) -> None:
    """Check the chain, the checkpoint signatures and the sequence; print what is wrong and where. The live log is
    also compared with the witnesses ([audit] witness_dir, witness_vault): a chain shorter than, or absent from,
    what they hold is reported."""
    from appliance.errors import IntegrityViolation

    if directory is not None:
        from appliance.audit._export_verify import verify_export

        report = verify_export(directory, expected_key_fingerprint=expect_key)
    else:
        from appliance.audit._checkpoint import chain_public_keys
        from appliance.audit._factory import open_audit_store, open_key_service_for_audit, open_witnesses
        from appliance.audit._verify import Problem, verify_store
        from appliance.audit._witness import compare_with_witnesses

        settings = settings_of(ctx)
        keys = open_key_service_for_audit(settings)
        public_keys = chain_public_keys(keys)  # each writer's own key on Vault/OpenBao
        store = open_audit_store(settings)
        report = verify_store(store, public_keys, writer_id=writer)
        chains = {c.writer_id: c for c in report.chains}
        for found in compare_with_witnesses(
            chains, open_witnesses(settings, keys), history=witness_history, only=writer
        ):
            report.problems.append(
                Problem(found.writer_id, found.kind, f"witness {found.witness}", None, found.seq, found.message)
            )
        if expect_key is not None and report.key_fingerprint != expect_key:
            raise IntegrityViolation(f"the key service's audit key {report.key_fingerprint} is not {expect_key}")
    table = Table("chain", "records", "seq", "checkpoints", "signed through", "unsigned tail")
    for chain in report.chains:
        seqs = f"{chain.first_seq}..{chain.last_seq}" if chain.records else "-"
        table.add_row(
            _shown(chain.writer_id),  # an export's writer ids and file names are untrusted: shown, never obeyed
            str(chain.records),
            seqs,
            str(chain.checkpoints),
            str(chain.signed_through or "-"),
            str(chain.unsigned_tail),
        )
    console.print(table)
    console.print(f"audit key fingerprint: {report.key_fingerprint}", soft_wrap=True)
    problems = report.all_problems
    for problem in problems[:200]:
        err_console.print(f"[red]{_shown(str(problem))}[/]", highlight=False, soft_wrap=True, markup=True)
    if len(problems) > 200:
        err_console.print(f"... and {len(problems) - 200} more")
    if problems:
        raise IntegrityViolation(f"{len(problems)} problem(s) in {report.records} records")
    console.print(f"[green]OK[/]: {report.records} records verified")


def _shown(text: str) -> str:
    """Untrusted text for the terminal: control, format and surrogate characters escaped (no terminal escape
    sequences, no fake lines), rich markup escaped (printed as written, never parsed)."""
    import unicodedata

    from rich.markup import escape

    def one(c: str) -> str:
        if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
        return c

    return escape("".join(one(c) for c in text))


@app.command("hash")
def hash_cmd(
    ctx: typer.Context,
    text: str | None = typer.Argument(None, help="The text; omit (or '-') to read it from stdin (preferred)."),
    key_version: int | None = typer.Option(
        None,
        "--key-version",
        min=1,
        help="The audit HMAC key version to use: a record's digests.key_version (default: the current one).",
    ),
) -> None:
    """Print the HMAC-SHA256 digest of a text under the audit key, to compare with a record's digests."""
    from appliance.audit import open_audit_log, versioned_digest
    from appliance.audit._factory import open_key_service_for_audit

    if text is None or text == "-":
        text = sys.stdin.read()
        if text.endswith("\n"):
            text = text[:-1]
    settings = settings_of(ctx)
    keys = open_key_service_for_audit(settings)
    version, value = versioned_digest(keys, text, key_version)
    # The command is an oracle for the HMAC key: every use is recorded (who, when; never the text or the digest).
    audit = open_audit_log(settings, keys)
    try:
        audit.record_sync(_cli_event("audit.hash", "hash", {"key_version": version}))
    finally:
        audit.close_sync()
    err_console.print(f"audit HMAC key version {version}", highlight=False)
    console.print(value, highlight=False, soft_wrap=True)


@app.command("purge")
def purge_cmd(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be dropped; change nothing."),
    policy: Path | None = typer.Option(None, "--policy", help="Retention policy (default policies/retention.yaml)."),
) -> None:
    """Drop whole segments older than the retention policy, leaving a signed anchor so the rest verifies."""
    from appliance.audit import open_audit_log
    from appliance.audit._factory import open_audit_store, open_key_service_for_audit
    from appliance.audit._retention import PurgeResult, load_retention_policy, purge_files
    from appliance.audit._sinks.files import FileStore

    settings = settings_of(ctx)
    retention = load_retention_policy(policy or settings.policies_dir / "retention.yaml")
    store = open_audit_store(settings)
    keys = open_key_service_for_audit(settings)
    audit = None if dry_run else open_audit_log(settings, keys)
    pending: list[PurgeResult] = []  # intent recorded, outcome not yet

    def details(result: PurgeResult) -> dict[str, Any]:
        return {
            "chain": result.writer_id,
            "through_seq": result.through_seq,
            "anchor_hash": result.anchor_hash,
            "segments": len(result.segments),
            "records": result.records,
            "retain_days": retention.audit.retain_days,
        }

    def intent(result: PurgeResult) -> None:
        # Fail closed: who purges what is durable before anything is deleted; if it is not, this raises.
        assert audit is not None
        audit.record_sync(_cli_event("audit.purge", "purge.intent", details(result)))
        pending.append(result)

    def done(result: PurgeResult) -> None:
        assert audit is not None
        pending.remove(result)
        audit.record_sync(_cli_event("audit.purge", "purge", details(result)))

    try:
        if isinstance(store, FileStore):
            results = purge_files(store, keys, retention, dry_run=dry_run, intent=intent, done=done)
        else:
            from appliance.audit._sinks.postgres import PostgresStore, purge_postgres

            assert isinstance(store, PostgresStore)
            results = purge_postgres(
                store, keys, retention.audit.retain_days, dry_run=dry_run, intent=intent, done=done
            )
    except Exception as exc:
        error_class = type(exc).__name__
        for result in pending:
            # Announced, then failed before the deletion ended: say so (best effort; the intent is on record).
            with contextlib.suppress(Exception):
                assert audit is not None
                audit.record_sync(_cli_event("audit.purge", "purge", details(result), error_class))
        raise
    finally:
        if audit is not None:
            audit.close_sync()
    verb = "would drop" if dry_run else "dropped"
    for result in results:
        if result.through_seq is None:
            console.print(f"{result.writer_id}: nothing older than {retention.audit.retain_days} days", soft_wrap=True)
        else:
            console.print(
                f"{result.writer_id}: {verb} {len(result.segments)} segment(s), {result.records} records "
                f"through seq {result.through_seq}",
                soft_wrap=True,
            )


@app.command("tail")
def tail_cmd(
    ctx: typer.Context,
    lines: int = typer.Option(20, "-n", "--lines", min=1, max=10_000, help="How many of the newest records."),
    writer: str | None = typer.Option(None, "--writer", help="Only this writer's chain."),
    as_json: bool = typer.Option(False, "--json", help="Print the records verbatim, one JSON object a line."),
) -> None:
    """Show the newest records (no text is ever in them: prompts and outputs are digests)."""
    import json

    from appliance.audit._factory import open_audit_store

    store = open_audit_store(settings_of(ctx))
    table = Table("chain", "seq", "time", "type", "actor", "action", "adapter", "outcome")
    for wid in [writer] if writer else store.writers():
        tail: list[bytes] = []
        for _, data in _newest_chunks(store, wid, lines):
            tail = (tail + data.split(b"\n"))[-(lines + 1) :]
        for line in [x for x in tail if x][-lines:]:
            if as_json:
                sys.stdout.write(line.decode("utf-8", "replace") + "\n")
                continue
            try:
                r = json.loads(line)
            except ValueError:
                table.add_row(wid, "?", "", "[red]unreadable line[/]", "", "", "", "")
                continue
            adapter = r.get("adapter") or {}
            outcome = r.get("outcome") or {}
            table.add_row(
                wid,
                str(r.get("seq")),
                str(r.get("time")),
                str(r.get("type")),
                str((r.get("actor") or {}).get("subject")),
                str(r.get("action")),
                f"{adapter.get('name')}-v{adapter.get('version')}" if adapter else "",
                f"{outcome.get('status')} {outcome.get('http_status') or ''}".strip(),
            )
    if not as_json:
        console.print(table)


def _newest_chunks(store: Any, writer_id: str, lines: int) -> list[tuple[str, bytes]]:
    """The last segments holding at least ``lines`` records (segment files), else the whole chain."""
    from appliance.audit._sinks.files import FileStore

    if not isinstance(store, FileStore):
        return list(store.read(writer_id))
    chosen: list[tuple[str, bytes]] = []
    count = 0
    for _, path in reversed(store.live_segments(writer_id)):
        data = path.read_bytes()
        chosen.insert(0, (path.name, data))
        count += data.count(b"\n")
        if count > lines:
            break
    return chosen
