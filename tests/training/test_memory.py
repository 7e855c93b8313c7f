"""The peak-memory estimate: its parts, the physical batch --gpu-memory picks, the refusal when nothing fits, and
the estimate against a measured run (the tiny model on CPU; on a GPU when one is present)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import Settings
from appliance.errors import ValidationFailed
from appliance.training import MemoryEstimate, estimate_memory, model_shape
from appliance.training._memory import CUDA_RUNTIME_BYTES, SAFETY_MARGIN, ModelShape, fit_physical_batch

REPO = Path(__file__).resolve().parents[2]
MEASURED_FACTOR = 1.5  # the estimate is within this factor of the measured peak, either way

# a Llama-7B-like shape (parameter counts of the real one are not needed: the formula is linear in them)
SHAPE = ModelShape(
    params=6_738_415_616,
    quantizable=6_476_005_376,
    linears=(("model.layers.0.self_attn.q_proj", 4096, 4096), ("model.layers.0.mlp.down_proj", 11008, 4096)),
    layers=32,
    hidden=4096,
    intermediate=11008,
    vocab=32000,
)


def _estimate(batch: int, **overrides: object) -> MemoryEstimate:
    options: dict[str, object] = {
        "lora_rank": 8,
        "target_modules": ["all-linear"],
        "max_length": 512,
        "physical_batch": batch,
        "quantization": "none",
        "dp_mode": "hooks",
        "device": "cuda",
    }
    options.update(overrides)
    return estimate_memory(SHAPE, **options)  # type: ignore[arg-type]


def test_parts_follow_the_formula() -> None:
    """Weights by dtype (nf4: half a byte plus double-quantised constants), LoRA and Adam in float32, one
    per-sample gradient per row for hooks, none for ghost or without DP."""
    lora = SHAPE.lora_params(8, ["all-linear"])
    assert lora == 8 * (4096 + 4096) + 8 * (11008 + 4096)
    full = dict(_estimate(4).parts)
    assert full["weights"] == SHAPE.params * 4 and full["quantization constants"] == 0
    assert full["LoRA"] == lora * 4 and full["optimizer (AdamW)"] == 2 * lora * 4
    assert full["per-sample gradients"] == 4 * lora * 4
    assert full["runtime"] == CUDA_RUNTIME_BYTES
    nf4 = dict(_estimate(4, quantization="nf4").parts)
    rest = SHAPE.params - SHAPE.quantizable
    assert nf4["weights"] == pytest.approx(SHAPE.quantizable * 0.5 + rest * 2, abs=1)
    assert nf4["quantization constants"] == pytest.approx(SHAPE.quantizable * (1 / 64 + 4 / (64 * 256)), abs=1)
    assert nf4["activations"] * 2 == full["activations"]  # bfloat16 compute
    assert dict(_estimate(4, dp_mode="none").parts)["per-sample gradients"] == 0
    assert dict(_estimate(4, dp_mode="ghost").parts)["per-sample gradients"] == 2 * 4 * 512 * 512 * 4
    assert dict(_estimate(4, device="cpu").parts)["runtime"] == 0
    assert SHAPE.lora_params(8, ["q_proj"]) == 8 * (4096 + 4096)


def test_gpu_memory_picks_the_largest_batch_that_fits() -> None:
    """The chosen batch fits the card less the safety margin and one more row would not; the logical batch caps it."""
    for gib, quantization in ((24, "nf4"), (48, "nf4"), (80, "none")):
        capacity = gib << 30
        chosen = fit_physical_batch(capacity, lambda b, q=quantization: _estimate(b, quantization=q), upper=512)
        usable = capacity * (1 - SAFETY_MARGIN)
        assert chosen.total <= usable < _estimate(chosen.physical_batch + 1, quantization=quantization).total
    assert fit_physical_batch(80 << 30, lambda b: _estimate(b, quantization="nf4"), upper=3).physical_batch == 3


def test_refused_when_one_row_does_not_fit() -> None:
    """A 7B base in float32 cannot fit 24 GiB: refused naming the weights and suggesting nf4."""
    with pytest.raises(ValidationFailed, match=r"physical batch of 1 needs about .*weights .*--quantize nf4"):
        fit_physical_batch(24 << 30, _estimate, upper=64)
    with pytest.raises(ValidationFailed, match="physical batch of 1") as caught:
        fit_physical_batch(2 << 30, lambda b: _estimate(b, quantization="nf4"), upper=64)
    assert "--quantize nf4" not in str(caught.value)


def test_model_shape_counts_what_peft_trains(tiny_model: Path) -> None:
    """The meta-device shape has the loaded model's parameter count and peft's LoRA parameter count."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = model_shape(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), local_files_only=True)
    assert shape.params == sum(p.numel() for p in model.parameters())
    for targets in (["all-linear"], ["q_proj", "v_proj"]):
        peft_model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(str(tiny_model), local_files_only=True),
            LoraConfig(r=4, target_modules="all-linear" if targets == ["all-linear"] else targets),
        )
        trained = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert shape.lora_params(4, targets) == trained


