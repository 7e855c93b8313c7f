"""PostgreSQL sink: one chain per writer in one table, for several gateways sharing a database.

Each batch is one transaction (``COPY`` of the lines, then ``COMMIT``): acknowledged only after the commit, which
is durable with PostgreSQL's default ``synchronous_commit``. A writer holds a session advisory lock on its chain,
so two processes can never fork one chain (a second takes the next lane, as with segment files). Triggers make the
table append-only: UPDATE and TRUNCATE are refused, and DELETE only inside a purge (``appliance.audit_purge = on``).
The stored line is byte-for-byte what the file sink writes, so the same verifier and export work on both.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from appliance.audit._canonical import GENESIS_HASH
from appliance.audit._sinks._anchor import Anchor
from appliance.audit._sinks._base import ChainHead, stopped_cleanly
from appliance.errors import AuditUnavailable

__all__ = ["PostgresSink", "PostgresStore", "conninfo"]

_MAX_LANES = 64
_PAGE = 20_000
_TIME = b'"time":"'

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    writer_id text NOT NULL,
    seq bigint NOT NULL,
    time text NOT NULL,
    line bytea NOT NULL,
    PRIMARY KEY (writer_id, seq)
);
CREATE TABLE IF NOT EXISTS audit_anchors (
    writer_id text PRIMARY KEY,
    seq bigint NOT NULL,
    hash text NOT NULL,
    purged_at text NOT NULL,
    signature text NOT NULL
);
CREATE OR REPLACE FUNCTION audit_records_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('appliance.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_records is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_records_append_only') THEN
        CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
            FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_records_no_truncate') THEN
        CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
            FOR EACH STATEMENT EXECUTE FUNCTION audit_records_append_only();
    END IF;
END $$;
"""


def conninfo(url: str) -> str:
    """A psycopg connection string from a SQLAlchemy-style ``postgresql+psycopg://`` URL."""
    return re.sub(r"^postgresql\+psycopg://", "postgresql://", url)


def _lock_key(writer_id: str) -> int:
    return zlib.crc32(f"appliance-audit:{writer_id}".encode()) - (1 << 31)


def _unavailable(what: str, exc: Exception) -> AuditUnavailable:
    return AuditUnavailable(f"audit database cannot {what} ({type(exc).__name__})")


def _time_of(line: bytes) -> str:
    start = line.find(_TIME)
    if start < 0:
        return ""
    start += len(_TIME)
    return line[start : line.find(b'"', start)].decode("ascii", "replace")


