"""The token audit: one row per token issued (``POST /api/v1/tokens``) and per revocation, naming the API key's label
that asked, the token's ``jti``, subject, scope (studies, series, actions), issue and expiry times and its session
(never the token, never a value of a file). No record said which key issued a token that read a study.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "token_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("api_key", sa.Text, nullable=False),
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("sub", sa.Text),
        sa.Column("studies", sa.Text),
        sa.Column("series", sa.Text),
        sa.Column("actions", sa.Text),
        sa.Column("expires_at", sa.BigInteger),
        sa.Column("session", sa.String(64)),
        sa.Column("session_expires_at", sa.BigInteger),
    )
    op.create_index("ix_token_audit_jti", "token_audit", ["jti"])


def downgrade() -> None:
    op.drop_index("ix_token_audit_jti", table_name="token_audit")
    op.drop_table("token_audit")
