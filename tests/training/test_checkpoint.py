"""Checkpoints: AES-256-GCM under a data key from the real local key service; tamper and mix-ups detected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from appliance.config import Settings
from appliance.errors import IntegrityViolation, NotFound
from appliance.keys import open_key_service
from appliance.training._checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from appliance.training._fit import checkpoint_state, restore_state
from appliance.training._phases import Built, Progress


def _state() -> dict[str, object]:
    return {"step": 3, "lora": {"a": torch.arange(6.0)}, "rng": {"python": (3, (1, 2), None)}}


class TestCheckpoint:
    def test_encrypted_round_trip(self, tmp_path: Path, settings: Settings) -> None:
        """A checkpoint sealed with the key service opens to the same state, and holds no plaintext tensors."""
        keys = open_key_service(settings)
        save_checkpoint(tmp_path, run_id="r1", step=3, state=_state(), keys=keys)
        blob = (tmp_path / CHECKPOINT_NAME).read_bytes()
        assert b'"encrypted": true' in blob and b"lora" not in blob
        step, state = load_checkpoint(tmp_path, run_id="r1", keys=keys)
        assert step == 3 and torch.equal(state["lora"]["a"], torch.arange(6.0))

    def test_tampering_is_detected(self, tmp_path: Path, settings: Settings) -> None:
        """Flipping one ciphertext byte, or rewriting the step in the header, fails authentication."""
        keys = open_key_service(settings)
        path = save_checkpoint(tmp_path, run_id="r1", step=3, state=_state(), keys=keys)
        blob = bytearray(path.read_bytes())
        blob[-20] ^= 1
        path.write_bytes(bytes(blob))
        with pytest.raises(IntegrityViolation):
            load_checkpoint(tmp_path, run_id="r1", keys=keys)
        save_checkpoint(tmp_path, run_id="r1", step=3, state=_state(), keys=keys)
        path.write_bytes(path.read_bytes().replace(b'"step": 3', b'"step": 9'))
        with pytest.raises(IntegrityViolation):
            load_checkpoint(tmp_path, run_id="r1", keys=keys)

    def test_belongs_to_its_run(self, tmp_path: Path, settings: Settings) -> None:
        """A checkpoint of one run is not loaded as another's."""
        keys = open_key_service(settings)
        save_checkpoint(tmp_path, run_id="r1", step=3, state=_state(), keys=keys)
        with pytest.raises(IntegrityViolation, match="another run"):
            load_checkpoint(tmp_path, run_id="r2", keys=keys)

    def test_unencrypted_checkpoint_is_refused_when_keys_exist(self, tmp_path: Path, settings: Settings) -> None:
        """A plaintext checkpoint (no key service) is checksummed, and refused once a key service is configured."""
        save_checkpoint(tmp_path, run_id="r1", step=2, state=_state(), keys=None)
        assert load_checkpoint(tmp_path, run_id="r1", keys=None)[0] == 2
        with pytest.raises(IntegrityViolation, match="not encrypted"):
            load_checkpoint(tmp_path, run_id="r1", keys=open_key_service(settings))

    def test_missing(self, tmp_path: Path) -> None:
        """No checkpoint is NotFound."""
        with pytest.raises(NotFound):
            load_checkpoint(tmp_path, run_id="r1", keys=None)


def _built_dp(seed: int) -> Built:
    """A small DP model (Opacus's engine around a linear layer): what a checkpoint's training state comes from."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    data = DataLoader(TensorDataset(torch.randn(16, 3), torch.randn(16, 1)), batch_size=4)
    engine = PrivacyEngine(accountant="rdp")
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=data, noise_multiplier=1.0, max_grad_norm=1.0
    )
    return Built(model, optimizer, loader, torch.device("cpu"), {}, engine)


class TestTrainingState:
    def test_accountant_round_trips_through_its_state_dict(self, tmp_path: Path) -> None:
        """A checkpoint keeps the accountant's own state_dict; restoring it gives the same history and epsilon, and
        a checkpoint from before (the history as a list) still restores."""
        trained = _built_dp(0)
        for x, y in trained.loader:
            torch.nn.functional.mse_loss(trained.model(x), y).backward()
            trained.optimizer.step()
            trained.optimizer.zero_grad()
        accountant = trained.engine.accountant
        state = checkpoint_state(trained, Progress(4, [1.0] * 4, [None] * 4), [], [])
        assert state["accountant"]["mechanism"] == "rdp" and state["accountant"]["history"] == accountant.history
        save_checkpoint(tmp_path, run_id="r1", step=4, state=state, keys=None)
        _, loaded = load_checkpoint(tmp_path, run_id="r1", keys=None)
        fresh = _built_dp(1)
        progress = restore_state(fresh, loaded)
        restored = fresh.engine.accountant
        assert progress.step == 4 and restored.history == accountant.history
        assert restored.get_epsilon(1e-5) == accountant.get_epsilon(1e-5) > 0
        older = _built_dp(2)
        restore_state(older, {**loaded, "accountant": [list(h) for h in accountant.history]})
        assert older.engine.accountant.history == accountant.history
