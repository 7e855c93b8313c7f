"""An export someone else sent is untrusted input: every malformed file fails verification cleanly.

Each case mutates a copy of one real small export (JSON lines or CSV) and checks that ``verify_export`` reports
located problems instead of raising, and that ``appliance audit verify DIR`` exits 65 without a traceback and
without echoing control characters to the terminal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.audit import open_audit_log
from appliance.audit._export import MAX_MANIFEST_BYTES, export, verify_export
from appliance.audit._sinks.files import FileStore
from appliance.config import Settings, load_settings
from appliance.keys import LocalKeyService
from tests.audit.conftest import make_event

REPO_ROOT = Path(__file__).resolve().parents[2]
Mutation = Callable[[Path], None]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One closed chain of about 25 records (checkpoint every 10), exported once as JSON lines and once as CSV."""
    root = tmp_path_factory.mktemp("untrusted")
    settings = load_settings(data_dir=root / "var", policies_dir=REPO_ROOT / "policies")
    settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"checkpoint_every": 10})})
    keys = LocalKeyService(settings.keystore_path)
    writer = open_audit_log(settings, keys)
    for i in range(20):
        writer.record_sync(make_event(request_id=f"r-{i}"))
    writer.close_sync()
    out = {fmt: root / fmt for fmt in ("jsonl", "csv")}
    for fmt, path in out.items():
        export(FileStore(settings.audit_dir), keys, path, fmt=fmt)  # type: ignore[arg-type]
    return out


# --- mutations ---------------------------------------------------------------------------------------------------
def _manifest(edit: Callable[[dict[str, Any]], object]) -> Mutation:
    def mutate(d: Path) -> None:
        manifest = json.loads((d / "manifest.json").read_text())
        edit(manifest)
        (d / "manifest.json").write_text(json.dumps(manifest))

    return mutate


def _writer(**fields: object) -> Mutation:
    return _manifest(lambda m: m["writers"]["node-1"].update(fields))


def _raw(name: str, data: bytes) -> Mutation:
    return lambda d: (d / name).write_bytes(data)


def _sub(name: str, pattern: bytes, replacement: bytes, count: int = 1) -> Mutation:
    def mutate(d: Path) -> None:
        data = (d / name).read_bytes()
        new = re.sub(pattern, lambda _: replacement, data, count=count)
        assert new != data, pattern
        (d / name).write_bytes(new)

    return mutate


def _line(index: int, edit: Callable[[bytes], bytes]) -> Mutation:
    def mutate(d: Path) -> None:
        lines = (d / "records.jsonl").read_bytes().split(b"\n")
        lines[index] = edit(lines[index])
        (d / "records.jsonl").write_bytes(b"\n".join(lines))

    return mutate


def _checkpoint(edit: Callable[[bytes], bytes]) -> Mutation:
    def mutate(d: Path) -> None:
        lines = (d / "records.jsonl").read_bytes().split(b"\n")
        index = next(i for i, line in enumerate(lines) if b'"type":"audit.checkpoint"' in line)
        lines[index] = edit(lines[index])
        (d / "records.jsonl").write_bytes(b"\n".join(lines))

    return mutate


def _unlink(name: str) -> Mutation:
    return lambda d: (d / name).unlink()


def _directory(name: str) -> Mutation:
    def mutate(d: Path) -> None:
        (d / name).unlink()
        (d / name).mkdir()

    return mutate


def _fifo(name: str) -> Mutation:
    def mutate(d: Path) -> None:
        (d / name).unlink()
        os.mkfifo(d / name)  # opening it would wait for a writer that never comes

    return mutate


def _oversized_manifest(d: Path) -> None:
    data = (d / "manifest.json").read_bytes()
    (d / "manifest.json").write_bytes(data + b" " * (MAX_MANIFEST_BYTES + 1 - len(data)))


def _csv_cell(row: int, column: int, value: bytes) -> Mutation:
    def mutate(d: Path) -> None:
        import csv
        import io

        rows = list(csv.reader(io.StringIO((d / "records.csv").read_text())))
        rows[row][column] = "\x00"  # placeholder, replaced by the raw bytes below
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        (d / "records.csv").write_bytes(text.getvalue().encode().replace(b"\x00", value))

    return mutate


