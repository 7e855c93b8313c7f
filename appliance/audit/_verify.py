"""Verification: the chain, the signatures, the sequence; and exactly what is wrong, where.

Works on the stored bytes (segment files, a database, an export) with public keys only, so an investigator can
check an export offline. The hot loop hashes each line's stored bytes with ``hashlib`` at fixed offsets and parses
JSON only for checkpoint records, which is what makes it fast (see ``bench/audit.py``).

Problem kinds: ``malformed`` (not a record line), ``torn`` (an incomplete last line), ``edited`` (a record does not
match its own hash), ``missing`` (a sequence gap), ``reordered`` (a record out of sequence order), ``duplicate``,
``inserted`` (a record the chain does not pass through),
``chain_break`` (a record's prev_hash is not its predecessor's hash: inserted or replaced), ``bad_signature`` (a
checkpoint or anchor whose signature does not verify), ``checkpoint_mismatch`` (a checkpoint vouching for a hash the
chain does not have), ``unsigned_tail`` (records after the last checkpoint where a signed end was required),
``manifest`` (an export's manifest disagrees with its records).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.audit._canonical import GENESIS_HASH
from appliance.audit._checkpoint import key_fingerprint, signed_message, verify_signature
from appliance.audit._sinks._base import ChainReader

__all__ = ["ChainReport", "Problem", "VerifyReport", "verify_chain", "verify_store"]

_HASH_TAIL = b',"hash":"'
_CHECKPOINT_TAIL = b',"type":"audit.checkpoint"'
_PREV = b',"prev_hash":"'


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong, located: the chain, the file or table, the line (1-based) and the seq."""

    writer_id: str
    kind: str
    location: str
    line: int | None
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = self.location + (f":{self.line}" if self.line is not None else "")
        seq = f" seq {self.seq}" if self.seq is not None else ""
        return f"{self.kind}: {self.writer_id} {where}{seq}: {self.message}"


