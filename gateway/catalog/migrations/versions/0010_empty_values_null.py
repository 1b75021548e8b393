"""An empty value among several is null in stored DICOM JSON, not "" (PS3.18 F.2.5: "If a multi-valued attribute
has one or more empty values these are represented as null array elements"). Ingest writes null since this
revision (``gateway.dicom.metadata``); this rewrites what it stored before: the instances' metadata and the QIDO
attributes of each level. Only rows whose text holds ``""`` are read, so a catalog without such values costs one
scan per column.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_COLUMNS = [
    ("instances", "sop_uid", "metadata"),
    ("instances", "sop_uid", "attrs"),
    ("series", "series_uid", "attrs"),
    ("studies", "study_uid", "attrs"),
]


def _nulled(node: Any) -> bool:
    """Replace "" by None in every multi-valued Value list of a DICOM JSON data set, at any depth; True when
    anything changed."""
    changed = False
    if isinstance(node, dict):
        for element in node.values():
            values = element.get("Value") if isinstance(element, dict) else None
            if not isinstance(values, list):
                continue
            if element.get("vr") == "SQ":
                for item in values:
                    changed = _nulled(item) or changed
            elif len(values) > 1 and "" in values:
                element["Value"] = [None if v == "" else v for v in values]
                changed = True
    return changed


def upgrade() -> None:
    bind = op.get_bind()
    for table, key, column in _COLUMNS:
        rows = bind.execute(
            sa.text(f"SELECT {key}, {column} FROM {table} WHERE {column} LIKE '%\"\"%'")  # noqa: S608 - constants
        ).all()
        for uid, text in rows:
            data = json.loads(text)
            if _nulled(data):
                bind.execute(
                    sa.text(f"UPDATE {table} SET {column} = :text WHERE {key} = :uid"),  # noqa: S608 - constants
                    {"text": json.dumps(data, separators=(",", ":"), ensure_ascii=False), "uid": uid},
                )


def downgrade() -> None:
    """Nothing to undo: null and "" mean the same empty value to every reader of the catalog."""
