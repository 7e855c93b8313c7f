"""Training runs keep their one-run privacy audit (what the audit gate of approval and publish reads).

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-06 10:00:00.000000

Runs registered before this revision keep NULL: they were not audited, and the audit gate has nothing to compare.
(Branch privacy-audit: chained after 0003; the integrator re-chains it after 0004.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("privacy_audit", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("privacy_audit")
