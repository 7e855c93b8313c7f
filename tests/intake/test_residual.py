"""The residual check: a second scrub pass counts what is left (placeholders ignored), the name model is asked when
it exists, the manifest carries the counts, and `intake.max_residual_per_1000_records` refuses a dataset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import PolicyViolation
from appliance.intake import (
    PLACEHOLDER_TYPES,
    PrepareOptions,
    Scrubber,
    _suspects,
    generate_labelled_notes,
    generate_records,
    prepare,
    residual_counts,
    write_synthetic,
)
from appliance.intake._case import case_normalised as _case_normalised
from appliance.intake._prepare import _residual_check
from appliance.intake._residual import _suspect_names

SALT = bytes(range(32))


@pytest.fixture
def suspect_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Replaces ``_suspects.suspect_name_spans`` (the learned name model) that
    suspects every "potassium" (a stand-in for a word the scrubber keeps); yields the thresholds it was asked with."""
    asked: list[float] = []

    def spans(text: str, threshold: float) -> list[tuple[int, int, float]]:
        asked.append(threshold)
        out = []
        for word in ("potassium", "[NAME]"):  # a placeholder it suspects must not count
            at = text.find(word)
            while at >= 0:
                out.append((at, at + len(word), 0.4))
                at = text.find(word, at + 1)
        return out

    monkeypatch.setattr(_suspects, "suspect_name_spans", spans)
    yield asked


