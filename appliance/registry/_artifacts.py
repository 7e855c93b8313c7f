"""Adapters encrypted at rest: one AES-256-GCM blob per file under a per-adapter data key.

The data key comes from the key service (``data_key("artifacts")``); only its wrapped form is stored (in the
database row and beside the blobs). Each blob's associated data binds it to the adapter's name, version and file
name, so a blob swapped between adapters or files fails to open. Every open re-checks each file's SHA-256 and
the weights fingerprint: a flipped bit, a truncated file, a missing file or a swapped blob is an
IntegrityViolation, and nothing half-decrypted is left behind.

Layout: ``<data_dir>/artifacts/<name>/v<version>-<random>/<file>.enc`` plus ``envelope.json`` (wrapped key, file
digests; informational, the database is authoritative). The random suffix keeps a concurrent or rolled-back
registration from ever writing over a committed one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance._fs import new_dir, write_new
from appliance.errors import IntegrityViolation, StorageUnavailable
from appliance.protocols import KeyService

__all__ = ["PROBE_FILE", "PURPOSE", "ArtifactStore", "SealedArtifact", "aad_for"]

PURPOSE = "artifacts"  # appliance.keys.ARTIFACTS: the key encryption key for adapter data keys
PROBE_FILE = "canaries.json"  # the run's canary secrets: sealed like the other files, never decrypted to disk
_SUFFIX = ".enc"


def aad_for(name: str, version: int, file_name: str) -> bytes:
    """The associated data that binds one blob to its adapter and file."""
    return b"\0".join([b"appliance-registry-artifact/v1", name.encode(), str(version).encode(), file_name.encode()])


@dataclass(frozen=True)
class SealedArtifact:
    """Where an adapter's encrypted files are and what their plaintext digests must be."""

    rel_dir: str
    purpose: str
    wrapped_key: bytes
    files: dict[str, dict[str, Any]]  # file name -> {"sha256": hex, "size": int}


class ArtifactStore:
    """Seals run-directory files into ``artifacts/`` and opens them again, checking every digest."""

    def __init__(self, root: Path, keys: KeyService) -> None:
        self.root = Path(root)
        self.keys = keys

    def seal(self, name: str, version: int, files: Mapping[str, Path | bytes]) -> SealedArtifact:
        """Encrypt each file (a path, or bytes held in memory) under a fresh data key into a new directory
        (renamed into place when complete)."""
        from appliance.keys import encrypt

        plaintext_key, wrapped = self.keys.data_key(PURPOSE)
        rel_dir = f"{name}/v{version}-{secrets.token_hex(4)}"
        digests: dict[str, dict[str, Any]] = {}
        try:
            with new_dir(self.root / rel_dir) as tmp:
                for file_name, src in sorted(files.items()):
                    data = src if isinstance(src, bytes) else src.read_bytes()
                    digests[file_name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                    blob = encrypt(data, plaintext_key, aad_for(name, version, file_name))
                    write_new(tmp / (file_name + _SUFFIX), blob, mode=0o640)
                envelope = {
                    "format_version": 1,
                    "name": name,
                    "version": version,
                    "purpose": PURPOSE,
                    "wrapped_key": base64.b64encode(wrapped).decode(),
                    "files": digests,
                }
                write_new(tmp / "envelope.json", json.dumps(envelope, indent=2, sort_keys=True).encode(), mode=0o640)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write encrypted adapter files under {self.root}: {exc.strerror}") from exc
        return SealedArtifact(rel_dir=rel_dir, purpose=PURPOSE, wrapped_key=wrapped, files=digests)

    def open(
        self,
        name: str,
        version: int,
        rel_dir: str,
        purpose: str,
        wrapped_key: bytes,
        files: Mapping[str, Mapping[str, Any]],
        weights_fingerprint: str,
    ) -> Iterator[tuple[str, bytes]]:
        """Each file's plaintext, after its tag, its SHA-256 and (for the weights) the fingerprint check out.

        The data key is unwrapped first, so a refusing key service fails before any file is read.
        """
        from appliance.keys import decrypt

        key = self.keys.unwrap(purpose, wrapped_key)
        directory = self.root / rel_dir
        on_disk = {p.name[: -len(_SUFFIX)] for p in directory.glob("*" + _SUFFIX)} if directory.is_dir() else set()
        missing = sorted(set(files) - on_disk)
        if missing:
            raise IntegrityViolation(f"adapter {name} v{version}: encrypted file(s) missing: {', '.join(missing)}")
        for file_name, expected in sorted(files.items()):
            blob = (directory / (file_name + _SUFFIX)).read_bytes()
            try:
                data = decrypt(blob, key, aad_for(name, version, file_name))
            except IntegrityViolation as exc:
                raise IntegrityViolation(f"adapter {name} v{version}: {file_name}: {exc.message}") from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != expected.get("sha256") or len(data) != expected.get("size"):
                raise IntegrityViolation(f"adapter {name} v{version}: {file_name}: content does not match its digest")
            if file_name == "adapter_model.safetensors" and digest != weights_fingerprint:
                raise IntegrityViolation(
                    f"adapter {name} v{version}: weights fingerprint {digest[:16]}... is not the registered "
                    f"{weights_fingerprint[:16]}..."
                )
            yield file_name, data

    def decrypt_to(self, out: Path, *, base_model_path: str | None = None, **artifact: Any) -> dict[str, str]:
        """Decrypt an adapter into ``out`` atomically (a temporary sibling renamed into place), mode 0750.

        ``base_model_path`` replaces ``base_model_name_or_path`` in adapter_config.json (it names whatever path
        trained the adapter, which need not exist on the serving host); the rewrite starts from the checked
        bytes. Returns each written file's SHA-256 (for adapter_config.json: of the bytes written, rewrite
        included), what the publish output binds the served copy to.
        """
        written: dict[str, str] = {}
        # the backend's service group reads it; others get nothing
        with new_dir(out, mode=0o750, replace=True) as tmp:
            for file_name, data in self.open(**artifact):
                if file_name == PROBE_FILE:  # checked with the rest, but a serving host never needs the secrets
                    continue
                if file_name == "adapter_config.json" and base_model_path is not None:
                    config = json.loads(data)
                    config["base_model_name_or_path"] = base_model_path
                    data = json.dumps(config, indent=2, sort_keys=True).encode()
                write_new(tmp / file_name, data, mode=0o640)
                written[file_name] = hashlib.sha256(data).hexdigest()
        return written

    def remove(self, rel_dir: str) -> None:
        """Delete an adapter's encrypted directory (after a rolled-back registration)."""
        shutil.rmtree(self.root / rel_dir, ignore_errors=True)
