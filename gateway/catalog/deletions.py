"""Deletion records (`gateway.lifecycle` uses them): hide what is removed in one transaction, journal the
storage keys still to remove, and list recent deletions as tombstones for the auth decision.

``hide`` is the one step that makes data invisible: the instance rows go, series and study counts are recomputed
(empty ones go too) and a ``deletions`` row per target is written, all in one transaction, so a reader sees the
study whole or not at all and a crash leaves either nothing done or a journal `reconcile` can finish.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gateway.catalog.engine import CatalogBase
from gateway.catalog.schema import deletions, instances, studies


@dataclass(frozen=True)
class Target:
    """A study, one series of it, or one instance of that series; with ``stored_until`` (epoch seconds) only its
    instances stored at or before then: retention chose them by age, and an instance uploaded into the study while
    the run was under way (a run waits one settle per reason) is not its to remove."""

    study: str
    series: str | None = None
    sop: str | None = None
    stored_until: int | None = None

    @property
    def level(self) -> str:
        return "instance" if self.sop else "series" if self.series else "study"


@dataclass(frozen=True)
class Removed:
    """One target that was there and is now hidden (``id`` is its deletion record, the new generation)."""

    id: int
    target: Target
    sop_uids: tuple[str, ...]
    series_uids: tuple[str, ...]
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Patient:
    """A patient erasure's call as its deletion records keep it: keyed digests
    (``gateway.phi.deidentify.identifier_digest``) of the Patient ID and of the issuer (None: the call named none)."""

    patient_id: str
    issuer: str | None = None


@dataclass(frozen=True)
class ErasurePlan:
    """``DeletionRecords.erasure_plan``: the patient's studies (their UIDs), the targets to remove, and the other
    patients' instances (SOP UIDs, by study) left in the patient's studies."""

    studies: list[str]
    targets: list[Target]
    kept: dict[str, tuple[str, ...]]


_ISSUER = "00100021"
# The SOP Instance UID in a storage key (``studies/{st}/series/{se}/instances/{sop}.dcm``, gateway.uids).
_SOP_IN_KEY = re.compile(r"/instances/([0-9.]+)\.dcm$")


def sop_of_key(key: str) -> str | None:
    found = _SOP_IN_KEY.search(key)
    return found.group(1) if found else None


class DeletionRecords(CatalogBase):
    """Deletions; ``Catalog`` inherits these methods (and provides ``_recount``)."""

    if TYPE_CHECKING:

        def _recount(self, conn: Connection, study_uid: str, series_uid: str) -> None: ...

        def _rebuild(self, conn: Connection, study_uid: str, now: int) -> None: ...

    def hide(
        self,
        targets: list[Target],
        *,
        sub: str,
        reason: str,
        now: int | None = None,
        rebuild: bool = False,
        patient: Patient | None = None,
    ) -> list[Removed]:
        """Remove the catalog rows of every target in one transaction; each target that held instances gets a
        deletion record (unfinished: its objects are still in storage). Targets with nothing are left out.
        ``rebuild`` (a patient erasure): a study left holding instances gets its patient, study and series values
        again from those alone (``Catalog._rebuild``), so none of the removed instances' values stays. ``patient``
        (a patient erasure): the keyed digests it was called with, recorded so the same call sent again finds
        these records (``unfinished_erasures``)."""
        now = int(time.time()) if now is None else now
        request_id = secrets.token_hex(8)
        removed: list[Removed] = []
        with self._write() as conn:
            for target in targets:
                found = self._hide_one(
                    conn, target, sub=sub, reason=reason, request_id=request_id, now=now, patient=patient
                )
                if found is not None:
                    removed.append(found)
            if rebuild:
                for study_uid in sorted({item.target.study for item in removed if item.target.level != "study"}):
                    self._rebuild(conn, study_uid, now)
        return removed

    def _hide_one(
        self,
        conn: Connection,
        target: Target,
        *,
        sub: str,
        reason: str,
        request_id: str,
        now: int,
        patient: Patient | None,
    ) -> Removed | None:
        # lock the study row first (PostgreSQL), the order register takes, so an upload into it waits
        conn.execute(sa.select(studies.c.study_uid).where(studies.c.study_uid == target.study).with_for_update())
        where = [instances.c.study_uid == target.study]
        if target.series is not None:
            where.append(instances.c.series_uid == target.series)
        if target.sop is not None:
            where.append(instances.c.sop_uid == target.sop)
        if target.stored_until is not None:
            where.append(instances.c.created_at <= target.stored_until)
        rows = conn.execute(
            sa.select(instances.c.sop_uid, instances.c.series_uid, instances.c.storage_key, instances.c.thumbnail_key)
            .where(*where)
            .order_by(instances.c.sop_uid)
        ).all()
        if not rows:
            return None
        conn.execute(instances.delete().where(*where))
        series_uids = tuple(sorted({row.series_uid for row in rows}))
        for series_uid in series_uids:
            self._recount(conn, target.study, series_uid)
        keys = tuple(dict.fromkeys(k for row in rows for k in (row.storage_key, row.thumbnail_key) if k))
        new_id = conn.execute(
            deletions.insert()
            .values(
                created_at=now,
                level=target.level,
                study_uid=target.study,
                series_uid=target.series,
                sop_uid=target.sop,
                sub=sub,
                reason=reason,
                request_id=request_id,
                instances=len(rows),
                keys=json.dumps(list(keys)),
                patient_id=None if patient is None else patient.patient_id,
                issuer_of_patient_id=None if patient is None else patient.issuer,
            )
            .returning(deletions.c.id)
        ).scalar_one()
        return Removed(int(new_id), target, tuple(row.sop_uid for row in rows), series_uids, keys)

    def studies_of_patient(self, patient_id: str, issuer: str | None = None) -> list[str]:
        """Study UIDs whose Patient ID is exactly ``patient_id`` (and, when given, Issuer of Patient ID).

        Both are compared without leading and trailing spaces, which DICOM does not count in an LO value (the
        catalog stores the Patient ID stripped), so a value copied with its padding from a file or an HL7 message still
        finds the patient."""
        patient_id = patient_id.strip()
        issuer = None if issuer is None else issuer.strip()
        with self._read() as conn:
            rows = conn.execute(
                sa.select(studies.c.study_uid, studies.c.attrs).where(studies.c.patient_id == patient_id)
            ).all()
        found = []
        for row in rows:
            if issuer is not None:
                element = json.loads(row.attrs).get(_ISSUER) or {}
                stored = (element.get("Value") or [None])[0]
                if stored is None or str(stored).strip() != issuer:
                    continue
            found.append(str(row.study_uid))
        return sorted(found)

    def erasure_plan(self, patient_id: str, issuer: str | None = None) -> ErasurePlan:
        """What erasing a patient removes: each of their studies whole, except where an older catalog stored
        another patient's instance in it (migration 0013 recorded it): there the patient's series and instances
        go and the other patient's instances stay (``kept``); and the patient's instances stored in another
        patient's study (``instances_of_patient_elsewhere``)."""
        theirs = self.studies_of_patient(patient_id, issuer)
        own = self.instances_of_patient_elsewhere(patient_id, issuer)
        mine = {target.sop for target in own}
        with self._read() as conn:
            others = conn.execute(
                sa.select(instances.c.study_uid, instances.c.sop_uid).where(
                    instances.c.study_uid.in_(theirs), instances.c.other_patient_id.is_not(None)
                )
            ).all()
            kept: dict[str, list[str]] = {}
            for row in others:
                if row.sop_uid not in mine:
                    kept.setdefault(row.study_uid, []).append(row.sop_uid)
            shared = (
                conn.execute(
                    sa.select(instances.c.study_uid, instances.c.series_uid, instances.c.sop_uid)
                    .where(instances.c.study_uid.in_(sorted(kept)))
                    .order_by(instances.c.study_uid, instances.c.series_uid, instances.c.sop_uid)
                ).all()
                if kept
                else []
            )
        # in a study that keeps another patient's instance: a series holding none goes whole, the rest instance by
        # instance (as DELETEs of each would)
        keeping = {row.series_uid for row in shared if row.sop_uid in kept[row.study_uid]}
        targets = [
            *(Target(uid) for uid in theirs if uid not in kept),
            *dict.fromkeys(Target(row.study_uid, row.series_uid) for row in shared if row.series_uid not in keeping),
            *(
                Target(row.study_uid, row.series_uid, row.sop_uid)
                for row in shared
                if row.series_uid in keeping and row.sop_uid not in kept[row.study_uid]
            ),
            *(target for target in own if target.study not in theirs),
        ]
        return ErasurePlan(theirs, targets, {uid: tuple(sorted(sops)) for uid, sops in sorted(kept.items())})

    def instances_of_patient_elsewhere(self, patient_id: str, issuer: str | None = None) -> list[Target]:
        """The instances of a patient stored in another patient's study (before STOW refused that; migration 0013
        recorded their own Patient ID and issuer), as instance targets; compared as ``studies_of_patient``
        compares a study's."""
        patient_id = patient_id.strip()
        where = [instances.c.other_patient_id == patient_id]
        if issuer is not None:
            if not issuer.strip():
                return []  # as for a study: "" is no issuer to match
            where.append(instances.c.other_issuer_of_patient_id == issuer.strip())
        stmt = (
            sa.select(instances.c.study_uid, instances.c.series_uid, instances.c.sop_uid)
            .where(*where)
            .order_by(instances.c.study_uid, instances.c.sop_uid)
        )
        with self._read() as conn:
            return [Target(row.study_uid, row.series_uid, row.sop_uid) for row in conn.execute(stmt)]

    def stored_before(self, cutoff: int) -> list[Any]:
        """Instances stored before ``cutoff`` (epoch seconds), with what retention selects on and their study's
        instance count (rows: sop_uid, study_uid, series_uid, tenant, destination, created_at, study_instances)."""
        stmt = (
            sa.select(
                instances.c.sop_uid,
                instances.c.study_uid,
                instances.c.series_uid,
                instances.c.tenant,
                instances.c.destination,
                instances.c.created_at,
                studies.c.num_instances.label("study_instances"),
            )
            .select_from(instances.join(studies, instances.c.study_uid == studies.c.study_uid))
            .where(instances.c.created_at < cutoff)
            .order_by(instances.c.study_uid, instances.c.sop_uid)
        )
        with self._read() as conn:
            return list(conn.execute(stmt).all())

    def generations(self, since: int) -> dict[str, int]:
        """Study UID -> id of its newest deletion record since ``since`` (the tombstones the auth decision and
        the planner compare against)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(deletions.c.study_uid, sa.func.max(deletions.c.id))
                .where(deletions.c.created_at >= since)
                .group_by(deletions.c.study_uid)
            ).all()
        return {str(study): int(gen) for study, gen in rows}

    def unfinished_deletions(self) -> list[dict[str, Any]]:
        """Deletion records whose storage objects may still be there (oldest first)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(deletions).where(deletions.c.finished_at.is_(None)).order_by(deletions.c.id)
            ).all()
        return [_record(row) for row in rows]

    def unfinished_erasures(self, patient: Patient) -> list[dict[str, Any]]:
        """The unfinished deletion records of an erasure of this patient (oldest first): of the same Patient ID, and
        of the same issuer when ``patient`` names one (an erasure that named none took the patient's studies of
        every issuer, and so does one sent again without it)."""
        where = [deletions.c.finished_at.is_(None), deletions.c.patient_id == patient.patient_id]
        if patient.issuer is not None:
            where.append(deletions.c.issuer_of_patient_id == patient.issuer)
        with self._read() as conn:
            rows = conn.execute(sa.select(deletions).where(*where).order_by(deletions.c.id)).all()
        return [_record(row) for row in rows]

    def finish_deletion(self, deletion_id: int, now: int | None = None) -> None:
        with self._write() as conn:
            conn.execute(
                deletions.update()
                .where(deletions.c.id == deletion_id)
                .values(finished_at=int(time.time()) if now is None else now)
            )

    def deletion_records(
        self, *, study_uid: str | None = None, before_id: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first, ``before_id`` continuing a page (the last ``id`` of the previous one); without the storage
        keys (an audit reader needs what and why, not where)."""
        stmt = sa.select(deletions).order_by(deletions.c.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(deletions.c.id < before_id)
        if study_uid is not None:
            stmt = stmt.where(deletions.c.study_uid == study_uid)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        records = [_record(row) for row in rows]
        for record in records:
            # the patient's digests serve the erasure sent again alone (no PHI value, but no reader's business)
            del record["keys"], record["patient_id"], record["issuer_of_patient_id"]
        return records


def _record(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    data["keys"] = json.loads(data["keys"])
    return data
