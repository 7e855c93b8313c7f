"""Alembic migrations of the registry schema (run programmatically by ``appliance.registry._db``)."""
