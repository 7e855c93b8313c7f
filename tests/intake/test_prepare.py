"""`prepare` and `load_prepared`: subject-preserving split, salted digests, fingerprint, atomic output."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest
import structlog

from appliance.errors import AuditUnavailable, Conflict, IntakeRejected, IntegrityViolation, NotFound
from appliance.intake import PrepareOptions, load_prepared, prepare, subject_digest, write_synthetic
from appliance.intake._synthetic import FIRST, LAST

SALT = bytes(range(32))


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _records(subjects: int, per_subject: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for s in range(subjects):
        for i in range(per_subject):
            out.append(
                {
                    "instruction": f"Question {s}-{i} about case {s * 100 + i}: describe finding number {i} in detail.",
                    "response": f"Answer {s}-{i}: distinct content {s * 7 + i * 13} for this record.",
                    "subject_id": f"S{s:03d}",
                }
            )
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled-style synthetic dataset (300 records), generated once for the module."""
    path = tmp_path_factory.mktemp("synth") / "synthetic.jsonl"
    write_synthetic(path, n=300, seed=5)
    return path


class TestSplitAndSubjects:
    def test_subjects_never_straddle_the_split(self, tmp_path: Path) -> None:
        """All records of one subject land in the same split, and both splits are non-empty."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=20, per_subject=3))
        result = prepare(src, tmp_path / "out", PrepareOptions(eval_fraction=0.2))
        ds = load_prepared(result.path)
        train_subjects = {r.subject for r in ds.train}
        eval_subjects = {r.subject for r in ds.eval}
        assert train_subjects and eval_subjects
        assert not train_subjects & eval_subjects
        assert len(ds.train) + len(ds.eval) == 60
        assert 9 <= len(ds.eval) <= 15

    def test_digests_are_salted_hmacs_and_no_raw_id_is_written(self, tmp_path: Path) -> None:
        """Subjects appear only as HMAC-SHA256(salt, subject_id); raw ids are nowhere in the output."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=5, per_subject=2))
        result = prepare(src, tmp_path / "out", salt=SALT)
        manifest = result.manifest
        assert manifest["subjects"]["salt"] == SALT.hex()
        expected = {hmac.new(SALT, f"S{s:03d}".encode(), hashlib.sha256).hexdigest() for s in range(5)}
        assert set(manifest["subjects"]["digests"]) == expected
        assert subject_digest(SALT, "S000") in expected
        for name in ("train.jsonl", "eval.jsonl", "manifest.json"):
            assert not re.search(r"\bS00\d\b", (result.path / name).read_text())

    def test_records_without_subject_are_their_own_units(self, tmp_path: Path) -> None:
        """Each record without a subject_id gets its own digest, distinct from every other."""
        records = _records(subjects=1, per_subject=4)
        for r in records:
            del r["subject_id"]
        src = _write(tmp_path / "in.jsonl", records)
        ds = load_prepared(prepare(src, tmp_path / "out", PrepareOptions(eval_fraction=0.25)).path)
        subjects = [r.subject for r in ds.train + ds.eval]
        assert len(set(subjects)) == 4
        assert len(ds.eval) == 1

    def test_one_subject_cannot_be_split(self, tmp_path: Path) -> None:
        """A dataset with a single subject is rejected when an eval split is asked for."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=1, per_subject=3))
        with pytest.raises(IntakeRejected, match="at least 2"):
            prepare(src, tmp_path / "out")
        assert not (tmp_path / "out").exists()

    def test_split_is_deterministic_for_a_seed(self, tmp_path: Path) -> None:
        """The same input, seed and salt give byte-identical files and the same fingerprint."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=10, per_subject=2))
        a = prepare(src, tmp_path / "a", salt=SALT)
        b = prepare(src, tmp_path / "b", salt=SALT)
        c = prepare(src, tmp_path / "c", PrepareOptions(split_seed=99), salt=SALT)
        assert a.fingerprint == b.fingerprint
        assert (a.path / "train.jsonl").read_bytes() == (b.path / "train.jsonl").read_bytes()
        assert c.fingerprint != a.fingerprint

    def test_each_dataset_gets_a_fresh_salt(self, tmp_path: Path) -> None:
        """Without an explicit salt, two preparations of the same input use different salts (unlinkable digests)."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=4, per_subject=1))
        a = prepare(src, tmp_path / "a").manifest
        b = prepare(src, tmp_path / "b").manifest
        assert a["subjects"]["salt"] != b["subjects"]["salt"]
        assert not set(a["subjects"]["digests"]) & set(b["subjects"]["digests"])
        assert a["source"]["sha256"] == b["source"]["sha256"]


class TestManifestAndFingerprint:
    def test_manifest_follows_the_contract(self, synthetic: Path, tmp_path: Path) -> None:
        """The manifest has the contract's fields; counts add up; the scrub report has counts for every type."""
        result = prepare(synthetic, tmp_path / "out")
        m = json.loads((result.path / "manifest.json").read_text())
        assert m["format_version"] == 1
        assert set(m) >= {"format_version", "fingerprint", "counts", "scrub_report", "subjects", "source", "created_at"}
        c = m["counts"]
        assert c["invalid"] == 0
        assert c["input"] == m["source"]["records"] == 300
        assert c["exact_duplicates"] > 0 and c["near_duplicates"] > 0
        assert c["train"] + c["eval"] == c["input"] - c["exact_duplicates"] - c["near_duplicates"]
        assert all(isinstance(v, int) for v in m["scrub_report"].values())
        assert all(m["scrub_report"][k] > 0 for k in ("NAME", "DATE", "PHONE", "SSN", "MRN", "ADDRESS", "EMAIL"))
        digest = hashlib.sha256((result.path / "train.jsonl").read_bytes() + (result.path / "eval.jsonl").read_bytes())
        assert m["fingerprint"] == digest.hexdigest() == result.fingerprint

    def test_prepared_records_hold_no_phi(self, synthetic: Path, tmp_path: Path) -> None:
        """No generated name, long digit run or email survives into train/eval; metadata is not carried over."""
        result = prepare(synthetic, tmp_path / "out")
        text = (result.path / "train.jsonl").read_text() + (result.path / "eval.jsonl").read_text()
        words = set(re.findall(r"[A-Za-z']+", text))
        assert not words & (set(FIRST) | set(LAST))
        assert "metadata" not in text
        for line in text.splitlines():
            record = json.loads(line)
            assert set(record) == {"instruction", "response", "subject"}
            body = record["instruction"] + record["response"]
            assert not re.search(r"\d{4,}", body)
            assert "@" not in body

    def test_what_the_metadata_declares_is_scrubbed_from_the_text(self, tmp_path: Path) -> None:
        """A name and an MRN that only the (dropped) metadata labels are replaced in the prepared text too."""
        records = [
            {
                "instruction": f"Summarise visit {i} of Ysolde Vantaggio.",
                "response": f"Vantaggio, chart 7654321, improved on day {i}.",
                "subject_id": f"S{i}",
                "metadata": {"patient_name": "Ysolde Vantaggio", "mrn": "7654321"},
            }
            for i in range(4)
        ]
        result = prepare(_write(tmp_path / "in.jsonl", records), tmp_path / "out", salt=SALT)
        text = (result.path / "train.jsonl").read_text() + (result.path / "eval.jsonl").read_text()
        assert "Vantaggio" not in text and "Ysolde" not in text and "7654321" not in text
        assert "of [NAME]." in text and "[NAME], chart [MRN], improved" in text
        report = json.loads((result.path / "manifest.json").read_text())["scrub_report"]
        assert report["NAME"] == 8 and report["MRN"] == 4  # the text's replacements, not the metadata's

    def test_logs_hold_counts_not_values(self, synthetic: Path, tmp_path: Path) -> None:
        """What intake logs is counts and the fingerprint, never a record's text."""
        with structlog.testing.capture_logs() as logs:
            prepare(synthetic, tmp_path / "out")
        dumped = json.dumps(logs)
        assert any(e["event"] == "intake.prepared" for e in logs)
        assert not set(re.findall(r"[A-Za-z']+", dumped)) & (set(FIRST) | set(LAST))
        assert "Patient" not in dumped and "@" not in dumped

    def test_load_verifies_the_fingerprint(self, tmp_path: Path) -> None:
        """Changing one byte of train.jsonl makes load_prepared raise IntegrityViolation."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=6, per_subject=2))
        out = prepare(src, tmp_path / "out").path
        assert load_prepared(out).fingerprint
        train = out / "train.jsonl"
        train.write_bytes(train.read_bytes().replace(b"Answer", b"Answex", 1))
        with pytest.raises(IntegrityViolation, match="fingerprint"):
            load_prepared(out)

    def test_load_catches_a_record_moved_across_the_split(self, tmp_path: Path) -> None:
        """Moving the last train record to eval keeps the concatenated hash but fails the manifest counts."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=6, per_subject=2))
        out = prepare(src, tmp_path / "out").path
        lines = (out / "train.jsonl").read_bytes().splitlines(keepends=True)
        (out / "train.jsonl").write_bytes(b"".join(lines[:-1]))
        (out / "eval.jsonl").write_bytes(lines[-1] + (out / "eval.jsonl").read_bytes())
        with pytest.raises(IntegrityViolation, match="counts"):
            load_prepared(out)

    def test_load_rejects_what_is_not_a_prepared_dataset(self, tmp_path: Path) -> None:
        """A missing directory is NotFound and a directory without a manifest is IntakeRejected."""
        with pytest.raises(NotFound):
            load_prepared(tmp_path / "nope")
        (tmp_path / "raw").mkdir()
        (tmp_path / "raw" / "train.jsonl").write_text("{}\n")
        with pytest.raises(IntakeRejected, match="not a prepared dataset"):
            load_prepared(tmp_path / "raw")