class TestResidualCounts:
    def test_placeholders_alone_are_not_residuals(self) -> None:
        """Scrubbed text holding only placeholders and clinical words has nothing left."""
        text = "Dr. [NAME] saw [NAME], [NAME] on [DATE] (MRN [MRN]); potassium 3.2 mmol/L, Foley catheter in."
        assert residual_counts(text) == {}

    def test_identifiers_left_are_counted_by_type(self) -> None:
        """What the second pass would still replace is counted by its type, and nothing else."""
        text = "Dr. [NAME] saw [NAME]. Call 617-555-0143 or write to jo@example.org about [DATE]."
        assert residual_counts(text) == {"PHONE": 1, "EMAIL": 1}

    def test_a_name_next_to_a_placeholder_is_counted(self) -> None:
        """A census name the first pass left beside a placeholder counts as one NAME."""
        assert residual_counts("Seen by [NAME] and Mary Johnson on the ward.")["NAME"] == 1

    def test_without_the_name_model_it_still_works(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The names module may lack suspect_name_spans: the check runs on the scrubber alone."""
        monkeypatch.delattr(_suspects, "suspect_name_spans")
        assert residual_counts("Dr. [NAME] noted potassium 3.1; call 617-555-0143.") == {"PHONE": 1}

    def test_the_name_model_is_asked_at_a_lower_threshold(self, suspect_names: list[float]) -> None:
        """Names the model suspects count as NAME, once, and not where a placeholder already stands."""
        counts = residual_counts("Dr. [NAME] noted potassium 3.1, then potassium 3.4.", threshold=0.25)
        assert counts == {"NAME": 2} and suspect_names == [0.25]


class TestOnScrubbedText:
    """The second pass reads placeholders as what they stand for: scrubbed text is quiet, names left in are not."""

    def test_the_learned_name_model_is_wired_in(self) -> None:
        """The residual check asks the tagger's suspect_name_spans, where the scrubber exports it."""
        assert _suspect_names() is _suspects.suspect_name_spans

    @pytest.mark.parametrize(
        "text",
        [
            "ARRIVED BY CAR, LICENSE PLATE [VEHICLE]. INSURANCE MEMBER ID [ID]. DAUGHTER [NAME] IS THE CONTACT.",
            "Dear Dr. [NAME],\n\nRe: Mrs. [NAME], DOB [DATE], NHS number [PHONE]\nAddress: [ADDRESS], [ZIP]",
            "Yours sincerely,\n\n[NAME], MD\nRN license [LICENSE]\nFax: [FAX]",
            "hi this is [NAME], my mom [NAME] had a fall on [DATE], call me at [PHONE] please",
        ],
    )
    def test_placeholders_in_any_case_are_not_read_as_names_or_places(self, text: str) -> None:
        """Words beside placeholders ("LICENSE PLATE [VEHICLE]", "DOB [DATE]", "[NAME], MD") are not suspects."""
        assert residual_counts(text) == {}

    def test_placeholders_do_not_decide_the_letter_case(self) -> None:
        """A lower-case message stays lower case for the scrubber however many placeholders it holds, and its
        word-cased copy keeps the placeholders as written."""
        text = "hi this is [NAME] and [NAME], seen [DATE] at [ADDRESS], call [PHONE] or [PHONE] or [PHONE]"
        probe, mode = _case_normalised(text)
        assert mode == "lower" and "[NAME]" in probe and "[ADDRESS]" in probe and probe.startswith("Hi This")

    def test_scrubbed_datasets_stay_under_the_default_limit(self) -> None:
        """Synthetic records and labelled evaluation notes, once scrubbed, pass the default limit (5 per 1000):
        what is left is what the scrubber missed, not placeholders read as names."""
        scrubber = Scrubber()
        records = generate_records(200, seed=91)
        texts = []
        for rec in records:
            fields, _ = scrubber.scrub_fields(
                {"instruction": rec["instruction"], "response": rec["response"]}, context=rec.get("metadata")
            )
            texts.append((fields["instruction"], fields["response"]))
        assert _residual_check(Path("s.jsonl"), texts, 5.0)["per_1000_records"] <= 5.0

    def test_a_dataset_with_its_names_left_in_is_refused(self) -> None:
        """Labelled notes with every identifier but the names replaced: the check refuses them, by NAME."""
        texts = []
        for rec in generate_labelled_notes(40, seed=92):
            text = rec["instruction"]
            for p in sorted(rec["phi"], key=lambda p: -len(p["value"])):
                if p["type"] != "NAME":
                    text = text.replace(p["value"], f"[{p['type']}]")
            texts.append((text, rec["response"]))
        with pytest.raises(PolicyViolation, match=r"NAME \d+"):
            _residual_check(Path("l.jsonl"), texts, 5.0)


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _potassium_records(n: int) -> list[dict[str, object]]:
    return [
        {
            "instruction": f"Summarise note {i}: potassium {3 + i / 10:.1f} mmol/L, repeat tomorrow.",
            "response": f"Repeat the level in {i + 1} days.",
            "subject_id": f"S{i:03d}",
        }
        for i in range(n)
    ]


class TestPrepare:
    def test_manifest_carries_the_residual_counts(self, tmp_path: Path) -> None:
        """The bundled-style dataset prepares under the default limit and its manifest has counts per type."""
        src = tmp_path / "s.jsonl"
        write_synthetic(src, n=120, seed=5)
        result = prepare(src, tmp_path / "out", salt=SALT)
        residual = result.manifest["residual"]
        assert set(residual["counts"]) == set(PLACEHOLDER_TYPES)
        assert residual["total"] == sum(residual["counts"].values())
        assert residual["max_per_1000_records"] == 5.0 and residual["per_1000_records"] <= 5.0
        manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert manifest["residual"] == residual

    def test_above_the_limit_the_dataset_is_refused(self, tmp_path: Path, suspect_names: list[float]) -> None:
        """20 records with one suspected name each (1000 per 1000 records) are refused, nothing is written, and the
        message gives the count, the types and what to do, never the value."""
        src = _write(tmp_path / "in.jsonl", _potassium_records(20))
        out = tmp_path / "out"
        with pytest.raises(PolicyViolation) as info:
            prepare(src, out, PrepareOptions(max_residual_per_1000_records=5), salt=SALT)
        message = str(info.value)
        assert "20 suspected identifiers" in message and "NAME 20" in message and "1000.0 per 1000" in message
        assert "intake.max_residual_per_1000_records" in message and "evaluate-scrub" in message
        assert "potassium" not in message
        assert not out.exists() and list(tmp_path.iterdir()) == [src]

    def test_at_or_below_the_limit_it_is_prepared(self, tmp_path: Path, suspect_names: list[float]) -> None:
        """The same dataset passes when the limit allows its rate, and the manifest records the count."""
        src = _write(tmp_path / "in.jsonl", _potassium_records(20))
        result = prepare(src, tmp_path / "out", PrepareOptions(max_residual_per_1000_records=1000), salt=SALT)
        assert result.manifest["residual"]["counts"]["NAME"] == 20
        assert result.manifest["residual"]["per_1000_records"] == 1000.0

    def test_a_negative_limit_is_refused(self) -> None:
        """The limit cannot be negative."""
        with pytest.raises(Exception, match="max_residual_per_1000_records"):
            PrepareOptions(max_residual_per_1000_records=-1)
