"""Date columns (Study Date, Patient's Birth Date, Performed Procedure Step Start Date) hold a date of the form
before DICOM 3.0, ``1993.03.04``, without its dots (``gateway.dicom.times.date_key``): QIDO compared the text, so
``StudyDate=19930304`` or a range holding that day missed it, and an open range compared the dots as characters.
QIDO answers take these attributes from the stored attributes (``attrs``), which keep the file's value. Only rows
holding such a value are read and written.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_COLUMNS = [
    ("studies", "study_uid", "study_date"),
    ("studies", "study_uid", "patient_birth_date"),
    ("series", "series_uid", "performed_procedure_step_start_date"),
]
# frozen here, as a migration must be: gateway.dicom.times.date_key as of this revision
_DOTTED = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")


def upgrade() -> None:
    bind = op.get_bind()
    for table, key, column in _COLUMNS:
        # "_" is any one character in LIKE: the pattern finds the candidates, the expression decides
        select = sa.text(f"SELECT {key}, {column} FROM {table} WHERE {column} LIKE '____.__.__'")  # noqa: S608
        update = sa.text(f"UPDATE {table} SET {column} = :value WHERE {key} = :uid")  # noqa: S608 - constants
        changed = [
            {"uid": uid, "value": "".join(found.groups())}
            for uid, text in bind.execute(select).all()
            if (found := _DOTTED.fullmatch(text)) is not None
        ]
        if changed:
            bind.execute(update, changed)


def downgrade() -> None:
    """Nothing to undo: a YYYYMMDD value is a valid DA value, which every reader of the catalog takes."""
