"""What each backend reads to know which adapters to serve, written atomically (contracts.md "Publish output").

- TGI: ``serving/tgi/lora_adapters.env`` with ``LORA_ADAPTERS=<id>=<path>,...`` (TGI's documented syntax:
  comma-separated adapter ids, each optionally ``id=path``; TGI reads it only at start).
- vLLM: ``serving/vllm/lora_modules.json``, a JSON list whose elements are what ``--lora-modules`` accepts as JSON
  (``{"name", "path", "base_model_name"}``).
- embedded: ``serving/embedded/adapters.json``, ``{"adapters": [{"id", "name", "version", "path", "fingerprint",
  "config_sha256"}]}``: the weights' SHA-256 and that of the adapter_config.json bytes the registry wrote (left out
  for a publication made before the registry recorded it: the engine refuses such an entry).

Each list is signed: ``<list>.sig`` carries the registry's Ed25519 signature (key service key
``registry-signing``) over the list's SHA-256 and every adapter's digests and path (``appliance.serving``'s
``sign_publication`` builds it; the engine, the TGI/vLLM launchers and ``registry verify`` check it first).

A list is always rendered from the registry's full set of active publications for that target, never patched,
so a rewrite after a failure restores exactly what the database says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance._fs import atomic_write
from appliance.errors import ConfigError, ValidationFailed
from appliance.serving import sign_publication, signature_path

__all__ = ["TARGETS", "PublishEntry", "Publisher"]

TARGETS = ("embedded", "tgi", "vllm")
# characters that would break TGI's comma/equals syntax or an env file
_UNSAFE_PATH = re.compile(r"[,=\s\"'\\$`#;]")


@dataclass(frozen=True)
class PublishEntry:
    """One adapter as a backend list names it."""

    served_id: str
    name: str
    version: int
    path: str
    fingerprint: str
    base_model: str
    config_sha256: str | None = None  # of the adapter_config.json bytes written under ``path``


def check_target(target: str) -> str:
    """The target itself when known, else ValidationFailed listing the valid ones."""
    if target not in TARGETS:
        raise ValidationFailed(f"unknown publish target {target!r}: use one of {', '.join(TARGETS)}")
    return target


class Publisher:
    """Renders and writes the backend lists under ``<data_dir>/serving``."""

    def __init__(self, serving_dir: Path, sign: Callable[[bytes], bytes] | None = None) -> None:
        self.serving_dir = Path(serving_dir).resolve()
        self._sign = sign  # the registry's signing key (key service); None only for rendering

    def adapter_dir(self, served_id: str) -> Path:
        """Where a published adapter's decrypted files live."""
        path = self.serving_dir / "adapters" / served_id
        if _UNSAFE_PATH.search(str(path)):
            raise ConfigError(
                f"serving path {path} contains a character TGI's LORA_ADAPTERS or an env file cannot carry "
                "(comma, '=', whitespace, quote, '$', '#', ';'): choose another data_dir"
            )
        return path

    def list_path(self, target: str) -> Path:
        """The file a target's backend reads."""
        check_target(target)
        name = {"embedded": "adapters.json", "tgi": "lora_adapters.env", "vllm": "lora_modules.json"}[target]
        return self.serving_dir / target / name

    @staticmethod
    def render(target: str, entries: Sequence[PublishEntry]) -> bytes:
        """The bytes of a target's list for these entries (sorted by served id: stable output)."""
        check_target(target)
        ordered = sorted(entries, key=lambda e: e.served_id)
        if target == "tgi":
            return ("LORA_ADAPTERS=" + ",".join(f"{e.served_id}={e.path}" for e in ordered) + "\n").encode()
        if target == "vllm":
            modules = [{"name": e.served_id, "path": e.path, "base_model_name": e.base_model} for e in ordered]
            return (json.dumps(modules, indent=2) + "\n").encode()
        adapters: list[dict[str, object]] = []
        for e in ordered:
            entry: dict[str, object] = {
                "id": e.served_id,
                "name": e.name,
                "version": e.version,
                "path": e.path,
                "fingerprint": e.fingerprint,
            }
            if e.config_sha256 is not None:
                entry["config_sha256"] = e.config_sha256
            adapters.append(entry)
        return (json.dumps({"adapters": adapters}, indent=2) + "\n").encode()

    @staticmethod
    def signed_digests(entries: Sequence[PublishEntry]) -> dict[str, dict[str, str | None]]:
        """What the signature binds for each served id: weights fingerprint, config digest and path."""
        return {
            e.served_id: {"fingerprint": e.fingerprint, "config_sha256": e.config_sha256, "path": e.path}
            for e in entries
        }

    def signature(self, target: str, data: bytes, entries: Sequence[PublishEntry]) -> bytes:
        """The signature document of a target's list bytes (signed through the key service)."""
        if self._sign is None:
            raise ConfigError("this publisher has no signing key: it cannot write a published list")
        return sign_publication(self._sign, target, data, self.signed_digests(entries))

    def write(self, target: str, entries: Sequence[PublishEntry]) -> Path:
        """Sign, then atomically replace a target's list and its signature (readers retry a pair in between)."""
        path = self.list_path(target)
        data = self.render(target, entries)
        signature = self.signature(target, data, entries)  # a key service that cannot sign changes nothing
        atomic_write(path, data, mode=0o644)
        atomic_write(signature_path(path), signature, mode=0o644)
        return path
