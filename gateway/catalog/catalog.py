"""The catalog: which instances exist, where their bytes are, and everything ingest computed about them.

SQLite (default; WAL, foreign keys, busy timeout, ``synchronous=FULL`` so a committed row survives a power
cut) or PostgreSQL (``postgresql://`` uses the psycopg 3 driver). Writes that read-then-write take the write
lock up front: ``BEGIN IMMEDIATE`` on SQLite, an advisory lock per study then its row lock on PostgreSQL, so
concurrent uploads into one study cannot lose a count or a value, nor store two patients in it.

``Catalog`` is the one class callers use. The connection plumbing lives in ``engine.py`` and the
reservation, revocation, audit and quarantine records in ``admin.py``; this module holds the instances and
QIDO search.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gateway import fastjson
from gateway.catalog.access import AccessRecords
from gateway.catalog.admin import END_RESERVATION, PURGE_INTERVAL, AdminRecords, Reservation
from gateway.catalog.deletions import DeletionRecords
from gateway.catalog.derivatives import DerivativeRecords
from gateway.catalog.engine import MIGRATIONS, engine_url
from gateway.catalog.records import SERIES_FIELDS, STUDY_FIELDS, InstanceRecord, InstanceRow, search_values
from gateway.catalog.schema import audit, instances, reservations, series, studies
from gateway.catalog.search import build_count, build_select, shape_row, wide_prefixes
from gateway.dicomweb.qido import QidoQuery
from gateway.errors import Conflict, GatewayError, PatientMismatch, ReservationLost, SeriesInOtherStudy
from gateway.scope import Scope
from gateway.uids import check_uid

# Still importable from here, as before the split.
__all__ = ["MIGRATIONS", "PURGE_INTERVAL", "Catalog", "Registration", "engine_url"]


OTHER_PATIENT = "the study holds another patient's instances (Patient ID or Issuer of Patient ID differs)"


def _patient(patient_id: Any, attrs: dict[str, Any]) -> tuple[str, str]:
    """(Patient ID, Issuer of Patient ID) of a study's or an instance's values, stripped ("" when absent)."""
    issuer = (attrs.get(_ISSUER) or {}).get("Value") or [""]
    return str(patient_id or "").strip(), str(issuer[0] or "").strip()


def _merge(fields: Sequence[str], row: Any, items: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """A study or series row (``fields`` and ``attrs``) from ``row`` (the stored one, or None) and then each
    instance's (searchable values, QIDO attributes of the level), in order: a later value replaces an earlier one
    only where it is not empty."""
    values = {name: getattr(row, name) if row is not None else None for name in fields}
    attrs: dict[str, Any] = fastjson.loads(row.attrs) if row is not None and row.attrs else {}
    for flat, level_attrs in items:
        values.update({name: value for name in fields if (value := flat.get(name)) is not None})
        for tag, element in level_attrs.items():
            if "Value" in element or "Value" not in attrs.get(tag, {}):
                attrs[tag] = element
    return {**values, "attrs": fastjson.dumps(dict(sorted(attrs.items()))).decode()}


def _differs(theirs: tuple[str, str], held: tuple[str, str]) -> bool:
    """Whether patient ``theirs`` is not ``held`` (both from ``_patient``): an empty Patient ID or issuer differs
    from none (a study's values merge)."""
    return bool(held[0] and theirs[0] and (held[0] != theirs[0] or (held[1] and theirs[1] and held[1] != theirs[1])))


@dataclass(frozen=True)
class Registration:
    """One upload to make visible: its record, the audit record of its hook decision, its reservation, and
    whether to queue its derivative job (the local queue, ``gateway.derive``) in the same transaction."""

    record: InstanceRecord
    audit_fields: dict[str, Any] | None = None
    reservation: Reservation | None = None
    derive: bool = False


# what an InstanceRow holds: erasure alone reads the other_patient columns (gateway.catalog.deletions)
_FULL_COLUMNS = [c for c in instances.c if not c.name.startswith("other_")]
_ROW_COLUMNS = [c for c in _FULL_COLUMNS if c.name != "metadata"]
# Built once: get_instance is on the frame path, and building a statement per call doubles its cost. The same
# holds for registration (a statement built per call cost more CPU than SQLite running it): its statements are
# built here or once per Catalog (``_upserts``), and take their values as parameters.
_GET_FULL = sa.select(*_FULL_COLUMNS).where(instances.c.sop_uid == sa.bindparam("sop_uid"))
_GET_LIGHT = sa.select(*_ROW_COLUMNS).where(instances.c.sop_uid == sa.bindparam("sop_uid"))
_STORED = sa.select(instances.c.sop_uid).where(instances.c.sop_uid.in_(sa.bindparam("sops", expanding=True)))
_RESERVED = (
    sa.select(reservations.c.sop_uid, reservations.c.nonce)
    .where(reservations.c.sop_uid.in_(sa.bindparam("sops", expanding=True)))
    .with_for_update()
)
# The stored study and series rows a registration merges its values into (``Catalog._merged``), locked in UID
# order, as the upserts lock them: two batches into the same studies cannot deadlock.
_STORED_ROWS = {
    level: sa.select(uid.label("uid"), table.c.attrs, *(table.c[name] for name in fields))
    .where(uid.in_(sa.bindparam("uids", expanding=True)))
    .order_by(uid)
    .with_for_update()
    for level, table, uid, fields in (
        ("study", studies, studies.c.study_uid, STUDY_FIELDS),
        ("series", series, series.c.series_uid, SERIES_FIELDS),
    )
}
_STUDY_PATIENT = sa.select(studies.c.study_uid.label("uid"), studies.c.patient_id, studies.c.attrs).where(
    studies.c.study_uid == sa.bindparam("uid")
)
# PostgreSQL: one writer at a time per study, taken before its row is read. A row lock cannot do it for a study
# not stored yet: two uploads into a new study each read "none", and the second upsert overwrote the first's
# Patient ID (and every value the merge keeps). SQLite's BEGIN IMMEDIATE already serialises all writers.
_LOCK_STUDY = sa.text("SELECT pg_advisory_xact_lock(hashtextextended('study:' || :uid, 0))")
_ISSUER = "00100021"
_OWNERS = sa.select(series.c.series_uid, series.c.study_uid).where(
    series.c.series_uid.in_(sa.bindparam("series_uids", expanding=True))
)
_COUNT_SERIES = (
    sa.select(sa.func.count()).select_from(instances).where(instances.c.series_uid == sa.bindparam("series_uid"))
)
_SET_SERIES_COUNT = (  # update statements: no parameter may take a column's name
    series.update()
    .where(series.c.series_uid == sa.bindparam("b_series_uid"))
    .values(num_instances=sa.bindparam("count"))
)
_DROP_SERIES = series.delete().where(series.c.series_uid == sa.bindparam("series_uid"))
_SERIES_OF_STUDY = sa.select(series.c.modality, series.c.num_instances).where(
    series.c.study_uid == sa.bindparam("study_uid")
)
_SET_STUDY_COUNTS = (
    studies.update()
    .where(studies.c.study_uid == sa.bindparam("b_study_uid"))
    .values(
        num_series=sa.bindparam("n_series"),
        num_instances=sa.bindparam("n_instances"),
        modalities_in_study=sa.bindparam("modalities"),
    )
)
_DROP_STUDY = studies.delete().where(studies.c.study_uid == sa.bindparam("study_uid"))


class Catalog(DeletionRecords, AdminRecords, AccessRecords, DerivativeRecords):
    """Instances, series and studies (register, read, delete, QIDO search), plus everything ``DeletionRecords``,
    ``AdminRecords``, ``AccessRecords``, ``DerivativeRecords`` and ``CatalogBase`` provide. ``Catalog(url)`` with
    ``sqlite:///...`` or ``postgresql://...``."""

    # --- instances ------------------------------------------------------------------------------------------

    def register_instance(
        self,
        rec: InstanceRecord,
        *,
        audit_fields: dict[str, Any] | None = None,
        reservation: Reservation | None = None,
    ) -> bool:
        """Make an instance visible: insert it, upsert its series and study, fix counts and modalities, in one
        transaction. Returns False (and changes nothing) when the SOP UID is already stored with the same
        sha256; raises ``Conflict`` when stored with other bytes, unless ``rec.replace``. The same transaction
        ends the upload's ``reservation`` (``ReservationLost``, nothing committed, when it is no longer ours)
        and appends ``audit_fields`` (one commit per upload)."""
        outcome = self.register_instances([Registration(rec, audit_fields, reservation)])[0]
        if isinstance(outcome, GatewayError):
            raise outcome
        return outcome

    def register_instances(self, batch: Sequence[Registration]) -> list[bool | GatewayError]:
        """``register_instance`` for several uploads in ONE transaction, so one flush to disk makes them all
        durable and each series' counts are recomputed once. Each registration stands alone: its outcome, in
        input order, is True (stored), False (same bytes already stored), or the error that refused it
        (``ReservationLost``, ``Conflict``, ``SeriesInOtherStudy``, ``PatientMismatch``), which changed nothing.
        New instances go in with a few statements for the whole batch (``_register_new``); the rest (already
        stored, replaced, named twice, refused) one by one under a savepoint each. Rows are locked in study order
        (on PostgreSQL each study is locked first, ``_LOCK_STUDY``), so two batches into the same studies cannot
        deadlock on PostgreSQL."""
        for entry in batch:
            ids = entry.record.instance.ids
            check_uid(ids.study, "StudyInstanceUID")
            check_uid(ids.series, "SeriesInstanceUID")
            check_uid(ids.sop, "SOPInstanceUID")
        order = sorted(range(len(batch)), key=lambda i: (batch[i].record.instance.ids.study, i))
        outcomes: dict[int, bool | GatewayError] = {}
        with self._write() as conn:
            if self.dialect == "postgresql":
                for study_uid in sorted({entry.record.instance.ids.study for entry in batch}):
                    conn.execute(_LOCK_STUDY, {"uid": study_uid})
            savepoint = conn.begin_nested()
            try:
                outcomes.update(self._register_new(conn, batch, order))
                savepoint.commit()
            except sa.exc.IntegrityError:  # a concurrent upload (another node) inserted one: all one by one
                savepoint.rollback()
                outcomes.clear()
            for i in order:
                if i not in outcomes:
                    outcomes[i] = self._register_one(conn, batch[i])
            touched = {
                (batch[i].record.instance.ids.study, batch[i].record.instance.ids.series)
                for i, outcome in outcomes.items()
                if outcome is True
            }
            for study_uid, series_uid in sorted(touched):
                self._recount(conn, study_uid, series_uid)
        return [outcomes[i] for i in range(len(batch))]

    def _register_new(
        self, conn: Connection, batch: Sequence[Registration], order: list[int]
    ) -> dict[int, bool | GatewayError]:
        """The batch's plain cases at once: instances not stored yet, named once in the batch, whose reservation
        is still theirs and whose series is new or in their study. Returns their outcomes (True, or
        ``ReservationLost``); the others are left for ``_register_one``."""
        sops = [entry.record.instance.ids.sop for entry in batch]
        named = {sop: sops.count(sop) for sop in sops}
        stored = set(conn.execute(_STORED, {"sops": sorted(named)}).scalars())
        candidates = [i for i in order if named[sops[i]] == 1 and sops[i] not in stored]
        if not candidates:
            return {}
        outcomes: dict[int, bool | GatewayError] = {}
        reserved = [i for i in candidates if batch[i].reservation is not None]
        if reserved:
            ours = {
                (row.sop_uid, row.nonce) for row in conn.execute(_RESERVED, {"sops": [sops[i] for i in reserved]})
            }
            for i in reserved:
                held = batch[i].reservation
                assert held is not None
                if (held.sop_uid, held.nonce) not in ours:
                    outcomes[i] = ReservationLost("another upload of this instance took over its reservation")
        candidates = [i for i in candidates if i not in outcomes]
        series_uids = {batch[i].record.instance.ids.series for i in candidates}
        owners = dict(conn.execute(_OWNERS, {"series_uids": sorted(series_uids)}).all())
        for i in candidates:  # a series is claimed by the first study that names it (stored, or first here)
            ids = batch[i].record.instance.ids
            owners.setdefault(ids.series, ids.study)
        plain = [i for i in candidates if owners[(ids := batch[i].record.instance.ids).series] == ids.study]
        # the stored study rows, read once: the patient check and the merge both start from them
        stored_studies = self._stored(conn, "study", {batch[i].record.instance.ids.study for i in plain})
        for i in self._other_patients(stored_studies, [(i, batch[i].record) for i in plain]):
            outcomes[i] = PatientMismatch(OTHER_PATIENT)
        plain = [i for i in plain if i not in outcomes]
        if not plain:
            return outcomes
        now = int(time.time())
        upsert_study, upsert_series = self._upserts
        of_study: dict[str, list[InstanceRecord]] = {}
        of_series: dict[str, list[InstanceRecord]] = {}
        for i in plain:
            ids = batch[i].record.instance.ids
            of_study.setdefault(ids.study, []).append(batch[i].record)
            of_series.setdefault(ids.series, []).append(batch[i].record)
        merged = self._merged(conn, "study", of_study, stored_studies)
        conn.execute(
            upsert_study, [{"study_uid": uid, **merged[uid], "updated_at": now} for uid in sorted(merged)]
        )
        merged = self._merged(conn, "series", of_series)
        conn.execute(
            upsert_series,
            [
                {"series_uid": uid, "study_uid": of_series[uid][0].instance.ids.study, **merged[uid]}
                for uid in sorted(merged)
            ],
        )
        conn.execute(instances.insert(), [self._instance_values(batch[i].record, now) for i in plain])
        ended = [{"held": r.sop_uid, "ours": r.nonce} for i in plain if (r := batch[i].reservation) is not None]
        if ended:
            conn.execute(END_RESERVATION, ended)
        audits = [self._audit_values(fields) for i in plain if (fields := batch[i].audit_fields)]
        if audits:
            conn.execute(audit.insert(), audits)
        self._queue_derivatives(conn, [sops[i] for i in plain if batch[i].derive])
        outcomes.update(dict.fromkeys(plain, True))
        return outcomes

    def _register_one(self, conn: Connection, entry: Registration) -> bool | GatewayError:
        """One registration inside a batch's transaction, under its own savepoint."""
        reservation = entry.reservation
        for attempt in range(3):
            savepoint = conn.begin_nested()
            try:
                if (
                    reservation is not None
                    and not conn.execute(
                        reservations.delete().where(
                            reservations.c.sop_uid == reservation.sop_uid,
                            reservations.c.nonce == reservation.nonce,
                        )
                    ).rowcount
                ):
                    raise ReservationLost("another upload of this instance took over its reservation")
                created = self._register(conn, entry.record)
                if entry.audit_fields:
                    conn.execute(audit.insert().values(**self._audit_values(entry.audit_fields)))
                if created and entry.derive:
                    self._queue_derivatives(conn, [entry.record.instance.ids.sop])
                savepoint.commit()
                return created
            except Conflict as refused:  # ReservationLost, SeriesInOtherStudy, PatientMismatch too
                savepoint.rollback()
                return refused
            except sa.exc.IntegrityError:
                # A concurrent upload of the same SOP UID (another node, PostgreSQL) won the race: re-run, which
                # now sees it.
                savepoint.rollback()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @functools.cached_property
    def _upserts(self) -> tuple[Any, Any]:
        """The study and the series upsert of ``_register_new``, built once: an insert whose conflict updates
        every column it sets (``excluded`` is the row it tried to insert), run once per batch with a row of
        parameters per study or series."""
        study = self._insert(studies)
        study_columns = [*STUDY_FIELDS, "attrs", "updated_at"]
        series_stmt = self._insert(series)
        series_columns = [*SERIES_FIELDS, "attrs"]
        return (
            study.on_conflict_do_update(
                index_elements=["study_uid"], set_={name: study.excluded[name] for name in study_columns}
            ),
            series_stmt.on_conflict_do_update(
                index_elements=["series_uid"], set_={name: series_stmt.excluded[name] for name in series_columns}
            ),
        )

    @staticmethod
    def _stored(conn: Connection, level: str, uids: set[str]) -> dict[str, Any]:
        """The stored ``level`` rows of ``uids`` (locked for the merge), by UID."""
        return {row.uid: row for row in conn.execute(_STORED_ROWS[level], {"uids": sorted(uids)})}

    def _merged(
        self,
        conn: Connection,
        level: str,
        of_uid: dict[str, list[InstanceRecord]],
        stored: dict[str, Any] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The ``level`` ("study" or "series") row each UID gets from its new instances (in order) over the stored
        one: its searchable columns and QIDO attributes, a later value replacing an earlier one only where it is
        not empty. Instances need not repeat their study's or series' attributes (a report or key object from
        another system often leaves Study Date or Accession Number empty): the last one stored emptied them, and
        a date search (a viewer's study list) lost the study. ``stored``: those rows, if the caller read them."""
        fields = STUDY_FIELDS if level == "study" else SERIES_FIELDS
        if stored is None:
            stored = self._stored(conn, level, set(of_uid))
        merged: dict[str, dict[str, Any]] = {}
        for uid, records in of_uid.items():
            row = stored.get(uid)
            merged[uid] = _merge(
                fields,
                row,
                [(rec.values, getattr(rec.instance, f"{level}_attrs")) for rec in records],  # parsed once, kept
            )
        return merged

    def patient_differs(self, rec: InstanceRecord) -> bool:
        """Whether ``rec``'s patient is not the one its study holds, leaving out the stored instance it would
        replace (as registration does); a check before any write, made again under the study's lock."""
        ids = rec.instance.ids
        others = sa.select(instances.c.sop_uid).where(
            instances.c.study_uid == ids.study, instances.c.sop_uid != ids.sop
        )
        with self._read() as conn:
            if conn.execute(others.limit(1)).first() is None:
                return False
            stored = {row.uid: row for row in conn.execute(_STUDY_PATIENT, {"uid": ids.study})}
            return bool(self._other_patients(stored, [(0, rec)]))

    @staticmethod
    def _other_patients(stored: dict[str, Any], entries: list[tuple[int, InstanceRecord]]) -> set[int]:
        """The entries (by their index) whose patient is not the one their study holds (``stored``: the study rows,
        by UID), or the one an earlier entry into the same study names. An empty Patient ID or issuer differs from
        none (a study's values merge)."""
        known: dict[str, tuple[str, str]] = {
            uid: _patient(row.patient_id, fastjson.loads(row.attrs) if row.attrs else {}) for uid, row in stored.items()
        }
        refused = set()
        for index, rec in entries:
            study = rec.instance.ids.study
            theirs = _patient(rec.values.get("patient_id"), rec.instance.study_attrs)
            held = known.get(study, ("", ""))
            if _differs(theirs, held):
                refused.add(index)
            else:  # what the study's merged row will hold (``_merged``)
                known[study] = (held[0] or theirs[0], held[1] or theirs[1])
        return refused

    @staticmethod
    def _instance_values(rec: InstanceRecord, now: int) -> dict[str, Any]:
        inst = rec.instance
        number = inst.instance_number if inst.instance_number is not None else rec.values.get("instance_number")
        return {
            "sop_uid": inst.ids.sop,
            "study_uid": inst.ids.study,
            "series_uid": inst.ids.series,
            "sop_class_uid": inst.sop_class_uid,
            "instance_number": number,
            "transfer_syntax_uid": inst.transfer_syntax_uid,
            "number_of_frames": inst.number_of_frames,
            "storage_key": rec.storage_key,
            "size": rec.size,
            "sha256": rec.sha256,
            "etag": rec.etag,
            "frame_index": inst.frame_index,
            "frame_media_type": inst.frame_media_type,
            "bulkdata": json.dumps([[b.path, b.vr, b.offset, b.length] for b in inst.bulkdata]),
            "metadata": inst.metadata_json(),
            "attrs": inst.attrs_json("instance"),
            "created_at": now,
            "tenant": rec.tenant,
            "destination": rec.destination,
        }

    def _register(self, conn: Connection, rec: InstanceRecord) -> bool:
        inst, now = rec.instance, int(time.time())
        existing = conn.execute(
            sa.select(instances.c.sha256).where(instances.c.sop_uid == inst.ids.sop).with_for_update()
        ).first()
        if existing is not None:
            if existing.sha256 == rec.sha256:
                return False
            if not rec.replace:
                raise Conflict("SOP Instance UID already stored with different content")
            self._delete(conn, inst.ids.sop)
        stored_study = self._stored(conn, "study", {inst.ids.study})
        if self._other_patients(stored_study, [(0, rec)]):
            raise PatientMismatch(OTHER_PATIENT)
        merged = self._merged(conn, "study", {inst.ids.study: [rec]}, stored_study)
        study_values = {**merged[inst.ids.study], "updated_at": now}
        stmt = self._insert(studies).values(study_uid=inst.ids.study, **study_values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["study_uid"], set_=study_values))
        owner = conn.execute(
            sa.select(series.c.study_uid).where(series.c.series_uid == inst.ids.series)
        ).first()
        if owner is not None and owner.study_uid != inst.ids.study:
            raise SeriesInOtherStudy("Series Instance UID already belongs to another study")
        series_values = self._merged(conn, "series", {inst.ids.series: [rec]})[inst.ids.series]
        stmt = self._insert(series).values(
            series_uid=inst.ids.series, study_uid=inst.ids.study, **series_values
        )
        conn.execute(stmt.on_conflict_do_update(index_elements=["series_uid"], set_=series_values))
        conn.execute(instances.insert().values(**self._instance_values(rec, now)))
        return True  # the caller recounts the series and study once per batch

    def _recount(self, conn: Connection, study_uid: str, series_uid: str) -> None:
        """Recompute the series and study counts (and drop them when empty). Runs under the study's row lock,
        so recomputing (rather than incrementing) is safe and self-healing."""
        count = conn.execute(_COUNT_SERIES, {"series_uid": series_uid}).scalar_one()
        if count:
            conn.execute(_SET_SERIES_COUNT, {"b_series_uid": series_uid, "count": count})
        else:
            conn.execute(_DROP_SERIES, {"series_uid": series_uid})
        rows = conn.execute(_SERIES_OF_STUDY, {"study_uid": study_uid}).all()
        if not rows:
            conn.execute(_DROP_STUDY, {"study_uid": study_uid})
            return
        conn.execute(
            _SET_STUDY_COUNTS,
            {
                "b_study_uid": study_uid,
                "n_series": len(rows),
                "n_instances": sum(row.num_instances or 0 for row in rows),
                "modalities": "\\".join(sorted({row.modality for row in rows if row.modality})),
            },
        )

    def _rebuild(self, conn: Connection, study_uid: str, now: int) -> None:
        """After an erasure took instances out of a study that stays: its patient, study and series values again
        from the instances left, in the order they were stored, as if only they had been (no value of the erased
        patient stays). The first naming a patient makes it the study's, as STOW now refuses any other into it;
        another patient's instance (migration 0013) keeps its own Patient ID and issuer in ``other_patient_*``
        and gives the study none of its values. Reads every remaining instance's metadata: an erasure's cost, never
        a DELETE's."""
        # imported here, as gateway.catalog.records does: it loads pydicom's dictionary
        from gateway.dicom.qido_attrs import series_attrs, study_attrs

        rows = conn.execute(
            sa.select(
                instances.c.sop_uid,
                instances.c.series_uid,
                instances.c.metadata,
                instances.c.other_patient_id,
                instances.c.other_issuer_of_patient_id,
            )
            .where(instances.c.study_uid == study_uid)
            .order_by(instances.c.created_at, instances.c.sop_uid)
        ).all()
        if not rows:
            return  # the study went with its last instance (``_recount``)
        held = ("", "")
        of_study: list[tuple[dict[str, Any], dict[str, Any]]] = []
        of_series: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        flags = []
        for row in rows:
            metadata = fastjson.loads(row.metadata)
            flat, level = search_values(metadata), study_attrs(metadata)
            theirs = _patient(flat.get("patient_id"), level)
            other = _differs(theirs, held)
            if not other:
                held = (held[0] or theirs[0], held[1] or theirs[1])
                of_study.append((flat, level))
            of_series.setdefault(row.series_uid, []).append((flat, series_attrs(metadata)))
            wanted = theirs if other else (None, None)
            if (row.other_patient_id, row.other_issuer_of_patient_id) != wanted:
                flags.append({"b_sop": row.sop_uid, "o_patient": wanted[0], "o_issuer": wanted[1]})
        conn.execute(
            studies.update()
            .where(studies.c.study_uid == study_uid)
            .values(**_merge(STUDY_FIELDS, None, of_study), updated_at=now)
        )
        for series_uid, items in of_series.items():
            conn.execute(
                series.update().where(series.c.series_uid == series_uid).values(**_merge(SERIES_FIELDS, None, items))
            )
        if flags:
            conn.execute(
                instances.update()
                .where(instances.c.sop_uid == sa.bindparam("b_sop"))
                .values(
                    other_patient_id=sa.bindparam("o_patient"), other_issuer_of_patient_id=sa.bindparam("o_issuer")
                ),
                flags,
            )

    @staticmethod
    def _row(row: Any) -> InstanceRow:
        data = dict(row._mapping)
        data.setdefault("metadata", None)
        for name in ("frame_index", "derivative_index"):
            if data.get(name) is not None:
                data[name] = bytes(data[name])
        return InstanceRow(**data)

    def get_instance(self, sop_uid: str, *, with_metadata: bool = True) -> InstanceRow | None:
        """One instance by SOP UID. ``with_metadata=False`` skips the DICOM JSON (megabytes for a whole-slide
        image): the frame path wants only the index and the key."""
        with self._read() as conn:
            row = conn.execute(_GET_FULL if with_metadata else _GET_LIGHT, {"sop_uid": sop_uid}).first()
        return None if row is None else self._row(row)

    def locate(self, sop_uid: str) -> tuple[str, str] | None:
        """The study and series of the instance stored under ``sop_uid`` (what a WADO-URI request naming only the
        object is authorised by), or None."""
        row = self.get_instance(sop_uid, with_metadata=False)
        return None if row is None else (row.study_uid, row.series_uid)

    def instances_of(
        self, study_uid: str, series_uid: str | None = None, *, with_metadata: bool = True
    ) -> list[InstanceRow]:
        """A study's (or one series') instances, ordered by series number, series UID, instance number, SOP
        UID."""
        columns = _FULL_COLUMNS if with_metadata else _ROW_COLUMNS
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
        conn.execute(sa.select(studies.c.study_uid).where(studies.c.study_uid == row.study_uid).with_for_update())
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

    def exists(self, study_uid: str, series_uid: str | None = None) -> bool:
        """Whether the study (or the series of that study) holds any instance."""
        if series_uid is None:
            stmt = sa.select(studies.c.study_uid).where(studies.c.study_uid == study_uid)
        else:
            stmt = sa.select(series.c.series_uid).where(
                series.c.series_uid == series_uid, series.c.study_uid == study_uid
            )
        with self._read() as conn:
            return conn.execute(stmt).first() is not None

    def set_thumbnail(self, sop_uid: str, key: str, sha256: str) -> bool:
        """Record a stored thumbnail, only if the instance still has the bytes it was rendered from."""
        with self._write() as conn:
            update = instances.update().where(instances.c.sop_uid == sop_uid, instances.c.sha256 == sha256)
            return bool(conn.execute(update.values(thumbnail_key=key)).rowcount)

    def all_instance_keys(self) -> set[str]:
        with self._read() as conn:
            return set(conn.execute(sa.select(instances.c.storage_key)).scalars())

    # --- QIDO -----------------------------------------------------------------------------------------------

    def search(self, query: QidoQuery, scope: Scope | None) -> list[dict[str, Any]]:
        """QIDO results as DICOM JSON objects, filtered by ``scope`` in SQL (``None`` = everything)."""
        with self._read() as conn:
            stmt = build_select(query, scope, wide_prefixes(conn, query) if self.dialect == "sqlite" else frozenset())
            result = conn.execute(stmt)
            keys = list(result.keys())  # once: Row._mapping rebuilds the key list for every row
            rows = [dict(zip(keys, row, strict=True)) for row in result]
            if scope is not None and scope.series is not None and rows:
                self._scope_counts(conn, rows, scope.series)
        return [shape_row(query, row) for row in rows]

    def count(self, query: QidoQuery, scope: Scope | None) -> int:
        """How many matches ``search`` pages through (limit and offset ignored)."""
        with self._read() as conn:
            unindexed = wide_prefixes(conn, query) if self.dialect == "sqlite" else frozenset()
            return int(conn.execute(build_count(query, scope, unindexed)).scalar_one())

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
