"""Prepared datasets in, privacy units out: validation errors, subject grouping, per-unit loss weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import ApplianceError, IntegrityViolation, NotFound
from appliance.training._data import Record, build_units, read_prepared
from tests.training.conftest import fingerprint_of, write_prepared


def _rewrite_train(path: Path, lines: list[bytes]) -> None:
    """Replace train.jsonl and re-fingerprint (so only the content is malformed, not the fingerprint)."""
    import hashlib

    data = b"".join(line + b"\n" for line in lines)
    (path / "train.jsonl").write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["fingerprint"] = hashlib.sha256(data + (path / "eval.jsonl").read_bytes()).hexdigest()
    manifest["counts"]["train"] = len(lines)
    (path / "manifest.json").write_text(json.dumps(manifest))


class TestReadPrepared:
    def test_reads_and_fingerprints(self, prepared: Path) -> None:
        """A prepared dataset loads with its manifest fingerprint and its subjects."""
        ds = read_prepared(prepared)
        assert ds.fingerprint == fingerprint_of(prepared)
        assert len(ds.train) == 48 and len(ds.eval) == 8
        assert all(r.subject for r in ds.train)

    def test_missing_directory(self, tmp_path: Path) -> None:
        """A dataset path that does not exist is NotFound."""
        with pytest.raises(NotFound):
            read_prepared(tmp_path / "nope")

    def test_raw_jsonl_is_not_a_prepared_dataset(self, tmp_path: Path) -> None:
        """A directory without a manifest is refused with a pointer to `data prepare`."""
        (tmp_path / "raw").mkdir()
        (tmp_path / "raw" / "train.jsonl").write_text('{"instruction": "a", "response": "b"}\n')
        with pytest.raises(ApplianceError, match="prepare"):
            read_prepared(tmp_path / "raw")

    def test_changed_after_prepare(self, prepared: Path) -> None:
        """Editing train.jsonl after preparation breaks the fingerprint: IntegrityViolation."""
        with (prepared / "train.jsonl").open("ab") as fh:
            fh.write(b'{"instruction": "x", "response": "y", "subject": "z"}\n')
        with pytest.raises(IntegrityViolation, match="fingerprint"):
            read_prepared(prepared)

    @pytest.mark.parametrize(
        "line",
        [
            b"{not json",
            b'{"instruction": "a"}',
            b'"just a string"',
            b'{"instruction": "a", "response": 5}',
            b"\xff\xfe",
        ],
    )
    def test_malformed_record_names_the_line(self, prepared: Path, line: bytes) -> None:
        """A malformed record (bad JSON, missing field, wrong type, not UTF-8) is an error naming its line."""
        good = (prepared / "train.jsonl").read_bytes().splitlines()[:3]
        _rewrite_train(prepared, [*good, line])
        with pytest.raises(ApplianceError, match=r"train.jsonl line 4"):
            read_prepared(prepared)


class _WordTokenizer:
    """A stand-in tokenizer (one id per character) so unit grouping is tested without a model."""

    chat_template = None
    eos_token = "$"

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % 250 for c in text]}


class TestUnits:
    def test_record_units_weights_sum_to_one(self) -> None:
        """Each record unit's target weights sum to 1 and cover only response tokens."""
        recs = [Record("question one", "answer", "s1"), Record("q2", "longer answer here", "s1")]
        units = build_units(
            _WordTokenizer(), recs, max_length=64, privacy_unit="record", max_records_per_subject=4, seed=0
        )  # type: ignore[arg-type]
        assert len(units) == 2
        for u in units:
            assert sum(u.weights) == pytest.approx(1.0)
            assert u.weights[0] == 0.0

    def test_subject_units_bound_each_subject(self) -> None:
        """Per subject there is one unit with at most k records, its weights summing to 1; no subject is lost."""
        recs = [Record(f"q{i}", f"a{i}", "s1") for i in range(10)] + [Record("q", "a", "s2"), Record("q", "a", None)]
        units = build_units(
            _WordTokenizer(), recs, max_length=32, privacy_unit="subject", max_records_per_subject=3, seed=0
        )  # type: ignore[arg-type]
        assert len(units) == 3  # s1, s2 and the record without a subject
        assert sorted(u.records for u in units) == [1, 1, 3]
        for u in units:
            assert sum(u.weights) == pytest.approx(1.0)

    def test_truncation_keeps_the_response(self) -> None:
        """A prompt longer than the window loses its middle; its head, its tail and the response remain."""
        recs = [Record("TASK" + "x" * 500 + "END", "the answer", None)]
        tok = _WordTokenizer()
        (unit,) = build_units(tok, recs, max_length=64, privacy_unit="record", max_records_per_subject=1, seed=0)  # type: ignore[arg-type]
        assert len(unit.ids) <= 64 and sum(unit.weights) == pytest.approx(1.0)
        head = tok("### Instruction:\nTASK")["input_ids"]
        assert unit.ids[: len(head)] == head
        answer = tok("the answer$")["input_ids"]
        assert unit.ids[-len(answer) :] == answer
        tail = tok("END\n### Response:\n")["input_ids"]
        assert unit.ids[-len(answer) - len(tail) : -len(answer)] == tail


def test_write_prepared_fixture_matches_contract(tmp_path: Path) -> None:
    """The test fixture writes the manifest fields contracts.md lists."""
    path = write_prepared(tmp_path / "d")
    manifest = json.loads((path / "manifest.json").read_text())
    assert {"format_version", "fingerprint", "counts", "scrub_report", "subjects", "source", "created_at"} <= set(
        manifest
    )
