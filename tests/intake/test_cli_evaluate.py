"""`appliance data evaluate-scrub` and `data synth --labelled` end to end, and the residual refusal of `data prepare`
through the real entry point and audit trail."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from appliance.intake import _suspects
from tests.fixtures.cli import Cli
from tests.intake.test_cli import _audit_events


@pytest.fixture
def labelled(cli: Cli, tmp_path: Path) -> Path:
    """15 labelled notes written by the CLI."""
    path = tmp_path / "labelled.jsonl"
    code, out, _ = cli("data", "synth", "--labelled", "--out", str(path), "--records", "15", "--seed", "9")
    assert code == 0 and "15 labelled evaluation notes" in out
    return path


def _values(path: Path) -> set[str]:
    """Every labelled value long enough not to occur by chance in a table of counts."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        out |= {p["value"] for p in json.loads(line)["phi"] if len(p["value"]) >= 5}
    return out


def test_table_holds_counts_and_no_value(cli: Cli, labelled: Path) -> None:
    """The default report is a table of recall per type and role, kept rate and speed, and shows no value."""
    code, out, err = cli("data", "evaluate-scrub", str(labelled))
    assert code == 0, err
    for row in ("NAME (patient)", "NAME (relative)", "NAME (clinician)", "names, all roles", "structured"):
        assert row in out
    assert "clinical phrases kept" in out and "records per CPU-second" in out
    assert not [v for v in _values(labelled) if v in out or v in err]


def test_json_report(cli: Cli, labelled: Path) -> None:
    """--json prints the counts as JSON: one entry per labelled value, recalls between 0 and 1."""
    code, out, _ = cli("data", "evaluate-scrub", str(labelled), "--json")
    assert code == 0
    report = json.loads(out)
    labels = sum(len(json.loads(line)["phi"]) for line in labelled.read_text().splitlines())
    assert report["records"] == 15 and report["values"] == labels
    assert report["names"]["total"] + report["structured"]["total"] == labels
    assert all(0.0 <= t["recall"] <= 1.0 for t in report["recall_by_type"].values())
    assert report["records_per_cpu_second"] > 0
    assert not [v for v in _values(labelled) if v in out]


def test_show_misses_writes_an_owner_only_file(cli: Cli, labelled: Path, tmp_path: Path) -> None:
    """--show-misses writes each missed value to a 0600 file, and prints only where it went and how many."""
    misses = tmp_path / "misses.jsonl"
    code, out, err = cli("data", "evaluate-scrub", str(labelled), "--json", "--show-misses", str(misses))
    assert code == 0
    report = json.loads(out)
    rows = [json.loads(line) for line in misses.read_text(encoding="utf-8").splitlines()]
    missed = sum(t["total"] - t["caught"] for t in report["recall_by_type"].values())
    assert len(rows) == missed > 0
    assert stat.S_IMODE(misses.stat().st_mode) == 0o600
    assert set(rows[0]) == {"record", "type", "role", "value"}
    assert f"wrote {missed} missed values" in err
    assert not [r["value"] for r in rows if len(r["value"]) >= 5 and (r["value"] in out or r["value"] in err)]


def test_bad_input_names_the_line(cli: Cli, labelled: Path, tmp_path: Path) -> None:
    """A bad line exits 65 (INTAKE_REJECTED) naming the line and field; a missing file exits 66."""
    bad = tmp_path / "bad.jsonl"
    first = labelled.read_text(encoding="utf-8").splitlines()[0]
    record = json.loads(first)
    del record["phi"]
    bad.write_text(first + "\n" + json.dumps(record) + "\n{oops\n", encoding="utf-8")
    code, _, err = cli("data", "evaluate-scrub", str(bad))
    assert code == 65 and "INTAKE_REJECTED" in err
    assert "line 2, field 'phi': missing required field" in err and "line 3: not valid JSON" in err
    code, _, err = cli("data", "evaluate-scrub", str(tmp_path / "none.jsonl"))
    assert code == 66 and "NOT_FOUND" in err


def test_prepare_refuses_above_the_residual_limit(
    cli: Cli,
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the limit at 0 and the name model suspecting a word left in every record, `data prepare` exits 77
    (POLICY_VIOLATION) with the count, writes nothing and audits the refusal."""
    monkeypatch.setenv("APPLIANCE_INTAKE__MAX_RESIDUAL_PER_1000_RECORDS", "0")
    monkeypatch.setattr(
        _suspects,
        "suspect_name_spans",
        lambda text, threshold: [(i, i + 9) for i in range(len(text)) if text.startswith("potassium", i)],
        raising=False,
    )
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            json.dumps({"instruction": f"Note {i}: potassium {i}.1 mmol/L.", "response": "Repeat.", "subject_id": i})
            + "\n"
            for i in range(10)
        )
    )
    out_dir = tmp_path / "prepared"
    code, _, err = cli("data", "prepare", str(src), "--out", str(out_dir))
    assert code == 77 and "POLICY_VIOLATION" in err and "10 suspected identifiers" in err
    assert not out_dir.exists()
    refused = [e for e in _audit_events(data_dir) if e.get("type") == "data.prepare"]
    assert refused and refused[-1]["outcome"]["error_class"] == "POLICY_VIOLATION"  # type: ignore[index]
