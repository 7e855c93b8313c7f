"""Checkpoints: the LoRA weights, optimizer, accountant, RNG states and step, encrypted at rest.

One file per run (``<runs_dir>/<run_id>/checkpoint.bin``), replaced atomically. With a key service the payload is
sealed with AES-256-GCM (``appliance.keys.encrypt``) under a fresh data key from
``KeyService.data_key("checkpoints")``; only the wrapped key
is stored, and the header (run id, step) is authenticated as associated data. Without one (the keys stage absent)
the payload is stored with its SHA-256, which catches corruption but not tampering: the run logs a warning and the
checkpoint says so in its header. Any mismatch on load is an IntegrityViolation; nothing is unpickled beyond
tensors and plain containers (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import struct
from pathlib import Path
from typing import Any

from appliance._fs import atomic_write
from appliance.errors import IntegrityViolation, NotFound
from appliance.protocols import KeyService
from appliance.training._fs import storage_errors

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.bin"
_MAGIC = b"APPLIANCE-CKPT\x01"
_PURPOSE = "checkpoints"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def save_checkpoint(directory: Path, *, run_id: str, step: int, state: dict[str, Any], keys: KeyService | None) -> Path:
    """Serialise ``state`` and replace the run's checkpoint with it (encrypted when ``keys`` is given)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    plaintext = buffer.getvalue()
    header: dict[str, Any] = {"format": 1, "run_id": run_id, "step": step, "encrypted": keys is not None}
    if keys is not None:
        from appliance.keys import encrypt

        key, wrapped = keys.data_key(_PURPOSE)
        header |= {"purpose": _PURPOSE, "wrapped_key": _b64(wrapped), "cipher": "AES-256-GCM"}
        header_bytes = json.dumps(header, sort_keys=True).encode()
        payload = encrypt(plaintext, key, aad=header_bytes)
    else:
        header["sha256"] = hashlib.sha256(plaintext).hexdigest()
        header_bytes = json.dumps(header, sort_keys=True).encode()
        payload = plaintext
    path = directory / CHECKPOINT_NAME
    with storage_errors(str(path)):
        atomic_write(path, _MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes + payload)
    return path


def load_checkpoint(directory: Path, *, run_id: str, keys: KeyService | None) -> tuple[int, dict[str, Any]]:
    """The (step, state) of a run's checkpoint, after checking it belongs to the run and is intact."""
    import torch

    path = directory / CHECKPOINT_NAME
    if not path.is_file():
        raise NotFound(f"no checkpoint for run {run_id} in {directory}")
    blob = path.read_bytes()
    if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 4:
        raise IntegrityViolation(f"{path} is not an appliance checkpoint")
    (size,) = struct.unpack(">I", blob[len(_MAGIC) : len(_MAGIC) + 4])
    start = len(_MAGIC) + 4
    header_bytes, payload = blob[start : start + size], blob[start + size :]
    try:
        header = json.loads(header_bytes)
    except json.JSONDecodeError as exc:
        raise IntegrityViolation(f"{path}: corrupt header") from exc
    if header.get("run_id") != run_id:
        raise IntegrityViolation(f"{path} belongs to another run")
    if header.get("encrypted"):
        from appliance.keys import decrypt

        if keys is None:
            raise IntegrityViolation(f"{path} is encrypted but no key service is available to open it")
        key = keys.unwrap(_PURPOSE, base64.b64decode(header["wrapped_key"]))
        try:
            plaintext = decrypt(payload, key, aad=header_bytes)
        except IntegrityViolation as exc:
            raise IntegrityViolation(f"{path} failed authentication (tampered or corrupt)") from exc
    else:
        if keys is not None:
            raise IntegrityViolation(f"{path} is not encrypted but a key service is configured; refusing to load it")
        if not hmac.compare_digest(hashlib.sha256(payload).hexdigest(), str(header.get("sha256", ""))):
            raise IntegrityViolation(f"{path} does not match its checksum (corrupt)")
        plaintext = payload
    state = torch.load(io.BytesIO(plaintext), weights_only=True, map_location="cpu")
    return int(header["step"]), state
