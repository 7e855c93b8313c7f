"""One-run privacy audit (Steinke, Nasr, Jagielski 2023) of a DP run and a non-DP run: the bound must separate them.

Both runs go through the real training stage (``TrainingRun`` with ``audit_canaries``): M audit canaries, each
trained on with probability 1/2 (a CSPRNG coin), scored after training by how much the adapter lowered their
loss against the base, guessed in/out on the top and bottom scores, and bounded at the run's delta. The non-DP
run is set up to memorise (many epochs at a high learning rate on a few hundred records: the canaries are seen
``--epochs`` times each); the DP run takes the same records, batch, steps and learning rate, with Poisson
sampling, clipping and the noise for ``--epsilon``. Expected: the non-DP bound clearly above the DP bound, and
the DP bound below the epsilon its accountant claims.

Measured on the 2-core shared VM (2026-12-06): the tiny model (random-initialised Llama, hidden 64) does not
memorise through LoRA at these settings (non-DP bound 0.0 with M = 500, 237 steps at lr 0.01; 0.0-0.55 with
M = 100 over lr, rank 16-64, hidden 64-256): its separation check prints MISSED. Memorisation needs a pretrained
base: SmolLM2-135M, 7 records + 32 canaries, 20 steps, lr 0.005, r16 q,v: non-DP 16/16 correct, bound 1.10 (the
most 32 canaries can show); DP at epsilon 2: bound 0.00 (training/README.md). For that:

    .venv/bin/python bench/privacy_audit.py --model smollm2 --base DIR --records 8 --canaries 32 --epochs 7 \
        --batch-size 8 --physical-batch-size 8 --lr 0.005 --target-modules q_proj,v_proj --max-length 48

    .venv/bin/python bench/privacy_audit.py                          # tiny model, a few minutes on 2 cores
    .venv/bin/python bench/privacy_audit.py --model smollm2 --records 32 --canaries 100 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import math
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


def _prepare(work: Path, records: int) -> Path:
    """The bundled synthetic clinical set cut to its first ``records`` lines, prepared by the intake stage."""
    from appliance.intake import prepare

    (work / "policies").mkdir(parents=True, exist_ok=True)
    (work / "policies" / "privacy.yaml").write_text(POLICY)
    lines = (REPO / "examples" / "synthetic_clinical.jsonl").read_text(encoding="utf-8").splitlines()[:records]
    raw = work / "input.jsonl"
    raw.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(raw, work / "dataset")
    return work / "dataset"


def _base(work: Path, model: str, base: str | None) -> Path:
    if base:
        return Path(base)
    from appliance.models import bootstrap_smollm2, bootstrap_tiny

    return bootstrap_tiny(work / "tiny") if model == "tiny" else bootstrap_smollm2(work / "smollm2")


def _run(name: str, work: Path, base: Path, args: argparse.Namespace, steps: int, **mode: Any) -> dict[str, Any]:
    from appliance.config import load_settings
    from appliance.testing import MemoryAuditLog
    from appliance.training import TrainingRun, make_config

    settings = load_settings(data_dir=work / f"var-{name}", policies_dir=work / "policies")
    config = make_config(
        dataset=work / "dataset",
        base=base,
        out=work / f"adapter-{name}",
        steps=steps,
        batch_size=args.batch_size,
        physical_batch_size=args.physical_batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        target_modules=args.target_modules.split(","),
        audit_canaries=args.canaries,
        checkpoint_every=100_000,
        device="cpu",
        **mode,
    )
    start = time.perf_counter()
    result = TrainingRun(config, settings, audit=MemoryAuditLog()).run()
    audit = dict(result.metadata["privacy_audit"])
    audit |= {"seconds": round(time.perf_counter() - start, 1), "train_loss": result.metadata["metrics"]["train_loss"]}
    print(f"{name}: {json.dumps(audit)}", flush=True)
    return audit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--base", default=None, help="an existing base model directory (skips the bootstrap)")
    parser.add_argument("--records", type=int, default=128, help="dataset records (the first N of the bundled set)")
    parser.add_argument("--canaries", type=int, default=500, help="audit canaries M (about M/2 are trained on)")
    parser.add_argument("--epochs", type=float, default=20.0, help="passes over the data (memorisation needs many)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--physical-batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2, help="high on purpose: the non-DP run must memorise")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--target-modules", default="all-linear")
    parser.add_argument("--epsilon", type=float, default=2.0, help="the DP run's epsilon")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="privacy-audit-") as tmp:
        work = Path(tmp)
        _prepare(work, args.records)
        base = _base(work, args.model, args.base)
        units = args.records + args.canaries / 2  # expected: the dataset's train split is a little smaller
        steps = max(1, math.ceil(args.epochs * units / args.batch_size))
        print(
            f"model={args.model} records<={args.records} canaries={args.canaries} steps={steps} "
            f"batch={args.batch_size} lr={args.lr} lora=r{args.lora_r} {args.target_modules}",
            flush=True,
        )
        nodp = _run("non-DP", work, base, args, steps, no_dp=True)
        dp = _run("DP", work, base, args, steps, epsilon=args.epsilon)
    print(f"{'':8}{'guesses':>9}{'correct':>9}{'eps lower bound':>17}{'claimed eps':>13}{'train loss':>12}{'s':>8}")
    for name, r in (("non-DP", nodp), ("DP", dp)):
        claimed = "-" if r["claimed_epsilon"] is None else f"{r['claimed_epsilon']:.3f}"
        print(
            f"{name:8}{r['guesses']:>9}{r['correct']:>9}{r['epsilon_lower_bound']:>17.3f}{claimed:>13}"
            f"{r['train_loss']:>12.4f}{r['seconds']:>8.1f}"
        )
    separated = nodp["epsilon_lower_bound"] > dp["epsilon_lower_bound"] + 0.5
    within = dp["epsilon_lower_bound"] <= dp["claimed_epsilon"]
    print(f"non-DP bound clearly above DP bound (by > 0.5): {'OK' if separated else 'MISSED'}")
    print(
        f"DP bound {dp['epsilon_lower_bound']:.3f} <= claimed epsilon {dp['claimed_epsilon']:.3f}: "
        f"{'OK' if within else 'BROKEN (approval would be refused)'}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args), "non_dp": nodp, "dp": dp}, indent=2, default=str))


if __name__ == "__main__":
    main()
