"""Realistic clinical shorthand (exam headings, acronym lists, lab values, verb-first sentences) loses almost no
words to the scrubber. Before stop 14 the tagger had never seen such lines: 4.5% of their words became [NAME] or
[ADDRESS] ("CC: SOB", "Hgb 9.8, Plt 210", "Neuro:", "Diurese with ...")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.intake import Scrubber

LINES = [
    line
    for line in (Path(__file__).parent / "data" / "clinical_shorthand.txt").read_text(encoding="utf-8").splitlines()
    if line and not line.startswith("#")
]
_WORD = re.compile(r"\w+")
MAX_LOST = 0.03  # measured 0.019 on these lines (4.4% before)


def test_shorthand_keeps_its_words() -> None:
    scrubber = Scrubber()
    words = lost = 0
    for line in LINES:
        out, _ = scrubber.scrub_text(line)
        kept = set(_WORD.findall(out))
        found = _WORD.findall(line)
        words += len(found)
        lost += sum(w not in kept for w in found)
    assert len(LINES) > 120
    assert lost / words <= MAX_LOST, f"{lost} of {words} words lost"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("CC: SOB. HPI: 67 y/o F with dyspnea.", "SOB"),  # CC in capitals is the chief complaint
        ("PMH: HTN, DM2, CKD3. Meds: ASA 81, Lipitor 40.", "ASA 81"),  # acronyms do not make a note ALL CAPS
        ("Contact: ICU charge nurse.", "ICU"),  # a 2-3 letter acronym after a trigger
    ],
)
def test_acronyms_are_not_names(text: str, kept: str) -> None:
    out, _ = Scrubber().scrub_text(text)
    assert kept in out, out


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("cc: Marta Quellbrook", "Quellbrook"),  # a copy list in lower case still names
        ("Pt: LEE, John seen today.", "LEE"),  # a short surname in capitals after a label
        ("PATIENT: JOHN SMITH SEEN ON MAY 5, 2024 WITH SOB AND CP", "SMITH"),  # a note in capitals
    ],
)
def test_names_beside_acronyms_still_go(text: str, name: str) -> None:
    out, _ = Scrubber().scrub_text(text)
    assert name not in out, out
