"""The gateway's own small state (API keys, break-glass grants) in one SQLite file under the data directory.

The CLI (``appliance keys ...``) and running gateways share the file; SQLite's WAL mode lets readers and one
writer work at once, and every write is one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.errors import StorageUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    revoked_by TEXT
);
CREATE TABLE IF NOT EXISTS breakglass (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    reason TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    revoked_by TEXT
);
CREATE INDEX IF NOT EXISTS breakglass_subject ON breakglass (subject, expires_at);
"""


class GatewayDB:
    """One SQLite connection guarded by a lock (calls are short; the file is small)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=5.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)
            path.chmod(0o600)
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailable(f"gateway database {path} cannot be opened: {exc}") from exc
        self._lock = threading.Lock()

    @contextmanager
    def cursor(self, *, write: bool = False) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                if write:
                    cur.execute("BEGIN IMMEDIATE")
                yield cur
                if write:
                    cur.execute("COMMIT")
            except sqlite3.Error as exc:
                if write:
                    self._conn.rollback()
                raise StorageUnavailable(f"gateway database error: {exc}") from exc
            except BaseException:
                if write:
                    self._conn.rollback()
                raise
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def db_path(data_dir: Path) -> Path:
    return data_dir / "gateway" / "gateway.db"
