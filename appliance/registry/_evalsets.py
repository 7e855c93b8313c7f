"""Labelled record sets kept for the monitor (eval splits, reference sets), encrypted at rest like adapters.

One AES-256-GCM blob per set under a fresh data key wrapped by the key service (purpose ``artifacts``, as adapter
files). The associated data binds the blob to its kind, its name and the fingerprint it belongs to (an eval split:
the adapter's weights fingerprint; a reference set: its prepared dataset's fingerprint), so a blob swapped between
sets, or an eval split moved to another adapter, fails to open; every open re-checks the plaintext's SHA-256.

Layout: ``<data_dir>/evalsets/<kind>/<name>-<random>/records.jsonl.enc`` (beside ``artifacts/``, never inside an
adapter's directory).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance._fs import new_dir, write_new
from appliance.errors import IntegrityViolation, StorageUnavailable, ValidationFailed
from appliance.protocols import KeyService
from appliance.registry._artifacts import PURPOSE

__all__ = ["EVAL_SPLIT", "REFERENCE", "EvalSetStore", "SealedSet", "dataset_records", "set_aad"]

EVAL_SPLIT = "eval_split"
REFERENCE = "reference"
_BLOB = "records.jsonl.enc"


def set_aad(kind: str, name: str, binding: str) -> bytes:
    """The associated data that binds a set's blob to its kind, name and fingerprint."""
    return b"\0".join([b"appliance-registry-evalset/v1", kind.encode(), name.encode(), binding.encode()])


@dataclass(frozen=True)
class SealedSet:
    """Where a set's blob is, under which wrapped key, and its plaintext digest."""

    rel_dir: str
    purpose: str
    wrapped_key: bytes
    sha256: str
    size: int


def dataset_records(path: Path, fingerprint: str, splits: tuple[str, ...]) -> tuple[bytes, int]:
    """The JSONL bytes of a prepared dataset's ``splits`` (each line ``{"instruction", "response"}`` only) and
    their count, after checking the dataset's content against ``fingerprint`` (SHA-256 of train.jsonl then
    eval.jsonl, as intake computes it). A dataset that changed since is an IntegrityViolation."""
    digest = hashlib.sha256()
    raw: dict[str, bytes] = {}
    for split in ("train", "eval"):
        try:
            raw[split] = (path / f"{split}.jsonl").read_bytes()
        except OSError as exc:
            raise IntegrityViolation(f"prepared dataset {path}: {split}.jsonl unreadable ({exc.strerror})") from exc
        digest.update(raw[split])
    if digest.hexdigest() != fingerprint:
        raise IntegrityViolation(
            f"prepared dataset {path} no longer matches its fingerprint {fingerprint[:16]}... (changed since prepared)"
        )
    lines: list[bytes] = []
    for split in splits:
        for number, line in enumerate(raw[split].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise ValidationFailed(f"{path / (split + '.jsonl')} line {number}: invalid JSON") from exc
            if not isinstance(record, dict) or not all(
                isinstance(record.get(k), str) for k in ("instruction", "response")
            ):
                raise ValidationFailed(f"{path / (split + '.jsonl')} line {number}: needs instruction and response")
            kept = {"instruction": record["instruction"], "response": record["response"]}
            lines.append(json.dumps(kept, ensure_ascii=False, sort_keys=True).encode())
    return b"".join(line + b"\n" for line in lines), len(lines)


class EvalSetStore:
    """Seals record sets under ``evalsets/`` beside ``artifacts/`` and opens them again, checking tag and digest."""

    def __init__(self, artifacts_root: Path, keys: KeyService) -> None:
        self.root = Path(artifacts_root).parent / "evalsets"
        self.keys = keys

    def seal(self, kind: str, name: str, binding: str, data: bytes) -> SealedSet:
        """Encrypt ``data`` under a fresh data key into a new directory (renamed into place when complete)."""
        from appliance.keys import encrypt

        plaintext_key, wrapped = self.keys.data_key(PURPOSE)
        rel_dir = f"{kind}/{name}-{secrets.token_hex(4)}"
        try:
            with new_dir(self.root / rel_dir) as tmp:
                write_new(tmp / _BLOB, encrypt(data, plaintext_key, set_aad(kind, name, binding)), mode=0o640)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write an encrypted record set under {self.root}: {exc.strerror}") from exc
        return SealedSet(rel_dir, PURPOSE, wrapped, hashlib.sha256(data).hexdigest(), len(data))

    def open(self, kind: str, name: str, binding: str, row: Any) -> bytes:
        """The plaintext of a set row (``artifact_dir``, ``key_purpose``, ``wrapped_key``, ``sha256``, ``size``)."""
        from appliance.keys import decrypt

        key = self.keys.unwrap(row.key_purpose, row.wrapped_key)
        path = self.root / row.artifact_dir / _BLOB
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise IntegrityViolation(f"{kind} {name}: encrypted records unreadable ({exc.strerror})") from exc
        try:
            data = decrypt(blob, key, set_aad(kind, name, binding))
        except IntegrityViolation as exc:
            raise IntegrityViolation(f"{kind} {name}: {exc.message}") from None
        if hashlib.sha256(data).hexdigest() != row.sha256 or len(data) != row.size:
            raise IntegrityViolation(f"{kind} {name}: records do not match their digest")
        return data

    def remove(self, rel_dir: str) -> None:
        """Delete a set's encrypted directory (after a rolled-back registration)."""
        shutil.rmtree(self.root / rel_dir, ignore_errors=True)