class TestAtomicOutput:
    def test_refuses_a_non_empty_output(self, tmp_path: Path) -> None:
        """An existing non-empty output directory is a Conflict and is left untouched."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=3, per_subject=1))
        out = tmp_path / "out"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        with pytest.raises(Conflict):
            prepare(src, out)
        assert [p.name for p in out.iterdir()] == ["keep.txt"]

    def test_output_is_owner_only(self, tmp_path: Path) -> None:
        """The prepared directory is 0700 and its files 0600 (they are derived from patient data)."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=3, per_subject=1))
        out = prepare(src, tmp_path / "out").path
        assert out.stat().st_mode & 0o777 == 0o700
        assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o600}

    def test_an_empty_output_directory_is_used(self, tmp_path: Path) -> None:
        """An existing empty directory is replaced by the prepared dataset."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=3, per_subject=1))
        (tmp_path / "out").mkdir()
        assert load_prepared(prepare(src, tmp_path / "out").path).train

    def test_failure_before_commit_leaves_nothing(self, tmp_path: Path) -> None:
        """When the pre-commit hook (the audit record) fails, neither the output nor a temporary directory remains."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=3, per_subject=1))

        def refuse(manifest: dict[str, object]) -> None:
            raise AuditUnavailable("audit store is down (test)")

        with pytest.raises(AuditUnavailable):
            prepare(src, tmp_path / "out", before_commit=refuse)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]

    def test_an_output_that_appears_while_preparing_is_kept_and_refused(self, tmp_path: Path) -> None:
        """Another writer filling the output before the rename is a conflict: its files stay, ours are removed."""
        src = _write(tmp_path / "in.jsonl", _records(subjects=3, per_subject=1))
        out = tmp_path / "out"

        def race(manifest: dict[str, object]) -> None:
            out.mkdir()
            (out / "theirs.txt").write_text("kept")

        with pytest.raises(Conflict):
            prepare(src, out, before_commit=race)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"]
        assert [p.name for p in out.iterdir()] == ["theirs.txt"]

    def test_invalid_input_leaves_nothing(self, tmp_path: Path) -> None:
        """Malformed input is rejected before anything is written."""
        src = tmp_path / "in.jsonl"
        src.write_text('{"instruction": "a"}\n')
        with pytest.raises(IntakeRejected, match="line 1, field 'response'"):
            prepare(src, tmp_path / "out")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
