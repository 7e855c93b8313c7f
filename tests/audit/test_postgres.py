"""The PostgreSQL sink against a real PostgreSQL server: lifecycle, lanes, append-only table, tampering, secondary."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from appliance.audit import open_audit_log
from appliance.audit._export import export, verify_export
from appliance.audit._sinks.files import FileStore
from appliance.audit._sinks.postgres import PostgresStore, conninfo
from appliance.audit._verify import verify_store
from appliance.config import Settings
from appliance.errors import AuditUnavailable
from appliance.keys import AUDIT_SIGNING, LocalKeyService
from tests.audit.conftest import make_event

pytestmark = pytest.mark.postgres


def _pg_settings(settings: Settings, url: str, **audit: object) -> Settings:
    section = settings.audit.model_copy(update={"sink": "postgres", "database_url": url, **audit})
    return settings.model_copy(update={"audit": section})


def test_lifecycle(settings: Settings, keys: LocalKeyService, postgres_url: str) -> None:
    """Open, record concurrently, close, reopen: one verified chain in the database, signed at the end."""
    pg = _pg_settings(settings, postgres_url, checkpoint_every=20)
    writer = open_audit_log(pg, keys)

    async def burst() -> list[int]:
        return [r.seq for r in await asyncio.gather(*(writer.record(make_event()) for _ in range(100)))]

    seqs = asyncio.run(burst())
    writer.check_writable()
    writer.close_sync()
    assert len(set(seqs)) == 100 and min(seqs) == 3
    again = open_audit_log(pg, keys)
    receipt = again.record_sync(make_event())
    again.close_sync()
    store = PostgresStore(postgres_url)
    report = verify_store(store, keys.public_keys(AUDIT_SIGNING))
    assert report.ok, [str(p) for p in report.all_problems]
    assert report.chains[0].last_seq == receipt.seq + 2 and report.chains[0].checkpoints >= 6
    assert not store.is_active("node-1")


def test_two_writers_take_two_lanes(settings: Settings, keys: LocalKeyService, postgres_url: str) -> None:
    """Two processes' writers on one database hold node-1 and node-1.2 (advisory locks), each its own chain."""
    pg = _pg_settings(settings, postgres_url)
    first, second = open_audit_log(pg, keys), open_audit_log(pg, keys)
    try:
        assert (first.writer_id, second.writer_id) == ("node-1", "node-1.2")
        assert PostgresStore(postgres_url).is_active("node-1")
        first.record_sync(make_event())
        second.record_sync(make_event())
    finally:
        first.close_sync()
        second.close_sync()
    store = PostgresStore(postgres_url)
    assert store.writers() == ["node-1", "node-1.2"] and verify_store(store, keys.public_keys(AUDIT_SIGNING)).ok


def test_table_is_append_only_and_tampering_is_located(
    settings: Settings, keys: LocalKeyService, postgres_url: str
) -> None:
    """UPDATE, DELETE and TRUNCATE are refused by triggers; a superuser edit past them is found by verify (with seq)."""
    writer = open_audit_log(_pg_settings(settings, postgres_url), keys)
    for _ in range(10):
        writer.record_sync(make_event())
    writer.close_sync()
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as conn:
        for statement in (
            "UPDATE audit_records SET time = 'x' WHERE seq = 5",
            "DELETE FROM audit_records WHERE seq = 5",
            "TRUNCATE audit_records",  # statement level: a row trigger does not see it
        ):
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute(statement)
        conn.execute("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only")
        conn.execute(
            "UPDATE audit_records SET line = convert_to(replace(convert_from(line, 'UTF8'), 'alice', 'mallo'), 'UTF8') "
            "WHERE seq = 5"
        )
        conn.execute("DELETE FROM audit_records WHERE seq = 8")
    problems = verify_store(PostgresStore(postgres_url), keys.public_keys(AUDIT_SIGNING)).all_problems
    assert {(p.kind, p.seq) for p in problems} == {("edited", 5), ("missing", 8)}


