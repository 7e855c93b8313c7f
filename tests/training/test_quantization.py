"""QLoRA (`--quantize nf4`): refused with the reason where bitsandbytes cannot run (no CUDA, no package), before
anything is charged; the metadata records how the base was held and what the adapter is to be served on; the
real 4-bit path runs on a CUDA machine with bitsandbytes."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from appliance.cli import main
from appliance.config import Settings
from appliance.errors import ConfigError, ValidationFailed
from appliance.testing import MemoryAuditLog
from appliance.training import Ledger, make_config, train
from appliance.training._quantization import quantization_metadata, quantization_unavailable, require_quantization
from tests.training.conftest import tiny_options

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
NF4_RUNS_HERE = torch.cuda.is_available() and HAS_BNB


def test_nf4_with_a_cpu_device_is_an_invalid_option(prepared: Path, tiny_model: Path, tmp_path: Path) -> None:
    """`--quantize nf4 --device cpu` is refused when the options are read (NF4 kernels need CUDA)."""
    with pytest.raises(ValidationFailed, match="nf4 needs a CUDA device"):
        make_config(**tiny_options(prepared, tiny_model, tmp_path / "a", quantize="nf4", device="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_no_cuda_is_named() -> None:
    """Without CUDA the refusal says so, whatever else is installed; no quantisation is always available."""
    assert quantization_unavailable("none") is None
    with pytest.raises(ConfigError, match=r"--quantize nf4 cannot run here: no CUDA device is available"):
        require_quantization("nf4")


@pytest.mark.skipif(HAS_BNB, reason="bitsandbytes is installed")
def test_missing_bitsandbytes_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA machine without bitsandbytes the refusal names the package and the extra that installs it
    (CUDA is simulated here: this machine has none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"bitsandbytes package is not installed \(pip install 'appliance\[gpu\]'\)"):
        require_quantization("nf4")


@pytest.mark.slow
@pytest.mark.skipif(NF4_RUNS_HERE, reason="nf4 can run on this machine")
def test_refused_run_charges_nothing(
    train_settings: Settings,
    prepared: Path,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_policy: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run with nf4 where it cannot run stops with CONFIG_INVALID (exit 78) before the ledger, the audit trail
    or the output directory sees it."""
    out = tmp_path / "adapter"
    options = tiny_options(prepared, tiny_model, out, quantize="nf4", device="auto")
    audit = MemoryAuditLog()
    with pytest.raises(ConfigError, match="cannot run here"):
        train(make_config(**options), train_settings, audit=audit)
    assert audit.events == [] and not out.exists()
    assert not train_settings.ledger_path.exists() or Ledger(train_settings.ledger_path).runs() == []
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(train_settings.data_dir))
    monkeypatch.setenv("APPLIANCE_POLICIES_DIR", str(make_policy()))
    argv = ["appliance", "train", "--dataset", str(prepared), "--base", str(tiny_model), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--epsilon", "4", "--max-length", "48", "--quantize", "nf4"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 78
    assert "CONFIG_INVALID: --quantize nf4 cannot run here" in capsys.readouterr().err
    assert not out.exists()


def test_metadata_values() -> None:
    """metadata.quantization: the method, bfloat16 compute for nf4, a float32 adapter, the serving base."""
    assert quantization_metadata("nf4", "engine") == {
        "method": "nf4",
        "compute_dtype": "bfloat16",
        "adapter_dtype": "float32",
        "double_quant": True,
        "serving": "engine",
    }
    assert quantization_metadata("none", "unquantised") == {
        "method": "none",
        "compute_dtype": "float32",
        "adapter_dtype": "float32",
        "double_quant": None,
        "serving": "unquantised",
    }


@pytest.mark.slow
def test_a_run_records_its_quantization_and_the_registry_reads_it(
    train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """A finished run's metadata.json carries quantization (here none, to be served by the engine's own
    quantisation); the registry's run-directory validation accepts it."""
    from appliance.registry._rundir import read_run_dir

    out = tmp_path / "adapter"
    train(
        make_config(**tiny_options(prepared, tiny_model, out, serving_base="engine")),
        train_settings,
        audit=MemoryAuditLog(),
    )
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["quantization"] == quantization_metadata("none", "engine")
    run = read_run_dir(out)
    assert run.metadata.quantization is not None and run.metadata.quantization.serving == "engine"


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not NF4_RUNS_HERE, reason="needs CUDA and bitsandbytes")
def test_nf4_run_on_cuda(train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path) -> None:
    """The real QLoRA path: 4-bit base layers, float32 LoRA that changed, DP steps charged, nf4 metadata."""
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    out = tmp_path / "adapter"
    options = tiny_options(prepared, tiny_model, out, quantize="nf4", device="cuda", max_length=64)
    result = train(make_config(**options), train_settings, audit=MemoryAuditLog())
    meta = result.metadata
    assert meta["quantization"]["method"] == "nf4" and meta["steps"] == 4
    assert meta["dp"]["enabled"] is True and meta["dp"]["epsilon"] > 0
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert weights and all(t.dtype == torch.float32 for t in weights.values())
    from appliance.training import TrainingRun

    run = TrainingRun(make_config(**{**options, "out": tmp_path / "b"}), train_settings, audit=MemoryAuditLog())
    run.prepare()
    run.build()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in run.built.model.modules())
