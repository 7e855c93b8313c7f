"""Export a range of the audit trail (JSON lines or CSV) with a signed manifest, and verify an export offline.

An export directory holds ``records.jsonl`` or ``records.csv`` and ``manifest.json``. JSON lines are the stored
record bytes, verbatim; CSV has one readable column per AU-3 field plus ``record``, the verbatim line, and the
verifier checks that every readable column still says what the record says. The manifest carries the count, the
time range, each writer's first/last seq and hash, a digest of every exported record hash, the checkpoint
signatures, the public keys and their fingerprint, and is itself signed through the key service: an export can be
verified with nothing but its own files (and the key fingerprint, compared out of band).

This module builds and signs an export; the contract it shares with the verifier is ``_export_format``, the offline
verifier ``_export_verify``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance._fs import atomic_write, sha256_file
from appliance.audit._canonical import HASH_RULE
from appliance.audit._checkpoint import (
    AUDIT_SIGNING_KEY,
    CHECKPOINT_TYPE,
    chain_public_keys,
    encode_public_keys,
    named_fingerprint,
    sign,
    signing_key_for,
)
from appliance.audit._export_format import (
    CSV_COLUMNS,
    FORMAT,
    MAX_MANIFEST_BYTES,
    Format,
    csv_row,
    manifest_message,
    seq_runs,
)
from appliance.audit._export_verify import verify_export
from appliance.audit._identity import recordable_identity
from appliance.audit._sinks._base import ChainReader, chain_records
from appliance.audit._verify import verify_store
from appliance.contracts import package_version
from appliance.errors import Conflict, IntegrityViolation, ValidationFailed
from appliance.protocols import KeyService

# verify_export and MAX_MANIFEST_BYTES are built elsewhere and importable from here, where the export is
__all__ = ["MAX_MANIFEST_BYTES", "ExportFilter", "export", "parse_time", "verify_export"]


def parse_time(text: str) -> str:
    """An ISO-8601 date or time (naive means UTC) as the log's own format, for range comparisons."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationFailed(f"not an ISO-8601 date or time: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


@dataclass(frozen=True)
class ExportFilter:
    """Which records to export: a time range (inclusive) and optional actor, adapter and event type."""

    since: str | None = None  # in the log's format (see parse_time)
    until: str | None = None
    actor: str | None = None
    adapter: str | None = None
    type: str | None = None
    outcome: str | None = None  # success | denied | error

    def __post_init__(self) -> None:
        if self.actor:  # compared with what the trail records of an identity (NFC, escaped, bounded)
            object.__setattr__(self, "actor", recordable_identity(self.actor))

    @property
    def complete(self) -> bool:
        """Only a time range: the export is a gap-free slice of each chain."""
        return self.actor is None and self.adapter is None and self.type is None and self.outcome is None

    def in_range(self, record: Mapping[str, Any]) -> bool:
        t = str(record.get("time", ""))
        return (self.since is None or t >= self.since) and (self.until is None or t <= self.until)

    def matches(self, record: Mapping[str, Any]) -> bool:
        if record.get("type") == CHECKPOINT_TYPE:
            return True  # checkpoints always travel with the records they vouch for
        actor = (record.get("actor") or {}).get("subject")
        adapter = (record.get("adapter") or {}).get("name")
        return (
            (self.actor is None or actor == self.actor)
            and (self.adapter is None or adapter == self.adapter)
            and (self.type is None or record.get("type") == self.type)
            and (self.outcome is None or (record.get("outcome") or {}).get("status") == self.outcome)
        )

    def as_dict(self) -> dict[str, str | None]:
        return {
            "since": self.since,
            "until": self.until,
            "actor": self.actor,
            "adapter": self.adapter,
            "type": self.type,
            "outcome": self.outcome,
        }


