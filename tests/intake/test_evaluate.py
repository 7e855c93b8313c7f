"""The scrub evaluator: the 4-character rule, known recall on hand-built records, strict input, the misses file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import ClassVar

import pytest

from appliance.errors import IntakeRejected, NotFound
from appliance.intake import evaluate_scrubber, read_labelled, write_misses
from appliance.intake._evaluate import (
    LabelledRecord,
    Miss,
    phrase_kept,
    score,
    survival,
    value_caught,
    value_occurrences,
)


def _caught(value: str, text: str, scrubbed: str, keep: tuple[str, ...] = ()) -> bool:
    return value_caught(value, text, survival(text, scrubbed), keep)


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _record(instruction: str, phi: list[dict[str, str]], keep: list[str] | None = None) -> dict[str, object]:
    rec: dict[str, object] = {"instruction": instruction, "response": "ok", "phi": phi}
    if keep is not None:
        rec["keep"] = keep
    return rec


class TestCatchRule:
    def test_a_replaced_value_is_caught(self) -> None:
        """A value wholly replaced by a placeholder is caught."""
        assert _caught("Anna Kowalczyk", "Seen: Anna Kowalczyk today.", "Seen: [NAME] today.")

    def test_four_surviving_characters_are_a_miss(self) -> None:
        """A fragment of 4 characters of one piece ("czyk" of "Kowalczyk") left in place is a miss."""
        assert not _caught("Kowalczyk", "Dr. Kowalczyk saw her.", "Dr. [NAME]czyk saw her.")

    def test_three_surviving_characters_are_not(self) -> None:
        """A fragment of 3 characters ("zyk", "ễn") is below the rule's length and the value counts as caught."""
        assert _caught("Kowalczyk", "Dr. Kowalczyk saw her.", "Dr. [NAME]zyk saw her.")
        assert _caught("Nguyễn", "Mr. Nguyễn called.", "Mr. [NAME]ễn called.")

    def test_four_characters_must_be_consecutive_in_one_piece(self) -> None:
        """Pieces are runs of letters and digits: "617-555-" surviving of a phone number is not 4 in one piece."""
        assert _caught("617-555-0143", "call 617-555-0143 now", "call 617-555-[PHONE] now")
        assert not _caught("617-555-0143", "call 617-555-0143 now", "call [PHONE]-0143 now")

    def test_short_values_must_not_survive_whole(self) -> None:
        """A value with no piece of 4 characters is missed when one of its longest pieces survives whole."""
        assert not _caught("Ana", "Sister Ana visited.", "Sister Ana visited.")
        assert _caught("Ana", "Sister Ana visited.", "Sister [NAME] visited.")
        assert _caught("Wei C.", "Wei C. (RN) here", "[NAME] C. (RN) here")  # "C" alone identifies no one
        assert not _caught("92", "a 92 yo man", "a 92 yo man")

    def test_every_occurrence_counts(self) -> None:
        """A value replaced in one place but left in another is a miss."""
        text = "Bella Correia called. Correia will visit."
        assert not _caught("Correia", text, "[NAME] called. Correia will visit.")
        assert _caught("Correia", text, "[NAME] called. [NAME] will visit.")

    def test_a_keep_phrase_is_not_an_occurrence(self) -> None:
        """The surname Bell is caught when the person's name goes and "Bell's palsy" stays."""
        text = "Mrs. Bell has Bell's palsy."
        scrubbed = "Mrs. [NAME] has Bell's palsy."
        assert value_occurrences(text, "Bell", ["Bell's palsy"]) == [5]
        assert _caught("Bell", text, scrubbed, ("Bell's palsy",))
        assert not _caught("Bell", text, scrubbed)  # without the keep phrase its occurrence there counts

    def test_a_value_inside_a_longer_word_is_not_an_occurrence(self) -> None:
        """ "Park" the name is not the "Park" of "Parkinson's"."""
        text = "Mr. Park has Parkinson's disease."
        assert _caught("Park", text, "Mr. [NAME] has Parkinson's disease.")

    def test_keep_phrases_must_survive_intact(self) -> None:
        """A keep phrase is kept only when every character of every occurrence survives."""
        text = "K 3.2 mmol/L. Foley catheter placed."
        assert phrase_kept("Foley catheter", text, survival(text, "K 3.2 mmol/L. Foley catheter placed."))
        assert not phrase_kept("Foley catheter", text, survival(text, "K 3.2 mmol/[NAME] catheter placed."))

    def test_output_without_placeholders_is_aligned_too(self) -> None:
        """Output that is not placeholder-shaped (asterisks, rewording) falls back to a character alignment."""
        text = "Seen by Dr. Kowalczyk on ward 4."
        assert _caught("Kowalczyk", text, "Seen by Dr. XXXXXXXXX on ward 4.")
        assert not _caught("Kowalczyk", text, "Seen by Dr Kowalczyk, ward 4.")


