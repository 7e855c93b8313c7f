"""Retention: purge whole segments older than the policy allows, leaving a signed anchor so the rest verifies.

``policies/retention.yaml`` sets ``audit.retain_days`` (default six years, HIPAA 164.316(b)(2)); a shorter period
is refused unless ``below_hipaa_minimum`` gives a reason. A purge verifies the chain first (a tampered log is
evidence and is never purged), writes ``anchor.json`` (the last purged record's seq and hash, signed through the
key service) atomically, then deletes the segments. The first remaining record follows the anchor, so
verification starts there. The caller's ``intent`` hook runs before anything changes (it records the purge and
raises if it cannot: then nothing is deleted) and its ``done`` hook after the deletion (the outcome and the anchor).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance._fs import atomic_write, fsync_dir
from appliance.audit._canonical import parse_line
from appliance.audit._checkpoint import chain_public_keys, sign, signed_message
from appliance.audit._sinks.files import FileStore
from appliance.audit._verify import verify_store
from appliance.errors import ConfigError, IntegrityViolation
from appliance.protocols import KeyService

__all__ = [
    "PurgeHook",
    "PurgeResult",
    "RetentionPolicy",
    "load_retention_policy",
    "purge_files",
]

HIPAA_MINIMUM_DAYS = 2190
_TIME = b'"time":"'


class _AuditRetention(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    retain_days: int = Field(default=2192, ge=1)
    below_hipaa_minimum: str | None = Field(default=None, min_length=10, max_length=200)

    @model_validator(mode="after")
    def _hipaa(self) -> _AuditRetention:
        if self.retain_days < HIPAA_MINIMUM_DAYS and not self.below_hipaa_minimum:
            raise ValueError(
                f"retain_days {self.retain_days} is below the HIPAA six years ({HIPAA_MINIMUM_DAYS} days); "
                "set below_hipaa_minimum to the reason to allow it"
            )
        return self


class RetentionPolicy(BaseModel):
    """The validated contents of ``policies/retention.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = Field(default=1, ge=1, le=1)
    audit: _AuditRetention = Field(default_factory=_AuditRetention)


def load_retention_policy(path: Path) -> RetentionPolicy:
    """The policy at path (the default six years when the file does not exist); ``ConfigError`` naming the problem."""
    if not path.exists():
        return RetentionPolicy()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return RetentionPolicy.model_validate(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from exc


@dataclass(frozen=True)
class PurgeResult:
    """What a purge dropped from one writer's chain."""

    writer_id: str
    segments: list[str]
    through_seq: int | None  # the anchor's seq (None: nothing was old enough)
    records: int
    anchor_hash: str | None = None  # the anchor's hash: the last purged record's


PurgeHook = Callable[[PurgeResult], None]


def purge_files(
    store: FileStore,
    keys: KeyService,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    intent: PurgeHook | None = None,
    done: PurgeHook | None = None,
) -> list[PurgeResult]:
    """Drop, per writer, the oldest whole segments whose every record is past retention (never the last one).

    ``intent`` runs before the anchor is written or a segment deleted; if it raises, that chain keeps everything.
    ``done`` runs after the deletion. Neither runs on a dry run.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(days=policy.audit.retain_days)
    cutoff_text = cutoff.isoformat(timespec="microseconds")[:-6] + "Z"
    results = []
    for writer_id in store.writers():
        segments = store.segments(writer_id)
        old: list[tuple[int, Path, dict[str, Any]]] = []
        for first_seq, path in segments[:-1]:  # the newest segment stays: the writer appends to it
            last = _last_line(path)
            record = parse_line(last) if last else None
            newest = _newest_time(path)  # not the last line's: times need not grow (a clock set back)
            if record is None or newest is None or newest >= cutoff_text:
                break
            old.append((first_seq, path, record))
        if not old:
            results.append(PurgeResult(writer_id, [], None, 0))
            continue
        report = verify_store(store, chain_public_keys(keys), writer_id=writer_id)
        if not report.ok:
            raise IntegrityViolation(
                f"audit chain {writer_id} does not verify ({len(report.all_problems)} problems): not purging evidence; "
                "run `appliance audit verify`"
            )
        last_record = old[-1][2]
        seq, digest = int(last_record["seq"]), str(last_record["hash"])
        records = seq - old[0][0] + 1
        names = [path.name for _, path, _ in old]
        result = PurgeResult(writer_id, names, seq, records, digest)
        if not dry_run:
            anchor = {
                "format": "appliance-audit-anchor-v1",
                "writer_id": writer_id,
                "seq": seq,
                "hash": digest,
                "time": last_record.get("time"),
                "purged_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                "retain_days": policy.audit.retain_days,
                "segments": names,
                "signature": sign(keys, signed_message("anchor", writer_id, seq, digest), writer_id),
            }
            if intent is not None:
                intent(result)  # recorded before anything changes; raises: nothing is deleted
            atomic_write(store.anchor_path(writer_id), json.dumps(anchor, indent=2).encode() + b"\n")
            for _, path, _ in old:
                path.unlink()
            fsync_dir(store.root / writer_id)
            if done is not None:
                done(result)
        results.append(result)
    return results


def _last_line(path: Path) -> bytes | None:
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - (1 << 16)))
        lines = handle.read().rstrip(b"\n").split(b"\n")
    return lines[-1] if lines and lines[-1] else None


def _newest_time(path: Path) -> str | None:
    """The newest record time in a segment; None when a line has no time (verification reports it)."""
    newest = ""
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        start = line.find(_TIME)  # the head's time comes before any event field
        if start < 0:
            return None
        start += len(_TIME)
        newest = max(newest, line[start : line.find(b'"', start)].decode("ascii", "replace"))
    return newest or None
