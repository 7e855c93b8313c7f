"""Resume after a killed run: the process is SIGKILLed right after a checkpoint; the ledger stays exact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.config import Settings, load_settings
from appliance.errors import NotFound, ValidationFailed
from appliance.testing import MemoryAuditLog
from appliance.training import Ledger, TrainingRun, composed_epsilon, make_config
from tests.training.conftest import tiny_options

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import os, signal, sys
from pathlib import Path
from appliance.config import load_settings
from appliance.testing import MemoryAuditLog
from appliance.training import TrainingRun, make_config

settings = load_settings(data_dir=Path({data_dir!r}), policies_dir=Path({policies!r}))
options = {options}
def die_after_checkpoint(step):
    if step == 4:
        print("checkpointed", step, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
TrainingRun(make_config(**options), settings, audit=MemoryAuditLog(), on_checkpoint=die_after_checkpoint).run()
print("finished without being killed", flush=True)
"""


def test_resume_after_sigkill_keeps_the_ledger_exact(
    train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Killed (SIGKILL) after the step-4 checkpoint, resumed to step 8: the ledger holds exactly 8 steps."""
    out = tmp_path / "adapter"
    options = tiny_options(prepared, tiny_model, out, steps=8, checkpoint_every=2, canaries=1, audit_canaries=6)
    script = CHILD.format(
        data_dir=str(train_settings.data_dir),
        policies=str(train_settings.policies_dir),
        options=repr({k: str(v) if isinstance(v, Path) else v for k, v in options.items()}),
    )
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert "checkpointed 4" in child.stdout
    ledger = Ledger(train_settings.ledger_path)
    (entry,) = ledger.runs()
    assert entry.status == "running" and entry.steps_taken == 4
    assert not out.exists() and not list(tmp_path.glob(".adapter.partial-*"))
    checkpoint = (train_settings.runs_dir / entry.run_id / "checkpoint.bin").read_bytes()
    assert b'"encrypted": true' in checkpoint

    run = TrainingRun(make_config(**{**options, "resume": True}), train_settings, audit=MemoryAuditLog())
    run.run()
    assert run.run_id == entry.run_id
    assert (
        run.prepared.canaries and len(run.progress.losses) == 8
    )  # canaries and curves carried over from the checkpoint
    assert len(run.prepared.audit_canaries) == 6  # the audit canaries and their coins too (the units must not change)
    finished = ledger.get(entry.run_id)
    meta = json.loads((out / "metadata.json").read_text())
    assert finished.status == "finished" and finished.steps_taken == 8 and meta["steps"] == 8
    assert meta["privacy_audit"]["m"] == 6 and json.loads(finished.privacy_audit or "{}") == meta["privacy_audit"]
    expected = composed_epsilon([(entry.noise_multiplier, entry.sample_rate, 8)], entry.delta)  # type: ignore[list-item]
    assert finished.epsilon == pytest.approx(expected) and meta["dp"]["epsilon"] == pytest.approx(expected)


def test_resume_without_an_interrupted_run(
    train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """--resume with nothing interrupted for that output is NotFound."""
    config = make_config(**tiny_options(prepared, tiny_model, tmp_path / "x", resume=True))
    with pytest.raises(NotFound, match="no interrupted run"):
        TrainingRun(config, train_settings, audit=MemoryAuditLog()).run()


def test_resume_keeps_the_delta_the_run_was_charged_at(
    data_dir: Path, make_policy: Callable[..., Path], prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """A policy delta tightened after the interruption does not relabel the run: its noise was calibrated and its
    epsilon charged at the old delta, so the metadata would pair that epsilon with a smaller delta. Refused."""
    settings = load_settings(data_dir=data_dir, policies_dir=make_policy())
    out = tmp_path / "adapter"
    options = tiny_options(prepared, tiny_model, out, steps=6, checkpoint_every=1)

    def interrupt(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TrainingRun(make_config(**options), settings, audit=MemoryAuditLog(), on_checkpoint=interrupt).run()
    (entry,) = Ledger(settings.ledger_path).runs()
    assert entry.status == "running" and entry.delta == 1e-5
    tightened = load_settings(data_dir=data_dir, policies_dir=make_policy(default={"delta": 1e-6}))
    with pytest.raises(ValidationFailed, match="delta 1e-05 is above"):
        TrainingRun(make_config(**{**options, "resume": True}), tightened, audit=MemoryAuditLog()).run()
    assert not out.exists()
