"""The input record model and a validating JSONL reader that reports every problem with its line and field.

Rules (explicit, fail closed):

* The file is UTF-8 (a leading byte-order mark is tolerated); a line that is not valid UTF-8 is an error naming the
  line and the byte offset.
* One JSON object per line. A blank or whitespace-only line is an error (a final newline at the end of the file
  is normal and is not a line). An empty file, or one with no record, is an error.
* Fields: ``instruction`` (non-empty string), ``response`` (non-empty string), ``subject_id`` (optional; non-empty
  string or integer), ``metadata`` (optional; JSON object). Any other field is rejected, not ignored: an unexpected
  field could carry PHI that would then bypass the scrubber.
* Duplicate keys in an object, ``NaN``/``Infinity`` and lone surrogates are rejected.
* A line longer than ``max_record_bytes`` is rejected without parsing it.

Problems are collected over the whole file (Opacus-validator style) and raised together as one ``IntakeRejected``
whose message lists the first ones and counts the rest. Messages name lines and fields, never values.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import IntakeRejected, NotFound

__all__ = ["DEFAULT_MAX_RECORD_BYTES", "Problem", "Record", "SourceInfo", "read_records"]

DEFAULT_MAX_RECORD_BYTES = 256 * 1024  # one JSONL line, bytes
MAX_METADATA_DEPTH = 8
_SHOWN_PROBLEMS = 20  # problems spelled out in the error message; the rest are counted
_MAX_PROBLEMS = 10_000  # stop collecting after this many (a wrong file can have millions)

ALLOWED_FIELDS = ("instruction", "response", "subject_id", "metadata")


@dataclass(frozen=True)
class Record:
    """One validated input record (``line`` is its 1-based line number in the source file)."""

    line: int
    instruction: str
    response: str
    subject_id: str | None = None
    metadata: dict[str, Any] | None = None
    raw_sha256: str = ""  # SHA-256 of the raw line (identifies a record without a subject)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is and what is wrong (never the offending value)."""

    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = "file" if self.line is None else f"line {self.line}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


@dataclass
class SourceInfo:
    """What was read: the SHA-256 of the whole file and how many records it held."""

    sha256: str = ""
    records: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def safe_field_name(name: str) -> str:
    """The field name when it is safe to print (identifier-shaped, nothing the scrubber would replace)."""
    from appliance.intake._scrubber import Scrubber

    words = name.replace("_", " ")
    if _FIELD_NAME.match(name) and Scrubber().scrub_text(words)[0] == words:
        return name
    return "<name not shown: may hold PHI>"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _has_lone_surrogate(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if depth > MAX_METADATA_DEPTH:
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k, depth + 1) or _has_lone_surrogate(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v, depth + 1) for v in value)
    return False


def _depth(value: Any, depth: int = 0) -> int:
    if isinstance(value, dict):
        return max((_depth(v, depth + 1) for v in value.values()), default=depth + 1)
    if isinstance(value, list):
        return max((_depth(v, depth + 1) for v in value), default=depth + 1)
    return depth


