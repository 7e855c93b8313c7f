"""The labelled evaluation-note generator: labels point at text that is there, output is a function of the seed,
and the notes hold every note type, name role and form and every Safe Harbor type."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.intake import PLACEHOLDER_TYPES, generate_labelled_notes, read_labelled, write_labelled_notes
from appliance.intake._labelled import NOTE_TYPES
from appliance.intake._schema import ALLOWED_FIELDS
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def notes() -> list[dict[str, object]]:
    """100 notes (20 of each type), generated once for the module."""
    return generate_labelled_notes(100, seed=21)


def _names(notes: list[dict[str, object]]) -> list[dict[str, str]]:
    return [p for n in notes for p in n["phi"] if p["type"] == "NAME"]  # type: ignore[attr-defined]


class TestLabels:
    def test_every_label_and_keep_phrase_is_in_the_text(self, notes: list[dict[str, object]]) -> None:
        """Each phi value and keep phrase occurs verbatim in the record's text."""
        for note in notes:
            text = f"{note['instruction']}\n{note['response']}"
            for label in note["phi"]:  # type: ignore[attr-defined]
                assert label["value"] in text, label["type"]
            for phrase in note["keep"]:  # type: ignore[attr-defined]
                assert phrase in text

    def test_records_are_intake_records_plus_labels(self, notes: list[dict[str, object]], tmp_path: Path) -> None:
        """Without phi and keep a record has only intake fields, and the file reads back through the evaluator."""
        for note in notes:
            assert set(note) - {"phi", "keep"} <= set(ALLOWED_FIELDS)
        path = tmp_path / "l.jsonl"
        assert write_labelled_notes(path, 25, seed=3) == 25
        records = read_labelled(path)
        assert len(records) == 25 and all(r.phi and r.keep for r in records)

    def test_output_is_a_function_of_the_seed(self) -> None:
        """The same (n, seed) gives the same notes; another seed gives other notes."""
        assert generate_labelled_notes(12, seed=4) == generate_labelled_notes(12, seed=4)
        assert generate_labelled_notes(12, seed=4) != generate_labelled_notes(12, seed=5)

    @pytest.mark.slow
    def test_output_does_not_depend_on_the_hash_seed(self, tmp_path: Path) -> None:
        """Two processes with different string hash seeds write the same notes (a benchmark can be rerun)."""
        outputs = []
        for hash_seed in ("1", "2"):
            path = tmp_path / f"notes-{hash_seed}.jsonl"
            code = (
                "import pathlib, sys, appliance.intake as i; i.write_labelled_notes(pathlib.Path(sys.argv[1]), 150, 13)"
            )
            env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO_ROOT)}
            subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True, timeout=120)
            outputs.append(path.read_bytes())
        assert outputs[0] == outputs[1]


class TestCoverage:
    def test_every_note_type_and_identifier_type(self, notes: list[dict[str, object]]) -> None:
        """All five note types occur, and every placeholder type is labelled somewhere."""
        assert {n["metadata"]["note_type"] for n in notes} == set(NOTE_TYPES)  # type: ignore[index]
        kinds = {p["type"] for n in notes for p in n["phi"]}  # type: ignore[attr-defined]
        assert kinds == set(PLACEHOLDER_TYPES)

    def test_every_name_role_and_many_locales(self, notes: list[dict[str, object]]) -> None:
        """Patients, relatives and clinicians are named, many with letters outside A-Z."""
        names = _names(notes)
        assert {n["role"] for n in names} == {"patient", "relative", "clinician"}
        assert sum(1 for n in names if not n["value"].isascii()) >= 20

    def test_name_forms(self, notes: list[dict[str, object]]) -> None:
        """ALL-CAPS `SURNAME, GIVEN`, `Last, First`, lower case, particles, initials, `First L.` all occur."""
        values = [n["value"] for n in _names(notes)]
        texts = "\n".join(str(n["instruction"]) for n in notes)
        assert any(v.isupper() and ", " in v for v in values)
        assert any(", " in v and not v.isupper() for v in values)
        assert any(v.islower() and " " in v for v in values)
        assert any(re.match(r"(?:van|da|de la|von|di|del|dos|le) ", v) or v.startswith(("Mc", "O'")) for v in values)
        assert any(re.fullmatch(r"\w\. \S.+", v) for v in values)  # J. Smith
        assert any(re.fullmatch(r"\w\.\w\.", v) for v in values)  # A.B.
        assert any(re.fullmatch(r"\S+ \w\.", v) for v in values)  # First L.
        assert re.search(r"\w\. \((?:RN|NP|LPN|RN, BSN)\)", texts)  # a credential in brackets
        assert any(f"{v}'s" in texts for v in values)  # possessives
        assert re.search(r"\b(?:Sister|Brother|Daughter|Son|Wife|Husband|Mother|Father|Niece|Grandson) \w", texts)

    def test_structured_forms(self, notes: list[dict[str, object]]) -> None:
        """Ages over 89 in words, short dates after a label, IBANs, international phones, non-US postcodes."""
        by_type: dict[str, list[str]] = {}
        for n in notes:
            for p in n["phi"]:  # type: ignore[attr-defined]
                by_type.setdefault(p["type"], []).append(p["value"])
        assert any(re.search(r"[a-z]", v) for v in by_type["AGE"])
        assert all(int(v) > 89 for v in by_type["AGE"] if v.isdigit())
        assert any(re.fullmatch(r"\d{1,2}/\d{1,2}", v) for v in by_type["DATE"])
        assert any(re.fullmatch(r"[A-Z]{2}\d\d(?: [\dA-Z]{1,4})+", v) for v in by_type["ACCOUNT"])
        assert any(v.startswith("+") and not v.startswith("+1 ") for v in by_type["PHONE"] + by_type["FAX"])
        assert any(re.search(r"[A-Z]", v) or "-" in v for v in by_type["ZIP"])
        assert any("." in v or " " in v for v in by_type["LICENSE"])

    def test_clinical_phrases_to_keep(self, notes: list[dict[str, object]]) -> None:
        """Drugs (brands too), lab values with units and eponyms are listed as phrases to keep."""
        keep = {p for n in notes for p in n["keep"]}  # type: ignore[attr-defined]
        assert "Foley catheter" in keep and "Will follow up" in keep
        assert any("'s " in p for p in keep) and any("mmol/L" in p for p in keep)
        assert any(p.split()[0] in {"Eliquis", "Lasix", "Keppra", "Xarelto", "Lipitor"} for p in keep)

    def test_json_lines_round_trip(self, tmp_path: Path) -> None:
        """write_labelled_notes writes one JSON object per line, UTF-8, non-ASCII kept as is."""
        path = tmp_path / "l.jsonl"
        write_labelled_notes(path, 10, seed=8)
        lines = path.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == generate_labelled_notes(10, seed=8)
