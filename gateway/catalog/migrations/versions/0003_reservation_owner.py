"""Upload reservations name their owner process and carry a lease, so a crashed upload's reservation is taken
over at once instead of blocking retries for an hour.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("owner_host", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("owner_pid", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("owner_started", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("nonce", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("expires_at", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("reservations") as batch:
        for name in ("expires_at", "nonce", "owner_started", "owner_pid", "owner_host"):
            batch.drop_column(name)