def test_database_down_fails_closed(settings: Settings, keys: LocalKeyService, postgres_url: str) -> None:
    """When the writer's session is killed, the batch fails (nothing acknowledged); it reconnects on the next one."""
    writer = open_audit_log(_pg_settings(settings, postgres_url), keys)
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    with pytest.raises(AuditUnavailable):
        writer.record_sync(make_event())
    receipt = writer.record_sync(make_event())
    writer.close_sync()
    report = verify_store(PostgresStore(postgres_url), keys.public_keys(AUDIT_SIGNING))
    assert report.ok and report.chains[0].last_seq >= receipt.seq


def test_unreachable_database_refuses_to_open(settings: Settings, keys: LocalKeyService) -> None:
    """With no database at the URL, open_audit_log raises AuditUnavailable."""
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    with pytest.raises(AuditUnavailable):
        open_audit_log(_pg_settings(settings, url), keys)


def test_secondary_copy_and_export(
    settings: Settings, keys: LocalKeyService, postgres_url: str, tmp_path: Path
) -> None:
    """Files primary with a PostgreSQL secondary: both hold the same verified chain; the export verifies offline."""
    both = settings.model_copy(
        update={"audit": settings.audit.model_copy(update={"secondary_sink": "postgres", "database_url": postgres_url})}
    )
    writer = open_audit_log(both, keys)
    for _ in range(20):
        writer.record_sync(make_event())
    writer.close_sync()
    files, pg = FileStore(settings.audit_dir), PostgresStore(postgres_url)
    assert b"".join(d for _, d in files.read("node-1")) == b"".join(d for _, d in pg.read("node-1"))
    export(pg, keys, tmp_path / "e", fmt="csv")
    assert verify_export(tmp_path / "e").ok


def test_secondary_down_does_not_block(settings: Settings, keys: LocalKeyService) -> None:
    """A secondary that cannot be reached is logged and skipped; the primary still records and verifies."""
    both = settings.model_copy(
        update={
            "audit": settings.audit.model_copy(
                update={"secondary_sink": "postgres", "database_url": "postgresql+psycopg://postgres@127.0.0.1:1/x"}
            )
        }
    )
    writer = open_audit_log(both, keys)
    writer.record_sync(make_event())
    writer.close_sync()
    assert verify_store(FileStore(settings.audit_dir), keys.public_keys(AUDIT_SIGNING)).ok


def test_purge_leaves_a_verifiable_rest(settings: Settings, keys: LocalKeyService, postgres_url: str) -> None:
    """Purging old rows writes a signed anchor row; the rest verifies from it, and a reopened writer continues."""
    from datetime import UTC, datetime, timedelta

    from appliance.audit._sinks.postgres import purge_postgres

    pg = _pg_settings(settings, postgres_url)
    writer = open_audit_log(pg, keys)
    for _ in range(10):
        writer.record_sync(make_event())
    writer.close_sync()
    store = PostgresStore(postgres_url)
    (result,) = purge_postgres(store, keys, 2192, now=datetime.now(UTC) + timedelta(days=7 * 366))
    assert result.through_seq is not None and result.records >= 10
    assert store.anchor("node-1") is not None and verify_store(store, keys.public_keys(AUDIT_SIGNING)).ok
    writer = open_audit_log(pg, keys)
    writer.record_sync(make_event())
    writer.close_sync()
    report = verify_store(store, keys.public_keys(AUDIT_SIGNING))
    assert report.ok and report.chains[0].first_seq == result.through_seq + 1


