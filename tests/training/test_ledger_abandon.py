"""`appliance ledger abandon`: an interrupted run that will not be resumed releases its reservation, audited."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.audit._sinks.files import FileStore
from appliance.cli import app, main
from appliance.config import load_settings
from appliance.errors import Conflict
from appliance.training import DatasetBudget, Ledger

FP = "ab" * 32


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, data_dir: Path, make_policy: Callable[..., Path]) -> Path:
    """The CLI on a fresh data directory, with an interrupted run: 3 of 40 planned steps taken, a checkpoint."""
    policies = make_policy(default={"epsilon_budget": 8.0})
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("APPLIANCE_POLICIES_DIR", str(policies))
    monkeypatch.setenv("COLUMNS", "160")
    settings = load_settings(data_dir=data_dir, policies_dir=policies)
    ledger = Ledger(settings.ledger_path)
    ledger.begin(
        run_id="run-1",
        fingerprint=FP,
        out_path="/out/a",
        budget=DatasetBudget(epsilon_budget=8.0, delta=1e-5),
        dp=True,
        privacy_unit="record",
        target_epsilon=2.0,
        noise_multiplier=1.0,
        sample_rate=0.1,
        steps=40,
        trained_by="alice",
    )
    for _ in range(3):
        ledger.charge_step("run-1")
    run_dir = settings.runs_dir / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.bin").write_bytes(b"sealed checkpoint with canaries")
    return data_dir


def _audit_records(data_dir: Path) -> list[dict[str, object]]:
    store = FileStore(data_dir / "audit")
    return [json.loads(line) for w in store.writers() for _, chunk in store.read(w) for line in chunk.splitlines()]


def test_abandon_releases_the_reservation_and_deletes_the_checkpoint(env: Path) -> None:
    """The run closes as failed/abandoned counting its 3 steps, the dataset's spend drops, the checkpoint (with
    the canary secrets) is gone, and a training.abandoned record names who did it."""
    ledger = Ledger(env / "ledger.db")
    spent_before = ledger.spent(FP, 1e-5)
    result = CliRunner().invoke(app, ["ledger", "abandon", "run-1", "--yes", "--actor", "bob@hospital.example"])
    assert result.exit_code == 0, result.output
    assert "37 reserved steps to release" in result.output and "abandoned" in result.output
    entry = ledger.get("run-1")
    assert (entry.status, entry.reason, entry.charged_steps) == ("failed", "abandoned", 3)
    assert ledger.spent(FP, 1e-5) < spent_before
    assert not (env / "runs" / "run-1").exists()
    (record,) = [r for r in _audit_records(env) if r["type"] == "training.abandoned"]
    assert record["actor"]["subject"] == "bob@hospital.example"  # type: ignore[index]
    assert record["details"] == {"run_dir_deleted": True, "run_id": "run-1", "steps_released": 37, "steps_taken": 3}


def test_a_run_still_alive_is_stopped_at_its_next_step(env: Path) -> None:
    """Abandoning does not race a live run into unaccounted steps: its next charge is refused."""
    result = CliRunner().invoke(app, ["ledger", "abandon", "run-1", "--yes"])
    assert result.exit_code == 0, result.output
    with pytest.raises(Conflict):
        Ledger(env / "ledger.db").charge_step("run-1")


def test_declined_confirmation_changes_nothing(env: Path) -> None:
    """Without --yes the command asks; answering no leaves the run open and its checkpoint in place."""
    result = CliRunner().invoke(app, ["ledger", "abandon", "run-1"], input="n\n")
    assert result.exit_code == 1
    assert Ledger(env / "ledger.db").get("run-1").status == "running"
    assert (env / "runs" / "run-1" / "checkpoint.bin").exists()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["run-404"], 66, "no run run-404"),
        (["run-1", "--actor", "bob smith"], 65, "invalid person"),
    ],
)
def test_bad_input_is_a_clear_error(
    env: Path,
    argv: list[str],
    code: int,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unknown run or an invalid actor exits non-zero with the reason, and the run stays open."""
    monkeypatch.setattr(sys, "argv", ["appliance", "ledger", "abandon", "--yes", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == code
    assert message in capsys.readouterr().err
    assert Ledger(env / "ledger.db").get("run-1").status == "running"


def test_a_closed_run_cannot_be_abandoned(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Abandoning twice: the second time is a conflict (the run is no longer open)."""
    assert CliRunner().invoke(app, ["ledger", "abandon", "run-1", "--yes"]).exit_code == 0
    monkeypatch.setattr(sys, "argv", ["appliance", "ledger", "abandon", "run-1", "--yes"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == Conflict.exit_code
