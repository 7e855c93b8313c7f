"""The PostgreSQL fixture gives each test a real, empty, writable database."""

from __future__ import annotations

import pytest


@pytest.mark.postgres
def test_fresh_database_is_writable(postgres_url: str) -> None:
    """A new database accepts DDL and returns what was written."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x int)"))
        conn.execute(sa.text("INSERT INTO t VALUES (42)"))
        assert conn.execute(sa.text("SELECT x FROM t")).scalar_one() == 42
    engine.dispose()
