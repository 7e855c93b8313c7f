"""DP vs non-DP LoRA at the planner's batch size: step time, peak memory, eval-loss gap; hooks vs ghost clipping.

Each mode runs in its own subprocess (clean peak RSS) through the real training stage (``TrainingRun``): the
bundled synthetic clinical dataset prepared by the intake stage, per-unit loss, Poisson sampling for DP at the
given epsilon. The logical batch, steps, noise and DP learning rate are the planner's for the dataset
(``appliance.training.plan_training``) unless given; non-DP takes the same batch and steps at its own default
learning rate (0.002). Modes: ``nodp``, ``hooks`` (Opacus per-sample gradients), ``ghost`` (Opacus fast gradient
clipping: per-sample norms, then a second, clipped backward). Step time is the median over the steps after the
first (warm-up), in wall-clock and in process CPU time (steadier on a shared machine); peak memory is the
subprocess's maximum RSS. A DP step's batch is Poisson-sized (expected = the logical batch), so ``s/1k rows``
(fit time over rows seen) is printed too.

    .venv/bin/python bench/train_overhead.py                       # tiny model (a few minutes on 2 cores)
    .venv/bin/python bench/train_overhead.py --model smollm2 --steps 4 --base var/models/smollm2-135m

Targets (issue 14): DP/non-DP step time <= 1.10, peak memory <= 1.3, eval-loss gap as small as possible.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DELTA = 1.0e-5
POLICY = """
format_version: 1
default: {epsilon_budget: 100.0, delta: 1.0e-5}
allow_no_dp: true
"""


def _child(args: argparse.Namespace) -> None:
    """One mode, in this process: train, then print one JSON line with the measurements."""
    import torch

    from appliance.config import load_settings
    from appliance.testing import MemoryAuditLog

    torch.set_num_threads(args.threads)
    from appliance.training import StepInfo, TrainingRun, make_config

    work = Path(args.work)
    settings = load_settings(data_dir=work / f"var-{args.child}", policies_dir=work / "policies")
    stamps: list[float] = []
    cpu_stamps: list[float] = []
    rows_seen = [0]

    def on_step(info: StepInfo) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())

    options: dict[str, object] = {
        "dataset": work / "dataset",
        "base": Path(args.base),
        "out": work / f"adapter-{args.child}",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "physical_batch_size": args.physical_batch_size,
        "max_length": args.max_length,
        "target_modules": args.target_modules.split(","),
        "max_grad_norm": args.max_grad_norm,
        "checkpoint_every": 10_000,
        "seed": 0,
        "device": "cpu",
    }
    if args.child == "nodp":
        options |= {"no_dp": True, "learning_rate": args.nodp_lr}
    else:
        options |= {"epsilon": args.epsilon, "grad_sample_mode": args.child}
        if args.lr is not None:
            options["learning_rate"] = args.lr
    run = TrainingRun(make_config(**options), settings, audit=MemoryAuditLog(), on_step=on_step)
    run.prepare()
    run.build()
    count_rows(run, rows_seen)
    start, cpu_start = time.perf_counter(), time.process_time()
    run.fit()
    fit_s = time.perf_counter() - start
    fit_cpu_s = time.process_time() - cpu_start
    rows = rows_seen[0]
    run.evaluate()
    marks = [start, *stamps]
    step_times = [b - a for a, b in itertools.pairwise(marks)]
    cpu_marks = [cpu_start, *cpu_stamps]
    cpu_times = [b - a for a, b in itertools.pairwise(cpu_marks)]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    eps = run.progress.epsilons[-1] if run.progress.epsilons else None
    print(
        json.dumps(
            {
                "mode": args.child,
                "step_s": statistics.median(step_times[1:] or step_times),
                "cpu_step_s": statistics.median(cpu_times[1:] or cpu_times),
                "step_times": [round(t, 3) for t in step_times],
                "rows": rows,
                "s_per_1k_rows": 1000 * fit_s / max(1, rows),
                "cpu_s_per_1k_rows": 1000 * fit_cpu_s / max(1, rows),
                "learning_rate": run.config.learning_rate,
                "batch_size": run.config.batch_size,
                "peak_rss_mb": rss_mb,
                "eval_loss": run.evaluated.metrics["eval_loss"],
                "train_loss": run.evaluated.metrics["train_loss"],
                "epsilon": eps,
                "noise_multiplier": run.prepared.noise_multiplier,
                "sample_rate": run.prepared.sample_rate,
            }
        )
    )


def count_rows(run: object, rows_seen: list[int]) -> None:
    """Count the rows of every forward pass of the run's model (training only: read it right after fit)."""

    def hook(module: object, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows_seen[0] += int(ids.shape[0])  # type: ignore[union-attr]

    run.built.model.register_forward_pre_hook(hook, with_kwargs=True)  # type: ignore[attr-defined]


def _prepare(work: Path, model: str, base: str | None) -> str:
    from appliance.intake import prepare

    (work / "policies").mkdir(parents=True, exist_ok=True)
    (work / "policies" / "privacy.yaml").write_text(POLICY)
    prepare(REPO / "examples" / "synthetic_clinical.jsonl", work / "dataset")
    if base:
        return base
    from appliance.models import bootstrap_smollm2, bootstrap_tiny

    target = work / model
    return str(bootstrap_tiny(target) if model == "tiny" else bootstrap_smollm2(target))


def _plan(work: Path, args: argparse.Namespace) -> None:
    """Fill in the planner's batch and steps for the prepared dataset (record units, the policy's delta)."""
    from appliance.intake import load_prepared
    from appliance.training import plan_training

    units = len(load_prepared(work / "dataset").train)
    plan = plan_training(
        units=units,
        epsilon=args.epsilon,
        delta=DELTA,
        max_grad_norm=args.max_grad_norm,
        batch_size=args.batch_size,
        steps=args.steps,
    )
    args.batch_size = args.batch_size or plan.batch_size
    args.steps = args.steps or plan.steps
    print(f"plan for {units} units at epsilon {args.epsilon:g}: " + "; ".join(plan.describe()[1:]))


def _run_mode(mode: str, work: Path, base: str, args: argparse.Namespace) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", mode, "--work", str(work), "--base", base]
    for name in ("threads", "steps", "batch_size", "physical_batch_size", "max_length", "epsilon", "max_grad_norm"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    cmd += ["--nodp-lr", str(args.nodp_lr), "--target-modules", args.target_modules]
    if args.lr is not None:
        cmd += ["--lr", str(args.lr)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{mode} run failed ({proc.returncode})")
    result = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{mode}: {json.dumps(result)}", flush=True)  # each mode as it finishes: a later failure keeps it
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--base", default=None, help="an existing base model directory (skips the bootstrap)")
    parser.add_argument("--steps", type=int, default=None, help="default: the planner's")
    parser.add_argument("--batch-size", type=int, default=None, help="logical batch (default: the planner's)")
    parser.add_argument("--physical-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None, help="DP learning rate (default: the planner's)")
    parser.add_argument("--nodp-lr", type=float, default=2e-3, help="non-DP learning rate")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--target-modules", default="q_proj,v_proj")
    parser.add_argument("--modes", default="nodp,hooks,ghost", help="comma-separated: nodp, hooks, ghost")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: steadiest when shared)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", choices=["nodp", "hooks", "ghost"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    modes = [m for m in args.modes.split(",") if m]
    if "nodp" not in modes or not set(modes) <= {"nodp", "hooks", "ghost"}:
        raise SystemExit("--modes must include nodp and name only nodp, hooks, ghost")
    with tempfile.TemporaryDirectory(prefix="train-overhead-") as tmp:
        work = Path(tmp)
        base = _prepare(work, args.model, args.base)
        _plan(work, args)
        results = {mode: _run_mode(mode, work, base, args) for mode in modes}
    plain = results["nodp"]
    print(
        f"model={args.model} steps={args.steps} batch={args.batch_size} (physical {args.physical_batch_size}) "
        f"max_length={args.max_length} lora={args.target_modules} epsilon={args.epsilon} threads={args.threads}"
    )
    header = (
        f"{'':8}{'s/step':>10}{'CPU s/step':>12}{'s/1k rows':>11}{'CPU s/1k':>10}{'peak RSS MB':>13}{'eval loss':>11}"
    )
    print(header + f"{'lr':>9}{'epsilon':>9}")
    names = {"nodp": "non-DP", "hooks": "DP hooks", "ghost": "DP ghost"}
    for mode, r in results.items():
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        print(
            f"{names[mode]:8}{r['step_s']:>10.3f}{r['cpu_step_s']:>12.3f}{r['s_per_1k_rows']:>11.2f}"
            f"{r['cpu_s_per_1k_rows']:>10.2f}"
            f"{r['peak_rss_mb']:>13.0f}{r['eval_loss']:>11.4f}{r['learning_rate']:>9.4g}{eps:>9}"
        )
    ratios: dict[str, dict[str, float]] = {}
    for mode in modes:
        if mode == "nodp":
            continue
        dp = results[mode]
        ratios[mode] = {
            "time": dp["step_s"] / plain["step_s"],
            "cpu_time": dp["cpu_step_s"] / plain["cpu_step_s"],
            "time_per_row": dp["s_per_1k_rows"] / plain["s_per_1k_rows"],
            "cpu_time_per_row": dp["cpu_s_per_1k_rows"] / plain["cpu_s_per_1k_rows"],
            "memory": dp["peak_rss_mb"] / plain["peak_rss_mb"],
            "eval_loss_gap": dp["eval_loss"] - plain["eval_loss"],
        }
        r = ratios[mode]
        verdict = "OK" if r["cpu_time_per_row"] <= 1.10 else "MISSED"
        print(
            f"{names[mode]}/non-DP: step time {r['time']:.3f} wall, {r['cpu_time']:.3f} CPU; "
            f"per row {r['time_per_row']:.3f} wall, {r['cpu_time_per_row']:.3f} CPU (target <= 1.10: {verdict}); "
            f"memory {r['memory']:.3f} (target <= 1.30: {'OK' if r['memory'] <= 1.30 else 'MISSED'}); "
            f"eval-loss gap {r['eval_loss_gap']:+.4f}"
        )
    if "hooks" in ratios and "ghost" in ratios:
        print(f"ghost/hooks: CPU time {results['ghost']['cpu_step_s'] / results['hooks']['cpu_step_s']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "work", "json")}}
        args.json.write_text(json.dumps(summary | {"results": results, "ratios": ratios}, indent=2, default=str))


if __name__ == "__main__":
    main()
