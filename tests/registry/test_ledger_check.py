"""The registry checks a run's metadata.json against the privacy-budget ledger before it trusts it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Settings
from appliance.errors import IntegrityViolation
from appliance.registry import Registry
from tests.registry.conftest import APPROVERS, OPERATOR, RecordingAudit, RunFactory, snapshot


def _edit_metadata(run: Path, **changes: Any) -> None:
    meta = json.loads((run / "metadata.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            meta[key] = {**meta[key], **value}
        else:
            meta[key] = value
    (run / "metadata.json").write_text(json.dumps(meta))


def _refused(registry: Registry, audit: RecordingAudit, run: Path, match: str) -> None:
    before = snapshot(registry)
    with pytest.raises(IntegrityViolation, match=match):
        registry.add(run, "triage", OPERATOR)
    assert snapshot(registry) == before
    assert not list(registry.artifacts.root.glob("*/*"))
    last = audit.events[-1]
    assert (last["type"], last["outcome"]["status"], last["outcome"]["error_class"]) == (
        "registry.add",
        "denied",
        "INTEGRITY_VIOLATION",
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"dp": {"epsilon": 1.0}}, "epsilon"),
        ({"dp": {"delta": 1e-7}}, "delta"),
        ({"dp": {"noise_multiplier": 5.0}}, "noise_multiplier"),
        ({"dp": {"privacy_unit": "subject"}}, "privacy_unit"),
        ({"trained_by": "someone-else"}, "trained_by"),
        ({"steps": 1}, "steps"),
        ({"canaries": {"max_exposure": 1.0}}, "canary max_exposure"),
        ({"canaries": {"exposures": [], "max_exposure": 0.0}}, "canary max_exposure"),
    ],
)
def test_edited_metadata_refused(
    registry: Registry, make_run: RunFactory, audit: RecordingAudit, changes: dict[str, Any], field: str
) -> None:
    """A field edited after training no longer matches the ledger: IntegrityViolation, audited, nothing written."""
    run = make_run()
    _edit_metadata(run, **changes)
    _refused(registry, audit, run, f"does not match the privacy ledger: {field} ")


def test_other_dataset_refused(registry: Registry, make_run: RunFactory, audit: RecordingAudit) -> None:
    """A run pointed at another prepared dataset (with a consistent manifest) does not match the ledger."""
    other = make_run(ledger=None)
    run = make_run()
    _edit_metadata(run, dataset=json.loads((other / "metadata.json").read_text())["dataset"])
    _refused(registry, audit, run, "dataset ")


def test_other_weights_under_a_runs_metadata_refused(
    registry: Registry, make_run: RunFactory, audit: RecordingAudit
) -> None:
    """Weights swapped in (say, from an unapproved run) under a finished run's metadata do not match the ledger."""
    import shutil

    run, other = make_run(), make_run(ledger=None)
    shutil.copy(other / "adapter_model.safetensors", run / "adapter_model.safetensors")
    _refused(registry, audit, run, "weights ")


def test_edited_adapter_config_refused(registry: Registry, make_run: RunFactory, audit: RecordingAudit) -> None:
    """An adapter_config.json edited after training (scaling: what the adapter computes) does not match the
    digest training recorded; nor does one from a run finished before the ledger kept it."""
    run = make_run()
    config = json.loads((run / "adapter_config.json").read_text())
    config["lora_alpha"] = config["lora_alpha"] * 4
    (run / "adapter_config.json").write_text(json.dumps(config))
    _refused(registry, audit, run, r"adapter_config\.json [0-9a-f]{16}\.\.\. \(ledger: [0-9a-f]{16}")
    _refused(registry, audit, make_run(ledger={"config_sha256": None}), "the run finished before the ledger kept it")


def test_epsilon_within_tolerance_accepted(registry: Registry, make_run: RunFactory) -> None:
    """Floats compare with a tight relative tolerance; the metadata's own values register."""
    run = make_run(ledger={"epsilon": 4.0 * (1 + 1e-12)})
    assert registry.add(run, "triage", OPERATOR).status == "staged"


@pytest.mark.parametrize(
    ("ledger", "match"),
    [
        (None, "is not in the privacy ledger"),
        ({"status": "running", "finished_at": None}, "is running in the privacy ledger"),
        ({"status": "failed", "reason": "TRAINING_FAILED"}, "is failed in the privacy ledger"),
        ({"status": "failed", "reason": "abandoned"}, "is abandoned in the privacy ledger"),
    ],
)
def test_run_must_be_finished_in_ledger(
    registry: Registry, make_run: RunFactory, audit: RecordingAudit, ledger: dict[str, Any] | None, match: str
) -> None:
    """A run missing from the ledger, still open, failed or abandoned is refused."""
    _refused(registry, audit, make_run(ledger=ledger), match)


