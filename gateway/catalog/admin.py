"""Catalog records besides the instances themselves: upload reservations, token revocations, the audit
trail and the quarantine list. Small tables, each written in one short transaction."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from gateway.catalog.engine import CatalogBase
from gateway.catalog.schema import audit, quarantine, reservations, revocations

# Revocations older than their expiry are purged at most this often (seconds of the caller's clock).
PURGE_INTERVAL = 300
_AUDIT_FIELDS = {c.name for c in audit.c} - {"id"}


class AdminRecords(CatalogBase):
    """Reservations, revocations, audit and quarantine; ``Catalog`` inherits these methods."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._last_purge = 0
        self._purge_lock = threading.Lock()

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
