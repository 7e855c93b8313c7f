"""`appliance ledger show`: the privacy budget of each dataset and every run charged to it.
`appliance ledger abandon RUN`: close a run that will not be resumed, releasing the steps it reserved."""

from __future__ import annotations

import json
import shutil

import typer

from appliance.cli._common import console, invoking_user, settings_of

app = typer.Typer(no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    dataset: str | None = typer.Option(None, "--dataset", help="Only this dataset fingerprint (or a prefix)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Print each dataset's budget, spend and remaining epsilon, and its runs."""
    from rich.table import Table

    from appliance.training import Ledger, load_privacy_policy

    settings = settings_of(ctx)
    policy = load_privacy_policy(settings.policies_dir / "privacy.yaml")
    ledger = Ledger(settings.ledger_path)
    runs = [r for r in ledger.runs() if dataset is None or r.fingerprint.startswith(dataset)]
    fingerprints = list(dict.fromkeys(r.fingerprint for r in runs))
    summaries = [ledger.summary(fp, policy.budget_for(fp, ledger.preparations(fp))) for fp in fingerprints]
    if as_json:
        out = {
            "datasets": [
                {
                    "fingerprint": s.fingerprint,
                    "budget": s.budget,
                    "delta": s.delta,
                    "spent": s.spent,
                    "remaining": s.remaining,
                    "runs": s.runs,
                }
                for s in summaries
            ],
            "runs": [r.__dict__ | {"charged_steps": r.charged_steps} for r in runs],
        }
        console.print_json(json.dumps(out))
        return
    budgets = Table(title="Privacy budget per dataset (RDP, composed over runs)")
    for col in ("dataset", "budget ε", "δ", "spent ε", "remaining ε", "runs"):
        budgets.add_column(col, justify="right" if col != "dataset" else "left")
    for s in summaries:
        style = "red" if s.remaining <= 0 else None
        budgets.add_row(
            s.fingerprint[:12],
            f"{s.budget:g}",
            f"{s.delta:g}",
            f"{s.spent:.3f}",
            f"{s.remaining:.3f}",
            str(s.runs),
            style=style,
        )
    tables = []
    for fp in fingerprints:
        table = Table(title=f"Runs on dataset {fp[:12]}")
        for col in ("run", "status", "unit", "DP", "steps", "ε", "by", "started (UTC)"):
            table.add_column(col, no_wrap=col in ("run", "status"))
        for r in (r for r in runs if r.fingerprint == fp):
            table.add_row(
                r.run_id,
                r.status,
                r.privacy_unit,
                "yes" if r.dp else "[yellow]NO[/]",
                f"{r.steps_taken}/{r.steps_planned}",
                "-" if r.epsilon is None else f"{r.epsilon:.3f}",
                r.trained_by,
                r.started_at.replace("+00:00", "").replace("T", " "),
            )
        tables.append(table)
    if not runs:
        console.print("no runs recorded")
        return
    console.print(budgets)
    for table in tables:
        console.print(table)


@app.command("abandon")
def abandon(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="The open run (see `ledger show`)."),
    actor: str | None = typer.Option(
        None, "--actor", help="Who abandons it (recorded in the audit trail); default: $SUDO_USER or the login name."
    ),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Close an interrupted run that will not be resumed: it then counts only the steps it took.

    An interrupted run keeps its whole plan reserved until `train --resume` finishes it; this releases the rest.
    Its checkpoint and canary secrets are deleted (it can no longer be resumed). Safe against a run that is still
    alive: each step is charged before it runs, so such a run is refused at its next step.
    """
    from appliance.audit import open_audit_log
    from appliance.errors import Conflict
    from appliance.registry._service import check_subject
    from appliance.training import Ledger, load_privacy_policy
    from appliance.training._hooks import TrainingAudit

    settings = settings_of(ctx)
    subject = check_subject(actor or invoking_user())
    ledger = Ledger(settings.ledger_path)
    entry = ledger.get(run_id)
    if entry.status != "running":
        raise Conflict(f"run {run_id} is {entry.status}, not an open run: nothing to abandon")
    policy = load_privacy_policy(settings.policies_dir / "privacy.yaml")
    budget = policy.budget_for(entry.fingerprint, ledger.preparations(entry.fingerprint, entry.source_sha256))
    before = ledger.summary(entry.fingerprint, budget)
    released = max(0, entry.steps_reserved - entry.steps_taken)
    console.print(
        f"run {run_id} on dataset {entry.fingerprint[:12]}: {entry.steps_taken} of {entry.steps_planned} steps "
        f"taken, {released} reserved steps to release"
    )
    if not yes and not typer.confirm("Abandon it (no resume afterwards)?", default=False):
        raise typer.Exit(1)
    log = open_audit_log(settings)  # opened first: nothing changes when the audit trail cannot record it
    try:
        closed = ledger.close(run_id, status="failed", reason="abandoned")
        run_dir, deleted = settings.runs_dir / run_id, True
        try:
            if run_dir.exists():
                shutil.rmtree(run_dir)  # its checkpoint and the canary secrets
        except OSError as exc:
            deleted = False
            console.print(f"[red]could not delete {run_dir} ({exc.strerror}): delete it by hand, it holds secrets[/]")
        TrainingAudit(log, subject).record(
            "training.abandoned",
            status="success",
            details={
                "run_id": run_id,
                "steps_taken": closed.steps_taken,
                "steps_released": released,
                "run_dir_deleted": deleted,
            },
        )
    finally:
        log.close_sync()
    after = ledger.summary(entry.fingerprint, budget)
    console.print(
        f"abandoned: dataset {entry.fingerprint[:12]} spent epsilon {before.spent:.3f} -> {after.spent:.3f} "
        f"(remaining {after.remaining:.3f} of {after.budget:g})"
    )
