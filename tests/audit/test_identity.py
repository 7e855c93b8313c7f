"""Identities the IdP issues (spaces, accents, any script) are recorded faithfully: escaped and bounded, never
refused, and an export of them (JSON lines and CSV) verifies, filtered by such an actor too."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from appliance.audit import AuditWriter, open_audit_log, recordable_identity
from appliance.audit._export import ExportFilter, export, verify_export
from appliance.audit._sinks.files import FileStore
from appliance.config import Settings
from appliance.errors import ValidationFailed
from appliance.keys import LocalKeyService
from tests.audit.conftest import make_event

SUBJECTS = [
    "josé.garcía",  # NFC
    "jose\u0301.garci\u0301a",  # the same name in NFD: recorded in NFC
    "er-doc ",
    "Dr Alice Müller",
    "王小明",
    "=cmd|' /C calc'!A0",  # a formula in a spreadsheet
    'quote" back\\slash',
    "line\nbreak\r\x00\x1b[31m",  # control characters
    "bidi\u202egnp.exe\u2028\u00a0",  # a bidi override, a line separator, a no-break space
    "lone\ud800surrogate",
    "é" * 300,  # over the bound
]


def _actor(subject: str) -> dict[str, object]:
    return {"subject": subject, "client_id": subject, "auth_method": "jwt", "session_id": None, "roles": []}


def test_recordable_identity_is_printable_bounded_and_one_to_one() -> None:
    """Every output is one printable line of at most 256 characters; distinct inputs stay distinct."""
    outputs = {s: recordable_identity(s) for s in [*SUBJECTS, "a\\u{000a}", "a\n", "é" * 301]}
    for out in outputs.values():
        assert len(out) <= 256
        assert all(ch == " " or ch.isprintable() for ch in out), out
    assert recordable_identity("josé.garcía") == recordable_identity("jose\u0301.garci\u0301a") == "josé.garcía"
    assert recordable_identity("er-doc ") == "er-doc "
    assert recordable_identity("a\n") == "a\\u{000a}" != recordable_identity("a\\u{000a}")
    assert outputs["é" * 300] != outputs["é" * 301]
    with pytest.raises(ValueError):
        recordable_identity("")


async def test_identities_are_recorded_and_refused_never(audit_log: AuditWriter, settings: Settings) -> None:
    """A record with any such subject or client id is accepted, and the stored line holds the recorded form."""
    for subject in SUBJECTS:
        await audit_log.record(make_event(actor=_actor(subject)))
    with pytest.raises(ValidationFailed):
        await audit_log.record(make_event(actor=_actor("")))
    lines = [
        json.loads(x)
        for seg in sorted(settings.audit_dir.rglob("segment-*.jsonl"))
        for x in seg.read_text().splitlines()
    ]
    stored = [r["actor"] for r in lines if r["type"] == "gateway.request"]
    assert [a["subject"] for a in stored] == [recordable_identity(s) for s in SUBJECTS]
    assert all(a["client_id"] == a["subject"] for a in stored)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_and_verify_with_such_subjects(
    settings: Settings, keys: LocalKeyService, tmp_path: Path, fmt: str
) -> None:
    """A whole export and one filtered by an accented actor both verify; the CSV columns hold the subjects."""
    writer = open_audit_log(settings, keys)
    for i, subject in enumerate(SUBJECTS):
        writer.record_sync(make_event(actor=_actor(subject), request_id=f"r-{i}"))
    writer.close_sync()
    store = FileStore(settings.audit_dir)
    whole = export(store, keys, tmp_path / "all", fmt=fmt)  # type: ignore[arg-type]
    report = verify_export(tmp_path / "all")
    assert report.ok, report
    assert whole["count"] >= len(SUBJECTS)
    mine = export(store, keys, tmp_path / "jose", fmt=fmt, filters=ExportFilter(actor="jose\u0301.garci\u0301a"))  # type: ignore[arg-type]
    assert verify_export(tmp_path / "jose").ok
    requests = [c for c in _subjects(tmp_path / "jose", fmt) if c is not None]
    assert requests == ["josé.garcía", "josé.garcía"] and mine["filter"]["actor"] == "josé.garcía"
    if fmt == "csv":
        cells = _subjects(tmp_path / "all", fmt)
        assert "'=cmd|' /C calc'!A0" in cells  # formula-injection safe, the verbatim record column intact
        assert "line\\u{000a}break\\u{000d}\\u{0000}\\u{001b}[31m" in cells


def _subjects(directory: Path, fmt: str) -> list[str | None]:
    if fmt == "jsonl":
        records = [json.loads(x) for x in (directory / "records.jsonl").read_text(encoding="utf-8").splitlines()]
        return [r["actor"]["subject"] for r in records if r["type"] == "gateway.request"]
    with open(directory / "records.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["actor_subject"] for r in rows if r["type"] == "gateway.request"]
