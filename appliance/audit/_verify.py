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
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.audit._canonical import GENESIS_HASH
from appliance.audit._checkpoint import (
    ChainKeys,
    PublicKeys,
    key_fingerprint,
    named_fingerprint,
    signed_message,
    verify_signature,
)
from appliance.audit._mapping import map_file
from appliance.audit._sinks._base import ChainReader
from appliance.audit._sinks.files import FileStore

__all__ = ["ChainReport", "Problem", "VerifyReport", "verify_chain", "verify_segments", "verify_store"]

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
    signed: dict[int, str] = field(default_factory=dict)  # signed seq -> hash, of every valid checkpoint

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
    in_flight_end: bool = False,
) -> ChainReport:
    """Verify one writer's chain given as (location, bytes of whole lines[, line number of the first]) chunks.

    ``start`` is the (seq, hash) the first record must follow (the genesis, or a purge anchor); None accepts any
    start (an export of a range). ``allow_gaps`` accepts sequence gaps (a filtered export, whose record set the
    signed manifest binds instead) but still checks the links between consecutive records. ``in_flight_end``
    accepts an incomplete line at the very end of the last chunk: a writer holds the chain and is appending.
    """
    report = ChainReport(writer_id)
    problems = report.problems
    sha256 = hashlib.sha256
    expected_seq = -1 if start is None else start[0] + 1  # -1: take the first record's seq (no start given)
    prev = b"" if start is None else start[1].encode()
    out_of_order: set[int] = set()
    gaps: list[tuple[int, int, str, int]] = []  # (first missing, last missing, location, line)
    last_checkpoint_index = -1
    hashes: list[tuple[int, str]] | None = [] if collect_hashes else None
    count = 0
    last_seq: int | None = None
    last_line = 0
    duplicate: tuple[bytes, int, int] | None = None  # (hash, line, line of the first copy) of a repeated seq
    torn: Problem | None = None  # an incomplete last line, reported once a later chunk shows it is not the end

    def problem(kind: str, location: str, line: int | None, seq: int | None, message: str) -> None:
        problems.append(Problem(writer_id, kind, location, line, seq, message))

    for chunk in chunks:
        if torn is not None:
            problems.append(torn)
            torn = None
        location, data = chunk[0], chunk[1]
        first_line = chunk[2] if len(chunk) > 2 else 1
        view = memoryview(data)
        find = data.find  # data is bytes or a read-only mmap of a segment (no copy of the file)
        pos, lineno = 0, first_line - 1
        while True:
            # --- fast path: fixed offsets, no copies of the line, one SHA-256 ----------------------------------
            nl = find(b"\n", pos)
            if nl < 0:
                break
            begin, pos, lineno = pos, nl + 1, lineno + 1
            comma = find(b",", begin + 7, begin + 30)
            if (
                comma < 0
                or nl - begin < 170
                or data[nl - 75 : nl - 66] != _HASH_TAIL
                or data[begin : begin + 7] != b'{"seq":'
                or data[comma : comma + 14] != _PREV
                or data[nl - 2 : nl] != b'"}'
            ):
                problem("malformed", location, lineno, None, "not an audit record line")
                continue
            try:
                seq = int(data[begin + 7 : comma])
            except ValueError:
                problem("malformed", location, lineno, None, "sequence number is not an integer")
                continue
            stored = data[nl - 66 : nl - 2]
            record_prev = data[comma + 14 : comma + 78]
            if sha256(view[begin : nl - 75]).hexdigest().encode() != stored:
                problem("edited", location, lineno, seq, "record does not match its hash (a field was changed)")
            count += 1
            if count == 1:
                report.first_seq, report.first_prev_hash = seq, record_prev.decode("ascii", "replace")
                if start is None:  # no start given: the chain starts where the first record says
                    expected_seq, prev = seq, record_prev
            if seq != expected_seq:
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
            elif record_prev != prev:
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
            if data[nl - 101 : nl - 75] == _CHECKPOINT_TAIL:
                line = data[begin:nl]
                _check_checkpoint(line, seq, record_prev, writer_id, public_keys, report, location, lineno)
                last_checkpoint_index = count
            if hashes is not None:
                hashes.append((seq, stored.decode("ascii", "replace")))
            last_seq, prev, expected_seq, last_line = seq, stored, seq + 1, lineno
        view.release()
        if pos < len(data):
            torn = Problem(
                writer_id, "torn", location, lineno + 1, None, f"incomplete last line ({len(data) - pos} bytes)"
            )
    if torn is not None and not in_flight_end:
        problems.append(torn)

    for first, last, location, lineno in gaps:
        # never expand the range: a record's seq is untrusted ("seq":99999999999999999999 makes a gap of 1e20)
        moved = last - first + 1 <= len(out_of_order) and all(s in out_of_order for s in range(first, last + 1))
        if moved:
            problem("reordered", location, lineno, first, f"seq {first}..{last} moved later in the file")
        else:
            problem("missing", location, lineno, first, f"seq {first}..{last} missing before this line")
    report.records = count
    report.last_seq = last_seq
    report.last_hash = None if last_seq is None else prev.decode("ascii", "replace")
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
        if not isinstance(signed_hash, str):  # an edited record's JSON types are not the writer's
            raise TypeError("signed_hash")
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):  # 1e999; nested too deep to parse
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
    report.signed[signed_seq] = signed_hash


