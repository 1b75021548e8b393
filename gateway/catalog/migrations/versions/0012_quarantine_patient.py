"""A quarantine record keeps keyed digests of the held file's Patient ID and Issuer of Patient ID (never the
values: the held file may be a de-identified copy, which the record must not link back to the patient): a patient
erasure found held files only through the patient's stored studies, so a patient whose every file was quarantined
kept them all, and another patient's file held under an erased study UID went with it.

Rows quarantined before this revision get NULL: the patient of a held file is in the file alone (the study row's
patient need not be its own), and reading every held object is not a migration's job. Erasure reaches such a row
through its study, as before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("quarantine", sa.Column("patient_id", sa.Text))
    op.add_column("quarantine", sa.Column("issuer_of_patient_id", sa.Text))
    op.create_index("ix_quarantine_patient_id", "quarantine", ["patient_id"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_patient_id", table_name="quarantine")
    with op.batch_alter_table("quarantine") as batch:
        batch.drop_column("issuer_of_patient_id")
        batch.drop_column("patient_id")
