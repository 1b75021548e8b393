"""The study order index carries modalities_in_study and patient_name, so the QIDO filters that walk it
(ModalitiesInStudy, PatientName wildcards) read the index alone: at 1,000,000 studies a page no longer probes the
series of each study it passes (ModalitiesInStudy 5-19 ms of SQL before) nor reads each study row it filters out
(``DOE*`` 6.5 ms on SQLite before). ``gateway/catalog/search.py`` matches ModalitiesInStudy on the study row's
list for this reason.

PostgreSQL keeps the key (study_date DESC NULLS LAST, study_uid) and INCLUDEs the two columns (an index-only scan
filters on them); SQLite has no INCLUDE, so they trail the key, which orders the same.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_studies_date_order", table_name="studies")
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_studies_date_order",
            "studies",
            [sa.text("study_date DESC NULLS LAST"), "study_uid"],
            postgresql_include=["modalities_in_study", "patient_name"],
        )
    else:
        op.create_index(
            "ix_studies_date_order",
            "studies",
            [sa.text("study_date DESC"), "study_uid", "modalities_in_study", "patient_name"],
        )


def downgrade() -> None:
    op.drop_index("ix_studies_date_order", table_name="studies")
    date = "study_date DESC NULLS LAST" if op.get_bind().dialect.name == "postgresql" else "study_date DESC"
    op.create_index("ix_studies_date_order", "studies", [sa.text(date), "study_uid"])
