"""Instances stored into another patient's study before STOW refused that (0xA778, session 16) keep their own
Patient ID and Issuer of Patient ID in two columns, NULL for every other instance: the catalog kept one Patient ID
per study, so erasing the instance's patient missed it and it stayed served.

Found from data the catalog holds: each instance's metadata (its DICOM JSON) names its patient, compared with its
study's row by the rule registration applies (``Catalog._other_patients`` as of this revision: both Patient IDs
non-empty and different, or both issuers non-empty and different). The JSON is read by the database, a batch of
instances at a time; only the few instances that differ are written. No stored object is read.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_BATCH = 10_000
_PATIENT_ID, _ISSUER = "00100020", "00100021"
_WHERE = "other_patient_id IS NOT NULL"


def _unsafe(column: str) -> str:
    """Whether the database's JSON reader may refuse the column: metadata stored before orjson (bb5cd8d) wrote a DS
    overflow as Infinity or NaN, which SQLite's json_extract and PostgreSQL's ::json reject (the whole upgrade would
    roll back). Such rows are read in Python (json.loads takes them); a "NaN" inside a text value only sends a row
    there too."""
    return f"({column} LIKE '%Infinity%' OR {column} LIKE '%NaN%')"


def _first_value(column: str, tag: str, postgres: bool) -> str:
    if postgres:
        extract = f"({column}::json -> '{tag}' -> 'Value' ->> 0)"
    else:
        extract = f"json_extract({column}, '$.\"{tag}\".Value[0]')"
    return f"CASE WHEN {_unsafe(column)} THEN NULL ELSE {extract} END"


def _raw(column: str) -> str:
    return f"CASE WHEN {_unsafe(column)} THEN {column} END"


def _in_python(raw: str, tag: str) -> object:
    values = (json.loads(raw).get(tag) or {}).get("Value") or [None]
    return values[0]


def _differs(theirs: tuple[str, str], held: tuple[str, str]) -> bool:
    """Frozen here, as a migration must be: an empty Patient ID or issuer differs from none."""
    return bool(held[0] and theirs[0] and (held[0] != theirs[0] or (held[1] and theirs[1] and held[1] != theirs[1])))


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    op.add_column("instances", sa.Column("other_patient_id", sa.Text))
    op.add_column("instances", sa.Column("other_issuer_of_patient_id", sa.Text))
    op.create_index(
        "ix_instances_other_patient_id",
        "instances",
        ["other_patient_id"],
        sqlite_where=sa.text(_WHERE),
        postgresql_where=sa.text(_WHERE),
    )
    select = sa.text(
        "SELECT i.sop_uid, "  # noqa: S608 - constants
        f"{_first_value('i.metadata', _PATIENT_ID, postgres)}, {_first_value('i.metadata', _ISSUER, postgres)}, "
        f"s.patient_id, {_first_value('s.attrs', _ISSUER, postgres)}, {_raw('i.metadata')}, {_raw('s.attrs')} "
        "FROM instances i JOIN studies s ON s.study_uid = i.study_uid "
        f"WHERE i.sop_uid > :after ORDER BY i.sop_uid LIMIT {_BATCH}"
    )
    update = sa.text(
        "UPDATE instances SET other_patient_id = :patient, other_issuer_of_patient_id = :issuer WHERE sop_uid = :uid"
    )
    after = ""
    while rows := bind.execute(select, {"after": after}).all():
        changed = []
        for uid, patient, issuer, study_patient, study_issuer, metadata, attrs in rows:
            if metadata is not None:
                patient, issuer = _in_python(metadata, _PATIENT_ID), _in_python(metadata, _ISSUER)
            if attrs is not None:
                study_issuer = _in_python(attrs, _ISSUER)
            theirs = (str(patient or "").strip(), str(issuer or "").strip())
            if _differs(theirs, (str(study_patient or "").strip(), str(study_issuer or "").strip())):
                changed.append({"uid": uid, "patient": theirs[0], "issuer": theirs[1]})
        if changed:
            bind.execute(update, changed)
        after = rows[-1][0]


def downgrade() -> None:
    op.drop_index("ix_instances_other_patient_id", table_name="instances")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("other_issuer_of_patient_id")
        batch.drop_column("other_patient_id")
