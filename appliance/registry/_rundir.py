"""Reading a training run directory (contracts.md "Training output") and the prepared dataset it names.

Everything is checked before anything is written: the metadata against its schema
(``appliance.contracts.RunMetadata``, the model training writes it with; every problem reported at once), the
weights file's key names (a ``_module.`` prefix from Opacus would make TGI silently serve the base model), the
dataset's manifest against the fingerprint the run recorded, and the base model's content hash when its
directory is present.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from appliance._fs import sha256_file
from appliance.contracts import RunMetadata
from appliance.errors import IntegrityViolation, ValidationFailed

__all__ = ["NAME_PATTERN", "DatasetInfo", "RunDir", "RunMetadata", "check_name", "read_run_dir", "sha256_file"]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
WEIGHTS = "adapter_model.safetensors"
REQUIRED = ("adapter_config.json", WEIGHTS, "metadata.json")
MAX_FILE_BYTES = 2 << 30  # 2 GiB per adapter file (files are sealed in one AES-GCM call)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_name(name: str) -> str:
    """The adapter name itself when valid (contracts.md), else ValidationFailed."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValidationFailed(f"invalid adapter name {name!r}: use 1-63 of a-z, 0-9, '-', '_' (starting a-z/0-9)")
    return name


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry keeps of a prepared dataset: manifest, salt, and per-subject training-record counts."""

    fingerprint: str
    path: str
    manifest: dict[str, Any]
    salt: str | None
    subjects: dict[str, int | None]  # digest -> records in the train split (0: eval only; None: unknown)


@dataclass(frozen=True)
class RunDir:
    """A validated run directory: its metadata, files, weights fingerprint and config digest."""

    path: Path
    metadata: RunMetadata
    raw_metadata: dict[str, Any]
    files: dict[str, Path]  # file name -> path (top-level regular files only)
    weights_fingerprint: str
    config_sha256: str  # of adapter_config.json
    dataset: DatasetInfo


def read_run_dir(run_dir: Path) -> RunDir:
    """Validate a run directory and its dataset; raises ValidationFailed/IntegrityViolation naming the problem."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValidationFailed(f"run directory not found: {run_dir}")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise ValidationFailed(f"run directory {run_dir} lacks {', '.join(missing)} (is the run complete?)")
    files: dict[str, Path] = {}
    for entry in sorted(run_dir.iterdir()):
        if entry.is_symlink():
            raise ValidationFailed(f"run directory {run_dir} contains a symbolic link ({entry.name}); refusing it")
        if entry.is_file():
            if entry.stat().st_size > MAX_FILE_BYTES:
                raise ValidationFailed(f"{entry.name} is larger than {MAX_FILE_BYTES} bytes")
            files[entry.name] = entry
    raw = _read_json(run_dir / "metadata.json")
    if isinstance(raw, dict) and isinstance(raw.get("format_version"), int) and raw["format_version"] > 1:
        raise ValidationFailed(
            f"metadata.json has format_version {raw['format_version']}; this registry reads format_version 1 "
            "(was the run written by a newer appliance?)"
        )
    try:
        metadata = RunMetadata.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ValidationFailed(f"{run_dir / 'metadata.json'}: {problems}") from exc
    _check_adapter_config(run_dir / "adapter_config.json")
    _check_weight_keys(run_dir / WEIGHTS)
    dataset = read_dataset(Path(metadata.dataset.path), metadata.dataset.fingerprint)
    return RunDir(
        path=run_dir,
        metadata=metadata,
        raw_metadata=raw,
        files=files,
        weights_fingerprint=sha256_file(run_dir / WEIGHTS),
        config_sha256=sha256_file(run_dir / "adapter_config.json"),
        dataset=dataset,
    )


def read_dataset(path: Path, fingerprint: str) -> DatasetInfo:
    """The prepared dataset's manifest (its fingerprint must match the run's) and subject digests."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ValidationFailed(
            f"the run's dataset manifest is missing: {manifest_path} (the registry needs it for lineage)"
        )
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise ValidationFailed(f"{manifest_path}: expected a JSON object")
    if manifest.get("fingerprint") != fingerprint:
        raise IntegrityViolation(
            f"{manifest_path}: fingerprint {str(manifest.get('fingerprint'))[:16]}... does not match the run's "
            f"dataset fingerprint {fingerprint[:16]}..."
        )
    subjects = manifest.get("subjects") or {}
    salt = subjects.get("salt") if isinstance(subjects, dict) else None
    digests = subjects.get("digests", []) if isinstance(subjects, dict) else []
    if salt is not None and not (isinstance(salt, str) and re.fullmatch(r"[0-9a-f]{16,128}", salt)):
        raise ValidationFailed(f"{manifest_path}: subjects.salt must be 16-128 lower-case hex characters")
    if not isinstance(digests, list) or not all(
        isinstance(d, str) and re.fullmatch(r"[0-9a-f]{64}", d) for d in digests
    ):
        raise ValidationFailed(f"{manifest_path}: subjects.digests must be a list of 64-hex HMAC-SHA256 digests")
    counts = _train_counts(path / "train.jsonl")
    merged: dict[str, int | None] = {d: (counts.get(d, 0) if counts is not None else None) for d in digests}
    if counts is not None:
        for digest, n in counts.items():  # a digest in the records but not the manifest still counts
            merged.setdefault(digest, n)
    # the manifest is kept as provenance, without the digest list (it lives in dataset_subjects)
    kept = {**manifest, "subjects": {"salt": salt, "count": len(merged)}}
    return DatasetInfo(fingerprint=fingerprint, path=str(path.resolve()), manifest=kept, salt=salt, subjects=merged)


def _train_counts(train: Path) -> dict[str, int] | None:
    if not train.is_file():
        return None
    counts: Counter[str] = Counter()
    with train.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                subject = json.loads(line).get("subject")
            except (json.JSONDecodeError, AttributeError) as exc:
                raise ValidationFailed(f"{train} line {line_no}: not a JSON object") from exc
            if isinstance(subject, str) and _HEX64.match(subject):
                counts[subject] += 1
    return dict(counts)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"{path}: not valid JSON ({exc.__class__.__name__})") from exc
    except OSError as exc:
        raise ValidationFailed(f"{path}: unreadable ({exc.strerror})") from exc


def _check_adapter_config(path: Path) -> None:
    config = _read_json(path)
    if not isinstance(config, dict) or config.get("peft_type") not in {"LORA", None}:
        raise ValidationFailed(f"{path}: not a LoRA adapter config (peft_type must be LORA)")


def _check_weight_keys(path: Path) -> None:
    """The safetensors header's tensor names: no Opacus ``_module.`` prefix, and LoRA tensors present."""
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValidationFailed(f"{path}: not a safetensors file (truncated header)")
        (size,) = struct.unpack("<Q", head)
        if size > 100_000_000:
            raise ValidationFailed(f"{path}: not a safetensors file (header of {size} bytes)")
        try:
            header = json.loads(fh.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValidationFailed(f"{path}: not a safetensors file (unreadable header)") from exc
    names = [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []
    prefixed = [k for k in names if k.startswith("_module.") or "._module." in k]
    if prefixed:
        raise ValidationFailed(
            f"{path}: {len(prefixed)} tensor names carry Opacus's '_module.' prefix (e.g. {prefixed[0]!r}); "
            "backends look names up exactly and would silently serve the base model"
        )
    if not any("lora_" in k for k in names):
        raise ValidationFailed(f"{path}: no LoRA tensors (lora_A/lora_B) in the weights file")
