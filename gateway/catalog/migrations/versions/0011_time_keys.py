"""Study Time and Performed Procedure Step Start Time columns hold a time key (``gateway.dicom.times.time_key``,
``HHMMSS.FFFFFF`` with every component), no longer the text the file held: QIDO compared those texts, so
``StudyTime=101500.000`` missed a stored ``101500`` and ``101500`` missed a stored ``1015``. QIDO answers take
these attributes from the stored attributes (``attrs``), which keep the file's value. Each stored value is
rewritten by its row's key, in batches; a value that is no time becomes NULL (it matched nothing sensibly).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_COLUMNS = [("studies", "study_uid", "study_time"), ("series", "series_uid", "performed_procedure_step_start_time")]
_BATCH = 10_000
# frozen here, as a migration must be: gateway.dicom.times.time_key as of this revision (fill "0")
_TM = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{0,6}))?)?)?")


def _key(value: str) -> str | None:
    found = _TM.fullmatch(value.strip())
    if found is None:
        return None
    hours, minutes, seconds, fraction = found.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        return None
    return (hours + (minutes or "") + (seconds or "")).ljust(6, "0") + "." + (fraction or "").ljust(6, "0")


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
    """Nothing to undo: a key is a valid TM value, which every reader of the catalog takes."""
