"""Catalog tables (SQLAlchemy Core). The Alembic migrations in ``migrations/versions`` create exactly these; a
test compares the migrated database with this metadata, so the two cannot drift apart silently.

Timestamps are integer epoch seconds (portable across SQLite and PostgreSQL, trivially comparable). Text that
is JSON (``attrs``, ``metadata``, ``bulkdata``, ``tags``, ``report``) is stored as TEXT and parsed only when
needed.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

UID = sa.String(64)

studies = sa.Table(
    "studies",
    metadata,
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
    # backslash-joined, sorted distinct modalities of the study's series ("CT\SR")
    sa.Column("modalities_in_study", sa.Text, nullable=False, server_default=""),
    sa.Column("num_series", sa.Integer, nullable=False, server_default="0"),
    sa.Column("num_instances", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attrs", sa.Text, nullable=False, server_default="{}"),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("ix_studies_patient_id", "patient_id"),
    # the QIDO order (StudyDate descending, undated last, then StudyInstanceUID): pages are read, not sorted, and
    # ModalitiesInStudy and PatientName wildcards are filtered in the index alone. Migration 0008 creates it as
    # (study_date DESC NULLS LAST, study_uid) INCLUDE (modalities_in_study, patient_name) on PostgreSQL and
    # (study_date DESC, study_uid, modalities_in_study, patient_name) on SQLite (no NULLS clause in its CREATE
    # INDEX; its DESC puts NULL last anyway; no INCLUDE). Reflection sees plain columns on SQLite, so that is what
    # is declared here; the schema test checks the DDL of both.
    sa.Index("ix_studies_date_order", "study_date", "study_uid", "modalities_in_study", "patient_name"),
    # PatientName matches case-insensitively (gateway.catalog.search): prefix patterns range over this index
    sa.Index(
        "ix_studies_patient_name_lower",
        sa.func.lower(sa.column("patient_name")).label("name_lower"),
        postgresql_ops={"name_lower": "text_pattern_ops"},
    ),
    sa.Index("ix_studies_accession_number", "accession_number"),
)

series = sa.Table(
    "series",
    metadata,
    sa.Column("series_uid", UID, primary_key=True),
    sa.Column("study_uid", UID, sa.ForeignKey("studies.study_uid"), nullable=False),
    sa.Column("modality", sa.String(16)),
    sa.Column("series_number", sa.Integer),
    sa.Column("series_description", sa.Text),
    sa.Column("num_instances", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attrs", sa.Text, nullable=False, server_default="{}"),
    # matching keys of PS3.18 Table 10.6.1-5 (migration 0009)
    sa.Column("performed_procedure_step_start_date", sa.String(32)),
    sa.Column("performed_procedure_step_start_time", sa.String(32)),
    # ModalitiesInStudy matching is "study_uid IN (SELECT study_uid FROM series WHERE modality IN ...)"
    sa.Index("ix_series_modality_study", "modality", "study_uid"),
    sa.Index("ix_series_study", "study_uid", "series_number"),
)

instances = sa.Table(
    "instances",
    metadata,
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
    # JSON list of [path, vr, offset, length]
    sa.Column("bulkdata", sa.Text, nullable=False, server_default="[]"),
    # the DICOM JSON of the instance (PS3.18 F.2), BulkDataURIs relative to the instance
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("attrs", sa.Text, nullable=False, server_default="{}"),
    sa.Column("thumbnail_key", sa.Text),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # what retention rules select on (gateway.retention): the upload's tenant and the policy destination
    sa.Column("tenant", sa.Text),
    sa.Column("destination", sa.Text),
    # The lossless per-frame derivative (gateway.derive), published in one UPDATE once wholly stored: its transfer
    # syntax, storage key (under the instance's prefix) and packed frame index. NULL until then.
    sa.Column("derivative_syntax", UID),
    sa.Column("derivative_key", sa.Text),
    sa.Column("derivative_index", sa.LargeBinary),
    sa.Index("ix_instances_series_number", "series_uid", "instance_number"),
    sa.Index("ix_instances_study", "study_uid"),
    sa.Index("ix_instances_created_at", "created_at"),
    # The instance's own Patient ID and Issuer of Patient ID where they are not its study's, NULL everywhere else:
    # instances stored into another patient's study before STOW refused that (0xA778, session 16), found from their
    # metadata by migration 0013, so a patient erasure reaches them. STOW stores no new one, so ingest leaves these
    # NULL, and the index holds those rows alone. The read path never selects them (gateway.catalog.catalog).
    sa.Column("other_patient_id", sa.Text),
    sa.Column("other_issuer_of_patient_id", sa.Text),
    sa.Index(
        "ix_instances_other_patient_id",
        "other_patient_id",
        sqlite_where=sa.text("other_patient_id IS NOT NULL"),
        postgresql_where=sa.text("other_patient_id IS NOT NULL"),
    ),
)

revocations = sa.Table(
    "revocations",
    metadata,
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Index("ix_revocations_expires_at", "expires_at"),
)

# One row while an upload of a SOP Instance UID is between "stored" and "committed": a second concurrent upload of
# the same instance must not overwrite the object the first one is about to commit. The row names its owner
# process (gateway.catalog.owner) and a lease the owner refreshes, so a crashed owner's row is taken over at once
# on its host, and after the lease elsewhere. ``nonce`` identifies one reservation (compare-and-swap on takeover).
# Rows written before revision 0003 have no owner and no lease: they expire an hour after ``created_at``.
reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("sop_uid", UID, primary_key=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("owner_host", sa.String(255), nullable=False, server_default=""),
    sa.Column("owner_pid", sa.Integer, nullable=False, server_default="0"),
    sa.Column("owner_started", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("nonce", sa.String(32), nullable=False, server_default=""),
    sa.Column("expires_at", sa.BigInteger),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("source", sa.String(32)),
    sa.Column("sub", sa.Text),
    sa.Column("sop_uid", UID),
    sa.Column("study_uid", UID),
    sa.Column("decision", sa.String(32)),
    sa.Column("rule", sa.Text),
    sa.Column("destination", sa.Text),
    # JSON list of tag paths/keywords that triggered the decision (never values)
    sa.Column("tags", sa.Text, nullable=False, server_default="[]"),
    sa.Column("policy_version", sa.Text),
    # why a release was refused (migration 0018; policy text and destination names, never a value of the file)
    sa.Column("reason", sa.Text),
    sa.Index("ix_audit_sop_uid", "sop_uid"),
    sa.Index("ix_audit_study_uid", "study_uid"),
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("sop_uid", UID),
    sa.Column("study_uid", UID),
    sa.Column("series_uid", UID),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("report", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # keyed digests (gateway.phi.deidentify.identifier_digest) of the held file's Patient ID and Issuer of Patient ID
    # as uploaded ("" when it names none): a patient erasure finds the file by them (migration 0012), and a
    # de-identified copy held for pixel review is not linked back to the patient in clear. NULL in a row quarantined
    # before 0012: erasure reaches it only through its study.
    sa.Column("patient_id", sa.Text),
    sa.Column("issuer_of_patient_id", sa.Text),
    # where the file is held: the policy destination that may hold identifiable data of the upload's region (NULL:
    # the gateway's own storage, as every row before 0015), and the upload's context, which a release is judged
    # with (gateway.quarantine) and the released instance keeps (its tenant's retention). NULL before 0015.
    sa.Column("destination", sa.Text),
    sa.Column("tenant", sa.Text),
    sa.Column("region", sa.Text),
    sa.Column("source", sa.Text),
    sa.Column("sub", sa.Text),
    # the URL of the storage holding the file (migration 0019; NULL before): its deletion reaches it there when the
    # policy no longer names its destination
    sa.Column("storage", sa.Text),
    sa.Index("ix_quarantine_patient_id", "patient_id"),
)

# The token audit (migration 0017): one row per token issued (``event`` "issued") and per revocation ("revoked"):
# which API key (its label, never the key) asked, the token's jti, subject, scope (JSON lists of study and series
# UIDs, actions), its issue time (``created_at``) and expiry, its session and the session's end. Never the token.
# A revocation names the jti it was given: its other columns are NULL (``expires_at``: how long it is kept).
token_audit = sa.Table(
    "token_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("api_key", sa.Text, nullable=False),
    sa.Column("jti", sa.String(64), nullable=False),
    sa.Column("sub", sa.Text),
    sa.Column("studies", sa.Text),
    sa.Column("series", sa.Text),
    sa.Column("actions", sa.Text),
    sa.Column("expires_at", sa.BigInteger),
    sa.Column("session", sa.String(64)),
    sa.Column("session_expires_at", sa.BigInteger),
    sa.Index("ix_token_audit_jti", "jti"),
)

# One row per removed study, series or instance (`gateway.lifecycle`): the deletion audit (who by API key label,
# when, why; UIDs and counts, never PHI values), the journal that lets `reconcile` finish the storage removal a
# crash interrupted (``finished_at`` NULL, ``keys`` the instance objects to remove), and, while recent, the
# tombstones the auth decision turns into a new plan-cache generation (``id`` is that generation).
deletions = sa.Table(
    "deletions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger),
    # "study", "series" or "instance": what was named (a patient erasure or retention run adds one row per study)
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("study_uid", UID, nullable=False),
    sa.Column("series_uid", UID),
    sa.Column("sop_uid", UID),
    # the API key label (or "retention"), never the key
    sa.Column("sub", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    # groups the rows of one call (a patient erasure removes several studies)
    sa.Column("request_id", sa.String(32), nullable=False),
    sa.Column("instances", sa.Integer, nullable=False),
    # JSON list of the removed instances' storage keys (everything derived lives next to them)
    sa.Column("keys", sa.Text, nullable=False, server_default="[]"),
    # a patient erasure's: keyed digests (gateway.phi.deidentify.identifier_digest) of the Patient ID and, when the
    # call named one, the Issuer of Patient ID it was given (never the values), so the same call sent again after a
    # crash finds the deletions it began and finishes them (migration 0016); NULL for every other deletion
    sa.Column("patient_id", sa.Text),
    sa.Column("issuer_of_patient_id", sa.Text),
    sa.Index("ix_deletions_created_at", "created_at"),
    sa.Index("ix_deletions_unfinished", "finished_at"),
)

# The access audit trail (README, "Access audit"): one row per DICOMweb request NGINX answered, loaded from its JSON
# access log by ``dicom-gateway audit collect``. Who (``sub``: a token's subject or an API key's label; ``jti``),
# what (study, series, instance, action), how (``via``: the credential's transport), when, from where, outcome.
# Never a query string (QIDO matching values can be PHI) nor a credential; rows older than the retention go.
access = sa.Table(
    "access",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("remote", sa.String(64), nullable=False, server_default=""),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("study_uid", UID),
    sa.Column("series_uid", UID),
    sa.Column("sop_uid", UID),
    sa.Column("sub", sa.String(256), nullable=False, server_default=""),
    sa.Column("jti", sa.String(256), nullable=False, server_default=""),
    sa.Column("via", sa.String(64), nullable=False, server_default=""),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_access_study_at", "study_uid", "at"),
    sa.Index("ix_access_sub_at", "sub", "at"),
    sa.Index("ix_access_at", "at"),
)

# Where the collector stopped in each log it reads (``source``: the log's path), so a restart neither skips nor
# repeats lines; ``file_id`` (device and inode) tells a rotated log from the one it replaced.
access_cursor = sa.Table(
    "access_cursor",
    metadata,
    sa.Column("source", sa.String(1024), primary_key=True),
    sa.Column("file_id", sa.String(64), nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
)

# Derivative jobs (gateway.derive): one row per instance waiting for (or given up on) its derivative. A worker
# claims a due row by moving ``not_before`` past a lease and counting the attempt (compare-and-swap on
# ``attempts``), so a crashed encode is retried after the lease; success deletes the row; ``attempts`` reaching the
# limit leaves it as the record of a failure (the original is served).
derive_jobs = sa.Table(
    "derive_jobs",
    metadata,
    sa.Column("sop_uid", UID, primary_key=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("not_before", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_derive_jobs_due", "attempts", "not_before"),
)
