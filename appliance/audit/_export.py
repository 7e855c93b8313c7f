"""Export a range of the audit trail (JSON lines or CSV) with a signed manifest, and verify an export offline.

An export directory holds ``records.jsonl`` or ``records.csv`` and ``manifest.json``. JSON lines are the stored
record bytes, verbatim; CSV has one readable column per AU-3 field plus ``record``, the verbatim line, and the
verifier checks that every readable column still says what the record says. The manifest carries the count, the
time range, each writer's first/last seq and hash, a digest of every exported record hash, the checkpoint
signatures, the public keys and their fingerprint, and is itself signed through the key service: an export can be
verified with nothing but its own files (and the key fingerprint, compared out of band).
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from appliance._fs import atomic_write, sha256_file
from appliance.audit._canonical import HASH_RULE, canonical_json
from appliance.audit._checkpoint import (
    AUDIT_SIGNING_KEY,
    CHECKPOINT_TYPE,
    chain_public_keys,
    decode_public_keys,
    encode_public_keys,
    named_fingerprint,
    own_signing_key,
    sign,
    signing_key_for,
    verify_signature,
)
from appliance.audit._identity import recordable_identity
from appliance.audit._sinks._base import ChainReader
from appliance.audit._verify import ChainReport, Problem, VerifyReport, verify_chain, verify_store
from appliance.errors import Conflict, IntegrityViolation, ValidationFailed
from appliance.protocols import KeyService

__all__ = ["ExportFilter", "export", "parse_time", "verify_export"]

FORMAT = "appliance-audit-export-v1"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is read whole; a larger one is refused unread
Format = Literal["jsonl", "csv"]

CSV_COLUMNS = [
    "writer_id",
    "seq",
    "time",
    "type",
    "action",
    "actor_subject",
    "actor_auth_method",
    "actor_client_id",
    "actor_session_id",
    "actor_roles",
    "source_ip",
    "source_user_agent",
    "route",
    "adapter_name",
    "adapter_version",
    "adapter_fingerprint",
    "outcome_status",
    "outcome_http_status",
    "outcome_error_class",
    "tokens_prompt",
    "tokens_generated",
    "latency_ms",
    "request_id",
    "digest_prompt",
    "digest_output",
    "details",
    "event_id",
    "prev_hash",
    "hash",
    "record",
]


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


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | dict):
        text = canonical_json(value).decode()
    else:
        text = str(value)
    # Spreadsheet formula injection: a cell must never start with a formula character.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_row(record: Mapping[str, Any], line: bytes) -> list[str]:
    """The readable CSV columns of a record, then the verbatim line."""
    actor = record.get("actor") or {}
    source = record.get("source") or {}
    adapter = record.get("adapter") or {}
    outcome = record.get("outcome") or {}
    tokens = record.get("tokens") or {}
    digests = record.get("digests") or {}
    values = [
        record.get("writer_id"),
        record.get("seq"),
        record.get("time"),
        record.get("type"),
        record.get("action"),
        actor.get("subject"),
        actor.get("auth_method"),
        actor.get("client_id"),
        actor.get("session_id"),
        actor.get("roles"),
        source.get("ip"),
        source.get("user_agent"),
        record.get("route"),
        adapter.get("name"),
        adapter.get("version"),
        adapter.get("fingerprint"),
        outcome.get("status"),
        outcome.get("http_status"),
        outcome.get("error_class"),
        tokens.get("prompt"),
        tokens.get("generated"),
        record.get("latency_ms"),
        record.get("request_id"),
        digests.get("prompt"),
        digests.get("output"),
        record.get("details") or None,
        record.get("event_id"),
        record.get("prev_hash"),
        record.get("hash"),
    ]
    return [*(_cell(v) for v in values), line.decode("utf-8")]


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
            "seqs": _ranges(self.seqs or []),
        }


def _manifest_message(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return b"appliance-audit-export:v1:" + hashlib.sha256(canonical_json(body)).hexdigest().encode()


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
            for line, record in _records(store, writer_id, advanced):
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
        "appliance_version": _version(),
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
    manifest["signature"] = sign(keys, _manifest_message(manifest), signer)
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
    return manifest


def _records(
    store: ChainReader, writer_id: str, advanced: Callable[[int], None]
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    for _, data in store.read(writer_id):
        advanced(len(data))
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn or corrupt line: verify reports it; an export carries only records
            if isinstance(record, dict):
                yield line, record


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("appliance")
    except PackageNotFoundError:
        return "unknown"


# --- offline verification ----------------------------------------------------------------------------------------
def verify_export(directory: Path, *, expected_key_fingerprint: str | None = None) -> VerifyReport:
    """Verify an export with only its own files: manifest signature, file digest, every record, every link.

    Every file is untrusted input (someone sent it): whatever it holds ends in located problems, never an
    exception, and memory stays bounded by the files' sizes (the manifest's by ``MAX_MANIFEST_BYTES``).
    """
    report = VerifyReport()

    def problem(kind: str, location: str, message: str, line: int | None = None, seq: int | None = None) -> None:
        report.problems.append(Problem("*", kind, location, line, seq, message))

    manifest, why = _read_manifest(directory / "manifest.json")
    if manifest is None:
        problem("manifest", "manifest.json", f"not an audit export manifest: {why}")
        return report
    name, fmt, writers_meta = manifest["records_file"], manifest["records_format"], manifest["writers"]
    named = {str(name): decode_public_keys(value) for name, value in manifest["public_keys"].items()}
    public_keys = named.get(str(manifest.get("manifest_key", AUDIT_SIGNING_KEY)), {})
    report.key_fingerprint = named_fingerprint(named)
    if expected_key_fingerprint is not None and report.key_fingerprint != expected_key_fingerprint:
        problem(
            "bad_signature", "manifest.json", f"public key fingerprint {report.key_fingerprint} is not the expected one"
        )
    if manifest.get("key_fingerprint") != report.key_fingerprint:
        problem("manifest", "manifest.json", "key_fingerprint does not match the public keys")
    if not verify_signature(public_keys, _manifest_message(manifest), str(manifest.get("signature", ""))):
        problem("bad_signature", "manifest.json", "manifest signature does not verify (the manifest was changed)")
    starts: dict[str, tuple[int, str] | None] = {}
    for writer_id, meta in writers_meta.items():
        try:
            starts[writer_id] = _start_of(meta)
        except ValueError as exc:
            problem("manifest", "manifest.json", f"writer {writer_id!r}: {exc}")
            starts[writer_id] = None  # its records are still checked, from wherever they start
    path = directory / name
    if "/" in name or name.startswith(".") or not path.is_file():
        problem("manifest", name, "records file is missing")
        return report
    try:
        if sha256_file(path) != manifest.get("records_sha256"):
            problem("manifest", name, "records file differs from the one exported (details below)")
        if fmt == "csv":
            lines = _csv_lines(path, report)
        else:
            lines = [(n, line) for n, line in enumerate(path.read_bytes().split(b"\n"), 1) if line]
    except OSError as exc:
        problem("manifest", name, f"records file cannot be read ({exc.strerror or type(exc).__name__})")
        return report
    by_writer: dict[str, list[tuple[int, bytes]]] = {}
    for number, line in lines:
        by_writer.setdefault(_writer_of(line), []).append((number, line))
    for writer_id in sorted(set(writers_meta) | set(by_writer)):
        meta = writers_meta.get(writer_id)
        rows = by_writer.get(writer_id, [])
        if meta is None:
            problem("inserted", name, f"records of writer {writer_id!r}, which the manifest does not list", rows[0][0])
            continue
        start = starts[writer_id]
        chain = verify_chain(
            writer_id,
            ((name, line + b"\n", number) for number, line in rows),
            public_keys=_chain_keys(named, writer_id),
            start=start,
            allow_gaps=not manifest.get("complete", False),
            collect_hashes=True,
        )
        _compare(chain, meta, name, bool(manifest.get("complete", False)), len(rows), problem)
        report.chains.append(chain)
    if sum(c.records for c in report.chains) != manifest.get("count"):
        problem(
            "manifest",
            name,
            f"{sum(c.records for c in report.chains)} records, the manifest says {manifest.get('count')}",
        )
    return report


def _chain_keys(named: dict[str, dict[int, bytes]], writer_id: str) -> dict[int, bytes]:
    """A chain's public keys in a manifest: its writer's own key (Vault/OpenBao), else the node's one key."""
    return named.get(own_signing_key(writer_id)) or named.get(AUDIT_SIGNING_KEY, {})


