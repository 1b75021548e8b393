"""Lossless per-frame derivatives (issue 14): the published derivative's columns on instances, and the job table
the local worker polls.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("derivative_syntax", sa.String(64)))
        batch.add_column(sa.Column("derivative_key", sa.Text))
        batch.add_column(sa.Column("derivative_index", sa.LargeBinary))
    op.create_table(
        "derive_jobs",
        sa.Column("sop_uid", sa.String(64), primary_key=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("not_before", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_derive_jobs_due", "derive_jobs", ["attempts", "not_before"])


def downgrade() -> None:
    op.drop_index("ix_derive_jobs_due", table_name="derive_jobs")
    op.drop_table("derive_jobs")
    with op.batch_alter_table("instances") as batch:
        for name in ("derivative_index", "derivative_key", "derivative_syntax"):
            batch.drop_column(name)
