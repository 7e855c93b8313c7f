"""Continuous evaluation: kept eval splits and reference sets, the monitor's time series, degraded adapters.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 10:00:00.000000

Adapters registered before this revision have no kept eval split: the monitor reports that and scores them on the
reference sets only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("degraded_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("degraded_reason", sa.Text(), nullable=True))
    op.create_table(
        "eval_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("binding", sa.String(length=64), nullable=False),
        sa.Column("dataset_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("artifact_dir", sa.Text(), nullable=False),
        sa.Column("key_purpose", sa.String(length=63), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("approval", sa.JSON(), nullable=True),
        sa.Column("registered_by", sa.String(length=128), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_eval_sets_adapter_id_adapters")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_sets")),
        sa.UniqueConstraint("kind", "name", name="uq_eval_sets_kind_name"),
    )
    op.create_table(
        "monitor_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("reference", sa.String(length=80), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("mismatched", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("exact_match", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_monitor_results_adapter_id_adapters")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_results")),
    )
    op.create_index(op.f("ix_monitor_results_run_id"), "monitor_results", ["run_id"])
    op.create_index(op.f("ix_monitor_results_adapter_id"), "monitor_results", ["adapter_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_monitor_results_adapter_id"), table_name="monitor_results")
    op.drop_index(op.f("ix_monitor_results_run_id"), table_name="monitor_results")
    op.drop_table("monitor_results")
    op.drop_table("eval_sets")
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("degraded_reason")
        batch.drop_column("degraded_at")
