"""The registry database: engine, sessions, schema migrations, and translation of SQLAlchemy's errors into ours.

SQLite in the data directory by default; PostgreSQL (``postgresql+psycopg://``) to share the registry between
gateways and GPU nodes. Alembic runs programmatically on open: an empty database is created at the newest
revision, an older one is upgraded, and one at a revision this code does not know (a newer appliance wrote it, or
tables without a revision) is refused with a migration-mismatch error rather than guessed at.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from appliance._fs import exclusive_lock
from appliance.errors import ApplianceError, ConfigError, Conflict, MigrationMismatch, StorageUnavailable

__all__ = ["VERSION_TABLE", "Database", "translate_errors"]

VERSION_TABLE = "registry_alembic_version"  # not "alembic_version": the audit sink may share a PostgreSQL database
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x7265676D6967  # PostgreSQL advisory lock key of registry migrations ("regmig")


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn the database driver's errors into the appliance's (keeping the cause); ours pass through."""
    try:
        yield
    except ApplianceError:
        raise
    except IntegrityError as exc:
        raise Conflict(f"{what}: the change collides with existing registry records ({_short(exc)})") from exc
    except (OperationalError, DBAPIError) as exc:
        raise StorageUnavailable(f"{what}: the registry database is unavailable ({_short(exc)})") from exc
    except SQLAlchemyError as exc:
        raise StorageUnavailable(f"{what}: registry database error ({type(exc).__name__})") from exc


@contextlib.contextmanager
def exclusive_file_lock(path: Path, refusal: str) -> Iterator[None]:
    """Hold an exclusive flock on path (created 0600) for the block, waiting for other processes; a lock file
    that cannot be opened is StorageUnavailable(``refusal: <reason>``)."""
    with exclusive_lock(path, lambda exc: StorageUnavailable(f"{refusal}: {exc.strerror}")):
        yield


def _short(exc: DBAPIError) -> str:
    """The driver's first line, without the SQL statement or parameters (they can carry identifiers)."""
    text = str(exc.orig) if exc.orig is not None else type(exc).__name__
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


def _alembic_config(connection: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("version_table", VERSION_TABLE)
    cfg.attributes["connection"] = connection
    return cfg


class Database:
    """An engine plus a session factory over one registry database, migrated to the newest schema."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        if self.dialect not in {"sqlite", "postgresql"}:
            raise ConfigError(f"registry database must be sqlite or postgresql, not {self.dialect!r}")
        self.engine = self._engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.migrate()

    def _engine(self, url: str) -> Engine:
        kwargs: dict[str, Any] = {"future": True}
        if self.dialect == "sqlite":
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                parent = Path(path).parent
                if not parent.is_dir():
                    raise StorageUnavailable(f"registry database directory does not exist: {parent}")
            kwargs["connect_args"] = {"timeout": 15}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = {"connect_timeout": 5}
        engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def head(self) -> str:
        """The newest schema revision this code knows."""
        head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
        assert head is not None
        return head

    def current(self) -> str | None:
        """The database's schema revision (None for a database the registry has never written)."""
        with translate_errors("reading the schema revision"), self.engine.connect() as conn:
            return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()

    def migrate(self) -> None:
        """Bring the schema to the newest revision, or refuse a database this code does not understand.

        One process migrates at a time (gateway workers start together; a CLI command may start beside them): a
        lock file beside a SQLite database, a transaction-scoped advisory lock on PostgreSQL. Whoever waited then
        finds the schema at the head and has nothing to do.
        """
        script = ScriptDirectory.from_config(_alembic_config(None))
        known = {rev.revision for rev in script.walk_revisions()}
        with (
            translate_errors("migrating the registry schema"),
            self._sqlite_migration_lock(),
            self.engine.begin() as conn,
        ):
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")  # released at commit
            current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
            if current is not None and current not in known:
                raise MigrationMismatch(
                    f"registry database is at schema revision {current!r}, which this appliance does not know "
                    f"(newest known: {script.get_current_head()!r}); was it written by a newer version?"
                )
            if current is None:
                ours = {t.name for t in _tables()}
                present = set(inspect(conn).get_table_names()) & ours
                if present:
                    raise MigrationMismatch(
                        f"registry database has registry tables ({', '.join(sorted(present))}) but no schema "
                        "revision; refusing to guess its layout"
                    )
            if current != script.get_current_head():
                command.upgrade(_alembic_config(conn), "head")

    @contextlib.contextmanager
    def _sqlite_migration_lock(self) -> Iterator[None]:
        path = self.url.removeprefix("sqlite:///") if self.dialect == "sqlite" else ""
        if not path or path == ":memory:":
            yield
            return
        with exclusive_file_lock(Path(f"{path}.migrate.lock"), "registry migration lock cannot be opened"):
            yield

    @contextlib.contextmanager
    def session(self, what: str) -> Iterator[Session]:
        """A session in one transaction: committed when the block succeeds, rolled back on any error."""
        with translate_errors(what):
            session = self._sessions()
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _tables() -> list[Any]:
    from appliance.registry._models import Base

    return list(Base.metadata.sorted_tables)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()
