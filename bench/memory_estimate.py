"""The training stage's memory estimate (``appliance/training/_memory.py``) against a measured run.

Each configuration runs in its own subprocess through the real training stage (``TrainingRun``: prepare, build,
fit) on records long enough that every row fills ``--max-length`` (the estimate's worst case), DP with Opacus
hooks (or ``--dp-mode ghost|none``), a logical batch of twice the physical one and ``--steps`` steps (six by
default: Poisson sampling draws a varying number of rows, and in two steps the fullest physical batch was
sometimes short of full). Measured:

* CUDA: ``torch.cuda.max_memory_allocated`` over build + fit, against the estimate without its runtime part;
* CPU, ``--measure allocated`` (the default, and what the test asserts on): the peak of live tensor bytes over
  build + fit, from the allocation and free events of torch's profiler (``profile_memory``): what the estimate
  models, whatever the C library and the kernel do with freed memory;
* CPU, ``--measure resident``: the kernel's peak of the process's resident memory (``VmHWM``, reset through
  ``/proc/self/clear_refs`` just before build) minus the resident memory at that point. glibc is told to give
  every allocation of 64 KiB or more its own memory map (see ``_child_env``), but this figure still moves by
  +-25% between two runs on one machine (heap fragmentation, huge pages, thread arenas): for a look, not a gate.

    .venv/bin/python bench/memory_estimate.py                          # tiny model, CPU (about a minute)
    .venv/bin/python bench/memory_estimate.py --model smollm2 --base var/models/smollm2-135m --batches 1,2
    python bench/memory_estimate.py --device cuda --batches 4,16 [--quantize nf4]   # GPU (bench/gpu.sh --memory)

Prints one line per configuration: estimate, measured, ratio estimate/measured (the test asserts it stays within
``tests/training/test_memory.py``'s factor), and ``--json FILE`` writes them.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POLICY = "format_version: 1\ndefault: {epsilon_budget: 100.0, delta: 1.0e-5}\nallow_no_dp: true\n"
TINY_SHAPE = {"hidden_size": 256, "layers": 4, "vocab_size": 2048}  # the bundled tiny builder, a little wider
SALT = "5a17" * 8


def write_long_dataset(path: Path, records: int) -> Path:
    """A prepared dataset (contracts.md) whose records are all longer than any --max-length used here."""
    path.mkdir(parents=True, exist_ok=True)
    words = [
        "fever",
        "cough",
        "rash",
        "headache",
        "fatigue",
        "nausea",
        "dizziness",
        "review",
        "discharge",
        "follow-up",
        "observation",
    ]
    subject_ids = [f"P{i:04d}" for i in range(records + 2)]
    digests = [hmac.new(bytes.fromhex(SALT), s.encode(), hashlib.sha256).hexdigest() for s in subject_ids]

    def note(i: int, n: int) -> str:
        return " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(n))

    def line(i: int) -> str:
        row = {"instruction": f"Summarise visit {i}: {note(i, 40)}", "response": note(i + 1, 3000)}
        return json.dumps(row | {"subject": digests[i]}) + "\n"

    train = "".join(line(i) for i in range(records)).encode()
    evals = "".join(line(records + i) for i in range(2)).encode()
    (path / "train.jsonl").write_bytes(train)
    (path / "eval.jsonl").write_bytes(evals)
    manifest = {
        "format_version": 1,
        "fingerprint": hashlib.sha256(train + evals).hexdigest(),
        "counts": {"input": records + 2, "invalid": 0, "exact_duplicates": 0, "near_duplicates": 0}
        | {"train": records, "eval": 2},
        "scrub_report": {},
        "subjects": {"salt": SALT, "digests": digests},
        "source": {"sha256": hashlib.sha256(train).hexdigest(), "records": records + 2},
        "created_at": "2026-12-06T00:00:00+00:00",
    }
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path


def _status_bytes(field: str) -> int:
    """A memory line of /proc/self/status (VmRSS: resident now; VmHWM: its peak since the last reset), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Reset the kernel's resident-memory high-water mark (VmHWM) to the current resident size."""
    Path("/proc/self/clear_refs").write_text("5")


