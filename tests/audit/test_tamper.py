"""Tampering of every kind is detected and located: in the live segment files and in exports (JSON lines, CSV)."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import pytest

from appliance.audit import open_audit_log
from appliance.audit._checkpoint import signed_message
from appliance.audit._export import ExportFilter, export, verify_export
from appliance.audit._sinks.files import FileStore
from appliance.audit._verify import VerifyReport, verify_store
from appliance.config import Settings
from appliance.errors import IntegrityViolation
from appliance.keys import AUDIT_SIGNING, LocalKeyService
from tests.audit._tamper import forged_signature, read_lines, rehash, relink_from, write_lines
from tests.audit.conftest import make_event


@pytest.fixture
def chain(settings: Settings, keys: LocalKeyService) -> Path:
    """A closed chain of about 70 records with a checkpoint every 10; returns its segment file."""
    settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"checkpoint_every": 10})})
    writer = open_audit_log(settings, keys)
    for i in range(60):
        writer.record_sync(
            make_event(request_id=f"r-{i}", actor={"subject": ["alice", "bob"][i % 2], "auth_method": "jwt"})
        )
    writer.close_sync()
    (path,) = [p for _, p in FileStore(settings.audit_dir).segments("node-1")]
    return path


def _verify(settings: Settings, keys: LocalKeyService) -> VerifyReport:
    return verify_store(FileStore(settings.audit_dir), keys.public_keys(AUDIT_SIGNING))


def _kinds(report: VerifyReport) -> list[tuple[str, int | None, int | None]]:
    return [(p.kind, p.line, p.seq) for p in report.all_problems]


class TestLiveLog:
    def test_untouched_chain_verifies(self, chain: Path, settings: Settings, keys: LocalKeyService) -> None:
        """The untouched chain verifies, with checkpoints vouching for every record."""
        report = _verify(settings, keys)
        assert report.ok and report.chains[0].checkpoints >= 7
        assert report.chains[0].signed_through == report.chains[0].last_seq - 1

    def test_edited_field_is_located(self, chain: Path, settings: Settings, keys: LocalKeyService) -> None:
        """Changing one field of line 20 is reported as 'edited' at exactly that line and seq."""
        lines = read_lines(chain)
        lines[19] = lines[19].replace(b'"request_id":"r-', b'"request_id":"x-')
        write_lines(chain, lines)
        assert _kinds(_verify(settings, keys)) == [("edited", 20, 20)]

    def test_rehashed_edit_breaks_the_link(self, chain: Path, settings: Settings, keys: LocalKeyService) -> None:
        """An edit with the record's own hash recomputed breaks the next record's link, which is reported."""
        lines = read_lines(chain)
        lines[19] = rehash(lines[19].replace(b'"subject":"alice"', b'"subject":"mallo"'))
        write_lines(chain, lines)
        assert _kinds(_verify(settings, keys)) == [("chain_break", 21, 21)]

    def test_rewritten_chain_is_caught_by_checkpoints(
        self, chain: Path, settings: Settings, keys: LocalKeyService
    ) -> None:
        """Re-hashing the whole rest of the chain leaves every later checkpoint vouching for the wrong hashes."""
        lines = read_lines(chain)
        lines[19] = lines[19].replace(b'"subject":"alice"', b'"subject":"mallo"')
        relink_from(lines, 19)
        write_lines(chain, lines)
        problems = _verify(settings, keys).all_problems
        assert problems and {p.kind for p in problems} == {"checkpoint_mismatch"}
        assert problems[0].seq is not None and problems[0].seq > 20 and problems[0].line == problems[0].seq

    def test_forged_checkpoint_is_located(self, chain: Path, settings: Settings, keys: LocalKeyService) -> None:
        """A rewritten chain whose checkpoints are re-signed with another key fails at the first checkpoint."""
        lines = read_lines(chain)
        lines[19] = lines[19].replace(b'"subject":"alice"', b'"subject":"mallo"')
        relink_from(lines, 19)
        for i in range(19, len(lines)):
            if b'"type":"audit.checkpoint"' in lines[i]:
                record = json.loads(lines[i])
                prev = json.loads(lines[i - 1])["hash"]
                old = record["details"]
                new_sig = forged_signature(signed_message("checkpoint", "node-1", record["seq"] - 1, prev))
                lines[i] = lines[i].replace(old["signed_hash"].encode(), prev.encode())
                lines[i] = lines[i].replace(old["signature"].encode(), new_sig.encode())
                relink_from(lines, i)
        write_lines(chain, lines)
        problems = _verify(settings, keys).all_problems
        assert problems and {p.kind for p in problems} == {"bad_signature"}
        assert json.loads(read_lines(chain)[problems[0].line - 1])["type"] == "audit.checkpoint"

    def test_checkpoint_with_wrong_field_types_is_located(
        self, chain: Path, settings: Settings, keys: LocalKeyService
    ) -> None:
        """A checkpoint whose signed_hash is not a string is a located problem, not a crash of verify."""
        lines = read_lines(chain)
        i = next(n for n, line in enumerate(lines) if n > 5 and b'"type":"audit.checkpoint"' in line)
        signed = json.loads(lines[i])["details"]["signed_hash"]
        lines[i] = lines[i].replace(f'"signed_hash":"{signed}"'.encode(), b'"signed_hash":5')
        relink_from(lines, i)
        write_lines(chain, lines)
        kinds = {p.kind for p in _verify(settings, keys).all_problems}
        assert "malformed" in kinds

    def test_deleted_record_is_located(self, chain: Path, settings: Settings, keys: LocalKeyService) -> None:
        """Deleting the record with seq 30 is reported as missing seq 30 at the line where it should be."""
        lines = read_lines(chain)
        del lines[29]
        write_lines(chain, lines)
        assert _kinds(_verify(settings, keys)) == [("missing", 30, 30)]

    def test_reordered_records_are_located(self, chain: Path, settings: Settings, keys: LocalKeyService) -> None:
        """Swapping two records is reported as a reorder at those lines."""
        lines = read_lines(chain)
        lines[29], lines[30] = lines[30], lines[29]
        write_lines(chain, lines)
        kinds = _kinds(_verify(settings, keys))
        assert kinds and {k for k, _, _ in kinds} == {"reordered"} and {line for _, line, _ in kinds} <= {30, 31}

    def test_inserted_record_is_located(self, chain: Path, settings: Settings, keys: LocalKeyService) -> None:
        """A fabricated record inserted after line 30 (own hash valid) is reported as not being in the chain."""
        lines = read_lines(chain)
        fake = rehash(lines[30].replace(b'"request_id":"r-', b'"request_id":"f-'))
        lines.insert(30, fake)
        write_lines(chain, lines)
        kinds = _kinds(_verify(settings, keys))
        assert ("inserted", 31, 31) in kinds or ("duplicate", 32, 31) in kinds, kinds

    def test_deleted_chain_named_in_verify_is_missing(
        self, chain: Path, settings: Settings, keys: LocalKeyService
    ) -> None:
        """Verifying one writer's chain that is not in the store is a problem, not 'OK: 0 records'."""
        for path in chain.parent.iterdir():
            path.unlink()
        chain.parent.rmdir()
        report = verify_store(FileStore(settings.audit_dir), keys.public_keys(AUDIT_SIGNING), writer_id="node-1")
        assert [p.kind for p in report.all_problems] == ["missing"]

    def test_incomplete_last_line_is_torn(self, chain: Path, settings: Settings, keys: LocalKeyService) -> None:
        """On a chain no process holds, an incomplete last line is reported as torn."""
        with chain.open("ab") as handle:
            handle.write(read_lines(chain)[5][:100])
        assert [p.kind for p in _verify(settings, keys).all_problems] == ["torn"]

    @pytest.mark.parametrize("workers", [1, 2])
    def test_append_in_flight_is_not_torn_while_held(
        self, settings: Settings, keys: LocalKeyService, workers: int
    ) -> None:
        """While a writer holds the chain, an incomplete last line is its append in flight (verify under load read
        one mid-write and failed the live log, and so the export), not damage."""
        settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"segment_max_records": 10})})
        writer = open_audit_log(settings, keys)
        try:
            for _ in range(15):
                writer.record_sync(make_event())
            store = FileStore(settings.audit_dir)
            newest = store.segments("node-1")[-1][1]
            whole = newest.read_bytes()
            with newest.open("ab") as handle:
                handle.write(whole[:100])  # what a reader sees while write() copies the batch in
            report = verify_store(store, keys.public_keys(AUDIT_SIGNING), workers=workers)
            assert report.ok, [str(p) for p in report.all_problems]
            newest.write_bytes(whole)
        finally:
            writer.close_sync()

    def test_truncated_end_is_reported(self, chain: Path, settings: Settings, keys: LocalKeyService) -> None:
        """Cutting the last records off a closed chain leaves an unsigned end, which is reported."""
        lines = read_lines(chain)
        write_lines(chain, lines[:-5])
        (problem,) = _verify(settings, keys).all_problems
        assert problem.kind == "unsigned_tail" and problem.seq == len(lines) - 5


