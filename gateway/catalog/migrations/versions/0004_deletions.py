"""Deletions: the audit and journal of removed studies, series and instances, and the recent tombstones that
keep NGINX from serving a cached plan of something removed (`gateway.lifecycle`); each instance's tenant and
policy destination, which retention rules select on (`gateway.retention`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deletions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("sop_uid", sa.String(64)),
        sa.Column("sub", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("instances", sa.Integer, nullable=False),
        sa.Column("keys", sa.Text, nullable=False, server_default="[]"),
    )
    op.create_index("ix_deletions_created_at", "deletions", ["created_at"])
    op.create_index("ix_deletions_unfinished", "deletions", ["finished_at"])
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("tenant", sa.Text))
        batch.add_column(sa.Column("destination", sa.Text))
    op.create_index("ix_instances_created_at", "instances", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_instances_created_at", "instances")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("destination")
        batch.drop_column("tenant")
    op.drop_index("ix_deletions_unfinished", "deletions")
    op.drop_index("ix_deletions_created_at", "deletions")
    op.drop_table("deletions")
