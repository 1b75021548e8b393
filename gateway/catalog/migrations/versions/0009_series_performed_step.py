"""PerformedProcedureStepStartDate and -Time as series columns: PS3.18 Table 10.6.1-5 lists them among the keys a
series query must match (they were returned, but matching on them was a 400). Filled for stored series from the
attributes each series row already holds (its DICOM JSON), so no file is read again.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COLUMNS = {
    "performed_procedure_step_start_date": "00400244",
    "performed_procedure_step_start_time": "00400245",
}


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for column, tag in _COLUMNS.items():
        op.add_column("series", sa.Column(column, sa.String(32)))
        # the first value, trimmed, NULL when absent or empty: what ingest writes (gateway.dicom.qido_attrs)
        value = (
            f"(attrs::json -> '{tag}' -> 'Value' ->> 0)"
            if postgres
            else f"json_extract(attrs, '$.\"{tag}\".Value[0]')"
        )
        present = f"attrs LIKE '%\"{tag}\"%'"
        op.execute(f"UPDATE series SET {column} = NULLIF(TRIM({value}), '') WHERE {present}")  # noqa: S608 - constants


def downgrade() -> None:
    for column in _COLUMNS:
        op.drop_column("series", column)