@pytest.fixture
def exported(
    chain: Path, settings: Settings, keys: LocalKeyService, tmp_path: Path, request: pytest.FixtureRequest
) -> Path:
    """A full export of the chain in the format the test is parametrised with."""
    out = tmp_path / "export"
    export(FileStore(settings.audit_dir), keys, out, fmt=request.param)
    return out


class TestExport:
    @pytest.mark.parametrize("fmt", ["jsonl", "csv"])
    def test_round_trip(self, chain: Path, settings: Settings, keys: LocalKeyService, tmp_path: Path, fmt: str) -> None:
        """An export in either format verifies offline with its own files, and counts what the log holds."""
        out = tmp_path / "out"
        manifest = export(FileStore(settings.audit_dir), keys, out, fmt=fmt)  # type: ignore[arg-type]
        total = len(read_lines(chain))
        assert manifest["count"] == total and manifest["complete"] is True
        report = verify_export(out, expected_key_fingerprint=manifest["key_fingerprint"])
        assert report.ok, [str(p) for p in report.all_problems]
        assert report.records == total
        assert {oct(f.stat().st_mode & 0o777) for f in out.iterdir()} == {"0o600"}

    @pytest.mark.parametrize("fmt", ["jsonl", "csv"])
    def test_filtered_round_trip(
        self, chain: Path, settings: Settings, keys: LocalKeyService, tmp_path: Path, fmt: str
    ) -> None:
        """A filtered export (one actor) carries that actor's records plus checkpoints and verifies."""
        out = tmp_path / "out"
        manifest = export(FileStore(settings.audit_dir), keys, out, filters=ExportFilter(actor="bob"), fmt=fmt)  # type: ignore[arg-type]
        assert 30 <= manifest["count"] < 45 and manifest["complete"] is False
        assert verify_export(out).ok

    def test_time_range(self, chain: Path, settings: Settings, keys: LocalKeyService, tmp_path: Path) -> None:
        """--from/--to select a contiguous slice that verifies as complete."""
        records = [json.loads(line) for line in read_lines(chain)]
        since, until = records[10]["time"], records[40]["time"]
        manifest = export(
            FileStore(settings.audit_dir), keys, tmp_path / "o", filters=ExportFilter(since=since, until=until)
        )
        assert manifest["count"] == 31 and manifest["writers"]["node-1"]["first_seq"] == 11
        assert verify_export(tmp_path / "o").ok

    @pytest.mark.parametrize("filters", [ExportFilter(actor="mallo"), ExportFilter()], ids=["filtered", "all"])
    def test_tampered_store_is_never_signed_as_an_export(
        self, chain: Path, settings: Settings, keys: LocalKeyService, tmp_path: Path, filters: ExportFilter
    ) -> None:
        """A re-hashed edit in the live log is refused at export: a filtered export would carry the forged record
        without the broken link after it, and the appliance's signed manifest would vouch for it."""
        lines = read_lines(chain)
        lines[19] = rehash(lines[19].replace(b'"subject":"alice"', b'"subject":"mallo"'))
        write_lines(chain, lines)
        out = tmp_path / "out"
        with pytest.raises(IntegrityViolation, match="does not verify"):
            export(FileStore(settings.audit_dir), keys, out, filters=filters)
        assert not (out / "manifest.json").exists() and not (out / "records.jsonl").exists()

    @pytest.mark.parametrize("exported", ["jsonl"], indirect=True)
    @pytest.mark.parametrize(
        ("tamper", "kind", "line"),
        [
            (lambda ls: ls.__setitem__(9, ls[9].replace(b'"request_id":"r-', b'"request_id":"x-')), "edited", 10),
            (lambda ls: ls.__delitem__(9), "missing", 10),
            (lambda ls: ls.insert(9, ls.pop(10)), "reordered", None),
            (lambda ls: ls.insert(10, rehash(ls[9].replace(b'"r-', b'"q-'))), None, None),
            (lambda ls: ls.__delitem__(slice(-3, None)), "missing", None),
        ],
        ids=["edit", "delete", "reorder", "insert", "truncate"],
    )
    def test_tampered_jsonl_is_located(self, exported: Path, tamper, kind: str | None, line: int | None) -> None:  # type: ignore[no-untyped-def]
        """Each kind of tampering with records.jsonl fails verification with a located problem of the right kind."""
        path = exported / "records.jsonl"
        lines = read_lines(path)
        tamper(lines)
        write_lines(path, lines)
        report = verify_export(exported)
        assert not report.ok
        located = [p for p in report.all_problems if p.kind != "manifest"]
        assert located, [str(p) for p in report.all_problems]
        if kind is not None:
            assert any(p.kind == kind for p in located), [str(p) for p in located]
        if line is not None:
            assert any(p.line == line for p in located), [str(p) for p in located]
        assert all(p.line is not None or p.seq is not None for p in located)

    @pytest.mark.parametrize("exported", ["csv"], indirect=True)
    def test_tampered_csv_column_is_located(self, exported: Path) -> None:
        """Changing a readable CSV column (not the record) is reported as edited at that row, naming the column."""
        path = exported / "records.csv"
        rows = list(csv.reader(path.open(newline="")))
        rows[5][rows[0].index("actor_subject")] = "mallory"
        with path.open("w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(rows)
        problems = [p for p in verify_export(exported).all_problems if p.kind == "edited"]
        assert len(problems) == 1 and problems[0].line == 6 and "actor_subject" in problems[0].message

    @pytest.mark.parametrize("exported", ["jsonl"], indirect=True)
    def test_tampered_manifest_fails_its_signature(self, exported: Path) -> None:
        """Changing the manifest (here its count) breaks its signature."""
        path = exported / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["count"] -= 1
        path.write_text(json.dumps(manifest))
        assert "bad_signature" in {p.kind for p in verify_export(exported).all_problems}

    @pytest.mark.parametrize("exported", ["jsonl"], indirect=True)
    def test_manifest_claiming_more_than_the_file_holds_costs_no_memory(self, exported: Path) -> None:
        """A manifest is untrusted: seq runs claiming millions (or 10**15) of records are never expanded (verifying
        stays within a few MiB) and fail verification saying how many the file holds; the cut is still located."""
        path = exported / "manifest.json"
        manifest = json.loads(path.read_text())
        held = manifest["count"]
        for claimed in (2_000_000, 10**15):  # the first would take ~100 MiB as a set; the second cannot be one
            manifest["writers"]["node-1"]["seqs"] = [[1, claimed]]
            path.write_text(json.dumps(manifest))
            tracemalloc.start()
            try:
                problems = verify_export(exported).all_problems
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 8 << 20, peak
            message = f"lists {claimed} records, the file holds {held}"
            assert any(p.kind == "manifest" and message in p.message for p in problems), [str(p) for p in problems]
            assert any(p.kind == "missing" and p.seq == held + 1 for p in problems)

    @pytest.mark.parametrize("exported", ["jsonl"], indirect=True)
    @pytest.mark.parametrize("seqs", [[["1", 5]], [[5, 2]], [[1, 5], [3, 8]], [[1, 2, 3]], "1-70"])
    def test_malformed_manifest_seqs_are_a_problem_not_a_crash(self, exported: Path, seqs: object) -> None:
        """Seq runs that are not ascending, disjoint [first, last] integer pairs are reported, not trusted."""
        path = exported / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["writers"]["node-1"]["seqs"] = seqs
        path.write_text(json.dumps(manifest))
        problems = verify_export(exported).all_problems
        assert any(p.kind == "manifest" and "seqs are not" in p.message for p in problems)

    @pytest.mark.parametrize("exported", ["jsonl"], indirect=True)
    def test_substituted_key_is_caught_by_the_fingerprint(self, exported: Path) -> None:
        """An export re-signed under an attacker's key fails when the investigator pins the appliance's fingerprint."""
        manifest = json.loads((exported / "manifest.json").read_text())
        expected = manifest["key_fingerprint"]
        manifest["public_keys"]["audit-signing"] = {"1": "A" * 43 + "="}
        (exported / "manifest.json").write_text(json.dumps(manifest))
        problems = verify_export(exported, expected_key_fingerprint=expected).all_problems
        assert any("fingerprint" in p.message for p in problems)


class TestParallel:
    def test_parallel_matches_sequential(self, settings: Settings, keys: LocalKeyService) -> None:
        """Segments verified in two processes give the same verdict as one pass, and a boundary deletion is located."""
        settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"segment_max_records": 10})})
        writer = open_audit_log(settings, keys)
        for _ in range(45):
            writer.record_sync(make_event())
        writer.close_sync()
        store = FileStore(settings.audit_dir)
        public = keys.public_keys(AUDIT_SIGNING)
        one, two = verify_store(store, public, workers=1), verify_store(store, public, workers=2)
        assert one.ok and two.ok and one.records == two.records and one.chains[0].last_hash == two.chains[0].last_hash
        third = store.segments("node-1")[2][1]
        write_lines(third, read_lines(third)[1:])  # the first record of the third segment
        kinds_one = [(p.kind, p.seq) for p in verify_store(store, public, workers=1).all_problems]
        kinds_two = [(p.kind, p.seq) for p in verify_store(store, public, workers=2).all_problems]
        assert kinds_one == kinds_two == [("missing", 21)]