def test_purge_never_drops_records_within_retention(
    settings: Settings, keys: LocalKeyService, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the prefix of records older than the period goes: a later record with an old time (a clock set back)
    does not take the recent records before it along, and the count is what was deleted."""
    from datetime import UTC, datetime

    from appliance.audit import _writer
    from appliance.audit._sinks.postgres import purge_postgres

    clock = {"now": "2019-01-01T00:00:00.000000Z"}
    real = _writer._utc_now
    monkeypatch.setattr(_writer, "_utc_now", lambda: clock["now"] or real())
    writer = open_audit_log(_pg_settings(settings, postgres_url), keys)
    for _ in range(5):  # old: seq 1..7 (start, its checkpoint, five events)
        writer.record_sync(make_event())
    clock["now"] = ""
    for _ in range(5):  # recent: seq 8..12
        writer.record_sync(make_event())
    clock["now"] = "2019-06-01T00:00:00.000000Z"
    for _ in range(5):  # the clock set back: seq 13..17 look old again
        writer.record_sync(make_event())
    clock["now"] = ""
    writer.close_sync()
    store = PostgresStore(postgres_url)
    (result,) = purge_postgres(store, keys, 2192, now=datetime.now(UTC))
    assert (result.through_seq, result.records) == (7, 7)
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as conn:
        assert conn.execute("SELECT min(seq) FROM audit_records").fetchone()[0] == 8
    assert verify_store(store, keys.public_keys(AUDIT_SIGNING)).ok


def test_purge_reads_times_from_the_verified_lines(
    settings: Settings, keys: LocalKeyService, postgres_url: str
) -> None:
    """The time column is a copy outside the hashed line: set back by someone past the trigger, it must not make a
    purge drop recent records behind a validly signed anchor (the lines, and so verify, are untouched)."""
    from datetime import UTC, datetime

    from appliance.audit._sinks.postgres import purge_postgres

    writer = open_audit_log(_pg_settings(settings, postgres_url), keys)
    for _ in range(10):
        writer.record_sync(make_event())
    writer.close_sync()
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only")
        conn.execute("UPDATE audit_records SET time = '2019-01-01T00:00:00.000000Z'")
        conn.execute("ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only")
    store = PostgresStore(postgres_url)
    assert verify_store(store, keys.public_keys(AUDIT_SIGNING)).ok
    (result,) = purge_postgres(store, keys, 2192, now=datetime.now(UTC))
    assert result.through_seq is None and store.anchor("node-1") is None


def test_end_without_stop_is_recorded_on_the_next_start(
    settings: Settings, keys: LocalKeyService, postgres_url: str
) -> None:
    """Rows cut off the end (past the trigger) leave a chain without audit.stop: the next writer records it."""
    import json

    pg = _pg_settings(settings, postgres_url)
    for _ in range(2):
        writer = open_audit_log(pg, keys)
        for _ in range(5):
            writer.record_sync(make_event())
        writer.close_sync()
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only")
        conn.execute("DELETE FROM audit_records WHERE seq > 15")
        conn.execute("ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only")
    writer = open_audit_log(pg, keys)
    writer.close_sync()
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as conn:
        records = [json.loads(bytes(r[0])) for r in conn.execute("SELECT line FROM audit_records ORDER BY seq")]
    resumed = [(r["action"], r["details"]) for r in records if r["type"] == "audit.recovered"]
    assert resumed == [("resume", {"last_seq": 15})]


def test_postgres_primary_with_file_secondary(settings: Settings, keys: LocalKeyService, postgres_url: str) -> None:
    """PostgreSQL primary with a segment-file secondary: after two sessions both hold the same verified chain."""
    section = {"sink": "postgres", "database_url": postgres_url, "secondary_sink": "file"}
    both = settings.model_copy(update={"audit": settings.audit.model_copy(update=section)})
    for _ in range(2):
        writer = open_audit_log(both, keys)
        for _ in range(5):
            writer.record_sync(make_event())
        writer.close_sync()
    files, pg = FileStore(settings.audit_dir), PostgresStore(postgres_url)
    assert b"".join(d for _, d in files.read("node-1")) == b"".join(d for _, d in pg.read("node-1"))
    assert verify_store(files, keys.public_keys(AUDIT_SIGNING)).ok