class TestScore:
    def test_known_recall_per_type_role_and_kept(self) -> None:
        """Hand-built records and outputs give exactly the recall, role split and kept rate expected."""
        path_records = [
            _record(
                "Pt ANNA NOWAK, MRN 1234567, son Piotr Nowak (617-555-0143). Dr. Lee. Foley catheter in.",
                [
                    {"type": "NAME", "value": "ANNA NOWAK", "role": "patient"},
                    {"type": "MRN", "value": "1234567"},
                    {"type": "NAME", "value": "Piotr Nowak", "role": "relative"},
                    {"type": "PHONE", "value": "617-555-0143"},
                    {"type": "NAME", "value": "Lee", "role": "clinician"},
                ],
                ["Foley catheter"],
            ),
            _record(
                "Seen 3/4 by Wu. Bell's palsy.",
                [{"type": "DATE", "value": "3/4"}, {"type": "NAME", "value": "Wu", "role": "clinician"}],
                ["Bell's palsy"],
            ),
        ]
        outputs = [
            "Pt [NAME], MRN [MRN], son [NAME]owak ([PHONE]). Dr. Lee. [NAME] catheter in.\nok",
            "Seen 3/4 by [NAME]. Bell's palsy.\nok",
        ]
        records = [_labelled(r, i + 1) for i, r in enumerate(path_records)]
        result = score(records, outputs).as_dict()
        assert result["records"] == 2 and result["values"] == 7
        assert result["recall_by_type"]["NAME"] == {"caught": 2, "total": 4, "recall": 0.5}
        assert result["recall_by_type"]["DATE"]["caught"] == 0
        assert result["structured"] == {"caught": 2, "total": 3, "recall": 0.6667}
        assert result["names_by_role"] == {
            "clinician": {"caught": 1, "total": 2, "recall": 0.5},
            "patient": {"caught": 1, "total": 1, "recall": 1.0},
            "relative": {"caught": 0, "total": 1, "recall": 0.0},
        }
        assert result["kept"] == {"kept": 1, "total": 2, "rate": 0.5}

    def test_the_report_holds_no_value(self, tmp_path: Path) -> None:
        """The report of a real scrub holds counts and types, never a labelled value or a note's text."""
        value = "Zyntharia Quellbrook"
        path = _write(tmp_path / "l.jsonl", [_record(f"Note for {value}, born 1/2/1950.", [_n(value)])])
        records = read_labelled(path)
        result = evaluate_scrubber(records)
        body = json.dumps(result.as_dict())
        assert "Zyntharia" not in body and "Quellbrook" not in body and "1950" not in body
        assert result.as_dict()["records_per_cpu_second"] is None or result.cpu_seconds > 0


def _n(value: str, role: str = "patient") -> dict[str, str]:
    return {"type": "NAME", "value": value, "role": role}


def _labelled(obj: dict[str, object], line: int) -> LabelledRecord:
    from appliance.intake._evaluate import Label
    from appliance.intake._schema import Record

    rec = Record(line=line, instruction=str(obj["instruction"]), response="ok", subject_id=None, metadata=None)
    labels = tuple(Label(p["type"], p["value"], p.get("role")) for p in obj["phi"])  # type: ignore[attr-defined]
    return LabelledRecord(rec, labels, tuple(obj.get("keep", ())))  # type: ignore[arg-type]