DEEP = b"[" * 100_000 + b"]" * 100_000
CASES: list[tuple[str, str, Mutation]] = [
    # the manifest
    ("manifest-missing", "jsonl", _unlink("manifest.json")),
    ("manifest-a-directory", "jsonl", _directory("manifest.json")),
    ("manifest-a-fifo", "jsonl", _fifo("manifest.json")),
    ("records-a-fifo", "jsonl", _fifo("records.jsonl")),
    ("manifest-not-utf8", "jsonl", _raw("manifest.json", b'{"format": "\xff\xfe"}')),
    ("manifest-not-json", "jsonl", _raw("manifest.json", b"{")),
    ("manifest-a-list", "jsonl", _raw("manifest.json", b"[1, 2]")),
    ("manifest-deeply-nested", "jsonl", _raw("manifest.json", DEEP)),
    ("manifest-oversized", "jsonl", _oversized_manifest),
    ("manifest-unpaired-surrogate", "jsonl", _sub("manifest.json", rb'"created_at": "', b'"created_at": "\\ud800')),
    ("manifest-huge-integer", "jsonl", _sub("manifest.json", rb'"count": \d+', b'"count": 1' + b"0" * 5000)),
    ("writers-a-list", "jsonl", _manifest(lambda m: m.update(writers=["node-1"]))),
    ("writers-a-string", "jsonl", _manifest(lambda m: m.update(writers="node-1"))),
    ("writers-null", "jsonl", _manifest(lambda m: m.update(writers=None))),
    ("writer-entry-a-number", "jsonl", _manifest(lambda m: m["writers"].update({"node-1": 5}))),
    ("writer-entry-a-list", "jsonl", _manifest(lambda m: m["writers"].update({"node-1": [1, 2]}))),
    ("first_seq-not-a-number", "jsonl", _writer(first_seq="abc")),
    ("first_seq-a-numeric-string", "jsonl", _writer(first_seq="1")),
    ("first_seq-negative", "jsonl", _writer(first_seq=-3)),
    ("first_seq-zero", "jsonl", _writer(first_seq=0)),
    ("first_seq-fraction", "jsonl", _writer(first_seq=1.5)),
    ("first_seq-boolean", "jsonl", _writer(first_seq=True)),
    ("first_seq-a-list", "jsonl", _writer(first_seq=[1])),
    ("first_seq-an-object", "jsonl", _writer(first_seq={})),
    ("first_seq-huge", "jsonl", _writer(first_seq=10**30)),
    ("first_seq-infinite", "jsonl", _sub("manifest.json", rb'"first_seq": 1\b', b'"first_seq": 1e999')),
    ("first_prev_hash-missing", "jsonl", _manifest(lambda m: m["writers"]["node-1"].pop("first_prev_hash"))),
    ("first_prev_hash-a-number", "jsonl", _writer(first_prev_hash=5)),
    ("seqs-huge", "jsonl", _writer(seqs=[[1, 10**30]])),
    ("public_keys-a-string", "jsonl", _manifest(lambda m: m.update(public_keys="x"))),
    ("public_keys-entry-a-list", "jsonl", _manifest(lambda m: m["public_keys"].update({"audit-signing": [1]}))),
    ("records_file-a-number", "jsonl", _manifest(lambda m: m.update(records_file=5))),
    ("records_file-nul", "jsonl", _manifest(lambda m: m.update(records_file="records\x00.jsonl"))),
    ("records_file-absolute", "jsonl", _manifest(lambda m: m.update(records_file="/etc/hostname"))),
    ("records_file-markup", "jsonl", _manifest(lambda m: m.update(records_file="[/]records.jsonl"))),
    ("records_format-a-number", "jsonl", _manifest(lambda m: m.update(records_format=5))),
    ("writer-id-markup", "jsonl", _manifest(lambda m: m["writers"].update({"[/]": m["writers"].pop("node-1")}))),
    ("writer-id-escape", "jsonl", _manifest(lambda m: m["writers"].update({"\x1b[2J": m["writers"]["node-1"]}))),
    # the records (JSON lines)
    ("records-missing", "jsonl", _unlink("records.jsonl")),
    ("records-a-directory", "jsonl", _directory("records.jsonl")),
    ("records-empty", "jsonl", _raw("records.jsonl", b"")),
    ("record-not-utf8", "jsonl", _line(3, lambda ln: ln.replace(b'"r-', b'"\xff\xfe', 1))),
    ("record-a-json-array", "jsonl", _line(3, lambda ln: b"[1, 2, 3]")),
    ("record-seq-huge", "jsonl", _line(4, lambda ln: re.sub(rb"^\{\"seq\":\d+", b'{"seq":99999999999999999999', ln))),
    ("record-seq-negative", "jsonl", _line(4, lambda ln: re.sub(rb"^\{\"seq\":\d+", b'{"seq":-5', ln))),
    ("record-writer-markup", "jsonl", _line(5, lambda ln: ln.replace(b'"node-1"', b'"[/]x"'))),
    ("record-writer-escape", "jsonl", _line(5, lambda ln: ln.replace(b'"node-1"', b'"\x1b[2Jx"'))),
    ("record-torn", "jsonl", lambda d: (d / "records.jsonl").write_bytes((d / "records.jsonl").read_bytes()[:-40])),
    (
        "checkpoint-signed_seq-infinite",
        "jsonl",
        _checkpoint(lambda ln: re.sub(rb'"signed_seq":\d+', b'"signed_seq":1e999', ln)),
    ),
    (
        "checkpoint-signed_seq-a-string",
        "jsonl",
        _checkpoint(lambda ln: re.sub(rb'"signed_seq":\d+', b'"signed_seq":"x"', ln)),
    ),
    (
        "checkpoint-details-a-list",
        "jsonl",
        _checkpoint(lambda ln: re.sub(rb'"details":\{[^}]*\}', b'"details":[1]', ln)),
    ),
    (
        "checkpoint-deeply-nested",
        "jsonl",
        _checkpoint(lambda ln: ln.replace(b'"details":{', b'"details":{"x":' + DEEP + b",", 1)),
    ),
    ("checkpoint-not-utf8", "jsonl", _checkpoint(lambda ln: ln.replace(b'"key":"', b'"key":"\xff', 1))),
    # the records (CSV)
    ("csv-not-utf8", "csv", _csv_cell(3, 4, b"\xff\xfe")),
    ("csv-huge-field", "csv", _csv_cell(3, 4, b"x" * 300_000)),
    ("csv-nul-byte", "csv", _csv_cell(3, 4, b"\x00")),
    ("csv-record-deeply-nested", "csv", _csv_cell(3, -1, DEEP[:120_000] + DEEP[-120_000:])),
    ("csv-record-a-number", "csv", _csv_cell(3, -1, b"5")),
    ("csv-unclosed-quote", "csv", lambda d: (d / "records.csv").write_bytes((d / "records.csv").read_bytes() + b'"x')),
    ("csv-empty", "csv", _raw("records.csv", b"")),
    (
        "csv-header-only",
        "csv",
        lambda d: (d / "records.csv").write_bytes((d / "records.csv").read_bytes().split(b"\n")[0]),
    ),
    ("csv-writer-escape", "csv", _csv_cell(3, 0, b"\x1b[2J")),
]


