"""A quarantine record keeps where the held file is (the policy destination that may hold identifiable data of
the upload's region; NULL: the gateway's own storage) and the upload's context (tenant, declared region, source,
sub): a held file went to the default storage whatever the policy allowed there, and a release could not judge
it with the context of its upload (nor give it its tenant's retention).

Rows quarantined before this revision get NULL everywhere: their files are in the default storage, where they
were always put, and their upload's context was never kept.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

COLUMNS = ("destination", "tenant", "region", "source", "sub")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("quarantine", sa.Column(name, sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("quarantine") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
