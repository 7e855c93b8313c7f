"""Bad run directories are refused with a clear error before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import IntegrityViolation, ValidationFailed
from appliance.registry import Registry
from tests.registry.conftest import OPERATOR, RunFactory, snapshot


def _edit_metadata(run: Path, **changes: object) -> None:
    meta = json.loads((run / "metadata.json").read_text())
    meta.update(changes)
    (run / "metadata.json").write_text(json.dumps(meta))


def _refused(registry: Registry, run: Path, error: type[Exception], match: str, name: str = "triage") -> None:
    before = snapshot(registry)
    with pytest.raises(error, match=match):
        registry.add(run, name, OPERATOR)
    assert snapshot(registry) == before
    assert not any(p.is_file() for p in registry.artifacts.root.rglob("*"))


def test_missing_files(registry: Registry, make_run: RunFactory, tmp_path: Path) -> None:
    """A run without its weights, or a path that is not a directory, is refused."""
    run = make_run()
    (run / "adapter_model.safetensors").unlink()
    _refused(registry, run, ValidationFailed, "lacks adapter_model.safetensors")
    _refused(registry, tmp_path / "nope", ValidationFailed, "run directory not found")


def test_metadata_problems_reported_together(registry: Registry, make_run: RunFactory) -> None:
    """Every schema problem in metadata.json is named in one error."""
    run = make_run()
    _edit_metadata(run, trained_by="", dp={"enabled": True, "epsilon": None, "delta": None}, steps=-1)
    before = snapshot(registry)
    with pytest.raises(ValidationFailed) as caught:
        registry.add(run, "triage", OPERATOR)
    assert (
        "trained_by" in str(caught.value) and "steps" in str(caught.value) and "epsilon and delta" in str(caught.value)
    )
    assert snapshot(registry) == before


def test_newer_format_refused(registry: Registry, make_run: RunFactory) -> None:
    """metadata.json from a newer appliance (format_version 2) is refused, naming both versions."""
    run = make_run()
    _edit_metadata(run, format_version=2)
    _refused(registry, run, ValidationFailed, "format_version 2; this registry reads format_version 1")


def test_opacus_prefixed_weights_refused(registry: Registry, make_run: RunFactory) -> None:
    """Tensor names with Opacus's '_module.' prefix are refused (backends would silently serve the base model)."""
    _refused(registry, make_run(prefix_keys=True), ValidationFailed, "_module")


def test_dataset_fingerprint_mismatch(registry: Registry, make_run: RunFactory) -> None:
    """A run whose dataset manifest has another fingerprint than the run recorded is an IntegrityViolation."""
    run = make_run()
    meta = json.loads((run / "metadata.json").read_text())
    _edit_metadata(run, dataset={**meta["dataset"], "fingerprint": "f" * 64})
    _refused(registry, run, IntegrityViolation, "does not match the run's dataset fingerprint")


def test_missing_manifest(registry: Registry, make_run: RunFactory) -> None:
    """Without the dataset's manifest there is no lineage, so the adapter is not registered."""
    run = make_run()
    meta = json.loads((run / "metadata.json").read_text())
    (Path(meta["dataset"]["path"]) / "manifest.json").unlink()
    _refused(registry, run, ValidationFailed, "dataset manifest is missing")


def test_base_model_hash_mismatch(registry: Registry, make_run: RunFactory) -> None:
    """A base model directory whose content hash differs from the run's record is an IntegrityViolation."""
    run = make_run()
    meta = json.loads((run / "metadata.json").read_text())
    _edit_metadata(run, base_model={**meta["base_model"], "sha256": "0" * 64})
    _refused(registry, run, IntegrityViolation, "base model at")


def test_bad_name_and_symlink(registry: Registry, make_run: RunFactory) -> None:
    """Names outside [a-z0-9_-] and run directories containing symlinks are refused."""
    _refused(registry, make_run(), ValidationFailed, "invalid adapter name", name="Triage!")
    run = make_run()
    (run / "link").symlink_to("/etc/hostname")
    _refused(registry, run, ValidationFailed, "symbolic link")


def test_same_run_id_refused(registry: Registry, make_run: RunFactory) -> None:
    """A second adapter claiming an already registered run id is a Conflict."""
    first = make_run()
    registry.add(first, "triage", OPERATOR)
    second = make_run()
    _edit_metadata(second, run_id=json.loads((first / "metadata.json").read_text())["run_id"])
    from appliance.errors import Conflict

    before = snapshot(registry)
    with pytest.raises(Conflict, match="already registered"):
        registry.add(second, "triage", OPERATOR)
    assert snapshot(registry) == before


QLORA = {
    "method": "nf4",
    "compute_dtype": "bfloat16",
    "adapter_dtype": "float32",
    "double_quant": True,
    "serving": "engine",
}


def test_quantization_metadata_accepted_and_kept(registry: Registry, make_run: RunFactory) -> None:
    """A QLoRA run's metadata.quantization (nf4 base, what it is served on) is accepted and kept as provenance."""
    info = registry.add(make_run(quantization=QLORA), "triage", OPERATOR)
    assert registry.show("triage", info.version).quantization == QLORA
    assert registry.show("triage", info.version).to_dict()["quantization"] == QLORA


def test_unknown_quantization_refused(registry: Registry, make_run: RunFactory) -> None:
    """A quantization method or serving base the appliance does not know is refused, naming the field."""
    _refused(registry, make_run(quantization={**QLORA, "method": "int3"}), ValidationFailed, "quantization.method")
    _refused(registry, make_run(quantization={**QLORA, "serving": "gguf"}), ValidationFailed, "quantization.serving")