@dataclass
class ChainReport:
    """What verification found in one writer's chain."""

    writer_id: str
    records: int = 0
    first_seq: int | None = None
    first_prev_hash: str | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    checkpoints: int = 0
    signed_through: int | None = None  # highest seq vouched for by a valid checkpoint signature
    unsigned_tail: int = 0  # records after the last checkpoint record
    problems: list[Problem] = field(default_factory=list)
    hashes: list[tuple[int, str]] | None = None  # (seq, hash) of every record, when asked for

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    """Verification of every chain in a store or an export."""

    chains: list[ChainReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # not tied to one chain (manifest, anchors)
    key_fingerprint: str | None = None

    @property
    def all_problems(self) -> list[Problem]:
        return [*self.problems, *(p for c in self.chains for p in c.problems)]

    @property
    def ok(self) -> bool:
        return not self.all_problems

    @property
    def records(self) -> int:
        return sum(c.records for c in self.chains)


def verify_chain(
    writer_id: str,
    chunks: Iterable[tuple[str, bytes]] | Iterable[tuple[str, bytes, int]],
    *,
    public_keys: Mapping[int, bytes],
    start: tuple[int, str] | None = (0, GENESIS_HASH),
    allow_gaps: bool = False,
    require_signed_end: bool = False,
    collect_hashes: bool = False,
) -> ChainReport:
    """Verify one writer's chain given as (location, bytes of whole lines[, line number of the first]) chunks.

    ``start`` is the (seq, hash) the first record must follow (the genesis, or a purge anchor); None accepts any
    start (an export of a range). ``allow_gaps`` accepts sequence gaps (a filtered export, whose record set the
    signed manifest binds instead) but still checks the links between consecutive records.
    """
    report = ChainReport(writer_id)
    problems = report.problems
    sha256 = hashlib.sha256
    expected_seq = None if start is None else start[0] + 1
    prev = None if start is None else start[1].encode()
    out_of_order: set[int] = set()
    gaps: list[tuple[int, int, str, int]] = []  # (first missing, last missing, location, line)
    last_checkpoint_index = -1
    hashes: list[tuple[int, str]] | None = [] if collect_hashes else None
    count = 0
    last_seq: int | None = None
    last_line = 0
    duplicate: tuple[bytes, int, int] | None = None  # (hash, line, line of the first copy) of a repeated seq

    def problem(kind: str, location: str, line: int | None, seq: int | None, message: str) -> None:
        problems.append(Problem(writer_id, kind, location, line, seq, message))

    for chunk in chunks:
        location, data = chunk[0], chunk[1]
        first_line = chunk[2] if len(chunk) > 2 else 1  # type: ignore[misc]
        lines = data.split(b"\n")
        torn = lines.pop()
        for lineno, line in enumerate(lines, first_line):
            # --- fast path: fixed offsets, one SHA-256 -------------------------------------------------------
            comma = line.find(b",", 7, 30)
            if (
                comma < 0
                or line[-75:-66] != _HASH_TAIL
                or line[:7] != b'{"seq":'
                or line[comma : comma + 14] != _PREV
                or line[-2:] != b'"}'
            ):
                problem("malformed", location, lineno, None, "not an audit record line")
                continue
            try:
                seq = int(line[7:comma])
            except ValueError:
                problem("malformed", location, lineno, None, "sequence number is not an integer")
                continue
            stored = line[-66:-2]
            record_prev = line[comma + 14 : comma + 78]
            if sha256(line[:-75] + b"}").hexdigest().encode() != stored:
                problem("edited", location, lineno, seq, "record does not match its hash (a field was changed)")
            count += 1
            if report.first_seq is None:
                report.first_seq, report.first_prev_hash = seq, record_prev.decode("ascii", "replace")
            if expected_seq is not None and seq != expected_seq:
                if seq > expected_seq:
                    if not allow_gaps:
                        gaps.append((expected_seq, seq - 1, location, lineno))
                elif seq == last_seq:
                    problem("duplicate", location, lineno, seq, f"seq {seq} appears again (first at line {last_line})")
                    duplicate = (stored, lineno, last_line)
                    continue
                else:
                    out_of_order.add(seq)
                    problem("reordered", location, lineno, seq, f"seq {seq} appears after seq {last_seq}")
                    continue  # keep following the chain from the highest record seen
            elif prev is not None and record_prev != prev:
                if duplicate is not None and record_prev == duplicate[0]:
                    problem(
                        "inserted",
                        location,
                        duplicate[2],
                        seq - 1,
                        f"the record at line {duplicate[2]} is not in the chain "
                        f"(line {lineno} follows line {duplicate[1]})",
                    )
                else:
                    problem("chain_break", location, lineno, seq, "prev_hash is not the previous record's hash")
            duplicate = None
            if line[-101:-75] == _CHECKPOINT_TAIL:
                _check_checkpoint(line, seq, record_prev, writer_id, public_keys, report, location, lineno)
                last_checkpoint_index = count
            if hashes is not None:
                hashes.append((seq, stored.decode("ascii", "replace")))
            last_seq, prev, expected_seq, last_line = seq, stored, seq + 1, lineno
        if torn:
            problem("torn", location, first_line + len(lines), None, f"incomplete last line ({len(torn)} bytes)")

    for first, last, location, lineno in gaps:
        missing = set(range(first, last + 1))
        if missing and missing <= out_of_order:
            problem("reordered", location, lineno, first, f"seq {first}..{last} moved later in the file")
        else:
            problem("missing", location, lineno, first, f"seq {first}..{last} missing before this line")
    report.records = count
    report.last_seq = last_seq
    report.last_hash = None if prev is None or last_seq is None else prev.decode("ascii", "replace")
    report.unsigned_tail = count - last_checkpoint_index if last_checkpoint_index >= 0 else count
    report.hashes = hashes
    if require_signed_end and report.unsigned_tail > 0 and count:
        problem(
            "unsigned_tail",
            "(end)",
            None,
            last_seq,
            f"{report.unsigned_tail} record(s) after the last signed checkpoint (truncated, or the writer crashed)",
        )
    problems.sort(key=lambda p: (p.location, p.line or 0))
    return report


def _check_checkpoint(
    line: bytes,
    seq: int,
    record_prev: bytes,
    writer_id: str,
    public_keys: Mapping[int, bytes],
    report: ChainReport,
    location: str,
    lineno: int,
) -> None:
    def problem(kind: str, message: str) -> None:
        report.problems.append(Problem(writer_id, kind, location, lineno, seq, message))

    try:
        record: dict[str, Any] = json.loads(line)
        details = record["details"]
        signed_seq, signed_hash, signature = int(details["signed_seq"]), details["signed_hash"], details["signature"]
        record_writer = record["writer_id"]
    except (ValueError, KeyError, TypeError):
        problem("malformed", "checkpoint record without signed_seq/signed_hash/signature")
        return
    report.checkpoints += 1
    if record_writer != writer_id:
        problem("checkpoint_mismatch", f"checkpoint names writer {record_writer!r}")
        return
    if signed_seq != seq - 1 or signed_hash.encode() != record_prev:
        problem(
            "checkpoint_mismatch", f"checkpoint vouches for seq {signed_seq} {signed_hash[:12]}, not its predecessor"
        )
        return
    if not verify_signature(public_keys, signed_message("checkpoint", writer_id, signed_seq, signed_hash), signature):
        problem("bad_signature", "checkpoint signature does not verify under the audit public key")
        return
    report.signed_through = signed_seq


def verify_store(store: ChainReader, public_keys: Mapping[int, bytes], *, writer_id: str | None = None) -> VerifyReport:
    """Verify every chain in a live store (or one writer's): anchors, records, checkpoints, and a signed end.

    A chain that no process holds must end with a checkpoint (a writer signs on close and on restart after a
    crash); one that a writer holds may end with records not yet signed.
    """
    report = VerifyReport(key_fingerprint=key_fingerprint(public_keys))
    for wid in [writer_id] if writer_id else store.writers():
        start: tuple[int, str] = (0, GENESIS_HASH)
        anchor = store.anchor(wid)
        if anchor is not None:
            start = (anchor.seq, anchor.hash)
            message = signed_message("anchor", wid, anchor.seq, anchor.hash)
            if anchor.writer_id != wid or not verify_signature(public_keys, message, anchor.signature):
                report.problems.append(
                    Problem(
                        wid, "bad_signature", "anchor.json", None, anchor.seq, "purge anchor signature does not verify"
                    )
                )
        report.chains.append(
            verify_chain(
                wid,
                store.read(wid),
                public_keys=public_keys,
                start=start,
                require_signed_end=not store.is_active(wid),
            )
        )
    return report
