"""`data prepare`: validate -> scrub -> dedup -> split -> fingerprint -> manifest, written atomically; and the
reader training uses, which verifies the fingerprint before anything is trained on.

The prepared directory (``docs/architecture/contracts.md``): ``train.jsonl``, ``eval.jsonl`` (records with
``instruction``, ``response``, ``subject``) and ``manifest.json``. It is written in a temporary sibling directory
and renamed into place only when complete; an existing non-empty output is refused. ``metadata`` is not carried
into the prepared records (data minimisation: training needs only the text and the privacy unit), but the names
and identifiers it declares are scrubbed from the text.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from appliance._fs import new_dir, sha256_files, write_new
from appliance.contracts import package_version, subject_digest
from appliance.errors import (
    Conflict,
    IntakeRejected,
    IntegrityViolation,
    NotFound,
    PolicyViolation,
    StorageUnavailable,
)
from appliance.intake._dedup import DEFAULT_NEAR_THRESHOLD, DEFAULT_NUM_PERM, deduplicate
from appliance.intake._residual import residual_counts, residual_rate
from appliance.intake._schema import DEFAULT_MAX_RECORD_BYTES, Record, read_records
from appliance.intake._scrub import PLACEHOLDER_TYPES
from appliance.intake._scrubber import Scrubber, ScrubReport

__all__ = [
    "FORMAT_VERSION",
    "PrepareOptions",
    "PrepareResult",
    "PreparedDataset",
    "PreparedRecord",
    "fingerprint_dir",
    "load_prepared",
    "prepare",
]

log = structlog.get_logger("appliance.intake")

FORMAT_VERSION = 1
DEFAULT_MAX_RESIDUAL_PER_1000 = 5.0  # suspected identifiers left after scrubbing, per 1000 prepared records
_FILES = ("train.jsonl", "eval.jsonl")


@dataclass(frozen=True)
class PrepareOptions:
    """How a dataset is prepared (recorded in the manifest's ``params``)."""

    eval_fraction: float = 0.1  # share of records (by whole subjects) held out for evaluation
    split_seed: int = 0  # the split is a pure function of the input and this seed
    near_duplicate_threshold: float = DEFAULT_NEAR_THRESHOLD  # MinHash Jaccard; >= 1 disables near-dedup
    minhash_num_perm: int = DEFAULT_NUM_PERM
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    # above this many suspected identifiers per 1000 records left after scrubbing, the dataset is refused
    max_residual_per_1000_records: float = DEFAULT_MAX_RESIDUAL_PER_1000

    def __post_init__(self) -> None:
        if not self.max_residual_per_1000_records >= 0.0:
            raise IntakeRejected("max_residual_per_1000_records must be >= 0")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise IntakeRejected("eval_fraction must be in [0, 1)")
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise IntakeRejected("near_duplicate_threshold must be in (0, 1]")


@dataclass(frozen=True)
class PreparedRecord:
    """One record of a prepared dataset; ``subject`` is the salted digest (the privacy unit)."""

    instruction: str
    response: str
    subject: str


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset whose fingerprint was verified against its manifest when it was loaded."""

    path: Path
    fingerprint: str
    manifest: dict[str, Any]
    train: list[PreparedRecord]
    eval: list[PreparedRecord]

    @property
    def source_sha256(self) -> str:
        """SHA-256 of the raw input file: the same for every preparation of the same input."""
        return str(self.manifest["source"]["sha256"])

    @property
    def subjects(self) -> list[str]:
        """The salted subject digests (privacy units) of this dataset."""
        return list(self.manifest["subjects"]["digests"])


@dataclass(frozen=True)
class PrepareResult:
    """Where the dataset went, its fingerprint and its manifest."""

    path: Path
    fingerprint: str
    manifest: dict[str, Any] = field(repr=False)


def _unit_key(record: Record) -> str:
    """The raw privacy unit (never written): the subject id, or the record itself when there is none."""
    if record.subject_id is not None:
        return "subject\x00" + record.subject_id
    return "record\x00" + record.raw_sha256


def _split(units: list[str], sizes: dict[str, int], eval_fraction: float, seed: int) -> set[str]:
    """The units held out for evaluation: a seeded order of whole units, filled up to the eval share."""
    total = sum(sizes.values())
    target = round(eval_fraction * total)
    if eval_fraction > 0 and target == 0:
        target = 1
    order = sorted(units, key=lambda u: hashlib.sha256(f"{seed}\x00{u}".encode()).hexdigest())
    held: set[str] = set()
    count = 0
    for unit in order:
        if count >= target or len(held) == len(units) - 1:
            break
        held.add(unit)
        count += sizes[unit]
    return held


def fingerprint_dir(path: Path) -> str:
    """SHA-256 hex over the bytes of train.jsonl followed by eval.jsonl (contracts.md)."""
    return sha256_files(path / name for name in _FILES)


def _jsonl(records: list[PreparedRecord]) -> bytes:
    lines = [
        json.dumps({"instruction": r.instruction, "response": r.response, "subject": r.subject}, ensure_ascii=False)
        for r in records
    ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Conflict(f"output {out} already exists and is not empty; choose a new directory")


def prepare(
    source: Path,
    out: Path,
    options: PrepareOptions | None = None,
    *,
    salt: bytes | None = None,
    progress: Callable[[int], None] | None = None,
    on_record: Callable[[int, int], None] | None = None,
    before_commit: Callable[[dict[str, Any]], None] | None = None,
) -> PrepareResult:
    """Prepare ``source`` (JSONL) into the directory ``out``; nothing is left at ``out`` unless it all succeeds.

    ``progress`` gets the bytes read so far; ``on_record`` gets (records scrubbed, total) every 100 records.
    ``salt`` defaults to 32 random bytes (a new salt per dataset); pass one only to reproduce a preparation.
    ``before_commit`` receives the manifest after everything is written and before the rename (e.g. to make an
    audit record durable); if it raises, nothing is published.
    """
    opts = options or PrepareOptions()
    _check_output(out)
    records, info = read_records(source, max_record_bytes=opts.max_record_bytes, progress=progress)

    scrubber = Scrubber()
    report = ScrubReport()
    scrubbed: list[tuple[str, str]] = []
    for done, rec in enumerate(records, start=1):
        # the metadata is dropped, but the names and identifiers it declares are replaced in the text
        text = {"instruction": rec.instruction, "response": rec.response}
        fields, counts = scrubber.scrub_fields(text, context=rec.metadata)
        report.add(counts)
        scrubbed.append((fields["instruction"], fields["response"]))
        if on_record is not None and (done % 100 == 0 or done == len(records)):
            on_record(done, len(records))

    dedup = deduplicate(scrubbed, near_threshold=opts.near_duplicate_threshold, num_perm=opts.minhash_num_perm)
    kept = [(records[i], scrubbed[i]) for i in dedup.kept]
    units: dict[str, int] = {}
    for rec, _ in kept:
        key = _unit_key(rec)
        units[key] = units.get(key, 0) + 1
    if opts.eval_fraction > 0 and len(units) < 2:
        raise IntakeRejected(
            f"{source.name}: {len(units)} subject(s) after deduplication; a train/eval split needs at least 2"
        )
    held = _split(sorted(units), units, opts.eval_fraction, opts.split_seed) if opts.eval_fraction > 0 else set()
    residual = _residual_check(source, [texts for _, texts in kept], opts.max_residual_per_1000_records)

    salt = salt if salt is not None else secrets.token_bytes(32)
    digests = {key: subject_digest(salt, key.split("\x00", 1)[1]) for key in units}
    for key in units:  # a record without a subject gets its own unit, namespaced so no subject id collides
        if key.startswith("record\x00"):
            digests[key] = subject_digest(salt, "\x00record:" + key.split("\x00", 1)[1])
    train: list[PreparedRecord] = []
    evals: list[PreparedRecord] = []
    for rec, (instruction, response) in kept:
        key = _unit_key(rec)
        (evals if key in held else train).append(PreparedRecord(instruction, response, digests[key]))

    train_bytes, eval_bytes = _jsonl(train), _jsonl(evals)
    fingerprint = hashlib.sha256(train_bytes + eval_bytes).hexdigest()
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "counts": {
            "input": len(records),
            "invalid": 0,
            "exact_duplicates": dedup.exact_duplicates,
            "near_duplicates": dedup.near_duplicates,
            "train": len(train),
            "eval": len(evals),
        },
        "scrub_report": report.as_dict(),
        "residual": residual,
        "subjects": {"salt": salt.hex(), "digests": sorted(set(digests.values()))},
        "source": {"sha256": info.sha256, "records": info.records},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "appliance_version": package_version(),
        "params": {
            "eval_fraction": opts.eval_fraction,
            "split_seed": opts.split_seed,
            "near_duplicate_threshold": opts.near_duplicate_threshold,
            "minhash_num_perm": opts.minhash_num_perm,
            "shingle": "word-3",
        },
    }
    _commit(out, train_bytes, eval_bytes, manifest, before_commit)
    log.info(
        "intake.prepared",
        fingerprint=fingerprint,
        **{k: v for k, v in manifest["counts"].items() if k != "invalid"},
        subjects=len(manifest["subjects"]["digests"]),
        phi_replaced=report.total,
        residual_suspected=residual["total"],
    )
    return PrepareResult(out, fingerprint, manifest)


def _residual_check(source: Path, texts: list[tuple[str, str]], limit: float) -> dict[str, Any]:
    """Count the suspected identifiers a second pass finds in the scrubbed records (counts only); refuse the
    dataset (``PolicyViolation``, nothing written) when there are more than ``limit`` per 1000 records."""
    counts: Counter[str] = Counter()
    for instruction, response in texts:
        counts.update(residual_counts(instruction))
        counts.update(residual_counts(response))
    total = sum(counts.values())
    rate = residual_rate(total, len(texts))
    if rate > limit:
        by_type = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        raise PolicyViolation(
            f"{source.name}: {total} suspected identifiers remain after scrubbing ({by_type}), "
            f"{rate:.1f} per 1000 records, above intake.max_residual_per_1000_records = {limit:g}; nothing was "
            "written. Measure the scrubber on annotated notes of this source (`appliance data evaluate-scrub`), "
            "declare the patients' names and identifiers in each record's metadata so they are replaced "
            "everywhere, or, after a privacy officer's review, raise the limit in the [intake] settings"
        )
    return {
        "counts": {kind: int(counts.get(kind, 0)) for kind in PLACEHOLDER_TYPES},
        "total": total,
        "per_1000_records": round(rate, 2),
        "max_per_1000_records": limit,
    }


def _commit(
    out: Path,
    train_bytes: bytes,
    eval_bytes: bytes,
    manifest: dict[str, Any],
    before_commit: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Write into a temporary sibling, fsync, run the hook, then rename into place (or leave nothing)."""
    try:
        with new_dir(out) as tmp:  # the rename replaces an empty directory, fails on a non-empty one
            write_new(tmp / "train.jsonl", train_bytes)  # owner only: derived from patient data
            write_new(tmp / "eval.jsonl", eval_bytes)
            write_new(tmp / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
            if before_commit is not None:
                before_commit(manifest)
            _check_output(out)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise Conflict(f"output {out} appeared while preparing; nothing was written") from exc
        raise StorageUnavailable(f"cannot write the prepared dataset under {out.parent}: {exc.strerror}") from exc


def _read_prepared_jsonl(path: Path) -> list[PreparedRecord]:
    out: list[PreparedRecord] = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw:
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IntegrityViolation(f"{path.name} line {number}: not a valid prepared record") from exc
        if not isinstance(obj, dict) or set(obj) != {"instruction", "response", "subject"}:
            raise IntegrityViolation(f"{path.name} line {number}: expected exactly instruction, response, subject")
        if not all(isinstance(obj[k], str) for k in obj):
            raise IntegrityViolation(f"{path.name} line {number}: fields must be strings")
        out.append(PreparedRecord(obj["instruction"], obj["response"], obj["subject"]))
    return out


def load_prepared(path: Path) -> PreparedDataset:
    """Load a prepared dataset, verifying its fingerprint, counts and subjects against ``manifest.json``.

    Raises ``NotFound`` (no such directory), ``IntakeRejected`` (not a prepared dataset) or ``IntegrityViolation``
    (anything changed since ``data prepare``).
    """
    if not path.is_dir():
        raise NotFound(f"prepared dataset not found: {path}")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise IntakeRejected(f"{path} is not a prepared dataset (no manifest.json); run `appliance data prepare`")
    for name in _FILES:
        if not (path / name).is_file():
            raise IntegrityViolation(f"prepared dataset {path} is missing {name}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityViolation(f"{manifest_path} is not valid JSON") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise IntakeRejected(f"{manifest_path}: unsupported format_version (this appliance reads {FORMAT_VERSION})")
    expected = manifest.get("fingerprint")
    actual = fingerprint_dir(path)
    if not isinstance(expected, str) or not hmac.compare_digest(actual, expected):
        raise IntegrityViolation(f"prepared dataset {path} does not match its manifest fingerprint")
    train = _read_prepared_jsonl(path / "train.jsonl")
    evals = _read_prepared_jsonl(path / "eval.jsonl")
    counts = manifest.get("counts", {})
    if counts.get("train") != len(train) or counts.get("eval") != len(evals):
        raise IntegrityViolation(f"prepared dataset {path}: train/eval record counts differ from the manifest")
    known = set(manifest.get("subjects", {}).get("digests", []))
    if any(r.subject not in known for r in train + evals):
        raise IntegrityViolation(f"prepared dataset {path}: a record's subject is not listed in the manifest")
    return PreparedDataset(path.resolve(), actual, manifest, train, evals)
