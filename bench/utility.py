"""Utility of DP: base vs non-DP vs DP at epsilon 1, 3 and 8 on the bundled task, exact match and loss.

Every model is trained by the real training stage on the same prepared split of ``examples/synthetic_clinical.jsonl``
(the same training records, the same number of steps and expected logical batch, the same seed) and scored by the
same end-of-run evaluation on the same eval records (``appliance.evaluation``: mean token loss of the reference
answers, greedy exact match of the short answers, bootstrap 95% intervals). Non-DP batches are shuffled epochs; DP
batches are Poisson samples of the same expected size (what the accounting needs).

    .venv/bin/python bench/utility.py --base var/models/smollm2-135m            # full run (tens of minutes on CPU)
    .venv/bin/python bench/utility.py --base var/models/smollm2-135m --quick    # a small run (minutes)

Prints one table and "DP at epsilon 8 keeps X% of non-DP's exact-match gain over the base" (goal: >= 90%).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POLICY = """
format_version: 1
default: {epsilon_budget: 100.0, delta: 1.0e-5}
allow_no_dp: true
"""


def _train(args: argparse.Namespace, work: Path, label: str, epsilon: float | None) -> dict[str, Any]:
    from appliance.config import load_settings
    from appliance.testing import MemoryAuditLog
    from appliance.training import make_config, train

    settings = load_settings(data_dir=work / f"var-{label}", policies_dir=work / "policies")
    config = make_config(
        dataset=work / "dataset",
        base=Path(args.base),
        out=work / f"adapter-{label}",
        epsilon=epsilon,
        no_dp=epsilon is None,
        steps=args.steps,
        batch_size=args.batch_size,
        physical_batch_size=args.physical_batch_size,
        learning_rate=args.lr if epsilon is None else args.dp_lr,
        max_length=args.max_length,
        target_modules=args.target_modules.split(","),
        eval_max_records=args.eval_records,
        checkpoint_every=10_000,
        seed=args.seed,
        device="cpu",
        trained_by="bench-utility",
    )
    started = time.perf_counter()
    result = train(config, settings, audit=MemoryAuditLog())
    evaluation = dict(result.metadata["evaluation"])
    evaluation["seconds"] = time.perf_counter() - started
    evaluation["epsilon_spent"] = result.metadata["dp"]["epsilon"]
    evaluation["noise_multiplier"] = result.metadata["dp"]["noise_multiplier"]
    return evaluation


def _kept(base: float | None, reference: float | None, dp: float | None, *, lower_is_better: bool) -> str:
    """Percent of the reference's gain over the base that the DP model keeps."""
    if base is None or reference is None or dp is None:
        return "n/a"
    sign = -1.0 if lower_is_better else 1.0
    gain = sign * (reference - base)
    if gain <= 0:
        return "n/a (non-DP did not improve on the base)"
    return f"{100.0 * sign * (dp - base) / gain:.0f}%"


def _fmt(figures: dict[str, Any], key: str, digits: int) -> str:
    value, ci = figures.get(key), figures.get(key + "_ci")
    if value is None:
        return "-"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="base model directory (appliance models bootstrap smollm2-135m)")
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run: 4 steps of 8 records, 16 eval records")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--physical-batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3, help="non-DP learning rate")
    parser.add_argument("--dp-lr", type=float, default=2e-2, help="DP learning rate (noisy, clipped gradients)")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--eval-records", type=int, default=512)
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--target-modules", default="q_proj,v_proj")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the non-DP run (e.g. to run it elsewhere)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write every figure as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.eval_records = min(args.steps, 4), min(args.batch_size, 8), 16

    from appliance.intake import prepare

    epsilons = [float(e) for e in args.epsilons.split(",") if e.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-utility-") as tmp:
        work = Path(tmp)
        (work / "policies").mkdir()
        (work / "policies" / "privacy.yaml").write_text(POLICY)
        prepare(REPO / "examples" / "synthetic_clinical.jsonl", work / "dataset")
        runs: dict[str, dict[str, Any]] = {} if args.no_baseline else {"non-DP": _train(args, work, "nodp", None)}
        for eps in epsilons:
            runs[f"DP eps={eps:g}"] = _train(args, work, f"eps{eps:g}", eps)

    first = next(iter(runs.values()))
    print(
        f"\nutility on the bundled task: {first['n']} eval records ({first['exact_match_n']} short answers), "
        f"{args.steps} steps of {args.batch_size} records, max length {args.max_length}, LoRA {args.target_modules}"
    )
    print(f"{'model':<14} {'loss [95% CI]':<28} {'exact match [95% CI]':<28} {'noise':>6} {'time':>7}")
    print(f"{'base':<14} {_fmt(first['base'], 'loss', 4):<28} {_fmt(first['base'], 'exact_match', 3):<28}")
    for label, run in runs.items():
        noise = f"{run['noise_multiplier']:.2f}" if run["noise_multiplier"] else "-"
        print(
            f"{label:<14} {_fmt(run['adapter'], 'loss', 4):<28} {_fmt(run['adapter'], 'exact_match', 3):<28} "
            f"{noise:>6} {run['seconds']:>6.0f}s"
        )
    eps8 = runs.get("DP eps=8")
    if eps8 is not None and "non-DP" in runs:
        base, ref, dp = first["base"], runs["non-DP"]["adapter"], eps8["adapter"]
        em = _kept(base["exact_match"], ref["exact_match"], dp["exact_match"], lower_is_better=False)
        loss = _kept(base["loss"], ref["loss"], dp["loss"], lower_is_better=True)
        print(f"\nDP at epsilon 8 keeps {em} of non-DP's exact-match gain over the base (loss: {loss}); goal >= 90%")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"options": vars(args) | {"json_out": None}, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