class TestInput:
    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            ("{not json", "line 2: not valid JSON"),
            (json.dumps({"instruction": "Note for Ana.", "response": "ok"}), "line 2, field 'phi': missing"),
            (json.dumps({**_record("Note for Ana.", []), "phi": {}}), "line 2, field 'phi': must be an array"),
            (json.dumps(_record("Note for Ana.", [{"type": "NAME", "value": 7}])), "field 'phi[0].value': must"),  # type: ignore[dict-item]
            (json.dumps(_record("Note for Ana.", [{"type": "name", "value": "Ana"}])), "field 'phi[0].type': must"),
            (json.dumps(_record("Note for Ana.", [_n("Ana", "Patient")])), "field 'phi[0].role': must"),
            (json.dumps(_record("Note for Ana.", [_n("Bob")])), "field 'phi[0].value': does not occur"),
            (json.dumps({**_record("Note for Ana.", [_n("Ana")]), "keep": "x"}), "line 2, field 'keep': must"),
            (json.dumps(_record("Note for Ana.", [_n("Ana")], ["Foley"])), "field 'keep[0]': does not occur"),
            (json.dumps({**_record("Note for Ana.", [_n("Ana")]), "extra": 1}), "field 'extra': unknown field"),
            (json.dumps({**_record("Note for Ana.", [_n("Ana")]), "instruction": 5}), "field 'instruction': must"),
        ],
    )
    def test_bad_lines_are_named(self, tmp_path: Path, line: str, expected: str) -> None:
        """Each kind of bad input is refused with its line and field named, and never echoes a value."""
        good = json.dumps(_record("Note for Ana Lee.", [_n("Ana Lee")]))
        path = tmp_path / "l.jsonl"
        path.write_text(good + "\n" + line + "\n", encoding="utf-8")
        with pytest.raises(IntakeRejected) as info:
            read_labelled(path)
        text = str(info.value)
        assert expected in text and "line 1" not in text
        assert "Bob" not in text and "Ana" not in text

    def test_missing_file_and_empty_file(self, tmp_path: Path) -> None:
        """A missing file is NOT_FOUND; an empty one is refused."""
        with pytest.raises(NotFound):
            read_labelled(tmp_path / "none.jsonl")
        (tmp_path / "e.jsonl").write_text("")
        with pytest.raises(IntakeRejected, match="empty"):
            read_labelled(tmp_path / "e.jsonl")


class TestMissesFile:
    MISSES: ClassVar[list[Miss]] = [Miss(3, "NAME", "patient", "Anna Nowak"), Miss(4, "DATE", None, "3/4")]

    def test_written_owner_only_as_json_lines(self, tmp_path: Path) -> None:
        """The misses file has mode 0600 and one JSON object per missed value, and no temporary file is left."""
        path = tmp_path / "misses.jsonl"
        write_misses(path, self.MISSES)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows[0] == {"record": 3, "type": "NAME", "role": "patient", "value": "Anna Nowak"}
        assert sorted(os.listdir(tmp_path)) == ["misses.jsonl"]

    def test_replaces_a_file_atomically_with_owner_only_mode(self, tmp_path: Path) -> None:
        """An existing world-readable file is replaced by a new 0600 file."""
        path = tmp_path / "misses.jsonl"
        path.write_text("old\n")
        path.chmod(0o644)
        write_misses(path, self.MISSES[:1])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "old" not in path.read_text()

    def test_refuses_a_symlink(self, tmp_path: Path) -> None:
        """A symlink at the path is refused and its target left untouched."""
        target = tmp_path / "target"
        target.write_text("untouched")
        link = tmp_path / "misses.jsonl"
        link.symlink_to(target)
        with pytest.raises(IntakeRejected, match="symbolic link"):
            write_misses(link, self.MISSES)
        assert target.read_text() == "untouched" and link.is_symlink()
