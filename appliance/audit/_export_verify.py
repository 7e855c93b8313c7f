"""Verify an audit export offline, with nothing but its own files (and the key fingerprint, compared out of band).

Every file is untrusted input: whatever it holds ends in located problems, never an exception, and memory stays
bounded by the files' sizes.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from appliance._fs import sha256_file
from appliance.audit._checkpoint import (
    AUDIT_SIGNING_KEY,
    decode_public_keys,
    named_fingerprint,
    own_signing_key,
    verify_signature,
)
from appliance.audit._export_format import CSV_COLUMNS, FORMAT, MAX_MANIFEST_BYTES, csv_row, manifest_message, seq_runs
from appliance.audit._verify import ChainReport, Problem, VerifyReport, verify_chain

__all__ = ["verify_export"]


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
    if not verify_signature(public_keys, manifest_message(manifest), str(manifest.get("signature", ""))):
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
        manifest_message(manifest)
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
    return _runs_text([(a, b) for a, b in seq_runs(seqs)])


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
