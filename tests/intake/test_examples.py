"""The bundled example dataset is the generator's output (no real patient) and prepares cleanly."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.intake import generate_records, read_records
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "synthetic_clinical.jsonl"


def test_example_is_exactly_the_generated_dataset() -> None:
    """examples/synthetic_clinical.jsonl equals `appliance data synth --records 600 --seed 2024`, byte for byte."""
    expected = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in generate_records(600, 2024))
    assert EXAMPLE.read_text(encoding="utf-8") == expected


def test_example_is_valid_and_has_shared_subjects(tmp_path: Path) -> None:
    """The example passes validation, and several records share a subject while some have none."""
    records, _ = read_records(EXAMPLE)
    assert len(records) == 600
    per_subject: dict[str, int] = {}
    for r in records:
        if r.subject_id is not None:
            per_subject[r.subject_id] = per_subject.get(r.subject_id, 0) + 1
    assert max(per_subject.values()) > 1
    assert any(r.subject_id is None for r in records)
