"""`appliance ledger show`: the privacy budget of each dataset and every run charged to it."""

from __future__ import annotations

import json

import typer

from appliance.cli._common import console, settings_of

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
    summaries = [ledger.summary(fp, policy.budget_for(fp)) for fp in fingerprints]
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