class PostgresSink:
    """Appends one writer's chain to ``audit_records`` (see the module docstring)."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        self._url = url
        self._conninfo = conninfo(url)
        self._timeout = connect_timeout_s
        self._conn: Any = None
        self._writer_id = ""
        self._head_seq = 0
        self.description = "postgres"

    def _connect(self) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(self._conninfo, connect_timeout=max(1, int(self._timeout)), autocommit=True)
            conn.execute(SCHEMA)
        except psycopg.Error as exc:
            raise _unavailable("be reached", exc) from exc
        return conn

    def open(self, writer_id: str, *, exact: bool = False) -> ChainHead:
        self._conn = self._connect()
        lanes = [writer_id] if exact else [writer_id] + [f"{writer_id}.{n}" for n in range(2, _MAX_LANES + 1)]
        for lane in lanes:
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(lane),)).fetchone()
            if row and row[0]:
                self._writer_id = lane
                return self._head()
        self.close()
        raise AuditUnavailable(f"every lane of audit writer {writer_id!r} is held by another process")

    def _head(self) -> ChainHead:
        import psycopg

        try:
            rows = self._conn.execute(
                "SELECT seq, line FROM audit_records WHERE writer_id = %s ORDER BY seq DESC LIMIT 2",
                (self._writer_id,),
            ).fetchall()
            anchor = PostgresStore.anchor_of(self._conn, self._writer_id)
        except psycopg.Error as exc:
            raise _unavailable("read the end of its chain", exc) from exc
        if rows:
            line = bytes(rows[0][1])
            self._head_seq = int(rows[0][0])
            clean = len(rows) == 2 and stopped_cleanly(bytes(rows[1][1]), line)
            return ChainHead(self._writer_id, self._head_seq, line[-66:-2].decode("ascii"), clean_end=clean)
        if anchor is not None:
            self._head_seq = anchor.seq
            return ChainHead(self._writer_id, anchor.seq, anchor.hash)
        self._head_seq = 0
        return ChainHead(self._writer_id, 0, GENESIS_HASH)

    def append(self, lines: Sequence[bytes], first_seq: int) -> None:
        import psycopg

        skip = max(0, self._head_seq - first_seq + 1)  # a secondary that already holds these
        rows = [(self._writer_id, first_seq + i, _time_of(line), line.rstrip(b"\n")) for i, line in enumerate(lines)]
        rows = rows[skip:]
        if not rows:
            return
        if self._conn is None:
            raise AuditUnavailable("audit database connection is closed")
        try:
            with (
                self._conn.transaction(),
                self._conn.cursor() as cur,
                cur.copy("COPY audit_records (writer_id, seq, time, line) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
        except psycopg.Error as exc:
            raise _unavailable("commit a record", exc) from exc
        self._head_seq = rows[-1][1]

    def write(self, lines: Sequence[bytes], first_seq: int) -> None:
        self.append(lines, first_seq)  # a database takes rows only by committing them: written is durable

    def sync(self) -> None:
        return None

    def recover(self) -> ChainHead:
        import psycopg

        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.execute("SELECT 1")
                return self._head()
            except psycopg.Error:
                self._conn.close()
        self._conn = self._connect()  # a new session: the advisory lock must be taken again
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(self._writer_id),)).fetchone()
        if not (row and row[0]):
            raise AuditUnavailable(f"audit chain {self._writer_id!r} was taken by another process")
        return self._head()

    def sync_probe(self) -> None:
        self.probe()  # a commit is the sync: the database answering writable is the probe

    def probe(self) -> None:
        import psycopg

        if self._conn is None or self._conn.closed:
            raise AuditUnavailable("audit database connection is closed")
        try:
            row = self._conn.execute("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')").fetchone()
        except psycopg.Error as exc:
            raise _unavailable("be reached", exc) from exc
        if row is None or row[0] or row[1] == "on":
            raise AuditUnavailable("audit database is read-only")

    def reader(self) -> PostgresStore:
        return PostgresStore(self._url)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # ends the session: releases the advisory lock
            self._conn = None


class PostgresStore:
    """Read access to every chain in ``audit_records`` (verification, export, tail)."""

    def __init__(self, url: str) -> None:
        self._conninfo = conninfo(url)

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self._conninfo, connect_timeout=5, autocommit=True)
        except psycopg.Error as exc:
            raise _unavailable("be reached", exc) from exc

    def writers(self) -> list[str]:
        with self._connect() as conn:
            if not self._has_table(conn):
                return []
            return [r[0] for r in conn.execute("SELECT DISTINCT writer_id FROM audit_records ORDER BY 1")]

    @staticmethod
    def _has_table(conn: Any) -> bool:
        return bool(conn.execute("SELECT to_regclass('audit_records') IS NOT NULL").fetchone()[0])

    def read(self, writer_id: str) -> Iterator[tuple[str, bytes]]:
        with self._connect() as conn:
            after = -1
            while True:
                rows = conn.execute(
                    "SELECT seq, line FROM audit_records WHERE writer_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                    (writer_id, after, _PAGE),
                ).fetchall()
                if not rows:
                    return
                yield f"audit_records[seq {rows[0][0]}..]", b"".join(bytes(r[1]) + b"\n" for r in rows)
                after = int(rows[-1][0])

    def anchor(self, writer_id: str) -> Anchor | None:
        with self._connect() as conn:
            return self.anchor_of(conn, writer_id) if self._has_table(conn) else None

    @staticmethod
    def anchor_of(conn: Any, writer_id: str) -> Anchor | None:
        row = conn.execute(
            "SELECT seq, hash, purged_at, signature FROM audit_anchors WHERE writer_id = %s", (writer_id,)
        ).fetchone()
        if row is None:
            return None
        return Anchor(writer_id=writer_id, seq=int(row[0]), hash=row[1], purged_at=row[2], signature=row[3])

    def is_active(self, writer_id: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(writer_id),)).fetchone()
            return not (row and row[0])  # the session ends with the block, releasing a lock it took

    def total_bytes(self) -> int:
        with self._connect() as conn:
            if not self._has_table(conn):
                return 0
            row = conn.execute("SELECT coalesce(sum(octet_length(line)), 0) FROM audit_records").fetchone()
            return int(row[0]) if row else 0


def purge_postgres(
    store: PostgresStore,
    keys: Any,
    retain_days: int,
    *,
    now: Any = None,
    dry_run: bool = False,
    intent: Any = None,
    done: Any = None,
) -> Any:
    """Drop, per writer, the records before the first one within retention (never the newest), behind a signed anchor
    row. Record times need not grow (a clock set back), so an old time after a recent record drops nothing past it.
    ``intent`` and ``done`` are the hooks of ``purge_files``: before anything changes (raises: nothing is deleted)
    and after the commit."""
    from datetime import UTC, datetime, timedelta

    from appliance.audit._checkpoint import chain_public_keys, sign, signed_message
    from appliance.audit._retention import PurgeResult
    from appliance.audit._verify import verify_store
    from appliance.errors import IntegrityViolation

    cutoff = ((now or datetime.now(UTC)) - timedelta(days=retain_days)).isoformat(timespec="microseconds")
    cutoff = cutoff[:-6] + "Z"
    results = []
    for writer_id in store.writers():
        # The records before the first one within the period (times need not grow), by the time in the hashed line:
        # the time column is an unverified copy. A line without a time counts as within the period.
        with store._connect() as conn:
            row = conn.execute(
                "SELECT max(seq), count(*) FROM audit_records WHERE writer_id = %s AND seq < LEAST("
                "(SELECT min(seq) FROM audit_records WHERE writer_id = %s "
                "AND (substring(convert_from(line, 'UTF8') from '\"time\":\"([0-9TZ:.-]*)') >= %s) IS NOT FALSE), "
                "(SELECT max(seq) FROM audit_records WHERE writer_id = %s))",
                (writer_id, writer_id, cutoff, writer_id),
            ).fetchone()
        through, count = (int(row[0]), int(row[1])) if row and row[0] is not None else (None, 0)
        if through is None:
            results.append(PurgeResult(writer_id, [], None, 0))
            continue
        report = verify_store(store, chain_public_keys(keys), writer_id=writer_id)
        if not report.ok:
            raise IntegrityViolation(f"audit chain {writer_id} does not verify: not purging evidence")
        with store._connect() as conn:
            line = conn.execute(
                "SELECT line FROM audit_records WHERE writer_id = %s AND seq = %s", (writer_id, through)
            ).fetchone()[0]
        digest = bytes(line)[-66:-2].decode("ascii")
        result = PurgeResult(writer_id, [f"seq <= {through}"], through, count, digest)
        if not dry_run:
            signature = sign(keys, signed_message("anchor", writer_id, through, digest), writer_id)
            if intent is not None:
                intent(result)  # recorded before anything changes; raises: nothing is deleted
            with store._connect() as conn, conn.transaction():
                purged_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                conn.execute("SET LOCAL appliance.audit_purge = 'on'")
                conn.execute(
                    "INSERT INTO audit_anchors (writer_id, seq, hash, purged_at, signature) "
                    "VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (writer_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                    "purged_at = excluded.purged_at, signature = excluded.signature",
                    (writer_id, through, digest, purged_at, signature),
                )
                conn.execute("DELETE FROM audit_records WHERE writer_id = %s AND seq <= %s", (writer_id, through))
            if done is not None:
                done(result)
        results.append(result)
    return results
