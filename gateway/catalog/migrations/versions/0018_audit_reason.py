"""A hook audit record keeps the reason of a refusal: a release of a held file the policy refused wrote no record at
all, and a record of it without its reason could not say why (``decision`` "release-refused").

Records made before this revision get NULL.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit", sa.Column("reason", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("reason")
