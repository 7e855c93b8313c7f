"""Launch wrappers for TGI and vLLM: start the server only with a published list the registry signed.

TGI and vLLM load whatever path their adapter list names, unchecked. ``appliance serve-launch tgi|vllm`` (run as
the model server's start command on the GPU node) checks, in this order: the list's signature under the
registry's pinned public key, that the list's bytes are the signed ones and name exactly the signed adapters at
the signed paths, then each adapter's weights fingerprint and config digest against the signed values. Only then
does it exec the server with the adapters (TGI: ``LORA_ADAPTERS``; vLLM: ``--enable-lora --lora-modules``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from appliance._fs import sha256_file
from appliance.errors import ConfigError, IntegrityViolation
from appliance.serving._published import ADAPTER_ID, parse_adapter_pairs
from appliance.serving._signed import read_signed_list

__all__ = ["LaunchPlan", "plan_launch", "verified_adapters"]

_WEIGHTS = "adapter_model.safetensors"
_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LaunchPlan:
    """The command to exec and the environment to add (after every check passed)."""

    argv: list[str]
    env: dict[str, str]


def _listed(target: Literal["tgi", "vllm"], data: bytes, source: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, path, the list's own entry) from the signed bytes of a TGI env file or a vLLM JSON list."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8") from None
    if target == "tgi":
        out: list[tuple[str, str, dict[str, Any]]] = []
        for line in text.splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() == "LORA_ADAPTERS":
                out.extend((s.id, str(s.path), {}) for s in parse_adapter_pairs(value.strip(), source))
        return out
    try:
        modules = json.loads(text)
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise TypeError("not a list of objects")
        return [(str(m["name"]), str(m["path"]), m) for m in modules]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ConfigError(f"{source}: malformed vLLM adapter list ({exc})") from None


def verified_adapters(
    target: Literal["tgi", "vllm"], list_path: Path, public_keys: Mapping[int, bytes]
) -> list[tuple[str, str, dict[str, Any]]]:
    """The adapters of a signed list, each one's files checked against the signed digests; else an error."""
    signed = read_signed_list(list_path, target, public_keys)  # the signature first, before any fingerprint
    if signed is None:
        return []
    listed = _listed(target, signed.data, list_path)
    if sorted(i for i, _, _ in listed) != sorted(signed.adapters) or len({i for i, _, _ in listed}) != len(listed):
        raise IntegrityViolation(f"{list_path}: the adapters listed are not the ones the registry signed")
    for adapter_id, path, _ in listed:
        entry = signed.adapters[adapter_id]
        if not ADAPTER_ID.match(adapter_id) or str(entry.get("path")) != path:
            raise IntegrityViolation(f"{list_path}: adapter {adapter_id!r} is not at the path the registry signed")
        for name, field in ((_WEIGHTS, "fingerprint"), (_CONFIG, "config_sha256")):
            expected = entry.get(field)
            if not isinstance(expected, str):
                raise IntegrityViolation(f"{list_path}: the signature carries no {field} for {adapter_id!r}")
            try:
                actual = sha256_file(Path(path) / name)
            except OSError as exc:
                raise IntegrityViolation(f"adapter {adapter_id!r}: {name} unreadable ({exc.strerror})") from None
            if not hmac.compare_digest(actual, expected):
                raise IntegrityViolation(f"adapter {adapter_id!r}: {name} does not match the published digest")
    return listed


def plan_launch(
    target: Literal["tgi", "vllm"], list_path: Path, public_keys: Mapping[int, bytes], command: Sequence[str]
) -> LaunchPlan:
    """The server command with the verified adapters added (``IntegrityViolation`` before anything starts)."""
    if not command:
        raise ConfigError("no server command given (e.g. -- text-generation-launcher --model-id /models/base)")
    adapters = verified_adapters(target, list_path, public_keys)
    if target == "tgi":
        return LaunchPlan(list(command), {"LORA_ADAPTERS": ",".join(f"{i}={p}" for i, p, _ in adapters)})
    argv = list(command)
    if adapters:
        argv += ["--enable-lora", "--lora-modules", *[json.dumps(entry, sort_keys=True) for _, _, entry in adapters]]
    return LaunchPlan(argv, {})
