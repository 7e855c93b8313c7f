"""`appliance registry ...` and `appliance erasure ...`: thin commands over :class:`appliance.registry.Registry`.

Trust model (appliance/registry/README.md): the CLI runs as the operator on the appliance. ``--actor`` names who
acts and is recorded; for approvals and role changes it is not enough: the person's personal token (issued by
``registry grant``, stored only as a scrypt hash) must be given on stdin, by prompt or with ``--token-file``.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from appliance.cli._common import console, err_console, invoking_user, settings_of
from appliance.errors import IntegrityViolation, Unauthenticated, ValidationFailed

app = typer.Typer(no_args_is_help=True)
erasure_app = typer.Typer(no_args_is_help=True)

_ACTOR_HELP = "Who acts (recorded in the audit trail); default: the invoking user ($SUDO_USER or the login name)."
_TOKEN_HELP = "File holding the person's token (else read from stdin, or prompted on a terminal)."
_JSON_HELP = "Print JSON instead of a table."


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (a test may swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@contextmanager
def _registry(ctx: typer.Context, *, logs_to_stderr: bool = False) -> Iterator[Any]:
    """The registry, closed afterwards; ``logs_to_stderr`` (``--json``) keeps log lines off stdout meanwhile."""
    import structlog

    from appliance.registry import open_registry

    saved = structlog.get_config()
    if logs_to_stderr:
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(_Stderr()))  # type: ignore[arg-type]
    try:
        reg = open_registry(settings_of(ctx))
        try:
            yield reg
        finally:
            reg.close()
    finally:
        if logs_to_stderr:
            structlog.configure(**saved)


def _actor(subject: str | None) -> Any:
    from appliance.registry import Actor
    from appliance.registry._service import check_subject

    return Actor(subject=check_subject(subject or invoking_user()), roles=frozenset(), auth_method="cli")


def _token(token_file: Path | None, subject: str) -> str:
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValidationFailed(f"cannot read the token file {token_file}: {exc.strerror}") from exc
    elif sys.stdin.isatty():
        text = getpass.getpass(f"personal token for {subject}: ")
    else:
        text = sys.stdin.readline()
    token = text.strip()
    if not token:
        raise Unauthenticated(f"no personal token given for {subject!r}")
    return token


def _authenticated(reg: Any, subject: str, token_file: Path | None) -> Any:
    from appliance.registry._service import check_subject

    check_subject(subject)
    return reg.authenticate(subject, _token(token_file, subject))


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def _subject_id(subject: str) -> str:
    """The subject id itself, or one line from stdin for ``-`` (keeps it out of shell history and ps)."""
    value = sys.stdin.readline().strip() if subject == "-" else subject.strip()
    if not value:
        raise ValidationFailed("a subject id is required (--subject ID, or --subject - to read it from stdin)")
    return value


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    name: str | None = typer.Option(None, "--name", help="Only this adapter name."),
    status: str | None = typer.Option(
        None, "--status", help="Only this status (staged, approved, production, retired)."
    ),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """List adapters with status, approvals and where they are published."""
    with _registry(ctx) as reg:
        adapters = reg.list_adapters(name=name, status=status)
    if as_json:
        _print_json([a.to_dict() for a in adapters])
        return
    table = Table("name", "version", "status", "approvals", "targets", "epsilon", "fingerprint", "trained by")
    for a in adapters:
        table.add_row(
            a.name,
            str(a.version),
            a.status,
            ", ".join(x.subject for x in a.approvals) or "-",
            ", ".join(a.targets) or "-",
            "no DP" if not a.dp.get("enabled") else f"{a.dp.get('epsilon'):g}",
            a.weights_fingerprint[:16],
            a.trained_by,
        )
    console.print(table)


@app.command("show")
def show_cmd(ctx: typer.Context, name: str, version: int) -> None:
    """Show one adapter version (JSON) with its provenance (base model, dataset, run), approvals, publications."""
    with _registry(ctx) as reg:
        info = reg.show(name, version)
    _print_json(info.to_dict())


@app.command("add")
def add_cmd(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A completed training run directory (metadata.json, adapter files)."),
    name: str = typer.Option(..., "--name", help="Adapter name (a-z, 0-9, '-', '_')."),
    actor: str | None = typer.Option(None, "--actor", help=_ACTOR_HELP),
) -> None:
    """Register a trained adapter with its provenance; its files are encrypted into the data directory."""
    with _registry(ctx) as reg:
        info = reg.add(run_dir, name, _actor(actor))
    console.print(f"registered {info.name} v{info.version} ({info.status}), fingerprint {info.weights_fingerprint}")


@app.command("approve")
def approve_cmd(
    ctx: typer.Context,
    name: str,
    version: int,
    actor: str = typer.Option(..., "--actor", help="The approver (must hold the approver role)."),
    comment: str | None = typer.Option(None, "--comment", help="Why (kept in the registry, not the audit trail)."),
    token_file: Path | None = typer.Option(None, "--token-file", help=_TOKEN_HELP),
) -> None:
    """Approve an adapter as one of the two required approvers (neither may have trained it)."""
    with _registry(ctx) as reg:
        person = _authenticated(reg, actor, token_file)
        info = reg.approve(name, version, person, comment=comment)
    console.print(f"{actor} approved {name} v{version}: {len(info.approvals)} of 2 approvals, status {info.status}")


_NO_RELOAD_HELP = "Only write the lists; ask no replica to load them (servers not started yet read them at start)."


def _reach(
    ctx: typer.Context, reg: Any, change: str, name: str, version: int, targets: list[str], actor: Any, reload: bool
) -> Any:
    """Write the replicas' own lists and (unless ``--no-reload``) ask them to load the change; None: no target."""
    from appliance.registry import reach_replicas

    if not targets:
        return None
    settings = settings_of(ctx)
    return reach_replicas(
        reg, settings, change=change, name=name, version=version, targets=targets, actor=actor, reload=reload
    )


