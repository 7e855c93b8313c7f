"""`data evaluate-scrub`: the scrubber's recall on a hospital's own labelled notes (counts only, never values).

Input: JSONL records with the intake fields plus ``phi`` (``[{"type": "NAME", "value": "...", "role": "patient"}]``,
``role`` optional) and optional ``keep`` (phrases that must survive). Every value and phrase must occur verbatim
in ``instruction`` or ``response``.

**When a value counts as caught** (the rule, exactly). The record's text is ``instruction + "\\n" + response``.

1. *Survival*: each character of the text either survives verbatim in the scrubbed text or does not. The scrubbed
   text is read as literal runs between placeholders (``[NAME]``, ``[DATE]#2``...); each run is located in the
   text after the previous one. A scrubber whose output cannot be read so is aligned with ``difflib`` instead.
2. *Occurrences* of a value: every place where it stands in the text as a whole (no letter or digit right before
   or after it), except places inside a ``keep`` phrase ("Bell" the surname is not "Bell's palsy"); when it never
   stands whole, every place it occurs.
3. *Pieces* of a value: its maximal runs of letters and digits (Unicode).
4. The value is **missed** when, at any occurrence, 4 consecutive characters of one piece survive (so the
   fragment "czyk" left of "Kowalczyk" is a miss, "ễn" left of "Nguyễn" is not), or, for a value with no piece of
   4 or more characters ("Ana", "92", "Wei C.", "J.L."), one of its longest pieces survives whole. Otherwise it
   is **caught**.
5. A ``keep`` phrase is **kept** when every character of every occurrence of it survives.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance._fs import atomic_write
from appliance.errors import IntakeRejected, NotFound, StorageUnavailable
from appliance.intake._schema import Problem, Record, _summarise, _validate
from appliance.intake._scrubber import Scrubber

__all__ = [
    "Evaluation",
    "LabelledRecord",
    "Miss",
    "evaluate_scrubber",
    "phrase_kept",
    "read_labelled",
    "score",
    "survival",
    "value_caught",
    "value_occurrences",
    "write_misses",
]

PROBE_CHARS = 4  # the length of a piece of a value that must not survive
_PIECE = re.compile(r"[^\W_]+")
_PLACEHOLDER = re.compile(r"\[[A-Z]{2,10}\](?:#\d+)?")
_MAX_PROBLEMS = 1000


@dataclass(frozen=True)
class Label:
    """One labelled identifier of a record."""

    kind: str
    value: str
    role: str | None = None


@dataclass(frozen=True)
class LabelledRecord:
    """A validated labelled record: the intake record plus its labels and the phrases to keep."""

    record: Record
    phi: tuple[Label, ...]
    keep: tuple[str, ...]

    @property
    def text(self) -> str:
        return self.record.instruction + "\n" + self.record.response


@dataclass(frozen=True)
class Miss:
    """A value the scrubber left (written only to the --show-misses file, never printed or logged)."""

    record: int  # 1-based line number in the input
    kind: str
    role: str | None
    value: str


@dataclass
class _Tally:
    caught: int = 0
    total: int = 0

    def add(self, ok: bool) -> None:
        self.total += 1
        self.caught += int(ok)

    def as_dict(self) -> dict[str, Any]:
        return {"caught": self.caught, "total": self.total, "recall": _ratio(self.caught, self.total)}


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass
class Evaluation:
    """Recall per type and role, the kept rate and the speed; ``misses`` holds values and never leaves as output."""

    records: int = 0
    by_type: dict[str, _Tally] = field(default_factory=dict)
    by_role: dict[str, _Tally] = field(default_factory=dict)
    kept: _Tally = field(default_factory=_Tally)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    misses: list[Miss] = field(default_factory=list, repr=False)

    def _group(self, structured: bool) -> _Tally:
        out = _Tally()
        for kind, tally in self.by_type.items():
            if (kind != "NAME") == structured:
                out.caught += tally.caught
                out.total += tally.total
        return out

    def as_dict(self) -> dict[str, Any]:
        """The report: counts, ratios and speed (no value, no text)."""
        return {
            "records": self.records,
            "values": sum(t.total for t in self.by_type.values()),
            "recall_by_type": {k: self.by_type[k].as_dict() for k in sorted(self.by_type)},
            "names": self._group(structured=False).as_dict(),
            "names_by_role": {k: self.by_role[k].as_dict() for k in sorted(self.by_role)},
            "structured": self._group(structured=True).as_dict(),
            "kept": {
                "kept": self.kept.caught,
                "total": self.kept.total,
                "rate": _ratio(self.kept.caught, self.kept.total),
            },
            "cpu_seconds": round(self.cpu_seconds, 3),
            "records_per_cpu_second": round(self.records / self.cpu_seconds, 1) if self.cpu_seconds > 0 else None,
            "records_per_second": round(self.records / self.wall_seconds, 1) if self.wall_seconds > 0 else None,
        }


# --- the catch rule --------------------------------------------------------------------------------------------
def survival(text: str, scrubbed: str) -> list[bool]:
    """For each character of ``text``: whether it survives verbatim in ``scrubbed`` (rule 1)."""
    kept = [False] * len(text)
    pos = 0
    for literal in _PLACEHOLDER.split(scrubbed):
        if not literal:
            continue
        at = text.find(literal, pos)
        if at < 0:
            return _survival_by_diff(text, scrubbed)
        kept[at : at + len(literal)] = [True] * len(literal)
        pos = at + len(literal)
    return kept


def _survival_by_diff(text: str, scrubbed: str) -> list[bool]:
    kept = [False] * len(text)
    for block in difflib.SequenceMatcher(None, text, scrubbed, autojunk=False).get_matching_blocks():
        kept[block.a : block.a + block.size] = [True] * block.size
    return kept


def _occurrences(text: str, needle: str) -> list[int]:
    out, at = [], text.find(needle)
    while at >= 0:
        out.append(at)
        at = text.find(needle, at + 1)
    return out


def _whole(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or after.isalnum())


def value_occurrences(text: str, value: str, keep: Iterable[str] = ()) -> list[int]:
    """Where ``value`` stands in ``text`` as an identifier (rule 2)."""
    spans = [(s, s + len(p)) for p in keep for s in _occurrences(text, p)]
    found = _occurrences(text, value)
    whole = [s for s in found if _whole(text, s, s + len(value))]
    outside = [s for s in whole if not any(a <= s and s + len(value) <= b for a, b in spans)]
    if outside or whole:
        return outside
    return found


def value_caught(value: str, text: str, kept: list[bool], keep: Iterable[str] = ()) -> bool:
    """Whether no piece of ``value`` survives at any of its occurrences (rules 2-4); ``kept`` from :func:`survival`."""
    pieces = [(m.start(), m.end()) for m in _PIECE.finditer(value)]
    longest = max(e - s for s, e in pieces)
    short = longest < PROBE_CHARS
    if short:  # "Wei C.": the "C" alone identifies no one; "Wei" does
        pieces = [(s, e) for s, e in pieces if e - s == longest]
    for at in value_occurrences(text, value, keep):
        for s, e in pieces:
            run = 0
            for i in range(at + s, at + e):
                run = run + 1 if kept[i] else 0
                if run >= PROBE_CHARS or (short and run == e - s):
                    return False
    return True


def phrase_kept(phrase: str, text: str, kept: list[bool]) -> bool:
    """Whether every occurrence of ``phrase`` in ``text`` survives whole (rule 5)."""
    return all(all(kept[at : at + len(phrase)]) for at in _occurrences(text, phrase))


def score(records: list[LabelledRecord], scrubbed: list[str]) -> Evaluation:
    """Recall and kept rate of ``scrubbed[i]``, the scrubbed text of ``records[i]`` (``instruction\\nresponse``)."""
    if len(records) != len(scrubbed):
        raise ValueError("one scrubbed text per record is required")
    ev = Evaluation(records=len(records))
    for rec, out in zip(records, scrubbed, strict=True):
        text = rec.text
        kept = survival(text, out)
        for label in rec.phi:
            ok = value_caught(label.value, text, kept, rec.keep)
            ev.by_type.setdefault(label.kind, _Tally()).add(ok)
            if label.kind == "NAME" and label.role:
                ev.by_role.setdefault(label.role, _Tally()).add(ok)
            if not ok:
                ev.misses.append(Miss(rec.record.line, label.kind, label.role, label.value))
        for phrase in rec.keep:
            ev.kept.add(phrase_kept(phrase, text, kept))
    return ev


def evaluate_scrubber(
    records: list[LabelledRecord], scrub: Callable[[LabelledRecord], str] | None = None
) -> Evaluation:
    """Scrub every record (timed in CPU and wall seconds) and score it; ``scrub`` defaults to ours, as
    ``data prepare`` runs it (instruction and response, with the metadata as context)."""
    if scrub is None:
        scrubber = Scrubber()

        def scrub(rec: LabelledRecord) -> str:
            fields = {"instruction": rec.record.instruction, "response": rec.record.response}
            out, _ = scrubber.scrub_fields(fields, context=rec.record.metadata)
            return str(out["instruction"]) + "\n" + str(out["response"])

    cpu, wall = time.process_time(), time.perf_counter()
    scrubbed = [scrub(rec) for rec in records]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    ev = score(records, scrubbed)
    ev.cpu_seconds, ev.wall_seconds = cpu, wall
    return ev


# --- input -----------------------------------------------------------------------------------------------------
def _labels(obj: Any, line: int, text: str, problems: list[Problem]) -> tuple[Label, ...]:
    if "phi" not in obj:
        problems.append(Problem(line, "phi", "missing required field (a list of {type, value, role?})"))
        return ()
    raw = obj["phi"]
    if not isinstance(raw, list):
        problems.append(Problem(line, "phi", "must be an array of objects"))
        return ()
    out: list[Label] = []
    for i, item in enumerate(raw):
        where = f"phi[{i}]"
        if not isinstance(item, dict) or not set(item) <= {"type", "value", "role"}:
            problems.append(Problem(line, where, "must be an object with type, value and optional role"))
            continue
        kind, value, role = item.get("type"), item.get("value"), item.get("role")
        if not isinstance(kind, str) or not re.fullmatch(r"[A-Z][A-Z_]{1,19}", kind):
            problems.append(Problem(line, f"{where}.type", "must be an upper-case type name such as NAME or DATE"))
            continue
        if not isinstance(value, str) or not _PIECE.search(value):
            problems.append(Problem(line, f"{where}.value", "must be a string with at least one letter or digit"))
            continue
        if role is not None and (not isinstance(role, str) or not re.fullmatch(r"[a-z][a-z_-]{0,31}", role)):
            problems.append(Problem(line, f"{where}.role", "must be a lower-case word such as patient"))
            continue
        if value not in text:
            problems.append(Problem(line, f"{where}.value", "does not occur in instruction or response"))
            continue
        out.append(Label(kind, value, role))
    return tuple(out)


def _keep(obj: Any, line: int, text: str, problems: list[Problem]) -> tuple[str, ...]:
    raw = obj.get("keep", [])
    if not isinstance(raw, list) or not all(isinstance(p, str) and p.strip() for p in raw):
        problems.append(Problem(line, "keep", "must be an array of non-empty strings"))
        return ()
    for i, phrase in enumerate(raw):
        if phrase not in text:
            problems.append(Problem(line, f"keep[{i}]", "does not occur in instruction or response"))
    return tuple(raw)


def read_labelled(path: Path) -> list[LabelledRecord]:
    """Read and validate a labelled JSONL file; raise ``IntakeRejected`` naming every bad line and field."""
    if not path.is_file():
        raise NotFound(f"labelled file not found: {path}")
    records: list[LabelledRecord] = []
    problems: list[Problem] = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if len(problems) >= _MAX_PROBLEMS:
                break
            raw = raw.rstrip(b"\r\n")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                problems.append(Problem(number, None, f"not valid UTF-8 (invalid byte at offset {exc.start})"))
                continue
            except json.JSONDecodeError as exc:
                problems.append(Problem(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"))
                continue
            if not isinstance(obj, dict):
                problems.append(Problem(number, None, "expected a JSON object"))
                continue
            fields = {k: v for k, v in obj.items() if k not in ("phi", "keep")}
            record, found = _validate(fields, number, "")
            problems.extend(found)
            if record is None:
                continue
            text = record.instruction + "\n" + record.response
            labels = _labels(obj, number, text, problems)
            keep = _keep(obj, number, text, problems)
            records.append(LabelledRecord(record, labels, keep))
    if problems:
        raise IntakeRejected(_summarise(path, problems))
    if not records:
        raise IntakeRejected(f"{path.name}: file is empty (no records)")
    return records


# --- the misses file -------------------------------------------------------------------------------------------
def write_misses(path: Path, misses: list[Miss]) -> None:
    """Write the missed values as JSONL to ``path`` (mode 0600, atomically); refuses a symlink at ``path``."""
    if path.is_symlink():
        raise IntakeRejected(f"{path} is a symbolic link; give a plain file path for the misses")
    lines = [
        json.dumps({"record": m.record, "type": m.kind, "role": m.role, "value": m.value}, ensure_ascii=False)
        for m in misses
    ]
    try:
        atomic_write(path, "".join(line + "\n" for line in lines).encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise StorageUnavailable(f"cannot write the misses file {path}: {exc.strerror}") from exc
