"""Catalog records besides the instances themselves: upload reservations, token revocations, the audit
trail and the quarantine list. Small tables, each written in one short transaction."""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from gateway.catalog.engine import CatalogBase
from gateway.catalog.owner import Owner, is_gone, this_process
from gateway.catalog.schema import audit, instances, quarantine, reservations, revocations, token_audit
from gateway.errors import CatalogUnavailable

if TYPE_CHECKING:
    from gateway.hooks import UploadContext

_STORED_SHA256 = sa.select(instances.c.sop_uid, instances.c.sha256).where(
    instances.c.sop_uid.in_(sa.bindparam("sops", expanding=True))
)
# ends reservations by UID and nonce (a claim taken over since has another nonce and stays)
END_RESERVATION = reservations.delete().where(
    reservations.c.sop_uid == sa.bindparam("held"), reservations.c.nonce == sa.bindparam("ours")
)
# Revocations older than their expiry are purged at most this often (seconds of the caller's clock).
PURGE_INTERVAL = 300
_AUDIT_FIELDS = {c.name for c in audit.c} - {"id"}
# An upload reservation lives this long past its owner's last heartbeat (beats every HEARTBEAT_SECONDS).
LEASE_SECONDS = 60
HEARTBEAT_SECONDS = 15
# How often a reservation whose release met a catalog outage is released again, until the catalog answers.
RELEASE_RETRY_SECONDS = 1.0
_LEGACY_LEASE = 3600  # rows written before migration 0003 carry no lease: the old one-hour rule


@dataclass(frozen=True)
class Reservation:
    """One upload's claim on a SOP Instance UID (``nonce`` tells it from a later claim on the same UID).
    ``stored``: the sha256 of the instance already stored under that UID when the claim was won (None: none),
    when the claim was made by ``reserve_many``, which reads it in the claim's own transaction."""

    sop_uid: str
    nonce: str
    stored: str | None = field(default=None, compare=False)


def _stale(row: Any, now: int) -> bool:
    expires = row.expires_at if row.expires_at is not None else row.created_at + _LEGACY_LEASE
    return bool(expires < now) or is_gone(Owner(row.owner_host, row.owner_pid, row.owner_started))


