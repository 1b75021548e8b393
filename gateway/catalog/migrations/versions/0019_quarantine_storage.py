"""A quarantine record keeps the URL of the storage holding its file (``file://...`` or ``s3://bucket/prefix``, no
credential): a file held in a destination later removed from the policy could not be deleted (409), since the
record named only the destination. Its deletion now reaches it there while that storage answers.

Records made before this revision get NULL: such a file is deleted once its destination is named again.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("quarantine", sa.Column("storage", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("quarantine") as batch:
        batch.drop_column("storage")