def _validate(obj: Any, line: int, raw_sha256: str) -> tuple[Record | None, list[Problem]]:
    """Check one parsed line against the record rules; return the record or the problems."""
    if not isinstance(obj, dict):
        return None, [Problem(line, None, f"expected a JSON object, got {type(obj).__name__}")]
    problems: list[Problem] = []
    for name in sorted(set(obj) - set(ALLOWED_FIELDS)):
        allowed = "allowed: instruction, response, subject_id, metadata"
        problems.append(Problem(line, safe_field_name(name), f"unknown field ({allowed})"))
    texts: dict[str, str] = {}
    for name in ("instruction", "response"):
        if name not in obj:
            problems.append(Problem(line, name, "missing required field"))
            continue
        value = obj[name]
        if not isinstance(value, str):
            problems.append(Problem(line, name, f"must be a string, got {_json_type(value)}"))
        elif not value.strip():
            problems.append(Problem(line, name, "must not be empty"))
        else:
            texts[name] = value
    subject: str | None = None
    if "subject_id" in obj and obj["subject_id"] is not None:
        value = obj["subject_id"]
        if isinstance(value, bool) or not isinstance(value, str | int):
            problems.append(Problem(line, "subject_id", f"must be a string or an integer, got {_json_type(value)}"))
        elif isinstance(value, str) and not value.strip():
            problems.append(Problem(line, "subject_id", "must not be empty"))
        else:
            subject = str(value).strip()
    metadata: dict[str, Any] | None = None
    if "metadata" in obj and obj["metadata"] is not None:
        value = obj["metadata"]
        if not isinstance(value, dict):
            problems.append(Problem(line, "metadata", f"must be a JSON object, got {_json_type(value)}"))
        elif _depth(value) > MAX_METADATA_DEPTH:
            problems.append(Problem(line, "metadata", f"nested deeper than {MAX_METADATA_DEPTH} levels"))
        else:
            metadata = value
    for name in ALLOWED_FIELDS:
        if name in obj and _has_lone_surrogate(obj[name]):
            problems.append(Problem(line, name, "contains an unpaired surrogate escape (not encodable as UTF-8)"))
    if problems:
        return None, problems
    return (
        Record(
            line=line,
            instruction=texts["instruction"],
            response=texts["response"],
            subject_id=subject,
            metadata=metadata,
            raw_sha256=raw_sha256,
        ),
        [],
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, raw bytes without the newline); a final newline does not start a line."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            yield number, raw[:-1] if raw.endswith(b"\n") else raw


def read_records(
    path: Path,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Record], SourceInfo]:
    """Read and validate a JSONL file; raise ``IntakeRejected`` listing every problem (line and field).

    ``progress`` is called with the number of bytes consumed so far (for a progress bar).
    """
    if not path.is_file():
        raise NotFound(f"input file not found: {path}")
    info = SourceInfo()
    digest = hashlib.sha256()
    records: list[Record] = []
    problems: list[Problem] = []
    consumed = 0
    for number, raw in _iter_lines(path):
        digest.update(raw + b"\n")
        consumed += len(raw) + 1
        if progress is not None and number % 1000 == 0:
            progress(consumed)
        if len(problems) >= _MAX_PROBLEMS:
            continue
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > max_record_bytes:
            problems.append(
                Problem(number, None, f"record is {len(raw)} bytes, over the {max_record_bytes}-byte limit")
            )
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(number, None, f"not valid UTF-8 (invalid byte at offset {exc.start})"))
            continue
        if not text.strip():
            problems.append(Problem(number, None, "blank line (every line must hold one JSON record)"))
            continue
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
        except _DuplicateKey as exc:
            problems.append(Problem(number, safe_field_name(str(exc)), "duplicate key in the JSON object"))
            continue
        except json.JSONDecodeError as exc:
            problems.append(Problem(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        except (ValueError, RecursionError) as exc:
            problems.append(Problem(number, None, f"not valid JSON ({exc})"))
            continue
        record, found = _validate(obj, number, hashlib.sha256(raw).hexdigest())
        if record is not None:
            records.append(record)
        problems.extend(found)
    info.sha256 = digest.hexdigest()
    info.records = len(records)
    info.bytes = consumed
    if progress is not None:
        progress(consumed)
    if problems:
        info.problems = problems
        raise IntakeRejected(_summarise(path, problems))
    if not records:
        raise IntakeRejected(f"{path.name}: file is empty (no records)")
    return records, info


def _summarise(path: Path, problems: list[Problem]) -> str:
    shown = "\n  ".join(str(p) for p in problems[:_SHOWN_PROBLEMS])
    more = len(problems) - _SHOWN_PROBLEMS
    tail = ""
    if more > 0:
        capped = " (stopped counting)" if len(problems) >= _MAX_PROBLEMS else ""
        tail = f"\n  ... and {more} more problem(s){capped}"
    return f"{path.name}: {len(problems)} problem(s) found:\n  {shown}{tail}"