class AdminRecords(CatalogBase):
    """Reservations, revocations, audit and quarantine; ``Catalog`` inherits these methods."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._last_purge = 0
        self._purge_lock = threading.Lock()
        # reservations this process holds (``holding``) -> when each is next due a heartbeat (time.monotonic())
        self._held: dict[Reservation, float] = {}
        # reservations whose release failed (the catalog was out) -> when the keeper next tries it
        self._owed: dict[Reservation, float] = {}
        self._leases = threading.Condition()
        self._keeper: threading.Thread | None = None
        self._closed = False  # ``close`` stopped the keeper for good

    # --- upload reservations ----------------------------------------------------------------------------------
    # Why owner + lease rather than a database lock held by the uploading connection: SQLite has no lock finer
    # than "the one writer", which an upload of minutes cannot hold; a row works the same on both backends, and
    # `reconcile` can list what is left. A crashed owner's row is taken over at once on its own host (its pid is
    # gone: gateway.catalog.owner) and after LEASE_SECONDS without a heartbeat from anywhere else.

    def _now(self, conn: Any) -> int:
        """The database's clock: every node judges leases by one clock, so a node whose own clock runs fast
        cannot take over a live upload on another host (SQLite's clock is its one host's)."""
        if self.dialect == "postgresql":
            return int(conn.exec_driver_sql("SELECT EXTRACT(EPOCH FROM clock_timestamp())").scalar_one())
        return int(conn.exec_driver_sql("SELECT CAST(strftime('%s','now') AS INTEGER)").scalar_one())

    def reserve(self, sop_uid: str, now: int | None = None) -> Reservation | None:
        """Claim the right to store ``sop_uid``; None while another upload of it is in flight. A reservation
        whose owner process is gone, or whose lease ran out, is taken over (compare-and-swap on its nonce, so
        two newcomers never both win). ``now`` defaults to the database's clock (tests pass their own)."""
        me = this_process()
        nonce = secrets.token_hex(16)
        with self._write(durable=False) as conn:  # a reservation dies with its owner: no flush to disk
            return self._reserve(conn, sop_uid, me, nonce, self._now(conn) if now is None else now)

    def reserve_many(self, sop_uids: Sequence[str]) -> list[Reservation | None]:
        """``reserve`` for several uploads in one transaction (the group commit's batch). A SOP Instance UID
        named twice is reserved for its first mention only: the second is an upload of it in flight. Each claim
        won says what is stored under its UID (``Reservation.stored``), read in the same transaction: ingest's
        duplicate check without a read of its own per upload."""
        me = this_process()
        out: list[Reservation | None] = []
        seen: set[str] = set()
        nonces = {sop_uid: secrets.token_hex(16) for sop_uid in sop_uids}
        try:
            with self._write(durable=False) as conn:
                now = self._now(conn)
                for sop_uid in sop_uids:
                    out.append(None if sop_uid in seen else self._reserve(conn, sop_uid, me, nonces[sop_uid], now))
                    seen.add(sop_uid)
                won = [claim.sop_uid for claim in out if claim is not None]
                stored = dict(conn.execute(_STORED_SHA256, {"sops": won}).all()) if won else {}
        except CatalogUnavailable:
            # the commit may have reached the database before the connection broke: nothing here holds those claims
            self._owe([Reservation(sop_uid, nonce) for sop_uid, nonce in nonces.items()])
            raise
        return [None if claim is None else replace(claim, stored=stored.get(claim.sop_uid)) for claim in out]

    @functools.cached_property
    def _claim(self) -> Any:
        """The reservation insert, built once (values as parameters: building it per upload cost more than
        running it). RETURNING, not rowcount: psycopg reports -1 rows for INSERT .. ON CONFLICT DO NOTHING."""
        stmt = self._insert(reservations).on_conflict_do_nothing(index_elements=["sop_uid"])
        return stmt.returning(reservations.c.sop_uid)

    def _reserve(self, conn: Any, sop_uid: str, me: Owner, nonce: str, now: int) -> Reservation | None:
        values = {
            "created_at": now,
            "owner_host": me.host,
            "owner_pid": me.pid,
            "owner_started": me.started,
            "nonce": nonce,
            "expires_at": now + LEASE_SECONDS,
        }
        if conn.execute(self._claim, {"sop_uid": sop_uid, **values}).first() is not None:
            return Reservation(sop_uid, nonce)
        row = conn.execute(sa.select(reservations).where(reservations.c.sop_uid == sop_uid).with_for_update()).first()
        if row is None or not _stale(row, now):
            return None
        taken = conn.execute(
            reservations.update()
            .where(reservations.c.sop_uid == sop_uid, reservations.c.nonce == row.nonce)
            .values(**values)
        )
        return Reservation(sop_uid, nonce) if taken.rowcount else None

    def heartbeat(self, reservation: Reservation, now: int | None = None) -> bool:
        """Extend the lease; False when the reservation is no longer ours (it was taken over)."""
        with self._write() as conn:
            now = self._now(conn) if now is None else now
            return bool(
                conn.execute(
                    reservations.update()
                    .where(reservations.c.sop_uid == reservation.sop_uid, reservations.c.nonce == reservation.nonce)
                    .values(expires_at=now + LEASE_SECONDS)
                ).rowcount
            )

    @contextmanager
    def holding(self, reservation: Reservation) -> Iterator[None]:
        """Refresh the lease every HEARTBEAT_SECONDS while the body runs (a slow store must not lose it). One
        thread (``_keep_leases``) beats for every reservation this process holds: a thread started and joined
        per upload cost the STOW worker a thread start, two GIL hand-offs and a join per instance."""
        with self._leases:
            self._held[reservation] = time.monotonic() + HEARTBEAT_SECONDS
            try:
                self._start_keeper()
            except BaseException:  # no thread could start: this upload fails, and holds nothing
                self._held.pop(reservation, None)
                raise
            # no wake-up needed: the keeper's next wake is never later than this one's first beat (every due
            # time is "when added or last beaten + HEARTBEAT_SECONDS")
        try:
            yield
        finally:
            with self._leases:
                self._held.pop(reservation, None)

    @contextmanager
    def holding_all(self, claims: Sequence[Reservation]) -> Iterator[None]:
        """``holding`` for each of ``claims`` (a deletion's batch). Where no thread can start (a worker past its
        graceful stop) they are held for their lease alone, which a batch's removal rarely outlives: the removal
        goes on rather than fail half done."""
        with contextlib.ExitStack() as stack:
            try:
                for claim in claims:
                    stack.enter_context(self.holding(claim))
            except RuntimeError:
                pass
            yield

    def _start_keeper(self) -> None:
        """Start the keeper unless one runs (called holding ``_leases``). ``_keeper`` names a thread only once it has
        started: one that could not start (no threads left) must not pass for running, or no lease of this
        process would be beaten again and other processes would take over uploads still in progress."""
        if self._keeper is None and not self._closed:
            keeper = threading.Thread(target=self._keep_leases, name="lease-keeper", daemon=True)
            keeper.start()  # it waits for _leases, held here, before it looks at anything
            self._keeper = keeper

    def _keep_leases(self) -> None:
        """Beat each held reservation when it is due, and release the owed ones; stop once none was held or owed
        for HEARTBEAT_SECONDS (the next ``holding`` or failed ``release`` starts the thread again)."""
        try:
            while True:
                with self._leases:
                    if self._closed:
                        return
                    if not self._held and not self._owed:
                        self._leases.wait(HEARTBEAT_SECONDS)
                        if self._closed or (not self._held and not self._owed):
                            return
                    now = time.monotonic()
                    due = [reservation for reservation, at in self._held.items() if at <= now]
                    owed = [reservation for reservation, at in self._owed.items() if at <= now]
                    if not due and not owed:
                        self._leases.wait(min([*self._held.values(), *self._owed.values()]) - now)
                        continue  # or closed: checked first
                    for reservation in due:
                        self._held[reservation] = now + HEARTBEAT_SECONDS
                    for reservation in owed:
                        self._owed[reservation] = now + RELEASE_RETRY_SECONDS
                for reservation in due:  # outside the lock: a beat is a catalog write
                    if self._closed:  # ``close`` waits for one write at most, not a round (an outage: each a timeout)
                        return
                    try:
                        self.heartbeat(reservation)
                    except CatalogUnavailable:
                        pass  # the next beat retries; the lease outlives several missed beats
                for reservation in owed:
                    if self._closed:
                        return
                    try:
                        self._end_reservation(reservation)
                    except CatalogUnavailable:
                        # still out: the rest would each wait out a connect timeout too, holding the beats back;
                        # all are tried again in RELEASE_RETRY_SECONDS
                        break
                    with self._leases:
                        self._owed.pop(reservation, None)
        finally:
            with self._leases:
                self._keeper = None
                if self._held or self._owed:  # one came in as this thread stopped (or a beat failed unforeseen)
                    self._start_keeper()  # if none can start, the next upload's ``holding`` tries again

    def close(self) -> None:
        """Stop the keeper, and wait for its beat in progress (one write: the rest of its round is not beaten, which
        in an outage would each wait out a timeout), before the engine goes: a beat that ended on a disposed engine
        left its connection open until the garbage collector found it. What it still held or owed lapses with its
        lease, as when the process ends."""
        with self._leases:
            self._closed = True
            keeper = self._keeper
            self._leases.notify_all()
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join()
        super().close()

    def release(self, reservation: Reservation) -> None:
        try:
            self._end_reservation(reservation)
        except CatalogUnavailable:
            # This process lives on, so no other upload takes the row over before its lease ends: the client's
            # retry once the catalog is back met "in progress" for a minute. The keeper releases it as soon as
            # the catalog answers.
            self._owe([reservation])
            raise

    def release_many(self, claims: Sequence[Reservation]) -> None:
        """``release`` for several, in one transaction."""
        if not claims:
            return
        try:
            with self._write(durable=False) as conn:
                conn.execute(END_RESERVATION, [{"held": claim.sop_uid, "ours": claim.nonce} for claim in claims])
        except CatalogUnavailable:
            self._owe(claims)
            raise

    def _owe(self, claims: Sequence[Reservation]) -> None:
        """Have the keeper release ``claims`` (by nonce: one never won deletes nothing) once the catalog answers."""
        with self._leases:
            for claim in claims:
                self._owed[claim] = time.monotonic() + RELEASE_RETRY_SECONDS
            self._leases.notify()  # a keeper asleep until a beat due later must try these within the second
            with contextlib.suppress(RuntimeError):  # no thread can start: the lease still ends in a minute
                self._start_keeper()

    def _end_reservation(self, reservation: Reservation) -> None:
        with self._write() as conn:
            conn.execute(
                reservations.delete().where(
                    reservations.c.sop_uid == reservation.sop_uid, reservations.c.nonce == reservation.nonce
                )
            )

    def in_flight(self, sop_uids: Sequence[str]) -> set[str]:
        """Which of ``sop_uids`` a live upload (or a deletion removing their objects) holds right now."""
        held: set[str] = set()
        with self._read() as conn:
            now = self._now(conn)
            for start in range(0, len(sop_uids), 500):
                rows = conn.execute(
                    sa.select(reservations).where(reservations.c.sop_uid.in_(sop_uids[start : start + 500]))
                )
                held.update(row.sop_uid for row in rows if not _stale(row, now))
        return held

    def stale_reservations(self, now: int | None = None, *, clear: bool = False) -> list[str]:
        """SOP Instance UIDs whose reservation outlived its owner (judged as ``reserve`` judges); ``clear``
        deletes exactly those rows (a row re-taken meanwhile has a new nonce and stays)."""
        with self._write() if clear else self._read() as conn:
            now = self._now(conn) if now is None else now
            stale = [row for row in conn.execute(sa.select(reservations)) if _stale(row, now)]
            if clear:
                for row in stale:
                    conn.execute(
                        reservations.delete().where(
                            reservations.c.sop_uid == row.sop_uid, reservations.c.nonce == row.nonce
                        )
                    )
        return sorted(row.sop_uid for row in stale)

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
            return set(conn.execute(sa.select(revocations.c.jti).where(revocations.c.expires_at > now)).scalars())

    # --- token audit ----------------------------------------------------------------------------------------

    def add_token_event(
        self,
        event: str,
        *,
        api_key: str,
        jti: str,
        created_at: int,
        sub: str | None = None,
        studies: Sequence[str] | None = None,
        series: Sequence[str] | None = None,
        actions: Sequence[str] | None = None,
        expires_at: int | None = None,
        session: str | None = None,
        session_expires_at: int | None = None,
    ) -> None:
        """One token audit row ("issued", "renewed" or "revoked"), one insert (the issue path is a portal's page
        load)."""
        values = {
            "event": event,
            "api_key": api_key,
            "jti": jti,
            "created_at": int(created_at),
            "sub": sub,
            "studies": None if studies is None else json.dumps(sorted(studies)),
            "series": None if series is None else json.dumps(sorted(series)),
            "actions": None if actions is None else json.dumps(sorted(actions)),
            "expires_at": expires_at,
            "session": session,
            "session_expires_at": session_expires_at,
        }
        with self._write() as conn:
            conn.execute(token_audit.insert().values(**values))

    def token_records(
        self,
        *,
        study_uid: str | None = None,
        jti: str | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first, ``before_id`` continuing a page; ``study_uid``: the tokens whose scope names the study;
        ``jti``: a token's issuance and revocations, and those of the session it started."""
        table = token_audit
        stmt = sa.select(table).order_by(table.c.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(table.c.id < before_id)
        if study_uid is not None:  # a checked UID: digits and dots, no LIKE wildcard
            stmt = stmt.where(table.c.studies.like(f'%"{study_uid}"%'))
        if jti is not None:
            stmt = stmt.where(sa.or_(table.c.jti == jti, table.c.session == jti))
        with self._read() as conn:
            rows = [dict(row._mapping) for row in conn.execute(stmt)]
        for row in rows:
            for name in ("studies", "series", "actions"):
                row[name] = None if row[name] is None else json.loads(row[name])
        return rows

    # --- audit ----------------------------------------------------------------------------------------------

    def add_audit(self, **fields: Any) -> None:
        """Append an audit record. Fields: source, sub, sop_uid, study_uid, decision, rule, destination, tags
        (a list of tag paths or keywords, never values), policy_version, reason (why a release was refused),
        created_at (default now)."""
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
        self,
        *,
        sop_uid: str | None = None,
        study_uid: str | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first; ``before_id`` continues a page (the last ``id`` of the previous one)."""
        stmt = sa.select(audit).order_by(audit.c.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(audit.c.id < before_id)
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
        patient: tuple[str, str] | None = None,
        reason: str = "",
        report: Mapping[str, Any] | None = None,
        created_at: int | None = None,
        destination: str | None = None,
        context: UploadContext | None = None,
        storage_url: str | None = None,
    ) -> None:
        """Record a quarantined object by its storage key (re-quarantining the same key updates the
        record). ``patient``: keyed digests of the file's Patient ID and Issuer of Patient ID ("" when it names
        none), which a patient erasure finds it by; None: not known (a record made before migration 0012 has none).
        ``destination``: the policy destination whose storage holds it (None: the default storage); ``context``: the
        upload's, which a release is judged with; ``storage_url``: that storage's URL (a deletion reaches the file
        there once the policy no longer names the destination)."""
        values = {
            "sop_uid": sop_uid,
            "study_uid": study_uid,
            "series_uid": series_uid,
            "patient_id": None if patient is None else patient[0].strip(),
            "issuer_of_patient_id": None if patient is None else patient[1].strip(),
            "reason": reason,
            "report": json.dumps(dict(report or {})),
            "created_at": int(created_at or time.time()),
            "destination": destination,
            "tenant": None if context is None else context.tenant,
            "region": None if context is None else context.region,
            "source": None if context is None else context.source,
            "sub": None if context is None else context.sub,
            "storage": storage_url,
        }
        stmt = self._insert(quarantine).values(key=key, **values)
        with self._write() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_=values))

    @staticmethod
    def _quarantine_dict(row: Any) -> dict[str, Any]:
        data = dict(row._mapping)
        data["report"] = json.loads(data["report"])
        # kept for erasure only: the review list names files by UID, as it did before the patient was recorded
        del data["patient_id"], data["issuer_of_patient_id"]
        return data

    def list_quarantine(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Newest first."""
        stmt = sa.select(quarantine).order_by(quarantine.c.created_at.desc(), quarantine.c.key).limit(limit)
        with self._read() as conn:
            items = [self._quarantine_dict(row) for row in conn.execute(stmt)]
        for item in items:
            del item["storage"]  # where the gateway reaches it, for its deletion: the list names the destination
        return items

    def get_quarantine(self, key: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(sa.select(quarantine).where(quarantine.c.key == key)).first()
        return None if row is None else self._quarantine_dict(row)

    def quarantine_of_patient(self, patient_id: str, issuer: str | None, study_uids: list[str]) -> list[str]:
        """Keys of the quarantined objects of a patient (a patient erasure removes them too): those recorded with
        this Patient ID (and, when given, this Issuer of Patient ID; both compared as ``studies_of_patient``
        compares them), whether or not a study of the patient is stored, and those held under one of
        ``study_uids`` (the patient's erased studies) that name no other patient. Another patient's file held
        under the same Study Instance UID stays."""
        patient_id = patient_id.strip()
        held = quarantine.c
        # "" is a record of a file that names no Patient ID, never a patient to match
        patient: sa.ColumnElement[bool] = held.patient_id == patient_id if patient_id else sa.false()
        issuer_unlike: sa.ColumnElement[bool] = sa.false()
        if issuer is not None:
            # as for a study: a given issuer matches a recorded one equal to it, and "" none (no file names it)
            issuer = issuer.strip()
            patient = sa.and_(patient, held.issuer_of_patient_id == issuer) if issuer else sa.false()
            issuer_unlike = sa.and_(held.issuer_of_patient_id != "", held.issuer_of_patient_id != issuer)
        found = patient
        if study_uids:
            # In an erased study, a file naming no Patient ID (or issuer) is the study's patient's, as such an
            # instance merges into its study on upload. A record made before migration 0012 names no patient (only
            # its file does): it goes with its study, as every held file of the study went before.
            named_none = sa.or_(held.patient_id.is_(None), held.patient_id == "")
            same = sa.or_(named_none, sa.and_(held.patient_id == patient_id, sa.not_(issuer_unlike)))
            found = sa.or_(patient, sa.and_(held.study_uid.in_(study_uids), same))
        with self._read() as conn:
            return sorted(conn.execute(sa.select(held.key).where(found)).scalars())

    def remove_quarantine(self, key: str) -> bool:
        """Remove a quarantine record; False if there was none (another caller removed it first: a release and an
        erasure or a delete of the same held file, ``gateway.quarantine``)."""
        with self._write() as conn:
            return conn.execute(quarantine.delete().where(quarantine.c.key == key)).rowcount > 0