def verify_store(
    store: ChainReader,
    public_keys: PublicKeys,
    *,
    writer_id: str | None = None,
    workers: int | None = None,
) -> VerifyReport:
    """Verify every chain in a live store (or one writer's): anchors, records, checkpoints, and a signed end.

    A chain that no process holds must end with a checkpoint (a writer signs on close and on restart after a
    crash); one that a writer holds may end with records not yet signed. Segment files of a large store are
    verified in parallel processes (``workers``, default: one per CPU when there is more than 32 MiB).
    ``public_keys`` is one key's versions for every chain, or a resolver giving each chain its writer's
    (:func:`~appliance.audit._checkpoint.chain_public_keys`).
    """
    resolve = public_keys if callable(public_keys) else (lambda _: public_keys)
    report = VerifyReport(key_fingerprint=None if callable(public_keys) else key_fingerprint(public_keys))
    writers = store.writers()
    if writer_id and writer_id not in writers:  # a mistyped or deleted chain must not verify as "OK: 0 records"
        report.problems.append(Problem(writer_id, "missing", "(store)", None, None, "no chain with this writer id"))
        return report
    for wid in [writer_id] if writer_id else writers:
        chain_keys = resolve(wid)
        start: tuple[int, str] = (0, GENESIS_HASH)
        anchor = store.anchor(wid)
        if anchor is not None:
            start = (anchor.seq, anchor.hash)
            message = signed_message("anchor", wid, anchor.seq, anchor.hash)
            if anchor.writer_id != wid or not verify_signature(chain_keys, message, anchor.signature):
                report.problems.append(
                    Problem(
                        wid, "bad_signature", "anchor.json", None, anchor.seq, "purge anchor signature does not verify"
                    )
                )
        signed_end = not store.is_active(wid)  # else a writer holds it: its end may be unsigned, or mid-append
        paths = _segment_paths(store, wid)
        n = workers if workers is not None else _default_workers(paths)
        if paths is not None and n > 1 and len(paths) > 1:
            chain = verify_segments(
                wid, paths, public_keys=chain_keys, start=start, require_signed_end=signed_end, workers=n
            )
        else:
            chain = verify_chain(
                wid,
                store.read_mapped(wid) if isinstance(store, FileStore) else store.read(wid),  # files: no copy
                public_keys=chain_keys,
                start=start,
                require_signed_end=signed_end,
                in_flight_end=not signed_end,
            )
        report.chains.append(chain)
    if isinstance(public_keys, ChainKeys):
        report.key_fingerprint = named_fingerprint(public_keys.resolved)
    return report


def _segment_paths(store: ChainReader, writer_id: str) -> list[Path] | None:
    """The chain's segment files (verified in parallel when large), None for a store that has none."""
    return [path for _, path in store.live_segments(writer_id)] if isinstance(store, FileStore) else None


def _default_workers(paths: list[Path] | None) -> int:
    if not paths or sum(p.stat().st_size for p in paths) < (32 << 20):
        return 1
    return min(len(paths), os.cpu_count() or 1)


def _verify_segment(args: tuple[str, Path, dict[int, bytes], bool]) -> ChainReport:
    writer_id, path, public_keys, in_flight_end = args
    return verify_chain(writer_id, map_file(path), public_keys=public_keys, start=None, in_flight_end=in_flight_end)


def verify_segments(
    writer_id: str,
    paths: list[Path],
    *,
    public_keys: Mapping[int, bytes],
    start: tuple[int, str] | None,
    require_signed_end: bool,
    workers: int,
) -> ChainReport:
    """Verify a chain's segment files in parallel processes, then check the links between segments."""
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    # fork is fastest and safe in a single-threaded process (the CLI); elsewhere start a clean server.
    method = "fork" if threading.active_count() == 1 else "forkserver"
    last = len(paths) - 1  # only the newest segment of a held chain can be mid-append
    jobs = [(writer_id, path, dict(public_keys), i == last and not require_signed_end) for i, path in enumerate(paths)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        parts = list(pool.map(_verify_segment, jobs))
    report = ChainReport(writer_id)
    last_seq, last_hash = (None, None) if start is None else start
    tail = 0
    for part, path in zip(parts, paths, strict=True):
        report.problems.extend(part.problems)
        if not part.records or part.first_seq is None:
            continue
        if last_seq is not None:
            if part.first_seq > last_seq + 1:
                report.problems.append(
                    Problem(
                        writer_id,
                        "missing",
                        path.name,
                        1,
                        last_seq + 1,
                        f"seq {last_seq + 1}..{part.first_seq - 1} missing before this line",
                    )
                )
            elif part.first_seq <= last_seq:
                report.problems.append(
                    Problem(
                        writer_id,
                        "reordered",
                        path.name,
                        1,
                        part.first_seq,
                        f"segment starts at seq {part.first_seq}, after seq {last_seq}",
                    )
                )
            elif part.first_prev_hash != last_hash:
                report.problems.append(
                    Problem(
                        writer_id,
                        "chain_break",
                        path.name,
                        1,
                        part.first_seq,
                        "prev_hash is not the previous segment's last hash",
                    )
                )
        if report.first_seq is None:
            report.first_seq, report.first_prev_hash = part.first_seq, part.first_prev_hash
        report.records += part.records
        report.checkpoints += part.checkpoints
        report.signed.update(part.signed)
        if part.signed_through is not None:
            report.signed_through = max(report.signed_through or 0, part.signed_through)
        tail = part.unsigned_tail if part.checkpoints else tail + part.records
        last_seq, last_hash = part.last_seq, part.last_hash
    report.last_seq, report.last_hash, report.unsigned_tail = last_seq, last_hash, tail
    if require_signed_end and tail > 0 and report.records:
        report.problems.append(
            Problem(
                writer_id,
                "unsigned_tail",
                "(end)",
                None,
                last_seq,
                f"{tail} record(s) after the last signed checkpoint (truncated, or the writer crashed)",
            )
        )
    report.problems.sort(key=lambda p: (p.location, p.line or 0))
    return report
