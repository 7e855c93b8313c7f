"""`appliance train`: parse the options, run the training stage with a progress bar, print the outcome."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from appliance.cli._common import console, invoking_user, settings_of

if TYPE_CHECKING:
    from appliance.config import Settings
    from appliance.training import TrainConfig


def _csv_ints(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter("expected comma-separated integers, e.g. 1,4,16") from exc


def train(
    ctx: typer.Context,
    dataset: Path = typer.Option(..., "--dataset", help="Prepared dataset directory (from `appliance data prepare`)."),
    base: Path = typer.Option(..., "--base", help="Base model directory (any local Hugging Face causal LM)."),
    out: Path = typer.Option(..., "--out", help="Adapter directory to create (must not exist or be empty)."),
    epsilon: float | None = typer.Option(None, "--epsilon", help="Epsilon this run may spend (required with DP)."),
    delta: float | None = typer.Option(None, "--delta", help="Delta (default: the policy's for this dataset)."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default: planned; no DP: 100)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Expected logical batch size, Poisson sampling (default: planned; no DP: 16)."
    ),
    physical_batch_size: int = typer.Option(8, "--physical-batch-size", help="Rows per forward pass (memory)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate, AdamW (default: planned; no DP: 0.002)."),
    noise_multiplier: float | None = typer.Option(
        None, "--noise-multiplier", help="DP noise multiplier (default: planned; checked against --epsilon)."
    ),
    grad_sample_mode: str = typer.Option(
        "hooks", "--grad-sample-mode", help="Per-unit gradients: hooks, or ghost (Opacus fast gradient clipping)."
    ),
    plan_only: bool = typer.Option(
        False, "--plan-only", help="Print the DP plan and stop: nothing is charged, audited or written."
    ),
    max_length: int = typer.Option(256, "--max-length", help="Tokens per record (prompt + response)."),
    lora_r: int = typer.Option(8, "--lora-r", help="LoRA rank."),
    lora_alpha: int = typer.Option(16, "--lora-alpha", help="LoRA alpha."),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout", help="LoRA dropout."),
    target_modules: str = typer.Option(
        "all-linear", "--target-modules", help="Comma-separated module names, or all-linear."
    ),
    privacy_unit: str = typer.Option("record", "--privacy-unit", help="record, or subject (user-level DP)."),
    max_records_per_subject: int = typer.Option(
        4, "--max-records-per-subject", help="Subject unit: at most this many records of one subject are used."
    ),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Per-unit gradient clipping bound."),
    canaries: int = typer.Option(0, "--canaries", help="Number of canaries to insert and measure."),
    canary_repetitions: str = typer.Option("1,4,16", "--canary-repetitions", help="Repetition counts, cycled."),
    canary_candidates: int = typer.Option(256, "--canary-candidates", help="Sampled candidates per exposure."),
    audit_canaries: int = typer.Option(
        0, "--audit-canaries", help="One-run privacy audit: M canaries, each trained on with probability 1/2."
    ),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run that writes to --out."),
    no_dp: bool = typer.Option(False, "--no-dp", help="Baselines only: train without DP (policy must allow it)."),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation and sampling."),
    trained_by: str | None = typer.Option(
        None, "--trained-by", help="Who trains (default: $SUDO_USER, else the login name)."
    ),
) -> None:
    """Train a DP-LoRA adapter on a prepared dataset, charging the privacy-budget ledger."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from appliance.training import StepInfo, make_config
    from appliance.training import train as run_training

    settings = settings_of(ctx)
    if privacy_unit not in ("record", "subject"):
        raise typer.BadParameter("--privacy-unit must be record or subject")
    if grad_sample_mode not in ("hooks", "ghost"):
        raise typer.BadParameter("--grad-sample-mode must be hooks or ghost")
    if resume and epsilon is None and not no_dp:
        epsilon = 1.0  # placeholder: a resumed run takes every option from the interrupted run
    given = {"steps": steps, "batch_size": batch_size, "learning_rate": lr, "noise_multiplier": noise_multiplier}
    config = make_config(
        **{name: value for name, value in given.items() if value is not None},  # the rest are planned
        dataset=dataset,
        base=base,
        out=out,
        epsilon=epsilon,
        delta=delta,
        physical_batch_size=physical_batch_size,
        grad_sample_mode=grad_sample_mode,
        max_length=max_length,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=[m for m in target_modules.split(",") if m.strip()],
        privacy_unit=privacy_unit,
        max_records_per_subject=max_records_per_subject,
        max_grad_norm=max_grad_norm,
        canaries=canaries,
        canary_repetitions=_csv_ints(canary_repetitions),
        canary_candidates=canary_candidates,
        audit_canaries=audit_canaries,
        checkpoint_every=checkpoint_every or settings.training.checkpoint_every,
        resume=resume,
        no_dp=no_dp,
        seed=seed,
        trained_by=trained_by or invoking_user(),  # under sudo the person, not root: approval compares it
    )
    if plan_only:
        _print_plan(config, settings)
        return
    progress = Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("ε {task.fields[eps]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = progress.add_task("train", total=config.steps, loss="-", eps="-")

    def on_step(info: StepInfo) -> None:
        eps = "no DP" if info.epsilon is None else f"{info.epsilon:.3f}"
        progress.update(task, completed=info.step, total=info.total, loss=f"{info.loss:.4f}", eps=eps)

    with progress:
        result = run_training(config, settings, on_step=on_step)
    meta = result.metadata
    dp = meta["dp"]
    spent = (
        "no DP (baseline; no privacy guarantee)" if not dp["enabled"] else f"{dp['epsilon']:.3f} (δ={dp['delta']:g})"
    )
    console.print(f"[green]adapter written[/] {result.out}")
    console.print(f"  run {result.run_id}  steps {meta['steps']}  epsilon spent {spent}  unit {dp['privacy_unit']}")
    if dp["enabled"]:
        hp = meta["hyperparameters"]
        console.print(
            f"  batch {hp['batch_size']} (rate {100 * dp['sample_rate']:.2f}%)  noise multiplier "
            f"{dp['noise_multiplier']:.4f}  noise/coordinate {dp['noise_per_coordinate']:.5f}  "
            f"lr {hp['learning_rate']:.4g}"
        )
    m = meta["metrics"]
    console.print(
        f"  eval loss {m['eval_loss']:.4f}  perplexity {m['perplexity']:.2f}  train loss {m['train_loss']:.4f}"
    )
    if meta["canaries"]["count"]:
        console.print(
            f"  canaries {meta['canaries']['count']}  max exposure {meta['canaries']['max_exposure']:.2f} bits "
            f"(~1 bit = not memorised, 26.6 = fully)"
        )
    _print_privacy_audit(meta.get("privacy_audit"))
    if meta.get("evaluation"):
        from appliance.cli.evaluate import print_report

        print_report(meta["evaluation"])


def _print_privacy_audit(audit: dict[str, Any] | None) -> None:
    """The one-run audit's bound next to the accountant's epsilon (counts only)."""
    if not audit:
        return
    claimed = audit.get("claimed_epsilon")
    verdict = (
        "no DP claim to check"
        if claimed is None
        else ("[red]EXCEEDS the claimed epsilon: approval will be refused[/]")
        if audit["epsilon_lower_bound"] > claimed
        else f"within the claimed epsilon {claimed:.3f}"
    )
    console.print(
        f"  privacy audit: {audit['m']} canaries, {audit['correct']}/{audit['guesses']} guesses correct, "
        f"empirical epsilon >= {audit['epsilon_lower_bound']:.3f} (95%, δ={audit['delta']:g}): {verdict}"
    )


def _print_plan(config: TrainConfig, settings: Settings) -> None:
    """``--plan-only``: the plan, without opening the key service, the audit trail or a new ledger."""
    from appliance.training import TrainingRun

    plan = TrainingRun(config, settings, use_stage_factories=False).plan_only()
    console.print("[bold]DP plan[/] (* = chosen by the planner; nothing charged or written)")
    for line in plan.describe():
        console.print(f"  {line}")