@pytest.mark.slow
def test_plan_only_prints_the_estimate_and_json(
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    make_policy: Callable[..., Path],
    prepared: Path,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    """`--plan-only --gpu-memory` prints the itemised table with the chosen batch; `--json` is the same estimate,
    nf4 included (a plan may be made on a machine without CUDA); nothing is written."""
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("APPLIANCE_POLICIES_DIR", str(make_policy(default={"delta": 1e-3})))
    monkeypatch.setenv("COLUMNS", "160")
    out = tmp_path / "adapter"
    args = ["train", "--dataset", str(prepared), "--base", str(tiny_model), "--out", str(out), "--epsilon", "4"]
    args += ["--plan-only", "--max-length", "512", "--batch-size", "16", "--gpu-memory", "0.9"]
    runner = CliRunner()
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "Estimated peak memory" in shown.output and "per-sample gradients" in shown.output
    as_json = runner.invoke(app, [*args, "--json", "--quantize", "nf4"])
    assert as_json.exit_code == 0, as_json.output
    memory = json.loads(as_json.stdout)["memory"]
    assert memory["quantization"] == "nf4" and memory["compute_dtype"] == "bfloat16"
    assert memory["total_bytes"] == sum(memory["parts_bytes"].values()) <= 0.9 * (1 - SAFETY_MARGIN) * (1 << 30)
    shape = model_shape(tiny_model)
    batch = memory["physical_batch"]
    assert 1 <= batch <= 16
    expected = estimate_memory(
        shape, lora_rank=8, target_modules=["all-linear"], max_length=512, physical_batch=batch, quantization="nf4"
    )
    assert memory["parts_bytes"] == dict(expected.parts)
    chosen = re.search(r"physical batch (\d+) \(the largest that fits --gpu-memory\)", shown.output)
    assert chosen is not None, shown.output
    assert 1 <= int(chosen.group(1)) < batch  # float32 activations and weights leave room for fewer rows than nf4
    too_small = runner.invoke(app, [*args[:-1], "0.5"])
    assert isinstance(too_small.exception, ValidationFailed) and "physical batch of 1" in str(too_small.exception)
    given = runner.invoke(app, [*args, "--physical-batch-size", "16", "--max-length", "4096"])
    assert isinstance(given.exception, ValidationFailed)
    assert "leave --physical-batch-size out" in str(given.exception)
    assert not out.exists()
    assert not data_dir.exists() or not any(data_dir.iterdir())


def _measure(device: str, batches: str, tmp_path: Path) -> list[dict[str, object]]:
    report = tmp_path / "memory.json"
    cmd = [sys.executable, str(REPO / "bench" / "memory_estimate.py"), "--device", device, "--batches", batches]
    cmd += ["--max-length", "256", "--json", str(report)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return list(json.loads(report.read_text()))


@pytest.mark.slow
def test_estimate_within_factor_of_a_measured_cpu_run(tmp_path: Path) -> None:
    """On CPU, the tiny model (wider: hidden 256, 4 layers) with DP hooks, every row 256 tokens: the estimate is
    within MEASURED_FACTOR of the peak of live tensor bytes over build and fit (torch's profiler: resident memory
    moved by +-25% between two runs, and failed CI once), and grows with the batch as it does."""
    small, large = _measure("cpu", "4,16", tmp_path)
    for result in (small, large):
        assert 1 / MEASURED_FACTOR <= float(result["ratio"]) <= MEASURED_FACTOR, result  # type: ignore[arg-type]
    grew = float(large["measured_bytes"]) - float(small["measured_bytes"])  # type: ignore[arg-type]
    predicted = float(large["estimate_bytes"]) - float(small["estimate_bytes"])  # type: ignore[arg-type]
    assert 1 / MEASURED_FACTOR <= predicted / grew <= MEASURED_FACTOR


@pytest.mark.gpu
@pytest.mark.slow
def test_estimate_within_factor_of_a_measured_gpu_run(tmp_path: Path) -> None:
    """On a CUDA device: the estimate (without the runtime part) against torch.cuda.max_memory_allocated."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for result in _measure("cuda", "4,16", tmp_path):
        assert 1 / MEASURED_FACTOR <= float(result["ratio"]) <= MEASURED_FACTOR, result  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_run_with_gpu_memory_stores_the_chosen_batch(
    train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """`--gpu-memory` without a physical batch: the run takes the largest that fits and stores it in its
    config.json (a resume keeps it); a given physical batch is kept when it fits."""
    from appliance.testing import MemoryAuditLog
    from appliance.training import TrainingRun, make_config
    from tests.training.conftest import tiny_options

    options = tiny_options(prepared, tiny_model, tmp_path / "a", max_length=512, batch_size=16, gpu_memory_gb=0.9)
    del options["physical_batch_size"]
    run = TrainingRun(make_config(**options), train_settings, audit=MemoryAuditLog())
    run.prepare()
    assert run.memory is not None
    chosen = run.memory.physical_batch
    assert run.config.physical_batch_size == chosen
    stored = json.loads((run.run_dir / "config.json").read_text())
    assert stored["physical_batch_size"] == chosen and stored["gpu_memory_gb"] == 0.9
    usable = 0.9 * (1 << 30) * (1 - SAFETY_MARGIN)
    assert run.memory.total <= usable
    if chosen < 16:
        assert (
            estimate_memory(
                model_shape(tiny_model),
                lora_rank=4,
                target_modules=["all-linear"],
                max_length=512,
                physical_batch=chosen + 1,
            ).total
            > usable
        )
    given = {**options, "out": tmp_path / "b", "physical_batch_size": 1}
    kept = TrainingRun(make_config(**given), train_settings, audit=MemoryAuditLog())
    kept.prepare()
    assert kept.config.physical_batch_size == 1
