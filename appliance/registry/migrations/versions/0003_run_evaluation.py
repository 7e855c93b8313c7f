"""Training runs keep their base-vs-adapter evaluation (what the quality gate of approval and publish reads).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 07:00:00.000000

Runs registered before this revision keep NULL: the quality gate refuses them (no evaluation, no approval); the
run must be trained again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("evaluation")