def _allocated_peak(run: Any) -> int:
    """Build and fit ``run`` under torch's CPU profiler; the peak of the bytes its tensors held at once."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run.build()
        run.fit()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    live = peak = 0
    for _, size in events:  # allocations positive, frees negative
        live += size
        peak = max(peak, live)
    return peak


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in this process: estimate, then build and fit, measuring the peak."""
    import gc

    import opacus  # noqa: F401  (imported before the baseline: its code is not the run's memory)
    import peft  # noqa: F401
    import torch

    from appliance.config import load_settings
    from appliance.training import TrainingRun, estimate_memory, make_config, model_shape

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    settings = load_settings(data_dir=work / f"var-{args.physical_batch}", policies_dir=work / "policies")
    options: dict[str, Any] = {
        "dataset": work / "dataset",
        "base": Path(args.base),
        "out": work / f"adapter-{args.physical_batch}",
        "steps": args.steps,
        "batch_size": 2 * args.physical_batch,
        "physical_batch_size": args.physical_batch,
        "max_length": args.max_length,
        "lora_r": args.lora_r,
        "target_modules": args.target_modules.split(","),
        "checkpoint_every": 10_000,
        "device": args.device,
        "quantize": args.quantize,
    }
    if args.dp_mode == "none":
        options |= {"no_dp": True}
    else:
        options |= {"epsilon": 100.0, "noise_multiplier": 0.5, "grad_sample_mode": args.dp_mode}
    # no audit trail or key service: only torch, transformers, peft, opacus, pydantic and structlog are needed
    run = TrainingRun(make_config(**options), settings, use_stage_factories=False)
    run.prepare()
    estimate = estimate_memory(
        model_shape(Path(args.base)),
        lora_rank=args.lora_r,
        target_modules=args.target_modules.split(","),
        max_length=args.max_length,
        physical_batch=args.physical_batch,
        quantization=args.quantize,
        dp_mode=args.dp_mode,
        device=args.device,
    )
    gc.collect()
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if cuda:
        run.build()
        run.fit()
        measured = torch.cuda.max_memory_allocated()
    elif args.measure == "allocated":
        measured = _allocated_peak(run)
    else:
        _reset_peak()
        baseline = _status_bytes("VmRSS")
        run.build()
        run.fit()
        measured = _status_bytes("VmHWM") - baseline
    expected = estimate.allocated if cuda else estimate.total
    return {
        "device": args.device,
        "physical_batch": args.physical_batch,
        "max_length": args.max_length,
        "dp_mode": args.dp_mode,
        "quantize": args.quantize,
        "measure": "cuda allocated" if cuda else args.measure,
        "estimate_bytes": expected,
        "measured_bytes": measured,
        "ratio": expected / measured,
        "parts_bytes": dict(estimate.parts),
    }


def _build_model(work: Path, model: str, base: str | None) -> str:
    if base:
        return base
    from appliance.models import bootstrap_smollm2, bootstrap_tiny

    target = work / model
    if model == "tiny":
        shape = TINY_SHAPE
        return str(bootstrap_tiny(target, hidden_size=shape["hidden_size"], layers=shape["layers"], vocab_size=2048))
    return str(bootstrap_smollm2(target))


def _child_env() -> dict[str, str]:
    """glibc: every allocation of 64 KiB or more is its own memory map, returned to the system when freed (the
    default adaptive threshold keeps freed tensors in the heap, and resident memory then overstates live tensors).
    """
    return os.environ | {"MALLOC_MMAP_THRESHOLD_": str(64 << 10), "MALLOC_TRIM_THRESHOLD_": str(128 << 10)}


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every physical batch of ``--batches``, each in its own subprocess."""
    results = []
    with tempfile.TemporaryDirectory(prefix="memory-estimate-") as tmp:
        work = Path(tmp)
        (work / "policies").mkdir()
        (work / "policies" / "privacy.yaml").write_text(POLICY)
        write_long_dataset(work / "dataset", records=64)
        base = _build_model(work, args.model, args.base)
        for batch in (int(b) for b in args.batches.split(",")):
            cmd = [sys.executable, __file__, "--child", "--work", str(work), "--base", base]
            cmd += ["--physical-batch", str(batch), "--max-length", str(args.max_length), "--steps", str(args.steps)]
            cmd += ["--dp-mode", args.dp_mode, "--device", args.device, "--threads", str(args.threads)]
            cmd += ["--lora-r", str(args.lora_r), "--target-modules", args.target_modules, "--quantize", args.quantize]
            cmd += ["--measure", args.measure]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, env=_child_env())
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"physical batch {batch}: run failed ({proc.returncode})")
            result = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(
                f"{args.model} {args.device} {args.quantize} {args.dp_mode} batch {batch} x {args.max_length} tokens "
                f"({result['measure']}): "
                f"estimate "
                f"{result['estimate_bytes'] / 2**20:.0f} MiB, measured {result['measured_bytes'] / 2**20:.0f} MiB, "
                f"ratio {result['ratio']:.2f}",
                flush=True,
            )
            results.append({"model": args.model, **result})
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--base", default=None, help="an existing base model directory (skips the bootstrap)")
    p.add_argument("--batches", default="2,8", help="physical batches to measure, comma-separated")
    p.add_argument("--physical-batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=6, help="enough Poisson draws that one fills a physical batch")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--target-modules", default="all-linear")
    p.add_argument("--dp-mode", choices=["hooks", "ghost", "none"], default="hooks")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quantize", choices=["none", "nf4"], default="none", help="nf4: CUDA and bitsandbytes only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--measure",
        choices=["allocated", "resident"],
        default="allocated",
        help="CPU only: peak live tensor bytes (torch's profiler) or peak resident memory (noisy)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    results = measure(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