def _read_manifest(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The manifest when it has the shape verification relies on, else None and why (never an exception)."""
    if not path.is_file():  # a FIFO or device would block the read or never end
        return None, "missing or not a regular file"
    try:
        data = bytearray()
        with path.open("rb") as handle:  # in chunks: read(MAX + 1) would allocate MAX bytes up front
            while len(data) <= MAX_MANIFEST_BYTES and (chunk := handle.read(1 << 20)):
                data += chunk
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or type(exc).__name__})"
    if len(data) > MAX_MANIFEST_BYTES:
        return None, f"larger than {MAX_MANIFEST_BYTES} bytes"
    try:
        manifest = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        return None, "not JSON (or nested too deep, or a number out of range)"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None, f"no format {FORMAT!r}"
    expected: dict[str, type] = {"records_file": str, "records_format": str, "writers": dict, "public_keys": dict}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind):
            return None, f"{key} is not a JSON {'string' if kind is str else 'object'}"
    for name, value in manifest["public_keys"].items():
        if not isinstance(value, dict):
            return None, f"public_keys.{name} is not a JSON object"
    if not isinstance(manifest["public_keys"].get(str(manifest.get("manifest_key", AUDIT_SIGNING_KEY))), dict):
        return None, "public_keys has no entry for the key that signed the manifest"
    for writer_id, meta in manifest["writers"].items():
        if not isinstance(meta, dict):
            return None, f"writers[{writer_id!r}] is not a JSON object"
    try:
        _manifest_message(manifest)
    except ValueError:  # a string with an unpaired surrogate ("\ud800") has no UTF-8 form to sign
        return None, "a string in it is not valid Unicode"
    return manifest, ""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


_MAX_SEQ = 2**63 - 1  # a sequence number the writer can reach


def _start_of(meta: Mapping[str, Any]) -> tuple[int, str] | None:
    """The (seq, hash) a writer's first exported record follows; ValueError when the manifest's entry is bad."""
    first = meta.get("first_seq")
    if first is None:
        return None
    if type(first) is not int or not 1 <= first <= _MAX_SEQ:
        raise ValueError(f"first_seq must be an integer from 1 to {_MAX_SEQ}")
    prev = meta.get("first_prev_hash")
    if not (isinstance(prev, str) and len(prev) == 64 and all(c in "0123456789abcdef" for c in prev)):
        raise ValueError("first_prev_hash must be 64 lower-case hex digits")
    return first - 1, prev


def _compare(
    chain: ChainReport,
    meta: Mapping[str, Any],
    name: str,
    complete: bool,
    held: int,
    problem: Callable[..., None],
) -> None:
    """The chain against its manifest entry: exactly which listed records are missing and which are not listed.

    The manifest is untrusted input: its runs are never expanded, so memory is bounded by the records the file
    holds (and the manifest's own size), not by the seqs it claims; a claim beyond the file is a problem.
    """
    runs = _listed_runs(meta.get("seqs") or [])
    if runs is None:
        problem("manifest", "manifest.json", f"{chain.writer_id}: seqs are not ascending [first, last] runs")
        return
    claimed = sum(last - first + 1 for first, last in runs)
    if claimed > held:
        problem(
            "manifest",
            name,
            f"{chain.writer_id}: the manifest lists {claimed} records, the file holds {held}",
        )
    present = sorted({seq for seq, _ in chain.hashes or []})
    missing = _missing_runs(runs, present)
    starts = [first for first, _ in runs]
    extra = [seq for seq in present if not _listed(runs, starts, seq)]
    last = present[-1] if present else 0
    if complete:  # interior gaps were located line by line; what is left is a cut-off end
        missing = [(max(first, last + 1), end) for first, end in missing if end > last]
    if missing and missing[0][0] > last:
        problem(
            "missing",
            name,
            f"{chain.writer_id}: truncated after seq {last}: {_runs_text(missing)} missing",
            None,
            missing[0][0],
        )
    elif missing:
        problem(
            "missing",
            name,
            f"{chain.writer_id}: {_runs_text(missing)} listed in the manifest but missing",
            None,
            missing[0][0],
        )
    if extra:
        problem(
            "inserted", name, f"{chain.writer_id}: {_ranges_text(extra)} not listed in the manifest", None, extra[0]
        )
    digest = hashlib.sha256()
    for _, record_hash in chain.hashes or []:
        digest.update(record_hash.encode())
    if not missing and not extra and chain.ok and digest.hexdigest() != meta.get("records_digest"):
        problem("manifest", name, f"{chain.writer_id}: the records differ from the ones exported")


def _ranges(seqs: list[int]) -> list[list[int]]:
    """Sorted seqs as [first, last] runs (compact in the manifest)."""
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return runs


def _listed_runs(value: Any) -> list[tuple[int, int]] | None:
    """A manifest's runs when they are [first, last] integer pairs, ascending and disjoint; None otherwise."""
    if not isinstance(value, list):
        return None
    runs: list[tuple[int, int]] = []
    previous = -1
    for run in value:
        if not (isinstance(run, list) and len(run) == 2 and all(type(x) is int for x in run)):
            return None
        first, last = run
        if not previous < first <= last:
            return None
        runs.append((first, last))
        previous = last
    return runs


def _missing_runs(runs: list[tuple[int, int]], present: list[int]) -> list[tuple[int, int]]:
    """The parts of runs that no seq in present (sorted, unique) falls in, as runs."""
    missing: list[tuple[int, int]] = []
    i = 0
    for first, last in runs:
        i = bisect.bisect_left(present, first, i)
        cursor = first
        while i < len(present) and present[i] <= last:
            if present[i] > cursor:
                missing.append((cursor, present[i] - 1))
            cursor = present[i] + 1
            i += 1
        if cursor <= last:
            missing.append((cursor, last))
    return missing


def _listed(runs: list[tuple[int, int]], starts: list[int], seq: int) -> bool:
    k = bisect.bisect_right(starts, seq) - 1
    return k >= 0 and seq <= runs[k][1]


def _runs_text(runs: list[tuple[int, int]]) -> str:
    text = ", ".join(f"seq {a}" if a == b else f"seq {a}..{b}" for a, b in runs[:5])
    return text + (" ..." if len(runs) > 5 else "")


def _ranges_text(seqs: list[int]) -> str:
    return _runs_text([(a, b) for a, b in _ranges(seqs)])


def _writer_of(line: bytes) -> str:
    start = line.find(b'"writer_id":"')
    if start < 0:
        return "?"
    end = line.find(b'"', start + 13)
    return line[start + 13 : end].decode("utf-8", "replace")


def _csv_lines(path: Path, report: VerifyReport) -> list[tuple[int, bytes]]:
    """The verbatim record lines of a CSV export, checking that every readable column agrees with its record."""
    lines: list[tuple[int, bytes]] = []
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # located, then read with U+FFFD: the record there fails its hash too
        line_no = data.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 (byte offset {exc.start})"
        report.problems.append(Problem("*", "malformed", path.name, line_no, None, message))
        text = data.decode("utf-8", "replace")
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(rows, None)
    except csv.Error:
        header = None
    if header != CSV_COLUMNS:
        report.problems.append(Problem("*", "malformed", path.name, 1, None, "unexpected CSV header"))
        return lines
    number = 1
    while True:
        try:
            row = next(rows, None)
        except csv.Error as exc:  # a field over csv.field_size_limit(): the rest of the file cannot be read
            message = f"not readable as CSV from here ({exc})"
            report.problems.append(Problem("*", "malformed", path.name, rows.line_num, None, message))
            return lines
        if row is None:
            return lines
        number += 1
        if len(row) != len(CSV_COLUMNS):
            report.problems.append(Problem("*", "malformed", path.name, number, None, "wrong number of columns"))
            continue
        line = row[-1].encode("utf-8")
        try:
            record = json.loads(line)
            expected = csv_row(record, line)
        except (ValueError, AttributeError, TypeError, RecursionError):
            lines.append((number, line))  # the chain check reports it
            continue
        changed = [col for col, a, b in zip(CSV_COLUMNS, row, expected, strict=True) if a != b]
        if changed:
            seq = record.get("seq")
            report.problems.append(
                Problem(
                    str(record.get("writer_id")),
                    "edited",
                    path.name,
                    number,
                    seq if type(seq) is int else None,
                    f"column(s) {', '.join(changed)} differ from the signed record",
                )
            )
        lines.append((number, line))
