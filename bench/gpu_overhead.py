"""DP vs non-DP LoRA on one GPU: step time and peak memory, Opacus hooks vs ghost clipping (run by bench/gpu.sh).

A random-initialised Llama built from its config (default: TinyLlama-1.1B's shape, about 1.1B parameters), bf16
base weights, LoRA r=8 on every linear layer (the training stage's default), random token sequences of length 512,
a logical batch of 256 run in physical batches, AdamW. The DP modes are wired as ``appliance.training`` wires them
(``make_private`` with Poisson sampling, ``wrap_model=False``, ``loss_reduction="mean"``, the per-unit loss of
``appliance/training/_loss.py``, ``BatchMemoryManager``; ghost: the two backward passes of Opacus's fast gradient
clipping); non-DP takes the same logical batch in the same physical batches with gradient accumulation.
Each mode runs in its own process (clean peak memory); the first step is warm-up. Peak memory is
``torch.cuda.max_memory_allocated`` (GPU) or the process's maximum RSS (CPU).

    python bench/gpu_overhead.py                  # GPU: about 5 minutes on an H100
    python bench/gpu_overhead.py --smoke          # CPU, tiny config, seconds: checks the script itself

Only torch, transformers, peft and opacus are imported: the per-unit loss is loaded from its file, so the
training stage's other dependencies need not be installed on the GPU machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# TinyLlama-1.1B's shape: 1.10B parameters
CONFIG_1B = {
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}
CONFIG_SMOKE = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def _unit_losses() -> Any:
    """``appliance.training._loss.unit_losses``, loaded from its file (installed project first, else this checkout)."""
    spec = importlib.util.find_spec("appliance")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    roots.append(str(REPO / "appliance"))
    for root in roots:
        path = Path(root) / "training" / "_loss.py"
        if path.is_file():
            module_spec = importlib.util.spec_from_file_location("_appliance_loss", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module.unit_losses
    raise SystemExit("appliance/training/_loss.py not found: install the project wheel (bench/gpu.sh)")


def _child(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import LlamaConfig, LlamaForCausalLM

    unit_losses = _unit_losses()
    device = torch.device(args.device)
    dtype = torch.bfloat16
    torch.manual_seed(0)
    config = LlamaConfig(**(CONFIG_SMOKE if args.smoke else CONFIG_1B), use_cache=False)
    with device:
        model: Any = LlamaForCausalLM(config).to(dtype)  # built on the device: no host copy of 1B weights
    params_total = sum(p.numel() for p in model.parameters())
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)  # on its device before Opacus (Opacus #820)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer: Any = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.0)
    units = args.logical_batch * args.batches_per_epoch
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (units, args.seq_len), generator=generator)
    weights = torch.full((units, args.seq_len), 1.0 / (args.seq_len - 1))
    weights[:, 0] = 0.0
    loader: Any = DataLoader(TensorDataset(ids, weights), batch_size=args.logical_batch, shuffle=True)
    hooks = None
    noise_generator = torch.Generator(device=device)
    if args.mode != "nodp":
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        private = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=True,
            grad_sample_mode=args.mode,
            wrap_model=False,
            loss_reduction="mean",
            noise_generator=noise_generator,
            criterion=torch.nn.CrossEntropyLoss(),
        )
        if args.mode == "ghost":
            _, optimizer, criterion, loader = private
            hooks = criterion.module
        else:
            _, optimizer, loader = private
    model.train()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward(batch_ids: Any, batch_w: Any) -> Any:
        batch_ids, batch_w = batch_ids.to(device), batch_w.to(device)
        logits = model(input_ids=batch_ids).logits
        return unit_losses(logits, batch_ids, batch_w)

    step_times: list[float] = []
    rows_per_step: list[int] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    mark = started
    rows = 0
    if args.mode == "nodp":
        while len(step_times) < args.steps:
            for batch_ids, batch_w in loader:
                n = int(batch_ids.shape[0])
                for start in range(0, n, args.physical_batch):
                    part = slice(start, start + args.physical_batch)
                    (forward(batch_ids[part], batch_w[part]).sum() / n).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync()
                now = time.perf_counter()
                step_times.append(now - mark)
                rows_per_step.append(n)
                mark = now
                if len(step_times) >= args.steps:
                    break
    else:
        from opacus.utils.batch_memory_manager import BatchMemoryManager
        from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

        while len(step_times) < args.steps:
            with BatchMemoryManager(
                data_loader=loader, max_physical_batch_size=args.physical_batch, optimizer=optimizer
            ) as batches:
                for batch_ids, batch_w in batches:
                    n = int(batch_ids.shape[0])
                    if n:
                        losses = forward(batch_ids, batch_w)
                        if hooks is None:
                            losses.mean().backward()
                        else:
                            DPTensorFastGradientClipping(hooks, optimizer, losses, loss_reduction="mean").backward()
                    rows += n
                    noise_generator.manual_seed(secrets.randbits(64))  # as training does before every step
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if not optimizer._is_last_step_skipped:
                        sync()
                        now = time.perf_counter()
                        step_times.append(now - mark)
                        rows_per_step.append(rows)
                        mark, rows = now, 0
                        if len(step_times) >= args.steps:
                            break
    measured = step_times[1:] or step_times
    measured_rows = rows_per_step[1:] or rows_per_step
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": args.mode,
        "params": params_total,
        "trainable": sum(p.numel() for p in trainable),
        "step_s": statistics.median(measured),
        "s_per_row": sum(measured) / max(1, sum(measured_rows)),
        "step_times": [round(t, 3) for t in step_times],
        "rows": rows_per_step,
        "peak_mb": peak_mb,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny config, short sequences: checks the script")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 512 (32 with --smoke)")
    parser.add_argument("--logical-batch", type=int, default=None, help="default: 256 (16 with --smoke)")
    parser.add_argument("--physical-batch", type=int, default=None, help="default: 16 (4 with --smoke)")
    parser.add_argument("--batches-per-epoch", type=int, default=25, help="units = logical batch x this")
    parser.add_argument("--steps", type=int, default=None, help="per mode, the first is warm-up (default 4)")
    parser.add_argument("--modes", default="nodp,hooks,ghost")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = {"device": "cpu", "seq_len": 32, "logical_batch": 16, "physical_batch": 4, "steps": 3}
    if not args.smoke:
        defaults = {"device": "cuda", "seq_len": 512, "logical_batch": 256, "physical_batch": 16, "steps": 4}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.mode:
        print(json.dumps(_child(args)))
        return
    modes = [m for m in args.modes.split(",") if m]
    if "nodp" not in modes or not set(modes) <= {"nodp", "hooks", "ghost"}:
        raise SystemExit("--modes must include nodp and name only nodp, hooks, ghost")
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        cmd = [sys.executable, __file__, "--mode", mode, "--device", args.device, "--steps", str(args.steps)]
        cmd += ["--seq-len", str(args.seq_len), "--logical-batch", str(args.logical_batch)]
        cmd += ["--physical-batch", str(args.physical_batch), "--batches-per-epoch", str(args.batches_per_epoch)]
        if args.smoke:
            cmd.append("--smoke")
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{mode} failed ({proc.returncode})")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{mode}: done in {time.perf_counter() - started:.0f} s", flush=True)
    plain = results["nodp"]
    print(
        f"device={plain['device']} params={plain['params'] / 1e9:.3f}B trainable={plain['trainable'] / 1e6:.2f}M "
        f"seq={args.seq_len} logical batch={args.logical_batch} (physical {args.physical_batch}) bf16 "
        f"steps={args.steps} (first is warm-up)"
    )
    print(f"{'':10}{'s/step':>10}{'ms/row':>10}{'peak MB':>12}")
    names = {"nodp": "non-DP", "hooks": "DP hooks", "ghost": "DP ghost"}
    for mode, r in results.items():
        print(f"{names[mode]:10}{r['step_s']:>10.3f}{1000 * r['s_per_row']:>10.2f}{r['peak_mb']:>12.0f}")
    ratios = {}
    for mode in modes:
        if mode == "nodp":
            continue
        r = results[mode]
        ratios[mode] = {
            "time_per_row": r["s_per_row"] / plain["s_per_row"],
            "step_time": r["step_s"] / plain["step_s"],
            "memory": r["peak_mb"] / plain["peak_mb"],
        }
        t, m = ratios[mode]["time_per_row"], ratios[mode]["memory"]
        print(
            f"{names[mode]}/non-DP: time per row {t:.3f} (target <= 1.10: {'OK' if t <= 1.10 else 'MISSED'}), "
            f"step {ratios[mode]['step_time']:.3f}; peak memory {m:.3f} (target <= 1.30: "
            f"{'OK' if m <= 1.30 else 'MISSED'})"
        )
    if "hooks" in results and "ghost" in results:
        print(f"ghost/hooks: time per row {results['ghost']['s_per_row'] / results['hooks']['s_per_row']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args), "results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
