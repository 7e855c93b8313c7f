"""Checkpoints: AES-256-GCM under a data key from the real local key service; tamper and mix-ups detected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from appliance.config import Settings
from appliance.errors import IntegrityViolation, NotFound
from appliance.keys import open_key_service
from appliance.training._checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint


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
