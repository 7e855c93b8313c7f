"""Publications record the SHA-256 of the adapter_config.json bytes written to the serving directory.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 15:00:00.000000

Rows published before this revision keep NULL: the embedded list then carries no config digest for them and the
engine refuses to load them until they are unpublished and published again (never loaded unchecked).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("publications") as batch:
        batch.add_column(sa.Column("config_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("publications") as batch:
        batch.drop_column("config_sha256")
