"""The chained writer: durable receipts, one chain, group commit, fail-closed validation."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest

from appliance.audit import AuditWriter, open_audit_log
from appliance.audit._sinks.files import FileStore
from appliance.audit._verify import verify_chain
from appliance.config import Settings
from appliance.errors import AuditUnavailable, ValidationFailed
from appliance.keys import AUDIT_SIGNING, LocalKeyService
from tests.audit.conftest import make_event


def _records(settings: Settings, writer_id: str = "node-1") -> list[dict[str, object]]:
    store = FileStore(settings.audit_dir)
    return [json.loads(line) for _, data in store.read(writer_id) for line in data.splitlines()]


def _verify(settings: Settings, keys: LocalKeyService, writer_id: str = "node-1", **kw: object):  # type: ignore[no-untyped-def]
    store = FileStore(settings.audit_dir)
    return verify_chain(writer_id, store.read(writer_id), public_keys=keys.public_keys(AUDIT_SIGNING), **kw)  # type: ignore[arg-type]


class TestRecord:
    async def test_receipt_matches_the_stored_record(self, audit_log: AuditWriter, settings: Settings) -> None:
        """An awaited record is on disk with the receipt's seq, hash and event id, and the caller's fields."""
        receipt = await audit_log.record(make_event())
        stored = {r["seq"]: r for r in _records(settings)}[receipt.seq]
        assert stored["hash"] == receipt.record_hash and stored["event_id"] == receipt.event_id
        assert stored["writer_id"] == receipt.writer_id == "node-1"
        assert stored["actor"]["subject"] == "alice" and stored["tokens"] == {"generated": 34, "prompt": 12}
        assert stored["time"].endswith("Z")

    def test_record_sync_chains_after_start(self, audit_log: AuditWriter, settings: Settings) -> None:
        """The writer records audit.start and a signed checkpoint first; caller records follow in order."""
        receipts = [audit_log.record_sync(make_event(request_id=f"r-{i}")) for i in range(5)]
        assert [r.seq for r in receipts] == [3, 4, 5, 6, 7]
        types = [r["type"] for r in _records(settings)]
        assert types[:2] == ["audit.start", "audit.checkpoint"]

    def test_close_signs_the_end(self, settings: Settings, keys: LocalKeyService) -> None:
        """After close the chain ends with audit.stop and a checkpoint vouching for it, and verifies."""
        writer = open_audit_log(settings, keys)
        writer.record_sync(make_event())
        writer.close_sync()
        records = _records(settings)
        assert [r["type"] for r in records[-2:]] == ["audit.stop", "audit.checkpoint"]
        report = _verify(settings, keys, require_signed_end=True)
        assert report.ok, report.problems
        assert report.signed_through == records[-2]["seq"] and report.checkpoints == 2

    def test_close_under_load_still_ends_signed(self, settings: Settings, keys: LocalKeyService) -> None:
        """Records still arriving while the log closes are refused or come before audit.stop: its checkpoint ends
        the chain (records after it left a closed chain with an unsigned tail, which verify reports)."""
        writer = open_audit_log(settings, keys)
        started = threading.Barrier(5)

        def flood() -> None:
            started.wait()
            try:
                while True:
                    writer.record_sync(make_event())
            except AuditUnavailable:
                return

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for thread in threads:
            thread.start()
        started.wait()
        time.sleep(0.2)
        writer.close_sync()
        for thread in threads:
            thread.join()
        assert [r["type"] for r in _records(settings)[-2:]] == ["audit.stop", "audit.checkpoint"]
        report = _verify(settings, keys, require_signed_end=True)
        assert report.ok, report.problems

    def test_reopen_continues_the_chain(self, settings: Settings, keys: LocalKeyService) -> None:
        """A second writer on the same data dir continues the sequence and the chain verifies end to end."""
        for _ in range(2):
            writer = open_audit_log(settings, keys)
            writer.record_sync(make_event())
            writer.close_sync()
        report = _verify(settings, keys, require_signed_end=True)
        assert report.ok and report.records == 10 and report.last_seq == 10

    def test_checkpoint_every_n_records(self, settings: Settings, keys: LocalKeyService) -> None:
        """With checkpoint_every=10, a signed checkpoint follows every tenth record."""
        settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"checkpoint_every": 10})})
        writer = open_audit_log(settings, keys)
        for i in range(30):
            writer.record_sync(make_event(request_id=f"r-{i}"))
        writer.close_sync()
        report = _verify(settings, keys)
        assert report.ok and report.checkpoints >= 5

    def test_second_process_takes_the_next_lane(self, settings: Settings, keys: LocalKeyService) -> None:
        """While one writer holds node-1, another opens node-1.2; both chains verify."""
        first = open_audit_log(settings, keys)
        second = open_audit_log(settings, keys)
        try:
            assert (first.writer_id, second.writer_id) == ("node-1", "node-1.2")
            second.record_sync(make_event())
        finally:
            second.close_sync()
            first.close_sync()
        assert _verify(settings, keys, "node-1.2").ok and _verify(settings, keys).ok


class TestRecordAhead:
    async def test_written_is_acknowledged_before_the_sync(
        self, audit_log: AuditWriter, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """record_ahead returns once the line is written, while its fdatasync still runs; durable waits for it."""
        release = threading.Event()
        syncing = threading.Event()
        real = os.fdatasync

        def slow_sync(fd: int) -> None:
            syncing.set()
            release.wait(10)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", slow_sync)
        written = await asyncio.wait_for(audit_log.record_ahead(make_event(request_id="r-ahead")), 10)
        assert await asyncio.to_thread(syncing.wait, 10)  # the sync runs (and is held) while the caller goes on
        durable = asyncio.ensure_future(written.durable)
        await asyncio.sleep(0.05)
        assert not durable.done()
        stored = {r["seq"]: r for r in _records(settings)}[written.receipt.seq]  # in the file, not yet synced
        assert stored["event_id"] == written.receipt.event_id and stored["request_id"] == "r-ahead"
        release.set()
        assert await asyncio.wait_for(durable, 10) == written.receipt

    async def test_failed_sync_fails_durable_and_the_chain_recovers(
        self, audit_log: AuditWriter, settings: Settings, keys: LocalKeyService, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A sync that fails (EIO at fdatasync) after the write: written succeeded, durable raises AuditUnavailable,
        and the next record continues a verifiable chain."""
        real = os.fdatasync

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", broken)
        written = await audit_log.record_ahead(make_event())
        with pytest.raises(AuditUnavailable):
            await written.durable
        monkeypatch.setattr(os, "fdatasync", real)
        receipt = await audit_log.record(make_event())
        assert receipt.seq > written.receipt.seq
        audit_log.close_sync()
        assert _verify(settings, keys, require_signed_end=True).ok

    async def test_failed_sync_makes_the_writer_unready_until_a_sync_succeeds(
        self, audit_log: AuditWriter, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After an fdatasync fails, check_writable (readiness) raises, and keeps raising while syncs still fail, even
        with free space and write permission; once the store syncs again it passes, before any further record."""
        real_fdatasync, real_fsync = os.fdatasync, os.fsync

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        audit_log.check_writable()
        monkeypatch.setattr(os, "fdatasync", broken)
        monkeypatch.setattr(os, "fsync", broken)
        written = await audit_log.record_ahead(make_event())
        with pytest.raises(AuditUnavailable):
            await written.durable
        for _ in range(2):
            with pytest.raises(AuditUnavailable):
                await asyncio.to_thread(audit_log.check_writable)
        monkeypatch.setattr(os, "fdatasync", real_fdatasync)
        monkeypatch.setattr(os, "fsync", real_fsync)
        await asyncio.to_thread(audit_log.check_writable)  # the probe's sync succeeded
        assert (await audit_log.record(make_event())).seq > written.receipt.seq

    async def test_refused_when_the_store_cannot_take_it(self, settings: Settings, keys: LocalKeyService) -> None:
        """A closed writer refuses record_ahead with AuditUnavailable before anything is written."""
        writer = open_audit_log(settings, keys)
        writer.close_sync()
        with pytest.raises(AuditUnavailable):
            await writer.record_ahead(make_event())


class TestGroupCommit:
    async def test_concurrent_records_share_fsyncs(
        self, audit_log: AuditWriter, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """400 concurrent records are made durable with far fewer than 400 fdatasync calls."""
        calls = []
        real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
        receipts = await asyncio.gather(*(audit_log.record(make_event(request_id=f"r-{i}")) for i in range(400)))
        assert sorted(r.seq for r in receipts) == list(range(3, 403))
        assert 1 <= len(calls) < 100

    def test_threads_and_tasks_share_one_chain(
        self, audit_log: AuditWriter, settings: Settings, keys: LocalKeyService
    ) -> None:
        """Records from several threads and an event loop interleave into one gap-free verified chain."""

        def worker() -> None:
            for _ in range(50):
                audit_log.record_sync(make_event())

        async def tasks() -> None:
            await asyncio.gather(*(audit_log.record(make_event()) for _ in range(100)))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        asyncio.run(tasks())
        for t in threads:
            t.join()
        report = _verify(settings, keys)
        assert report.ok and report.records >= 302


class TestValidation:
    @pytest.mark.parametrize(
        "override",
        [
            {"details": {"note": "patient John Smith has diabetes"}},
            {"action": "Generate text"},
            {"route": "/v1/generate?prompt=hello"},
            {"request_id": "id with spaces"},
            {"prompt": "tell me about the patient"},
            {"actor": {"subject": "", "auth_method": "oidc"}},
            {"source": {"ip": "not-an-ip"}},
            {"source": {"ip": "fe80::1%patient John Smith has diabetes"}},  # any text passes as an IPv6 zone
            {"digests": {"prompt": "not a digest"}},
            {"seq": 5},
            {"latency_ms": float("nan")},
        ],
    )
    async def test_free_text_and_bad_fields_are_rejected(self, audit_log: AuditWriter, override: dict) -> None:
        """An event carrying free text, unknown or writer fields is refused before anything is written."""
        before = audit_log.head.seq
        with pytest.raises(ValidationFailed) as info:
            await audit_log.record(make_event(**override))
        assert "John" not in str(info.value) and "patient" not in str(info.value)
        assert audit_log.head.seq == before

    @pytest.mark.parametrize("type_", ["audit.checkpoint", "audit.start", "audit.stop", "audit.recovered"])
    async def test_writer_event_types_are_refused(self, audit_log: AuditWriter, type_: str) -> None:
        """Only the writer records checkpoints, start, stop and recovery: a caller's would pass for one (and an
        unsigned 'checkpoint' makes the whole chain fail verification, so purge and export refuse it)."""
        before = audit_log.head.seq
        with pytest.raises(ValidationFailed):
            await audit_log.record(make_event(type=type_))
        assert audit_log.head.seq == before

    async def test_user_agent_keeps_product_tokens_only(self, audit_log: AuditWriter, settings: Settings) -> None:
        """A user agent is reduced to its product/version tokens; comments and free text are dropped."""
        ua = "Mozilla/5.0 (patient Jane Doe; MRN 12345) Firefox/128.0 free text here"
        receipt = await audit_log.record(make_event(source={"ip": "::1", "user_agent": ua}))
        stored = {r["seq"]: r for r in _records(settings)}[receipt.seq]
        assert stored["source"] == {"ip": "::1", "user_agent": "Mozilla/5.0 Firefox/128.0"}

    def test_configured_extra_fields(self, settings: Settings, keys: LocalKeyService) -> None:
        """A configured extra field of a typed kind is recorded; one of another kind or unconfigured is refused."""
        audit = settings.audit.model_copy(update={"extra_fields": {"ward": "identifier", "beds": "integer"}})
        writer = open_audit_log(settings.model_copy(update={"audit": audit}), keys)
        try:
            writer.record_sync(make_event(ward="icu-3", beds=4))
            with pytest.raises(ValidationFailed):
                writer.record_sync(make_event(ward="intensive care unit"))
            with pytest.raises(ValidationFailed):
                writer.record_sync(make_event(floor=3))
        finally:
            writer.close_sync()
        assert any(r.get("ward") == "icu-3" and r.get("beds") == 4 for r in _records(settings))


class TestClosed:
    async def test_record_after_close_fails_closed(self, settings: Settings, keys: LocalKeyService) -> None:
        """A closed writer refuses records with AuditUnavailable."""
        writer = open_audit_log(settings, keys)
        await writer.close()
        with pytest.raises(AuditUnavailable):
            await writer.record(make_event())
        with pytest.raises(AuditUnavailable):
            writer.check_writable()

    def test_segment_rollover(self, settings: Settings, keys: LocalKeyService) -> None:
        """Past segment_max_records a new segment named by its first seq starts, and the chain spans both."""
        audit = settings.audit.model_copy(update={"segment_max_records": 10})
        settings = settings.model_copy(update={"audit": audit})
        writer = open_audit_log(settings, keys)
        for _ in range(25):
            writer.record_sync(make_event())
        writer.close_sync()
        names = [p.name for _, p in FileStore(settings.audit_dir).segments("node-1")]
        assert len(names) >= 3 and names[0] == "segment-000000000001.jsonl"
        assert _verify(settings, keys, require_signed_end=True).ok
        assert oct(Path(settings.audit_dir / "node-1" / names[0]).stat().st_mode & 0o777) == "0o600"


class TestTimers:
    def test_idle_writer_signs_on_interval(self, settings: Settings, keys: LocalKeyService) -> None:
        """With records since the last checkpoint, an idle writer adds a signed checkpoint after the interval."""
        audit = settings.audit.model_copy(update={"checkpoint_interval_s": 0.2})
        writer = open_audit_log(settings.model_copy(update={"audit": audit}), keys)
        try:
            receipt = writer.record_sync(make_event())
            deadline = time.monotonic() + 5
            while writer.head.seq == receipt.seq and time.monotonic() < deadline:
                time.sleep(0.05)
            assert writer.head.seq == receipt.seq + 1
        finally:
            writer.close_sync()
        records = _records(settings)
        checkpoint = {r["seq"]: r for r in records}[receipt.seq + 1]
        assert checkpoint["type"] == "audit.checkpoint" and checkpoint["details"]["signed_seq"] == receipt.seq

    async def test_hung_disk_times_out_unacknowledged(
        self, settings: Settings, keys: LocalKeyService, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When fdatasync hangs (a dying disk, simulated at the OS call), record raises instead of waiting forever."""
        audit = settings.audit.model_copy(update={"record_timeout_s": 0.3})
        writer = open_audit_log(settings.model_copy(update={"audit": audit}), keys)
        real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", lambda fd: (time.sleep(1.0), real(fd))[1])
        try:
            with pytest.raises(AuditUnavailable, match="not durable within"):
                await writer.record(make_event())
            with pytest.raises(AuditUnavailable):
                writer.record_sync(make_event())
        finally:
            monkeypatch.setattr(os, "fdatasync", real)
        deadline = time.monotonic() + 10
        while True:  # once the disk answers again, recording resumes by itself
            try:
                writer.record_sync(make_event())
                break
            except AuditUnavailable:
                assert time.monotonic() < deadline
        writer.close_sync()
        assert _verify(settings, keys, require_signed_end=True).ok

    def test_invalid_settings_are_a_config_error(self, settings: Settings, keys: LocalKeyService) -> None:
        """A checkpoint interval of zero is refused at open with ConfigError."""
        from appliance.errors import ConfigError

        audit = settings.audit.model_copy(update={"checkpoint_every": 0})
        with pytest.raises(ConfigError):
            open_audit_log(settings.model_copy(update={"audit": audit}), keys)
