"""The training-side contracts: approval limits, run metadata and the ledger's read-only view."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.contracts import ApprovalLimits, LedgerEntry, RunMetadata, read_ledger_entry, run_metadata_json
from appliance.errors import ConfigError

_OLD_SCHEMA = """CREATE TABLE runs (run_id TEXT PRIMARY KEY, fingerprint TEXT, out_path TEXT, status TEXT, dp INTEGER,
privacy_unit TEXT, target_epsilon REAL, delta REAL, noise_multiplier REAL, sample_rate REAL, steps_planned INTEGER,
steps_reserved INTEGER, steps_taken INTEGER, epsilon REAL, trained_by TEXT, reason TEXT, started_at TEXT,
updated_at TEXT, finished_at TEXT)"""


def test_one_approval_model_for_training_and_registry(tmp_path: Path) -> None:
    """Training's policy and the registry's approval loader read the approval section with the same model, which
    requires both limits (an approval section without max_epsilon is refused by both)."""
    from appliance.registry._policy import ApprovalLimits as RegistryLimits
    from appliance.registry._policy import load_approval_limits
    from appliance.training import ApprovalLimits as TrainingLimits
    from appliance.training import load_privacy_policy

    assert RegistryLimits is TrainingLimits is ApprovalLimits
    (tmp_path / "privacy.yaml").write_text(
        "default: {epsilon_budget: 10, delta: 1.0e-5}\napproval: {max_canary_exposure: 12}\n"
    )
    with pytest.raises(ConfigError, match=r"approval\.max_epsilon"):
        load_approval_limits(tmp_path)
    with pytest.raises(ConfigError, match=r"approval\.max_epsilon"):
        load_privacy_policy(tmp_path / "privacy.yaml")


def test_metadata_written_keeps_only_set_keys_and_extras() -> None:
    """``run_metadata_json`` writes the keys the writer set and its extra keys (dp mechanics, canaries.sealed), and
    the same model reads it back."""
    meta = RunMetadata.model_validate(
        {
            "format_version": 1,
            "run_id": "r1",
            "trained_by": "dr-x",
            "base_model": {"path": "/b", "sha256": "a" * 64},
            "dataset": {"fingerprint": "b" * 64, "path": "/d"},
            "dp": {"enabled": True, "epsilon": 1.0, "delta": 1e-5, "noise_seeding": "os-csprng-per-step"},
            "lora": {},
            "hyperparameters": {},
            "steps": 1,
            "metrics": {},
            "canaries": {"count": 0, "sealed": False},
        }
    )
    written = run_metadata_json(meta)
    assert "quantization" not in written and "privacy_audit" not in written  # absent stays absent
    assert written["dp"]["noise_seeding"] == "os-csprng-per-step" and written["canaries"]["sealed"] is False
    assert RunMetadata.model_validate(written) == meta


def test_ledger_view_is_read_only_and_reads_old_ledgers(tmp_path: Path) -> None:
    """The view reads a row of a ledger from before the later columns (they read None), finds no run in a missing
    file, and leaves nothing beside the file (no WAL, no journal)."""
    path = tmp_path / "ledger.db"
    assert read_ledger_entry(path, "r1") is None
    db = sqlite3.connect(path)
    with db:
        db.execute(_OLD_SCHEMA)
        db.execute(
            "INSERT INTO runs VALUES ('r1', 'f', '/o', 'finished', 1, 'record', 4.0, 1e-5, 1.1, 0.1, 3, 3, 3, 2.5,"
            " 'dr-x', NULL, 's', 'u', 'e')"
        )
    db.close()
    entry = read_ledger_entry(path, "r1")
    assert isinstance(entry, LedgerEntry)
    assert entry.dp is True and entry.epsilon == 2.5 and entry.max_exposure is None and entry.evaluation is None
    assert entry.mechanism() == (1.1, 0.1, 3)
    assert read_ledger_entry(path, "r2") is None
    path.chmod(0o444)
    assert not (tmp_path / "ledger.db-wal").exists()  # nothing written beside it
