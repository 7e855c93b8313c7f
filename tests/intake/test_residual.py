"""The residual check: a second scrub pass counts what is left (placeholders ignored), the name model is asked when
it exists, the manifest carries the counts, and `intake.max_residual_per_1000_records` refuses a dataset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import PolicyViolation
from appliance.intake import PLACEHOLDER_TYPES, PrepareOptions, _names, prepare, residual_counts, write_synthetic

SALT = bytes(range(32))


@pytest.fixture
def suspect_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Installs a ``suspect_name_spans`` in the names module (the seam the learned name model will fill) that
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

    monkeypatch.setattr(_names, "suspect_name_spans", spans, raising=False)
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
        monkeypatch.delattr(_names, "suspect_name_spans", raising=False)
        assert residual_counts("Dr. [NAME] noted potassium 3.1; call 617-555-0143.") == {"PHONE": 1}

    def test_the_name_model_is_asked_at_a_lower_threshold(self, suspect_names: list[float]) -> None:
        """Names the model suspects count as NAME, once, and not where a placeholder already stands."""
        counts = residual_counts("Dr. [NAME] noted potassium 3.1, then potassium 3.4.", threshold=0.25)
        assert counts == {"NAME": 2} and suspect_names == [0.25]


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