def test_resumed_run_charged_more_steps_accepted(registry: Registry, make_run: RunFactory) -> None:
    """After a resume the ledger charges repeated steps too: more charged than planned still matches."""
    assert registry.add(make_run(ledger={"steps_taken": 3, "steps_reserved": 3}), "triage", OPERATOR)


def test_approve_and_publish_recheck_the_ledger(
    registry: Registry, make_run: RunFactory, audit: RecordingAudit, data_dir: Path
) -> None:
    """An adapter whose registered row disagrees with the ledger (registered before the check) is not approved
    or published."""
    run = make_run()
    run_id = json.loads((run / "metadata.json").read_text())["run_id"]
    registry.add(run, "triage", OPERATOR)
    registry.approve("triage", 1, APPROVERS[0])
    registry.approve("triage", 1, APPROVERS[1])
    second = registry.add(make_run(), "triage", OPERATOR)
    db = sqlite3.connect(data_dir / "ledger.db")
    with db:
        db.execute("UPDATE runs SET epsilon = 9.0 WHERE run_id IN (?, ?)", (run_id, second.run_id))
    db.close()
    with pytest.raises(IntegrityViolation, match=r"epsilon 4\.0 \(ledger: 9\.0\)"):
        registry.approve("triage", 2, APPROVERS[0])
    assert audit.events[-1]["outcome"]["status"] == "denied"
    before = snapshot(registry)
    with pytest.raises(IntegrityViolation, match=r"epsilon 4\.0 \(ledger: 9\.0\)"):
        registry.publish("triage", 1, "embedded", OPERATOR)
    assert snapshot(registry) == before
    assert (audit.events[-1]["type"], audit.events[-1]["outcome"]["status"]) == ("registry.publish", "denied")


def test_approve_and_publish_recheck_the_config_digest(
    registry: Registry, make_run: RunFactory, audit: RecordingAudit, data_dir: Path
) -> None:
    """The adapter_config.json sealed at add must still be the one the ledger recorded at approve and publish."""
    first = registry.add(make_run(), "triage", OPERATOR)
    for approver in APPROVERS:
        registry.approve("triage", 1, approver)
    second = registry.add(make_run(), "triage", OPERATOR)
    db = sqlite3.connect(data_dir / "ledger.db")
    with db:
        db.execute("UPDATE runs SET config_sha256 = ? WHERE run_id IN (?, ?)", ("ab" * 32, first.run_id, second.run_id))
    db.close()
    with pytest.raises(IntegrityViolation, match=r"adapter_config\.json .* \(ledger: abab"):
        registry.approve("triage", 2, APPROVERS[0])
    assert audit.events[-1]["outcome"]["status"] == "denied"
    before = snapshot(registry)
    with pytest.raises(IntegrityViolation, match=r"adapter_config\.json .* \(ledger: abab"):
        registry.publish("triage", 1, "embedded", OPERATOR)
    assert snapshot(registry) == before


@pytest.mark.slow
def test_a_trained_run_registers_approves_and_publishes(
    registry: Registry, audit: RecordingAudit, settings: Settings, tiny_model: Path, tmp_path: Path
) -> None:
    """What `appliance train` writes (metadata and ledger row) passes every check: the demo's flow. Its
    adapter_config.json edited before `registry add` is refused."""
    from appliance.testing import MemoryAuditLog
    from appliance.training import make_config, train
    from tests.training.conftest import tiny_options, write_prepared

    out = tmp_path / "adapter"
    options = tiny_options(write_prepared(tmp_path / "prepared"), tiny_model, out, canaries=1, trained_by="tom")
    train(make_config(**options), settings, audit=MemoryAuditLog())
    meta = json.loads((out / "metadata.json").read_text())
    policies = tmp_path / "policies"  # this test checks the ledger, not the tiny model's memorisation
    policies.mkdir()
    (policies / "privacy.yaml").write_text("approval:\n  max_epsilon: 8.0\n  max_canary_exposure: 27.0\n")
    registry.policies_dir = policies
    config_path = out / "adapter_config.json"
    written = config_path.read_bytes()
    config = json.loads(written)
    config["lora_alpha"] = config["lora_alpha"] * 8  # 8x the scaling, same weights
    config_path.write_text(json.dumps(config, indent=2))
    _refused(registry, audit, out, r"adapter_config\.json [0-9a-f]{16}\.\.\. \(ledger: [0-9a-f]{16}")
    config_path.write_bytes(written)  # the bytes training wrote register
    assert registry.add(out, "triage", OPERATOR).run_id == meta["run_id"]
    for approver in APPROVERS:
        registry.approve("triage", 1, approver)
    assert registry.publish("triage", 1, "embedded", OPERATOR).status == "production"
