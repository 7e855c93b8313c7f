"""`appliance data check|scrub|prepare|synth` end to end through the real entry point and the real audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.intake import load_prepared
from tests.fixtures.cli import Cli


def _audit_events(data_dir: Path) -> list[dict[str, object]]:
    events = []
    for segment in sorted((data_dir / "audit").rglob("*.jsonl")):
        events.extend(json.loads(line) for line in segment.read_text().splitlines() if line.strip())
    return events


def test_synth_check_scrub_prepare(cli: Cli, tmp_path: Path, data_dir: Path) -> None:
    """The whole intake path works from the command line, prints counts only, and audits the preparation."""
    src = tmp_path / "synthetic.jsonl"
    code, out, _ = cli("data", "synth", "--out", str(src), "--records", "120")
    assert code == 0 and src.is_file()
    code, out, _ = cli("data", "check", str(src), "--phi")
    assert code == 0
    assert "OK synthetic.jsonl: 120 records" in out and "[SSN]" in out

    scrubbed = tmp_path / "scrubbed.jsonl"
    code, out, _ = cli("data", "scrub", str(src), "--out", str(scrubbed), "--report", str(tmp_path / "r.json"))
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["records"] == 120 and report["counts"]["NAME"] > 0
    assert "Patient: [NAME]. MRN: [MRN]." in scrubbed.read_text()
    assert scrubbed.stat().st_mode & 0o777 == 0o600

    out_dir = tmp_path / "prepared"
    code, out, _ = cli("data", "prepare", str(src), "--out", str(out_dir), "--seed", "3")
    assert code == 0, out
    ds = load_prepared(out_dir)
    assert ds.fingerprint in out
    events = [e for e in _audit_events(data_dir) if e.get("type") == "data.prepare"]
    assert len(events) == 1
    details = events[0]["details"]
    assert isinstance(details, dict)
    assert details["fingerprint"] == ds.fingerprint and details["train"] == len(ds.train)
    assert events[0]["outcome"] == {"status": "success", "http_status": None, "error_class": None}  # type: ignore[comparison-overlap]


def test_malformed_input_exit_code_and_message(cli: Cli, tmp_path: Path) -> None:
    """Malformed input exits 65 with INTAKE_REJECTED naming each line and field on stderr."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"instruction": 3, "response": "x"}\n\n\xff\n')
    code, _, err = cli("data", "check", str(bad))
    assert code == 65
    assert "INTAKE_REJECTED" in err
    assert "line 1, field 'instruction'" in err and "line 2: blank line" in err and "line 3: not valid UTF-8" in err


def test_prepare_refuses_existing_output_and_audits_the_refusal(cli: Cli, tmp_path: Path, data_dir: Path) -> None:
    """A non-empty output is a CONFLICT (exit 65), nothing is overwritten, and the refusal is audited."""
    src = tmp_path / "s.jsonl"
    cli("data", "synth", "--out", str(src), "--records", "40")
    out_dir = tmp_path / "prepared"
    out_dir.mkdir()
    (out_dir / "x").write_text("keep")
    code, _, err = cli("data", "prepare", str(src), "--out", str(out_dir))
    assert code == 65 and "CONFLICT" in err
    assert (out_dir / "x").read_text() == "keep"
    refused = [e for e in _audit_events(data_dir) if e.get("type") == "data.prepare"]
    assert refused and refused[-1]["outcome"]["error_class"] == "CONFLICT"  # type: ignore[index]


def test_prepare_fails_closed_without_audit(cli: Cli, tmp_path: Path, data_dir: Path) -> None:
    """When the audit trail cannot be written, prepare exits AUDIT_UNAVAILABLE and writes no dataset."""
    src = tmp_path / "s.jsonl"
    cli("data", "synth", "--out", str(src), "--records", "40")
    (data_dir / "audit").write_text("not a directory")  # the file sink cannot create its segment directory
    code, _, err = cli("data", "prepare", str(src), "--out", str(tmp_path / "prepared"))
    assert code == 74 and "AUDIT_UNAVAILABLE" in err
    assert not (tmp_path / "prepared").exists()


def test_missing_input_exit_code(cli: Cli, tmp_path: Path) -> None:
    """A missing input file exits 66 (NOT_FOUND)."""
    code, _, err = cli("data", "scrub", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o.jsonl"))
    assert code == 66 and "NOT_FOUND" in err


def test_settings_drive_the_split(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """APPLIANCE_INTAKE__EVAL_FRACTION reaches the intake settings."""
    monkeypatch.setenv("APPLIANCE_INTAKE__EVAL_FRACTION", "0.25")
    assert load_settings(data_dir=data_dir).intake.eval_fraction == 0.25
