"""`appliance train`: parse the options, run the training stage with a progress bar, print the outcome."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from appliance.cli._common import console, invoking_user, settings_of

if TYPE_CHECKING:
    from rich.table import Table

    from appliance.config import Settings
    from appliance.training import LaunchOptions, MemoryEstimate, TrainConfig


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
    physical_batch_size: int | None = typer.Option(
        None, "--physical-batch-size", help="Rows per forward pass (memory; default 8, or chosen by --gpu-memory)."
    ),
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
    as_json: bool = typer.Option(False, "--json", help="With --plan-only: print the plan and memory as JSON."),
    quantize: str = typer.Option(
        "none", "--quantize", help="none, or nf4: the base in 4-bit NF4 (QLoRA; CUDA and bitsandbytes only)."
    ),
    serving_base: str = typer.Option(
        "unquantised", "--serving-base", help="What the adapter is to be served on: unquantised, or engine."
    ),
    gpu_memory: float | None = typer.Option(
        None, "--gpu-memory", help="GiB on the card: the largest physical batch whose estimated peak fits."
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
    nproc_per_node: int | None = typer.Option(
        None, "--nproc-per-node", help="Data-parallel DP: processes on this node (one per GPU), via torchrun."
    ),
    nnodes: int = typer.Option(1, "--nnodes", help="Data-parallel DP: number of nodes."),
    node_rank: int = typer.Option(0, "--node-rank", help="Data-parallel DP: this node's rank (0 runs the ledger)."),
    master_addr: str | None = typer.Option(None, "--master-addr", help="Data-parallel DP: rank 0's node address."),
    master_port: int | None = typer.Option(None, "--master-port", help="Data-parallel DP: rank 0's node port."),
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

    from appliance.training import StepInfo, current_world, make_config, run_distributed
    from appliance.training import train as run_training

    settings = settings_of(ctx)
    if privacy_unit not in ("record", "subject"):
        raise typer.BadParameter("--privacy-unit must be record or subject")
    if grad_sample_mode not in ("hooks", "ghost"):
        raise typer.BadParameter("--grad-sample-mode must be hooks or ghost")
    sizing = _sizing_options(quantize, serving_base, gpu_memory, physical_batch_size)
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
        **sizing,
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
        _print_plan(config, settings, as_json=as_json)
        return
    if nproc_per_node is not None:
        from appliance.training import LaunchOptions

        launch = LaunchOptions(nproc_per_node, nnodes, node_rank, master_addr, master_port)
        _launch_ranks(launch, no_dp=no_dp, trained_by=config.trained_by)
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

    world = current_world()
    if world is not None and not world.is_main:  # a follower rank: no progress bar, nothing to print
        run_distributed(config, settings, world)
        return
    with progress:
        if world is not None:
            distributed = run_distributed(config, settings, world, on_step=on_step)
            assert distributed is not None  # rank 0 returns the run's result
            result = distributed
        else:
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


def _sizing_options(
    quantize: str, serving_base: str, gpu_memory: float | None, physical_batch_size: int | None
) -> dict[str, object]:
    """The memory options, only those given (a physical batch left out is 8, or chosen by --gpu-memory)."""
    if quantize not in ("none", "nf4"):
        raise typer.BadParameter("--quantize must be none or nf4")
    if serving_base not in ("unquantised", "engine"):
        raise typer.BadParameter("--serving-base must be unquantised or engine")
    options: dict[str, object] = {"quantize": quantize, "serving_base": serving_base}
    if gpu_memory is not None:
        options["gpu_memory_gb"] = gpu_memory
    if physical_batch_size is not None:
        options["physical_batch_size"] = physical_batch_size
    return options


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


def _print_plan(config: TrainConfig, settings: Settings, *, as_json: bool = False) -> None:
    """``--plan-only``: the plan and the memory estimate, without opening the key service, the audit trail or a
    new ledger."""
    import json
    import sys

    import structlog

    from appliance.training import TrainingRun

    run = TrainingRun(config, settings, use_stage_factories=False)
    if as_json:  # stdout carries the JSON alone: the log lines of the planning go to stderr
        previous = structlog.get_config()
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        try:
            plan = run.plan_only()
        finally:
            structlog.configure(**previous)
    else:
        plan = run.plan_only()
    memory = run.memory
    assert memory is not None
    if as_json:
        typer.echo(json.dumps({"plan": plan.as_dict(), "memory": memory.as_dict()}, indent=2))
        return
    console.print("[bold]DP plan[/] (* = chosen by the planner; nothing charged or written)")
    for line in plan.describe():
        console.print(f"  {line}")
    chosen = " (the largest that fits --gpu-memory)" if config.sized_physical_batch() else ""
    console.print(
        f"[bold]Estimated peak memory[/]: physical batch {memory.physical_batch}{chosen} x {memory.max_length} "
        f"tokens on {memory.device}; base {memory.quantization}, compute {memory.compute_dtype}, DP {memory.dp_mode}"
    )
    console.print(_memory_table(memory, config.gpu_memory_gb))


def _memory_table(memory: MemoryEstimate, gpu_memory_gb: float | None) -> Table:
    """The itemised peak-memory estimate as a rich table."""
    from rich.table import Table

    table = Table()
    table.add_column("part")
    table.add_column("MiB", justify="right")
    for name, size in memory.parts:
        table.add_row(name, f"{size / (1 << 20):,.1f}")
    table.add_row("[bold]total", f"[bold]{memory.total / (1 << 20):,.1f}")
    if gpu_memory_gb is not None:
        table.add_row("card (--gpu-memory, 10% kept free)", f"{gpu_memory_gb * 1024:,.1f}")
    return table


def _launch_ranks(launch: LaunchOptions, *, no_dp: bool, trained_by: str) -> None:
    """``--nproc-per-node``: run this command's ranks under ``torch.distributed.run`` (the ranks run it again)."""
    import sys

    from appliance.errors import ValidationFailed
    from appliance.training import current_world, launch_ranks, without_launcher_options

    if current_world() is not None:
        raise ValidationFailed("--nproc-per-node starts the ranks itself: not under torchrun (drop it there)")
    if no_dp:
        raise ValidationFailed("several processes train DP runs only (--no-dp is a single-process baseline)")
    argv = without_launcher_options(sys.argv[1:])
    if "--trained-by" not in argv and not any(a.startswith("--trained-by=") for a in argv):
        argv += ["--trained-by", trained_by]  # the person who launched, as a single process would record
    status = launch_ranks(launch, argv)
    if status:
        sys.exit(status)  # rank 0's own error is already on stderr (typer.Exit's status is lost without standalone)
