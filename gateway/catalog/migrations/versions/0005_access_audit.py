"""The access audit trail (who read or wrote which study, when, how) and the collector's position in each log.

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("remote", sa.String(64), nullable=False, server_default=""),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("sop_uid", sa.String(64)),
        sa.Column("sub", sa.String(256), nullable=False, server_default=""),
        sa.Column("jti", sa.String(256), nullable=False, server_default=""),
        sa.Column("via", sa.String(64), nullable=False, server_default=""),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_access_study_at", "access", ["study_uid", "at"])
    op.create_index("ix_access_sub_at", "access", ["sub", "at"])
    op.create_index("ix_access_at", "access", ["at"])
    op.create_table(
        "access_cursor",
        sa.Column("source", sa.String(1024), primary_key=True),
        sa.Column("file_id", sa.String(64), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("access_cursor")
    op.drop_index("ix_access_at", "access")
    op.drop_index("ix_access_sub_at", "access")
    op.drop_index("ix_access_study_at", "access")
    op.drop_table("access")
