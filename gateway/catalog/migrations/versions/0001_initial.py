"""Initial catalog: studies, series, instances, revocations, audit, quarantine.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("study_uid", UID, primary_key=True),
        sa.Column("patient_id", sa.Text),
        sa.Column("patient_name", sa.Text),
        sa.Column("patient_birth_date", sa.String(16)),
        sa.Column("patient_sex", sa.String(16)),
        sa.Column("study_date", sa.String(16)),
        sa.Column("study_time", sa.String(32)),
        sa.Column("accession_number", sa.Text),
        sa.Column("study_id", sa.Text),
        sa.Column("study_description", sa.Text),
        sa.Column("referring_physician_name", sa.Text),
        sa.Column("modalities_in_study", sa.Text, nullable=False, server_default=""),
        sa.Column("num_series", sa.Integer, nullable=False, server_default="0"),
        sa.Column("num_instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attrs", sa.Text, nullable=False, server_default="{}"),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_studies_patient_id", "studies", ["patient_id"])
    op.create_index("ix_studies_study_date", "studies", ["study_date", "study_uid"])
    op.create_index("ix_studies_accession_number", "studies", ["accession_number"])

    op.create_table(
        "series",
        sa.Column("series_uid", UID, primary_key=True),
        sa.Column("study_uid", UID, sa.ForeignKey("studies.study_uid"), nullable=False),
        sa.Column("modality", sa.String(16)),
        sa.Column("series_number", sa.Integer),
        sa.Column("series_description", sa.Text),
        sa.Column("num_instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attrs", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_series_modality_study", "series", ["modality", "study_uid"])
    op.create_index("ix_series_study", "series", ["study_uid", "series_number"])

    op.create_table(
        "instances",
        sa.Column("sop_uid", UID, primary_key=True),
        sa.Column("study_uid", UID, sa.ForeignKey("studies.study_uid"), nullable=False),
        sa.Column("series_uid", UID, sa.ForeignKey("series.series_uid"), nullable=False),
        sa.Column("sop_class_uid", UID, nullable=False),
        sa.Column("instance_number", sa.Integer),
        sa.Column("transfer_syntax_uid", UID, nullable=False),
        sa.Column("number_of_frames", sa.Integer, nullable=False, server_default="1"),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("frame_index", sa.LargeBinary),
        sa.Column("frame_media_type", sa.Text, nullable=False, server_default="application/octet-stream"),
        sa.Column("bulkdata", sa.Text, nullable=False, server_default="[]"),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("attrs", sa.Text, nullable=False, server_default="{}"),
        sa.Column("thumbnail_key", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_instances_series_number", "instances", ["series_uid", "instance_number"])
    op.create_index("ix_instances_study", "instances", ["study_uid"])

    op.create_table(
        "revocations",
        sa.Column("jti", sa.String(128), primary_key=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_revocations_expires_at", "revocations", ["expires_at"])

    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(32)),
        sa.Column("sub", sa.Text),
        sa.Column("sop_uid", UID),
        sa.Column("study_uid", UID),
        sa.Column("decision", sa.String(32)),
        sa.Column("rule", sa.Text),
        sa.Column("destination", sa.Text),
        sa.Column("tags", sa.Text, nullable=False, server_default="[]"),
        sa.Column("policy_version", sa.Text),
    )
    op.create_index("ix_audit_sop_uid", "audit", ["sop_uid"])
    op.create_index("ix_audit_study_uid", "audit", ["study_uid"])

    op.create_table(
        "quarantine",
        sa.Column("key", sa.String(1024), primary_key=True),
        sa.Column("sop_uid", UID),
        sa.Column("study_uid", UID),
        sa.Column("series_uid", UID),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("report", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("quarantine", "audit", "revocations", "instances", "series", "studies"):
        op.drop_table(table)