@dataclass
class _WriterSlice:
    count: int = 0
    first_seq: int | None = None
    first_prev_hash: str | None = None
    first_hash: str | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    digest: Any = None
    seqs: list[int] | None = None

    def add(self, record: Mapping[str, Any]) -> None:
        if self.digest is None:
            self.digest = hashlib.sha256()
            self.first_seq, self.first_prev_hash = int(record["seq"]), str(record["prev_hash"])
            self.first_hash = str(record["hash"])
        self.count += 1
        self.last_seq, self.last_hash = int(record["seq"]), str(record["hash"])
        self.seqs = self.seqs if self.seqs is not None else []
        self.seqs.append(self.last_seq)
        self.digest.update(self.last_hash.encode())

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "first_seq": self.first_seq,
            "first_prev_hash": self.first_prev_hash,
            "first_hash": self.first_hash,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "records_digest": self.digest.hexdigest() if self.digest is not None else None,
            "seqs": seq_runs(self.seqs or []),
        }


def export(
    store: ChainReader,
    keys: KeyService,
    out: Path,
    *,
    filters: ExportFilter = ExportFilter(),
    fmt: Format = "jsonl",
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    signer: str | None = None,
) -> dict[str, Any]:
    """Write the matching records and a signed manifest into ``out`` (new or empty); returns the manifest.

    The manifest carries the public keys of every exported chain's signing key and is signed with ``signer``'s
    (the exporting writer's; None: the node's ``audit-signing``), named in ``manifest_key``.

    The store is verified first: a filtered or time-range export cannot show a broken link or a checkpoint
    mismatch outside what it carries, so signing records from a chain that does not verify would vouch for them.
    """
    if fmt not in ("jsonl", "csv"):
        raise ValidationFailed("export format must be 'jsonl' or 'csv'")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Conflict(f"export directory {out} exists and is not empty")
    checked = verify_store(store, chain_public_keys(keys), workers=workers)
    if not checked.ok:
        raise IntegrityViolation(
            f"the audit trail does not verify ({len(checked.all_problems)} problems): not signing an export of it; "
            "run `appliance audit verify`"
        )
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"records.{fmt}"
    tmp = out / f".{name}.partial"
    slices: dict[str, _WriterSlice] = {}
    checkpoints: list[dict[str, Any]] = []
    first_time = last_time = None

    writers = store.writers()
    total = store.total_bytes()
    done = 0

    def advanced(size: int) -> None:
        nonlocal done
        done += size
        if on_progress is not None:
            on_progress(done, max(total, done))

    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8", newline="") as handle:
        table = csv.writer(handle, lineterminator="\n") if fmt == "csv" else None
        if table is not None:
            table.writerow(CSV_COLUMNS)
        for writer_id in writers:
            for line, record in chain_records(store, writer_id, advanced):
                if not filters.in_range(record) or not filters.matches(record):
                    continue
                if record.get("type") == CHECKPOINT_TYPE:
                    details = record.get("details") or {}
                    checkpoints.append({"writer_id": writer_id, "seq": record["seq"], **details})
                slices.setdefault(writer_id, _WriterSlice()).add(record)
                first_time = first_time or record.get("time")
                last_time = record.get("time")
                if table is not None:
                    table.writerow(csv_row(record, line))
                else:
                    handle.write(line.decode("utf-8") + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    file_digest = sha256_file(tmp)
    os.replace(tmp, out / name)
    manifest_key = AUDIT_SIGNING_KEY if signer is None else signing_key_for(keys, signer)
    named = {manifest_key: dict(keys.public_keys(manifest_key))}
    for wid in slices:
        key_name = signing_key_for(keys, wid)
        if key_name not in named:
            named[key_name] = dict(keys.public_keys(key_name))
    count = sum(s.count for s in slices.values())
    first = next(iter(slices.values()), None)
    last = list(slices.values())[-1] if slices else None
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "appliance_version": package_version(),
        "records_file": name,
        "records_format": fmt,
        "records_sha256": file_digest,
        "hash_rule": HASH_RULE,
        "filter": filters.as_dict(),
        "complete": filters.complete,
        "count": count,
        "range": {"first_time": first_time, "last_time": last_time},
        "first_hash": first.first_hash if first else None,
        "last_hash": last.last_hash if last else None,
        "writers": {wid: s.as_dict() for wid, s in slices.items()},
        "checkpoints": checkpoints,
        "public_keys": {key: encode_public_keys(value) for key, value in sorted(named.items())},
        "key_fingerprint": named_fingerprint(named),
    }
    if manifest_key != AUDIT_SIGNING_KEY:
        manifest["manifest_key"] = manifest_key
    manifest["signature"] = sign(keys, manifest_message(manifest), signer)
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
    return manifest
