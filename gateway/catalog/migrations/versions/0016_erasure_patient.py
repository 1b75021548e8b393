"""A deletion record of a patient erasure keeps keyed digests of the Patient ID (and the issuer, when the call named
one) it was given, never the values: an erasure interrupted after it hid the patient's studies (its worker killed,
a catalog or storage outage answered 503 "retry") left records no Patient ID led back to, so the same erasure sent
again answered 404 "no study ... of this patient is stored" while the studies' objects stayed in storage until
someone ran `reconcile --repair`. The retry now finds them by these digests and finishes them.

Records made before this revision get NULL: a DELETE of each study still finishes them, as before.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deletions", sa.Column("patient_id", sa.Text))
    op.add_column("deletions", sa.Column("issuer_of_patient_id", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("deletions") as batch:
        batch.drop_column("issuer_of_patient_id")
        batch.drop_column("patient_id")
