"""Indexes for QIDO at a million studies: the study order (StudyDate descending, undated last, then
StudyInstanceUID) as one index, so a page is read in order instead of sorted, and lower(PatientName) for
case-insensitive prefix matching (``DOE*``).

The order index replaces ``ix_studies_study_date`` (it serves date ranges just as well). SQLite has no NULLS LAST
in CREATE INDEX, but its DESC already puts NULL last; PostgreSQL needs it said. The name index uses
text_pattern_ops on PostgreSQL so LIKE 'doe%' can use it whatever the database's collation.

Revision ID: 0007
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.drop_index("ix_studies_study_date", table_name="studies")
    date = "study_date DESC NULLS LAST" if postgres else "study_date DESC"
    op.create_index("ix_studies_date_order", "studies", [sa.text(date), "study_uid"])
    name = "lower(patient_name) text_pattern_ops" if postgres else "lower(patient_name)"
    op.create_index("ix_studies_patient_name_lower", "studies", [sa.text(name)])


def downgrade() -> None:
    op.drop_index("ix_studies_patient_name_lower", table_name="studies")
    op.drop_index("ix_studies_date_order", table_name="studies")
    op.create_index("ix_studies_study_date", "studies", ["study_date", "study_uid"])
