"""The registry database: migrations, refusing unknown schemas, and driver errors translated to ours."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from appliance.config import Settings, load_settings
from appliance.errors import Conflict, MigrationMismatch, NotFound, StorageUnavailable
from appliance.registry import open_registry
from appliance.registry._db import VERSION_TABLE, Database, translate_errors
from tests.conftest import REPO_ROOT
from tests.registry.conftest import OPERATOR, RecordingAudit, RunFactory


def _open(settings: Settings, keys: object) -> object:
    return open_registry(settings, keys=keys, audit=RecordingAudit())  # type: ignore[arg-type]


def test_migrates_once_and_reopens(any_settings: Settings, make_run: RunFactory) -> None:
    """A fresh database is created at the newest revision; reopening keeps the data and the revision."""
    from appliance.keys import open_key_service

    keys = open_key_service(any_settings)
    reg = open_registry(any_settings, keys=keys, audit=RecordingAudit())
    reg.add(make_run(), "triage", OPERATOR)
    head = reg.db.head()
    assert reg.db.current() == head
    reg.close()
    again = open_registry(any_settings, keys=keys, audit=RecordingAudit())
    try:
        assert again.db.current() == head and [a.name for a in again.list_adapters()] == ["triage"]
    finally:
        again.close()


def _open_database(url: str, start: Any) -> str:
    start.wait(30)
    Database(url).engine.dispose()
    return "ok"


def test_processes_starting_together_migrate_once(any_settings: Settings) -> None:
    """Four processes open a fresh database at the same moment (gateway workers do): all succeed, one migrates."""
    url = any_settings.registry_url
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(4, mp_context=ctx) as pool:
        start = manager.Event()
        results = [pool.submit(_open_database, url, start) for _ in range(4)]
        time.sleep(2)  # let every process reach the barrier (spawned interpreters import first)
        start.set()
        assert [r.result(120) for r in results] == ["ok"] * 4
    db = Database(url, migrate=False)
    assert db.current() == db.head()
    db.engine.dispose()


def test_unknown_revision_refused(any_settings: Settings) -> None:
    """A database stamped with a revision this code does not know (a newer appliance) is refused, untouched."""
    Database(any_settings.registry_url).dispose()
    engine = create_engine(any_settings.registry_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_from_the_future'"))  # noqa: S608
    with pytest.raises(MigrationMismatch, match="9999_from_the_future"):
        Database(any_settings.registry_url)
    with engine.connect() as conn:
        stamped = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()  # noqa: S608
        assert stamped == "9999_from_the_future"
    engine.dispose()


def test_unversioned_tables_refused(settings: Settings) -> None:
    """Registry tables without a schema revision are refused rather than guessed at."""
    engine = create_engine(settings.registry_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE adapters (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(MigrationMismatch, match="no schema revision"):
        Database(settings.registry_url)


def test_unreachable_postgres_is_storage_unavailable(data_dir: Path) -> None:
    """A PostgreSQL nobody listens on gives StorageUnavailable, not a driver exception."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = load_settings(
        data_dir=data_dir,
        policies_dir=REPO_ROOT / "policies",
        registry={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{port}/nope"},
    )
    with pytest.raises(StorageUnavailable, match="registry database is unavailable"):
        open_registry(settings, keys=object(), audit=RecordingAudit())  # type: ignore[arg-type]


def test_missing_sqlite_directory(tmp_path: Path) -> None:
    """A SQLite path in a directory that does not exist is StorageUnavailable naming the directory."""
    with pytest.raises(StorageUnavailable, match="does not exist"):
        Database(f"sqlite:///{tmp_path}/gone/registry.db")


@pytest.mark.postgres
def test_database_lost_mid_session(
    postgres_url: str, postgres_server: object, data_dir: Path, make_run: RunFactory
) -> None:
    """When PostgreSQL drops the database under a running registry, operations fail with StorageUnavailable."""
    import psycopg

    from appliance.keys import open_key_service

    settings = load_settings(
        data_dir=data_dir, policies_dir=REPO_ROOT / "policies", registry={"database_url": postgres_url}
    )
    reg = open_registry(settings, keys=open_key_service(settings), audit=RecordingAudit())
    try:
        reg.add(make_run(), "triage", OPERATOR)
        name = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:  # type: ignore[attr-defined]
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        with pytest.raises(StorageUnavailable):
            reg.list_adapters()
        with pytest.raises(StorageUnavailable):
            reg.add(make_run(), "triage", OPERATOR)
    finally:
        reg.close()


@pytest.mark.parametrize(
    ("foreign", "ours"),
    [
        (IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")), Conflict),
        (OperationalError("SELECT", {}, Exception("could not connect")), StorageUnavailable),
        (DBAPIError("SELECT", {}, Exception("server closed the connection")), StorageUnavailable),
        (SQLAlchemyError("anything else"), StorageUnavailable),
        (NotFound("ours pass through"), NotFound),
    ],
)
def test_foreign_errors_translated(foreign: Exception, ours: type[Exception]) -> None:
    """Every database error type we expect becomes an appliance error, keeping the cause."""
    with pytest.raises(ours) as caught, translate_errors("testing"):
        raise foreign
    assert caught.value is foreign or caught.value.__cause__ is foreign
    assert "SELECT" not in str(caught.value) and "INSERT" not in str(caught.value)


def test_upgrade_from_0001_adds_the_publication_config_digest(any_settings: Settings) -> None:
    """A database at revision 0001 upgrades in place: publications gain ``config_sha256``, existing rows NULL."""
    from alembic import command
    from sqlalchemy import inspect

    from appliance.registry._db import _alembic_config

    db = Database(any_settings.registry_url, migrate=False)
    try:
        with db.engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0001")
        assert db.current() == "0001"
        db.migrate()
        assert db.current() == db.head()
        columns = {c["name"]: c for c in inspect(db.engine).get_columns("publications")}
        assert columns["config_sha256"]["nullable"]
    finally:
        db.engine.dispose()