def _report(report: Any, summary: str, as_json: bool) -> None:
    """Print the change and what each replica did; exit 69 when one failed (the change itself stays recorded)."""
    from appliance.errors import BackendUnavailable

    if as_json:
        _print_json({"summary": summary, **(report.as_dict() if report is not None else {"replicas": None})})
    else:
        console.print(summary)
        if report is not None and report.replicas:
            table = Table("replica", "kind", "outcome", "reason")
            colour = {"loaded": "green", "restarting": "yellow", "failed": "red"}
            for r in report.replicas:
                table.add_row(r.replica, r.kind, f"[{colour[r.outcome]}]{r.outcome}[/]", r.reason or "")
            console.print(table)
        elif report is not None and report.reloaded:
            console.print(f"no replica of {', '.join(report.targets)} is configured (serving.replicas)")
    if report is not None and report.failed:
        err = ", ".join(r.replica for r in report.failed)
        err_console.print(f"REPLICA_RELOAD_FAILED: not loaded on {err}; the gateway does not route it there")
        raise typer.Exit(BackendUnavailable.exit_code)


@app.command("publish")
def publish_cmd(
    ctx: typer.Context,
    name: str,
    version: int,
    target: str | None = typer.Option(None, "--target", help="tgi, vllm or embedded (default: serving.backend)."),
    actor: str | None = typer.Option(None, "--actor", help=_ACTOR_HELP),
    no_reload: bool = typer.Option(False, "--no-reload", help=_NO_RELOAD_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Decrypt an approved adapter for a backend, add it to that backend's adapter list (atomically, signed) and
    have every replica of that backend load it (exit 69 when one did not)."""
    settings = settings_of(ctx)
    who = _actor(actor)
    with _registry(ctx, logs_to_stderr=as_json) as reg:
        published = reg.publish(name, version, target or settings.serving.backend, who)
        targets = [target or settings.serving.backend]
        report = _reach(ctx, reg, "publish", name, version, targets, who, not no_reload)
    summary = f"published {published.served_id} to {', '.join(published.targets)} ({published.fingerprint})"
    _report(report, summary, as_json)


@app.command("unpublish")
def unpublish_cmd(
    ctx: typer.Context,
    name: str,
    version: int,
    target: str | None = typer.Option(None, "--target", help="One target (default: every target)."),
    actor: str | None = typer.Option(None, "--actor", help=_ACTOR_HELP),
    no_reload: bool = typer.Option(False, "--no-reload", help=_NO_RELOAD_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Remove an adapter from a backend's list (every backend's by default), delete its decrypted copy and have
    every replica of those backends unload it (exit 69 when one did not)."""
    who = _actor(actor)
    with _registry(ctx, logs_to_stderr=as_json) as reg:
        before = set(reg.show(name, version).targets)
        info = reg.unpublish(name, version, who, target=target)
        touched = sorted(before - set(info.targets))
        report = _reach(ctx, reg, "unpublish", name, version, touched, who, not no_reload)
    _report(report, f"unpublished {name} v{version}; status {info.status}", as_json)


@app.command("rollback")
def rollback_cmd(
    ctx: typer.Context,
    name: str,
    reason: str | None = typer.Option(None, "--reason", help="Why (recorded with the degraded mark)."),
    actor: str | None = typer.Option(None, "--actor", help=_ACTOR_HELP),
    no_reload: bool = typer.Option(False, "--no-reload", help=_NO_RELOAD_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Serve the previous two-person-approved version again (the current one is unpublished and marked degraded)
    and have every replica of its targets load the change (exit 69 when one did not)."""
    who = _actor(actor)
    with _registry(ctx, logs_to_stderr=as_json) as reg:
        result = reg.rollback(name, who, reason=reason)
        report = _reach(ctx, reg, "rollback", name, result.to_version, list(result.targets), who, not no_reload)
    summary = (
        f"rolled back {name}: v{result.from_version} -> v{result.to_version} on {', '.join(result.targets)} "
        f"({result.to_fingerprint})"
    )
    _report(report, summary, as_json)


@app.command("retire")
def retire_cmd(
    ctx: typer.Context,
    name: str,
    version: int,
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in the registry)."),
    actor: str | None = typer.Option(None, "--actor", help=_ACTOR_HELP),
    no_reload: bool = typer.Option(False, "--no-reload", help=_NO_RELOAD_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Retire an adapter for good (unpublished everywhere; never approved or published again); replicas that
    served it unload it (exit 69 when one did not)."""
    who = _actor(actor)
    with _registry(ctx, logs_to_stderr=as_json) as reg:
        before = sorted(reg.show(name, version).targets)
        reg.retire(name, version, who, reason=reason)
        report = _reach(ctx, reg, "retire", name, version, before, who, not no_reload)
    _report(report, f"retired {name} v{version}", as_json)


@app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    name: str | None = typer.Argument(None),
    version: int | None = typer.Argument(None),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Decrypt every adapter artifact and check each file's digest and the weights fingerprint (and a published
    adapter's served copy against what the registry wrote)."""
    with _registry(ctx) as reg:
        results = reg.verify(name, version)
    if as_json:
        _print_json([r.__dict__ for r in results])
    else:
        for r in results:
            mark = "[green]ok[/]" if r.ok else f"[bold red]FAILED[/]: {r.error}"
            console.print(f"{_verified(r.name, r.version)}: {mark}", highlight=False)
    bad = [_verified(r.name, r.version) for r in results if not r.ok]
    if bad:
        raise IntegrityViolation(f"{len(bad)} adapter artifact(s) failed verification: {', '.join(bad)}")


def _verified(name: str, version: int) -> str:
    return name if version == 0 else f"{name} v{version}"  # version 0: a published list, not an adapter


@app.command("lineage")
def lineage_cmd(
    ctx: typer.Context,
    subject: str = typer.Option(..., "--subject", help="The subject id ('-' reads it from stdin)."),
    actor: str | None = typer.Option(None, "--actor", help=_ACTOR_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """List the datasets, runs and adapters that saw a subject (GDPR Art. 17 / Art. 30)."""
    with _registry(ctx) as reg:
        report = reg.lineage(_subject_id(subject), _actor(actor))
    if as_json:
        _print_json(report.to_dict())
        return
    if not report.found:
        console.print("no registered dataset holds this subject")
        return
    for d in report.datasets:
        console.print(f"dataset {d['fingerprint']} ({d['records'] if d['records'] is not None else '?'} train records)")
    for r in report.runs:
        dp = (
            f"epsilon {r['epsilon']:g}, delta {r['delta']:g}, {r['privacy_unit']}-level" if r["dp_enabled"] else "no DP"
        )
        console.print(f"run {r['run_id']} by {r['trained_by']}: {dp}")
    for a in report.adapters:
        console.print(f"adapter {a['name']} v{a['version']} ({a['status']}) {a['fingerprint']}")


@app.command("grant")
def grant_cmd(
    ctx: typer.Context,
    person: str = typer.Argument(..., help="Who receives the role (e.g. alice@hospital.example)."),
    role: str = typer.Option(..., "--role", help="approver or admin."),
    actor: str | None = typer.Option(None, "--actor", help="The admin granting it (authenticated by token)."),
    token_file: Path | None = typer.Option(None, "--token-file", help="The admin's token file. " + _TOKEN_HELP),
    token_out: Path | None = typer.Option(
        None, "--token-out", help="Write a new person's token to this new file (mode 0600) instead of printing it."
    ),
) -> None:
    """Give a person a role; a new person gets a personal token, shown once (only its hash is kept)."""
    if token_out is not None and token_out.exists():
        raise ValidationFailed(f"--token-out {token_out} already exists; refusing to overwrite a token file")
    with _registry(ctx) as reg:
        if reg.needs_bootstrap():
            if role != "admin":
                raise ValidationFailed(
                    "no admin exists yet: grant the admin role first (registry grant WHO --role admin)"
                )
            granter = _actor(actor)
        else:
            if actor is None:
                raise Unauthenticated("granting a role needs an admin: pass --actor ADMIN and the admin's token")
            granter = _authenticated(reg, actor, token_file)
        issued = reg.grant(person, role, granter)
    console.print(f"{person} now holds {role}")
    if issued is None:
        return
    if token_out is not None:
        _write_token(token_out, issued)
        console.print(f"personal token for {person} written to {token_out} (mode 0600)")
    else:
        console.print(f"personal token for {person} (shown once; give it to them in person): {issued}", highlight=False)


def _write_token(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")


@app.command("revoke")
def revoke_cmd(
    ctx: typer.Context,
    person: str,
    role: str = typer.Option(..., "--role"),
    actor: str = typer.Option(..., "--actor", help="The admin revoking it (authenticated by token)."),
    token_file: Path | None = typer.Option(None, "--token-file", help=_TOKEN_HELP),
) -> None:
    """Take a role away from a person."""
    with _registry(ctx) as reg:
        reg.revoke(person, role, _authenticated(reg, actor, token_file))
    console.print(f"{person} no longer holds {role}")


@app.command("people")
def people_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help=_JSON_HELP)) -> None:
    """List the people who may approve or administer, with their roles."""
    with _registry(ctx) as reg:
        people = reg.people()
    if as_json:
        _print_json(people)
        return
    table = Table("person", "roles", "created by", "created at")
    for p in people:
        table.add_row(p["subject"], ", ".join(p["roles"]), p["created_by"], p["created_at"])
    console.print(table)


@app.command("rewrap")
def rewrap_cmd(ctx: typer.Context, actor: str | None = typer.Option(None, "--actor", help=_ACTOR_HELP)) -> None:
    """Rewrap every adapter's data key under the newest version of the artifacts key (after `keys rotate`)."""
    with _registry(ctx) as reg:
        count = reg.rewrap(_actor(actor))
    console.print(f"rewrapped {count} data key(s)")


@erasure_app.command("plan")
def erasure_plan_cmd(
    ctx: typer.Context,
    subject: str = typer.Option(..., "--subject", help="The subject id ('-' reads it from stdin)."),
    actor: str | None = typer.Option(None, "--actor", help=_ACTOR_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """What must be re-prepared, retired or retrained to erase a subject, with the DP guarantee that applied."""
    with _registry(ctx) as reg:
        plan = reg.erasure_plan(_subject_id(subject), _actor(actor))
    if as_json:
        _print_json(plan.to_dict())
        return
    if not plan.items:
        console.print("no registered dataset holds this subject: nothing to retire or retrain")
        return
    for item in plan.items:
        state = f" [{item.status}]" if item.status else ""
        console.print(f"{item.kind} {item.ref}{state}: {item.action}", highlight=False)
        console.print(f"    guarantee: {item.guarantee}", highlight=False)