@pytest.mark.parametrize(("fmt", "mutate"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_export_fails_cleanly(
    pristine: dict[str, Path],
    tmp_path: Path,
    fmt: str,
    mutate: Mutation,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A located problem and exit 65; never a traceback, never control characters on the officer's terminal."""
    directory = tmp_path / "export"
    shutil.copytree(pristine[fmt], directory)
    mutate(directory)
    report = verify_export(directory)
    problems = report.all_problems
    assert problems
    assert all(p.location for p in problems), [str(p) for p in problems]
    from appliance.cli import main

    monkeypatch.setattr(sys, "argv", ["appliance", "audit", "verify", str(directory)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 65
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_pristine_export_verifies(pristine: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    """The unmutated copy verifies: the failures above come from the mutations."""
    directory = tmp_path / "export"
    shutil.copytree(pristine[fmt], directory)
    assert verify_export(directory).ok


@pytest.mark.parametrize(
    "anchor",
    [
        b'{"writer_id": "node-1", "seq": 1e999, "hash": "0", "purged_at": "0", "signature": "0"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["infinite", "nested"],
)
def test_malformed_anchor_fails_live_verify_cleanly(
    settings: Settings, keys: LocalKeyService, monkeypatch: pytest.MonkeyPatch, anchor: bytes
) -> None:
    """A live chain's anchor.json is checked the same way: exit 65, not a traceback."""
    writer = open_audit_log(settings, keys)
    writer.record_sync(make_event())
    writer.close_sync()
    FileStore(settings.audit_dir).anchor_path("node-1").write_bytes(anchor)
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("APPLIANCE_POLICIES_DIR", str(settings.policies_dir))
    monkeypatch.setattr(sys, "argv", ["appliance", "audit", "verify"])
    from appliance.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 65
