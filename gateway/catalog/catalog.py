"""The catalog: which instances exist, where their bytes are, and everything ingest computed about them.

SQLite (default; WAL, foreign keys, busy timeout, ``synchronous=FULL`` so a committed row survives a power
cut) or PostgreSQL (``postgresql://`` uses the psycopg 3 driver). Writes that read-then-write take the write
lock up front: ``BEGIN IMMEDIATE`` on SQLite, a row lock on the study (``INSERT .. ON CONFLICT DO UPDATE``) on
PostgreSQL, so concurrent uploads into one study cannot lose a count.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from gateway.catalog.qido import QidoQuery
from gateway.catalog.records import InstanceRecord, InstanceRow
from gateway.catalog.schema import audit, instances, quarantine, reservations, revocations, series, studies
from gateway.catalog.search import build_select, shape_row
from gateway.errors import CatalogUnavailable, Conflict, SeriesInOtherStudy
from gateway.scope import Scope
from gateway.uids import check_uid

MIGRATIONS = Path(__file__).parent / "migrations"
# Revocations older than their expiry are purged at most this often (seconds of the caller's clock).
PURGE_INTERVAL = 300
_ROW_COLUMNS = [c for c in instances.c if c.name != "metadata"]
# Built once: get_instance is on the frame path, and building a statement per call doubles its cost.
_GET_FULL = sa.select(*instances.c).where(instances.c.sop_uid == sa.bindparam("sop_uid"))
_GET_LIGHT = sa.select(*_ROW_COLUMNS).where(instances.c.sop_uid == sa.bindparam("sop_uid"))
_AUDIT_FIELDS = {c.name for c in audit.c} - {"id"}
# An arbitrary constant: the PostgreSQL advisory lock that serialises migrations between starting workers.
_MIGRATION_LOCK = 0x6463_6D67


def engine_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 (SQLAlchemy would otherwise pick psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _unicode_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _sqlite_engine(url: str) -> Engine:
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (not pysqlite) decide when transactions begin, so writes can say BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "foreign_keys=ON",
            "busy_timeout=30000",
            "synchronous=FULL",
            # Case-sensitive LIKE (DICOM matching is case-sensitive except PN, which lower()s both sides);
            # it also lets a prefix pattern such as 'ABC%' use the ordinary index.
            "case_sensitive_like=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()
        # SQLite's built-in lower() folds ASCII only; PN matching with a non-ASCII pattern must fold "MÜLLER"
        # like PostgreSQL does (gateway.catalog.qido.unicode_lower compiles to this on SQLite).
        dbapi_connection.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Write transactions take the lock up front: a deferred transaction that reads, then writes, fails
        # with SQLITE_BUSY (no waiting) when another writer committed in between.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


class Catalog:
    def __init__(self, url: str) -> None:
        self.url = url
        full = engine_url(url)
        if full.startswith("sqlite"):
            self.engine = _sqlite_engine(full)
        elif full.startswith("postgresql+psycopg"):
            self.engine = sa.create_engine(full, pool_pre_ping=True, pool_size=10, max_overflow=20)
        else:
            raise ValueError("catalog URL must be sqlite:///... or postgresql://...")
        self.dialect = self.engine.dialect.name
        self._last_purge = 0
        self._purge_lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            raise CatalogUnavailable(f"catalog unavailable ({type(exc.orig).__name__})") from None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(write=True)
                with conn.begin():
                    yield conn
        except sa.exc.OperationalError as exc:
            raise CatalogUnavailable(f"catalog unavailable ({type(exc.orig).__name__})") from None

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision. Safe to call from several workers at once."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def check(self) -> None:
        """Raise ``CatalogUnavailable`` unless the database answers and the schema is in place."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(sa.func.count()).select_from(revocations).where(sa.false()))
        except sa.exc.SQLAlchemyError as exc:
            raise CatalogUnavailable(f"catalog unavailable ({type(exc).__name__})") from None

    def close(self) -> None:
        self.engine.dispose()

    # --- instances ------------------------------------------------------------------------------------------

    def register_instance(self, rec: InstanceRecord, *, audit_fields: dict[str, Any] | None = None) -> bool:
        """Make an instance visible: insert it, upsert its series and study, fix counts and modalities, in one
        transaction. Returns False (and changes nothing) when the SOP UID is already stored with the same
        sha256; raises ``Conflict`` when stored with other bytes, unless ``rec.replace``. The same transaction
        ends the instance's upload reservation and appends ``audit_fields`` (one commit per upload)."""
        inst = rec.instance
        check_uid(inst.study_uid, "StudyInstanceUID")
        check_uid(inst.series_uid, "SeriesInstanceUID")
        check_uid(inst.sop_uid, "SOPInstanceUID")
        for attempt in range(3):
            try:
                with self._write() as conn:
                    created = self._register(conn, rec)
                    conn.execute(reservations.delete().where(reservations.c.sop_uid == inst.sop_uid))
                    if audit_fields:
                        conn.execute(audit.insert().values(**self._audit_values(audit_fields)))
                    return created
            except sa.exc.IntegrityError:
                # A concurrent upload of the same SOP UID won the race: re-run, which now sees it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _register(self, conn: Connection, rec: InstanceRecord) -> bool:
        inst, values, now = rec.instance, rec.values, int(time.time())
        existing = conn.execute(
            sa.select(instances.c.sha256).where(instances.c.sop_uid == inst.sop_uid).with_for_update()
        ).first()
        if existing is not None:
            if existing.sha256 == rec.sha256:
                return False
            if not rec.replace:
                raise Conflict("SOP Instance UID already stored with different content")
            self._delete(conn, inst.sop_uid)
        study_values = {
            name: values.get(name)
            for name in (
                "patient_id",
                "patient_name",
                "patient_birth_date",
                "patient_sex",
                "study_date",
                "study_time",
                "accession_number",
                "study_id",
                "study_description",
                "referring_physician_name",
            )
        }
        study_values.update(attrs=json.dumps(inst.study_attrs), updated_at=now)
        stmt = self._insert(studies).values(study_uid=inst.study_uid, **study_values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["study_uid"], set_=study_values))
        owner = conn.execute(
            sa.select(series.c.study_uid).where(series.c.series_uid == inst.series_uid)
        ).first()
        if owner is not None and owner.study_uid != inst.study_uid:
            raise SeriesInOtherStudy("Series Instance UID already belongs to another study")
        series_values = {
            "modality": values.get("modality"),
            "series_number": values.get("series_number"),
            "series_description": values.get("series_description"),
            "attrs": json.dumps(inst.series_attrs),
        }
        stmt = self._insert(series).values(
            series_uid=inst.series_uid, study_uid=inst.study_uid, **series_values
        )
        conn.execute(stmt.on_conflict_do_update(index_elements=["series_uid"], set_=series_values))
        number = inst.instance_number if inst.instance_number is not None else values.get("instance_number")
        conn.execute(
            instances.insert().values(
                sop_uid=inst.sop_uid,
                study_uid=inst.study_uid,
                series_uid=inst.series_uid,
                sop_class_uid=inst.sop_class_uid,
                instance_number=number,
                transfer_syntax_uid=inst.transfer_syntax_uid,
                number_of_frames=inst.number_of_frames,
                storage_key=rec.storage_key,
                size=rec.size,
                sha256=rec.sha256,
                etag=rec.etag,
                frame_index=inst.frame_index,
                frame_media_type=inst.frame_media_type,
                bulkdata=json.dumps([[b.path, b.vr, b.offset, b.length] for b in inst.bulkdata]),
                metadata=json.dumps(inst.metadata, separators=(",", ":")),
                attrs=json.dumps(inst.instance_attrs),
                created_at=now,
            )
        )
        self._recount(conn, inst.study_uid, inst.series_uid)
        return True

    def _recount(self, conn: Connection, study_uid: str, series_uid: str) -> None:
        """Recompute the series and study counts (and drop them when empty). Runs under the study's row lock,
        so recomputing (rather than incrementing) is safe and self-healing."""
        count = conn.execute(
            sa.select(sa.func.count()).select_from(instances).where(instances.c.series_uid == series_uid)
        ).scalar_one()
        if count:
            conn.execute(series.update().where(series.c.series_uid == series_uid).values(num_instances=count))
        else:
            conn.execute(series.delete().where(series.c.series_uid == series_uid))
        row = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(series.c.num_instances), 0)).where(
                series.c.study_uid == study_uid
            )
        ).one()
        if not row[0]:
            conn.execute(studies.delete().where(studies.c.study_uid == study_uid))
            return
        modalities = conn.execute(
            sa.select(series.c.modality)
            .where(series.c.study_uid == study_uid, series.c.modality.is_not(None))
            .distinct()
        ).scalars()
        conn.execute(
            studies.update()
            .where(studies.c.study_uid == study_uid)
            .values(
                num_series=row[0],
                num_instances=row[1],
                modalities_in_study="\\".join(sorted(m for m in modalities if m)),
            )
        )

    @staticmethod
    def _row(row: Any) -> InstanceRow:
        data = dict(row._mapping)
        data.setdefault("metadata", None)
        if data["frame_index"] is not None:
            data["frame_index"] = bytes(data["frame_index"])
        return InstanceRow(**data)

    def get_instance(self, sop_uid: str, *, with_metadata: bool = True) -> InstanceRow | None:
        """One instance by SOP UID. ``with_metadata=False`` skips the DICOM JSON (megabytes for a whole-slide
        image): the frame path wants only the index and the key."""
        with self._read() as conn:
            row = conn.execute(_GET_FULL if with_metadata else _GET_LIGHT, {"sop_uid": sop_uid}).first()
        return None if row is None else self._row(row)

    def instances_of(
        self, study_uid: str, series_uid: str | None = None, *, with_metadata: bool = True
    ) -> list[InstanceRow]:
        """A study's (or one series') instances, ordered by series number, series UID, instance number, SOP
        UID."""
        columns = list(instances.c) if with_metadata else _ROW_COLUMNS
        stmt = (
            sa.select(*columns)
            .select_from(instances.join(series, instances.c.series_uid == series.c.series_uid))
            .where(instances.c.study_uid == study_uid)
            .order_by(
                sa.nulls_last(series.c.series_number.asc()),
                series.c.series_uid,
                sa.nulls_last(instances.c.instance_number.asc()),
                instances.c.sop_uid,
            )
        )
        if series_uid is not None:
            stmt = stmt.where(instances.c.series_uid == series_uid)
        with self._read() as conn:
            return [self._row(row) for row in conn.execute(stmt)]

    def delete_instance(self, sop_uid: str) -> None:
        """Remove an instance (absent is not an error); empty series and studies go with it."""
        with self._write() as conn:
            self._delete(conn, sop_uid)

    def _delete(self, conn: Connection, sop_uid: str) -> None:
        row = conn.execute(
            sa.select(instances.c.study_uid, instances.c.series_uid).where(instances.c.sop_uid == sop_uid)
        ).first()
        if row is None:
            return
        # lock the study row first (PostgreSQL), the same order register takes
        conn.execute(
            sa.select(studies.c.study_uid).where(studies.c.study_uid == row.study_uid).with_for_update()
        )
        conn.execute(instances.delete().where(instances.c.sop_uid == sop_uid))
        self._recount(conn, row.study_uid, row.series_uid)

    def study_version(self, study_uid: str) -> tuple[int, int, int] | None:
        """What changes whenever the study's instances change (count, series count, last update): lets a reader
        reuse what it derived from the study until then. None for an unknown study."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(studies.c.num_instances, studies.c.num_series, studies.c.updated_at).where(
                    studies.c.study_uid == study_uid
                )
            ).first()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]))

    def set_thumbnail(self, sop_uid: str, key: str) -> None:
        with self._write() as conn:
            conn.execute(instances.update().where(instances.c.sop_uid == sop_uid).values(thumbnail_key=key))

    def all_instance_keys(self) -> set[str]:
        with self._read() as conn:
            return set(conn.execute(sa.select(instances.c.storage_key)).scalars())

    # --- upload reservations ----------------------------------------------------------------------------------

    def reserve(self, sop_uid: str, now: int, stale_after: int = 3600) -> bool:
        """Claim the right to store ``sop_uid``; False while another upload of it is in flight. A reservation
        older than ``stale_after`` (a crashed worker) is taken over."""
        with self._write() as conn:
            conn.execute(
                reservations.delete().where(
                    reservations.c.sop_uid == sop_uid, reservations.c.created_at < now - stale_after
                )
            )
            stmt = self._insert(reservations).values(sop_uid=sop_uid, created_at=now)
            inserted = conn.execute(stmt.on_conflict_do_nothing(index_elements=["sop_uid"]))
            return bool(inserted.rowcount)

    def release(self, sop_uid: str) -> None:
        with self._write() as conn:
            conn.execute(reservations.delete().where(reservations.c.sop_uid == sop_uid))

    # --- revocations ----------------------------------------------------------------------------------------

    def revoke(self, jti: str, expires_at: int) -> None:
        """Record a revoked token id until its expiry (idempotent; a later expiry wins)."""
        stmt = self._insert(revocations).values(jti=jti, expires_at=int(expires_at))
        stmt = stmt.on_conflict_do_update(
            index_elements=["jti"],
            set_={"expires_at": sa.func.max(revocations.c.expires_at, stmt.excluded.expires_at)}
            if self.dialect == "sqlite"
            else {"expires_at": sa.func.greatest(revocations.c.expires_at, stmt.excluded.expires_at)},
        )
        with self._write() as conn:
            conn.execute(stmt)

    def revoked_jtis(self, now: int) -> set[str]:
        """Token ids revoked and not yet expired at ``now``. Expired rows are purged every few minutes."""
        with self._purge_lock:
            purge = now - self._last_purge >= PURGE_INTERVAL
            if purge:
                self._last_purge = now
        if purge:
            with self._write() as conn:
                conn.execute(revocations.delete().where(revocations.c.expires_at <= now))
        with self._read() as conn:
            return set(
                conn.execute(sa.select(revocations.c.jti).where(revocations.c.expires_at > now)).scalars()
            )

    # --- audit ----------------------------------------------------------------------------------------------

    def add_audit(self, **fields: Any) -> None:
        """Append an audit record. Fields: source, sub, sop_uid, study_uid, decision, rule, destination, tags
        (a list of tag paths or keywords, never values), policy_version, created_at (default now)."""
        with self._write() as conn:
            conn.execute(audit.insert().values(**self._audit_values(fields)))

    @staticmethod
    def _audit_values(fields: dict[str, Any]) -> dict[str, Any]:
        unknown = set(fields) - _AUDIT_FIELDS
        if unknown:
            raise TypeError(f"unknown audit fields: {sorted(unknown)}")
        values = dict(fields)
        values["tags"] = json.dumps(list(values.get("tags") or []))
        values["created_at"] = int(values.get("created_at") or time.time())
        return values

    def audit_records(
        self, *, sop_uid: str | None = None, study_uid: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first."""
        stmt = sa.select(audit).order_by(audit.c.id.desc()).limit(limit)
        if sop_uid is not None:
            stmt = stmt.where(audit.c.sop_uid == sop_uid)
        if study_uid is not None:
            stmt = stmt.where(audit.c.study_uid == study_uid)
        with self._read() as conn:
            rows = [dict(row._mapping) for row in conn.execute(stmt)]
        for row in rows:
            row["tags"] = json.loads(row["tags"])
        return rows

    # --- quarantine -----------------------------------------------------------------------------------------

    def add_quarantine(
        self,
        key: str,
        *,
        sop_uid: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
        reason: str = "",
        report: Mapping[str, Any] | None = None,
        created_at: int | None = None,
    ) -> None:
        """Record a quarantined object by its storage key (re-quarantining the same key updates the
        record)."""
        values = {
            "sop_uid": sop_uid,
            "study_uid": study_uid,
            "series_uid": series_uid,
            "reason": reason,
            "report": json.dumps(dict(report or {})),
            "created_at": int(created_at or time.time()),
        }
        stmt = self._insert(quarantine).values(key=key, **values)
        with self._write() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_=values))

    @staticmethod
    def _quarantine_dict(row: Any) -> dict[str, Any]:
        data = dict(row._mapping)
        data["report"] = json.loads(data["report"])
        return data

    def list_quarantine(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Newest first."""
        stmt = sa.select(quarantine).order_by(quarantine.c.created_at.desc(), quarantine.c.key).limit(limit)
        with self._read() as conn:
            return [self._quarantine_dict(row) for row in conn.execute(stmt)]

    def get_quarantine(self, key: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(sa.select(quarantine).where(quarantine.c.key == key)).first()
        return None if row is None else self._quarantine_dict(row)

    def remove_quarantine(self, key: str) -> None:
        with self._write() as conn:
            conn.execute(quarantine.delete().where(quarantine.c.key == key))

    # --- QIDO -----------------------------------------------------------------------------------------------

    def search(self, query: QidoQuery, scope: Scope | None) -> list[dict[str, Any]]:
        """QIDO results as DICOM JSON objects, filtered by ``scope`` in SQL (``None`` = everything)."""
        stmt = build_select(query, scope)
        with self._read() as conn:
            rows = [dict(row._mapping) for row in conn.execute(stmt)]
            if scope is not None and scope.series is not None and rows:
                self._scope_counts(conn, rows, scope.series)
        return [shape_row(query, row) for row in rows]

    @staticmethod
    def _scope_counts(conn: Connection, rows: list[dict[str, Any]], visible: frozenset[str]) -> None:
        """A series-scoped credential sees study counts and modalities of its series only, so the study-level
        numbers do not reveal what else the study holds."""
        stmt = sa.select(series.c.study_uid, series.c.modality, series.c.num_instances).where(
            series.c.series_uid.in_(sorted(visible))
        )
        per_study: dict[str, tuple[int, int, set[str]]] = {}
        for study_uid, modality, count in conn.execute(stmt):
            n_series, n_instances, modalities = per_study.get(study_uid, (0, 0, set()))
            per_study[study_uid] = (
                n_series + 1,
                n_instances + count,
                modalities | ({modality} if modality else set()),
            )
        for row in rows:
            n_series, n_instances, modalities = per_study.get(row["st_study_uid"], (0, 0, set()))
            row["st_num_series"], row["st_num_instances"] = n_series, n_instances
            row["st_modalities_in_study"] = "\\".join(sorted(modalities))
