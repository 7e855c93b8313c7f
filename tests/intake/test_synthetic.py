"""The bundled task is learnable: every answer follows from its note by the documented rules, after scrubbing too."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from appliance.intake import prepare, write_synthetic
from appliance.intake._synthetic import CONDITIONS, MEDS, SHORT_TASKS, TASKS, generate_records

_VITALS = re.compile(r"BP (\d+)/\d+ mmHg, HR (\d+) bpm, SpO2 (\d+)%, temperature ([\d.]+) C", re.IGNORECASE)
_ACUTE = ("pneumonia", "COPD exacerbation", "heart failure", "cellulitis", "appendicitis")


def _derive(task_line: str, note: str) -> str | None:
    """The short answer a reader of the note computes by the docstring's rules (independent of the generator)."""
    task = next(name for name, (line, _) in TASKS.items() if line.lower() == task_line.strip().lower())
    condition = re.search(r"with (.+?)\. Vitals", note, re.IGNORECASE)
    assert condition is not None
    diagnosis = condition.group(1)
    if task == "urgency":
        vitals = _VITALS.search(note)
        assert vitals is not None
        sbp, hr, spo2, temp = int(vitals[1]), int(vitals[2]), int(vitals[3]), float(vitals[4])
        if spo2 < 90 or sbp < 90 or hr > 130:
            return "high"
        acute = any(word.lower() in diagnosis.lower() for word in _ACUTE)
        return "medium" if spo2 <= 93 or hr > 100 or temp >= 38.0 or sbp >= 180 or acute else "low"
    if task == "icd10":
        return next(chapter for name, (chapter, _) in CONDITIONS.items() if name.lower() == diagnosis.lower())
    if task == "drug_class":
        med = re.search(r"Discharged on (.+?)\.", note, re.IGNORECASE)
        assert med is not None
        return next(cls for name, cls in MEDS.items() if name.lower() == med.group(1).lower())
    if task == "follow_up":
        weeks = re.search(r"primary care in (\d+ weeks?)\.", note, re.IGNORECASE)
        assert weeks is not None
        return f"in {weeks.group(1)}"
    return None  # free text


def test_short_answers_follow_from_the_raw_notes() -> None:
    """For every short-answer record of the generator, the response equals what the rules derive from the note."""
    checked = 0
    for record in generate_records(600, 11):
        task_line, note = str(record["instruction"]).split("\n\n", 1)
        expected = _derive(task_line, note)
        if expected is not None:
            assert str(record["response"]).lower() == expected.lower()
            checked += 1
    assert checked > 400


def test_answers_survive_scrubbing(tmp_path: Path) -> None:
    """After `data prepare` (PHI replaced), every short answer is still derivable from the prepared note."""
    source = tmp_path / "synthetic.jsonl"
    write_synthetic(source, n=200, seed=3)
    prepared = prepare(source, tmp_path / "prepared").path
    lines = (prepared / "train.jsonl").read_text().splitlines() + (prepared / "eval.jsonl").read_text().splitlines()
    derived = 0
    for line in lines:
        record = json.loads(line)
        task_line, note = record["instruction"].split("\n\n", 1)
        expected = _derive(task_line, note)
        if expected is not None:
            assert record["response"].lower() == expected.lower()
            derived += 1
    assert "[NAME]" in "".join(lines) and derived > len(lines) // 2


def test_every_task_and_class_occurs() -> None:
    """The 600 bundled records hold every task, and every urgency level at least 10% of the urgency records."""
    records = generate_records(600, 2024)
    tasks = Counter(str(r["instruction"]).split("\n\n", 1)[0] for r in records)
    assert {line for line, _ in TASKS.values()} <= set(tasks)
    levels = Counter(str(r["response"]) for r in records if str(r["instruction"]).startswith(TASKS["urgency"][0]))
    total = sum(levels[k] for k in ("low", "medium", "high"))
    assert all(levels[k] >= 0.1 * total for k in ("low", "medium", "high"))
    short = sum(str(r["instruction"]).startswith(tuple(TASKS[t][0] for t in SHORT_TASKS)) for r in records)
    assert short >= 0.7 * len(records)
