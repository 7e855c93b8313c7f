"""DP vs non-DP LoRA on the same model, batch and sequence length: step time, peak memory, eval-loss gap.

Each mode runs in its own subprocess (clean peak RSS) through the real training stage (``TrainingRun``): the
bundled synthetic clinical dataset prepared by the intake stage, per-unit loss, Opacus hooks + Poisson sampling
for DP at the given epsilon, the same steps, learning rate and physical batch for both. Step time is the median
over the steps after the first (warm-up), in wall-clock and in process CPU time (steadier on a shared
machine); peak memory is the subprocess's maximum RSS.

    .venv/bin/python bench/train_overhead.py                       # tiny model (seconds)
    .venv/bin/python bench/train_overhead.py --model smollm2 --steps 20 --base var/models/smollm2-135m

Targets (issue 2): time ratio <= 1.10, memory ratio <= 1.3, eval-loss gap as small as possible.
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
        "learning_rate": args.lr,
        "target_modules": args.target_modules.split(","),
        "max_grad_norm": args.max_grad_norm,
        "checkpoint_every": 10_000,
        "seed": 0,
        "device": "cpu",
    }
    if args.child == "dp":
        options["epsilon"] = args.epsilon
    else:
        options["no_dp"] = True
    run = TrainingRun(make_config(**options), settings, audit=MemoryAuditLog(), on_step=on_step)
    run.prepare()
    run.build()
    start, cpu_start = time.perf_counter(), time.process_time()
    run.fit()
    run.evaluate()
    marks = [start, *stamps]
    step_times = [b - a for a, b in itertools.pairwise(marks)]
    cpu_marks = [cpu_start, *cpu_stamps]
    cpu_times = [b - a for a, b in itertools.pairwise(cpu_marks)]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    eps = run.s.epsilons[-1] if run.s.epsilons else None
    print(
        json.dumps(
            {
                "mode": args.child,
                "step_s": statistics.median(step_times[1:] or step_times),
                "cpu_step_s": statistics.median(cpu_times[1:] or cpu_times),
                "step_times": [round(t, 3) for t in step_times],
                "peak_rss_mb": rss_mb,
                "eval_loss": run.s.metrics["eval_loss"],
                "train_loss": run.s.metrics["train_loss"],
                "epsilon": eps,
                "noise_multiplier": run.s.noise_multiplier,
                "sample_rate": run.s.sample_rate,
            }
        )
    )


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--base", default=None, help="an existing base model directory (skips the bootstrap)")
    parser.add_argument("--steps", type=int, default=None, help="default: 40 (tiny), 12 (smollm2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--physical-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--target-modules", default="q_proj,v_proj")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: steadiest when shared)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", choices=["dp", "nodp"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 40 if args.model == "tiny" else 12
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory(prefix="train-overhead-") as tmp:
        work = Path(tmp)
        base = _prepare(work, args.model, args.base)
        results = {}
        for mode in ("nodp", "dp"):
            cmd = [sys.executable, __file__, "--child", mode, "--work", str(work), "--base", base]
            for name in (
                "threads",
                "steps",
                "batch_size",
                "physical_batch_size",
                "max_length",
                "lr",
                "epsilon",
                "max_grad_norm",
            ):
                cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            cmd += ["--target-modules", args.target_modules]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"{mode} run failed ({proc.returncode})")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    dp, plain = results["dp"], results["nodp"]
    time_ratio = dp["step_s"] / plain["step_s"]
    cpu_ratio = dp["cpu_step_s"] / plain["cpu_step_s"]
    mem_ratio = dp["peak_rss_mb"] / plain["peak_rss_mb"]
    gap = dp["eval_loss"] - plain["eval_loss"]
    print(
        f"model={args.model} steps={args.steps} batch={args.batch_size} (physical {args.physical_batch_size}) "
        f"max_length={args.max_length} lora={args.target_modules} epsilon={args.epsilon} threads={args.threads}"
    )
    print(f"{'':8}{'s/step':>10}{'CPU s/step':>12}{'peak RSS MB':>14}{'eval loss':>12}{'epsilon':>10}")
    for name, r in (("non-DP", plain), ("DP", dp)):
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        print(
            f"{name:8}{r['step_s']:>10.3f}{r['cpu_step_s']:>12.3f}{r['peak_rss_mb']:>14.0f}"
            f"{r['eval_loss']:>12.4f}{eps:>10}"
        )
    verdict = "OK" if time_ratio <= 1.10 else "MISSED"
    print(f"time ratio   {time_ratio:.3f} wall, {cpu_ratio:.3f} CPU  (target <= 1.10) {verdict}")
    print(f"memory ratio {mem_ratio:.3f}  (target <= 1.30) {'OK' if mem_ratio <= 1.30 else 'MISSED'}")
    print(f"eval-loss gap {gap:+.4f} ({100 * gap / plain['eval_loss']:+.2f}% of non-DP)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"args": {k: v for k, v in vars(args).items() if k not in ("child", "work", "json")}}
                | {
                    "results": results,
                    "time_ratio": time_ratio,
                    "cpu_time_ratio": cpu_ratio,
                    "memory_ratio": mem_ratio,
                    "eval_loss_gap": gap,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
