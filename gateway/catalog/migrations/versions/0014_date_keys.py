"""Date columns (Study Date, Patient's Birth Date, Performed Procedure Step Start Date) hold a date key
(``gateway.dicom.times.date_key``), no longer the text the file held: a date of the form before DICOM 3.0,
``1993.03.04``, without its dots, and NULL for a value that names no calendar day (``00000000``, the placeholder
some modalities write for an unknown date). QIDO compared the texts, so ``StudyDate=19930304`` or a range holding
that day missed the first, and ``PatientBirthDate=-19500101`` found every ``00000000``. QIDO answers take these
attributes from the stored attributes (``attrs``), which keep the file's value. Each stored value is rewritten by
its row's key, in batches; only the rows whose value changes are written.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import datetime
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
_BATCH = 10_000
# frozen here, as a migration must be: gateway.dicom.times.date_key as of this revision
_DOTTED = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")


def _key(value: str) -> str | None:
    found = _DOTTED.fullmatch(value)
    text = "".join(found.groups()) if found else value
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return text


def upgrade() -> None:
    bind = op.get_bind()
    for table, key, column in _COLUMNS:
        where = f"{column} IS NOT NULL AND {key} > :after"
        select = sa.text(f"SELECT {key}, {column} FROM {table} WHERE {where} ORDER BY {key} LIMIT {_BATCH}")  # noqa: S608
        update = sa.text(f"UPDATE {table} SET {column} = :value WHERE {key} = :uid")  # noqa: S608 - constants
        after = ""
        while rows := bind.execute(select, {"after": after}).all():
            changed = [{"uid": uid, "value": _key(text)} for uid, text in rows if _key(text) != text]
            if changed:
                bind.execute(update, changed)
            after = rows[-1][0]


def downgrade() -> None:
    """Nothing to undo: a key is a valid DA value, which every reader of the catalog takes."""
