"""The JSONL reader: every problem is reported with its line and field, and never with the offending value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import IntakeRejected, NotFound
from appliance.intake import read_records


def _write(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    path.write_bytes(data)
    return path


def _rec(**fields: object) -> str:
    base: dict[str, object] = {"instruction": "Summarise.", "response": "Stable."}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


class TestValid:
    def test_reads_records_with_optional_fields(self, tmp_path: Path) -> None:
        """Records with and without subject_id/metadata are read with their line numbers."""
        path = _write(
            tmp_path / "d.jsonl", [_rec(), _rec(subject_id="P1", metadata={"ward": "ICU"}), _rec(subject_id=7)]
        )
        records, info = read_records(path)
        assert [r.line for r in records] == [1, 2, 3]
        assert records[1].subject_id == "P1" and records[1].metadata == {"ward": "ICU"}
        assert records[2].subject_id == "7"
        assert info.records == 3 and len(info.sha256) == 64

    def test_bom_and_crlf_are_tolerated(self, tmp_path: Path) -> None:
        """A UTF-8 byte-order mark on the first line and CRLF line ends are accepted."""
        path = tmp_path / "d.jsonl"
        path.write_bytes(b"\xef\xbb\xbf" + _rec().encode() + b"\r\n" + _rec().encode() + b"\r\n")
        records, _ = read_records(path)
        assert len(records) == 2


class TestRejected:
    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            (_rec(instruction=3), "line 1, field 'instruction': must be a string, got number"),
            (_rec(response=...), "line 1, field 'response': missing required field"),
            (_rec(response="   "), "line 1, field 'response': must not be empty"),
            (_rec(subject_id=True), "line 1, field 'subject_id': must be a string or an integer, got boolean"),
            (_rec(subject_id=""), "line 1, field 'subject_id': must not be empty"),
            (_rec(metadata=[1]), "line 1, field 'metadata': must be a JSON object, got array"),
            (_rec(patient_name="x"), "line 1, field 'patient_name': unknown field"),
            ('["a", "b"]', "line 1: expected a JSON object, got list"),
            ('{"instruction": "a", "response": "b"', "line 1: not valid JSON"),
            ('{"instruction": "a", "response": "b", "response": "c"}', "line 1, field 'response': duplicate key"),
            ('{"instruction": "a", "response": NaN}', "line 1: not valid JSON"),
            ('{"instruction": "\\ud800", "response": "b"}', "line 1, field 'instruction': contains an unpaired"),
        ],
    )
    def test_each_problem_names_line_and_field(self, tmp_path: Path, line: str, expected: str) -> None:
        """Each kind of malformed record is an IntakeRejected whose message names the line and the field."""
        path = _write(tmp_path / "d.jsonl", [line])
        with pytest.raises(IntakeRejected) as info:
            read_records(path)
        assert expected in str(info.value)

    def test_all_problems_are_collected(self, tmp_path: Path) -> None:
        """Problems on several lines are reported together, each with its own line number."""
        path = _write(tmp_path / "d.jsonl", [_rec(), _rec(instruction=1), "", _rec(), _rec(extra=1)])
        with pytest.raises(IntakeRejected) as info:
            read_records(path)
        message = str(info.value)
        assert "3 problem(s)" in message
        assert "line 2, field 'instruction'" in message
        assert "line 3: blank line" in message
        assert "line 5, field 'extra': unknown field" in message

    def test_non_utf8_names_the_line(self, tmp_path: Path) -> None:
        """A line that is not UTF-8 is rejected with its line number and byte offset."""
        path = _write(tmp_path / "d.jsonl", [_rec(), b'{"instruction": "caf\xe9", "response": "x"}'])
        with pytest.raises(IntakeRejected, match=r"line 2: not valid UTF-8 \(invalid byte at offset 20\)"):
            read_records(path)

    def test_empty_file(self, tmp_path: Path) -> None:
        """An empty file is rejected as empty."""
        path = tmp_path / "d.jsonl"
        path.write_bytes(b"")
        with pytest.raises(IntakeRejected, match="file is empty"):
            read_records(path)

    def test_oversized_record(self, tmp_path: Path) -> None:
        """A line over the size limit is rejected without being parsed."""
        path = _write(tmp_path / "d.jsonl", [_rec(), _rec(response="x" * 500)])
        with pytest.raises(IntakeRejected, match=r"line 2: record is \d+ bytes, over the 200-byte limit"):
            read_records(path, max_record_bytes=200)

    def test_too_deep_metadata(self, tmp_path: Path) -> None:
        """Metadata nested deeper than the limit is rejected."""
        deep: dict[str, object] = {"a": 1}
        for _ in range(10):
            deep = {"a": deep}
        path = _write(tmp_path / "d.jsonl", [_rec(metadata=deep)])
        with pytest.raises(IntakeRejected, match="field 'metadata': nested deeper"):
            read_records(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing input is NotFound."""
        with pytest.raises(NotFound):
            read_records(tmp_path / "nope.jsonl")

    def test_messages_never_echo_values(self, tmp_path: Path) -> None:
        """Error messages name fields but never repeat the record's content (it may be PHI)."""
        secret = "Jane Roe 123-45-6789"
        path = _write(
            tmp_path / "d.jsonl",
            [_rec(instruction=secret, response=5), _rec(**{secret: "x"}), json.dumps({"instruction": [secret]})],
        )
        with pytest.raises(IntakeRejected) as info:
            read_records(path)
        assert "123-45-6789" not in str(info.value) and "Jane" not in str(info.value).split("field")[0]
        assert "line 3, field 'instruction': must be a string, got array" in str(info.value)
