"""Alembic environment for the registry: always given a live connection by ``appliance.registry._db``."""

from __future__ import annotations

from alembic import context

from appliance.registry._models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - the registry always passes its connection
    raise RuntimeError("the registry's migrations run only through appliance.registry (no offline mode)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=config.get_main_option("version_table") or "registry_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
