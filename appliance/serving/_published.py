"""Read the adapter lists the registry publishes for each backend (formats in docs/architecture/contracts.md).

A missing list means nothing is published (no adapter is routable); a malformed one is a ConfigError.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError, IntegrityViolation
from appliance.serving._signed import read_signed_list

ADAPTER_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class AdapterSpec:
    """One published adapter: the served id, where its peft directory is, its weights' SHA-256 and the SHA-256 of
    its adapter_config.json bytes (both None only for ``--adapters`` pairs, which are not checked)."""

    id: str
    path: Path
    fingerprint: str | None = None
    config_sha256: str | None = None
    name: str | None = None
    version: int | None = None


def embedded_list_path(serving_dir: Path) -> Path:
    return serving_dir / "embedded" / "adapters.json"


def tgi_list_path(serving_dir: Path) -> Path:
    return serving_dir / "tgi" / "lora_adapters.env"


def vllm_list_path(serving_dir: Path) -> Path:
    return serving_dir / "vllm" / "lora_modules.json"


def _check_id(adapter_id: Any, source: Path) -> str:
    if not isinstance(adapter_id, str) or not ADAPTER_ID.match(adapter_id):
        raise ConfigError(f"{source}: invalid adapter id {adapter_id!r}")
    return adapter_id


def read_embedded_list(path: Path) -> list[AdapterSpec]:
    """The embedded engine's list: ``{"adapters": [{"id", "name", "version", "path", "fingerprint",
    "config_sha256"}]}``.

    An entry without ``config_sha256`` (published before the registry recorded it) makes the list malformed: its
    config could not be checked, so it is refused until it is unpublished and published again."""
    if not path.is_file():
        return []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read adapter list ({exc.strerror})") from exc
    return parse_embedded_list(raw, path)


def parse_embedded_list(raw: bytes, path: Path) -> list[AdapterSpec]:
    """The specs in the bytes of an embedded list (``path`` names it in errors); see :func:`read_embedded_list`."""
    try:
        data = json.loads(raw.decode("utf-8"))
        entries = data["adapters"]
        if not isinstance(entries, list):
            raise TypeError("adapters is not a list")
        specs = []
        for entry in entries:
            fingerprint = str(entry["fingerprint"]).lower()
            if not _HEX64.match(fingerprint):
                raise ValueError(f"fingerprint of {entry.get('id')!r} is not a SHA-256 hex digest")
            if "config_sha256" not in entry:
                raise ValueError(
                    f"adapter {entry.get('id')!r} has no config_sha256 (published before the registry recorded "
                    "config digests): unpublish and publish it again"
                )
            config_sha256 = str(entry["config_sha256"]).lower()
            if not _HEX64.match(config_sha256):
                raise ValueError(f"config_sha256 of {entry.get('id')!r} is not a SHA-256 hex digest")
            specs.append(
                AdapterSpec(
                    id=_check_id(entry["id"], path),
                    path=Path(entry["path"]),
                    fingerprint=fingerprint,
                    config_sha256=config_sha256,
                    name=entry.get("name"),
                    version=entry.get("version"),
                )
            )
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ConfigError(f"{path}: malformed adapter list ({exc})") from exc
    _no_duplicates(specs, path)
    return specs


def read_published_embedded(path: Path, public_keys: Mapping[int, bytes]) -> list[AdapterSpec]:
    """The embedded list the registry signed: the signature is checked before any fingerprint is read, and each
    entry's digests must be the signed ones (``IntegrityViolation`` otherwise); [] when nothing is published."""
    signed = read_signed_list(path, "embedded", public_keys)
    if signed is None:
        return []
    specs = parse_embedded_list(signed.data, path)
    check_signed_digests(specs, signed.adapters, path)
    return specs


def published_embedded_source(path: Path, keys: Callable[[], Mapping[int, bytes]]) -> Callable[[], list[AdapterSpec]]:
    """A reader of the signed embedded list for the engine's start and every reload (keys fetched each time)."""
    return lambda: read_published_embedded(path, keys())


def check_signed_digests(specs: list[AdapterSpec], signed: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Every spec is in the signature with the same weights fingerprint and config digest (constant time)."""
    if {s.id for s in specs} != set(signed):
        raise IntegrityViolation(f"{path}: the adapters listed are not the ones the registry signed")
    for spec in specs:
        entry = signed[spec.id]
        for field, value in (("fingerprint", spec.fingerprint), ("config_sha256", spec.config_sha256)):
            if value is None or not hmac.compare_digest(str(entry.get(field) or ""), value):
                raise IntegrityViolation(f"{path}: the {field} of {spec.id!r} is not the one the registry signed")


def read_tgi_list(path: Path) -> list[AdapterSpec]:
    """TGI's env file: ``LORA_ADAPTERS=id=/abs/dir,...``."""
    if not path.is_file():
        return []
    specs: list[AdapterSpec] = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition("=")
            if key.strip() != "LORA_ADAPTERS":
                continue
            specs.extend(parse_adapter_pairs(value.strip().strip('"').strip("'"), path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read adapter list ({exc})") from exc
    _no_duplicates(specs, path)
    return specs


def read_vllm_list(path: Path) -> list[dict[str, Any]]:
    """vLLM's list: ``[{"name", "path", "base_model_name"}]`` (each what ``--lora-modules`` accepts)."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise TypeError("not a list")
        for entry in data:
            _check_id(entry["name"], path)
            str(entry["path"])
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: malformed vLLM adapter list ({exc})") from exc
    return data


def parse_adapter_pairs(text: str, source: Path | str = "--adapters") -> list[AdapterSpec]:
    """``id=/path,id2=/path2`` (TGI's LORA_ADAPTERS syntax) as specs without fingerprints."""
    specs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, where = item.partition("=")
        if not sep or not where:
            raise ConfigError(f"{source}: expected id=path, got {item!r}")
        specs.append(AdapterSpec(id=_check_id(name.strip(), Path(str(source))), path=Path(where.strip())))
    return specs


def _no_duplicates(specs: list[AdapterSpec], source: Path) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise ConfigError(f"{source}: adapter {spec.id!r} listed twice")
        seen.add(spec.id)
