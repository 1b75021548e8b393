"""Derivative records: the job table the local worker polls and the one UPDATE that publishes a derivative.

A job is due while ``attempts < max_attempts`` and ``not_before <= now``. Claiming moves ``not_before`` a lease
ahead and counts the attempt in one compare-and-swap, so two workers never encode the same instance at once and a
worker that dies mid-encode is replaced after the lease (`docs/design.md` §3: work after the ack, never in it).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gateway.catalog.engine import CatalogBase
from gateway.catalog.schema import derive_jobs, instances


@dataclass(frozen=True)
class DeriveJob:
    sop_uid: str
    attempts: int  # including the claim that returned it
    last_error: str | None = None


class DerivativeRecords(CatalogBase):
    def enqueue_derivative(self, sop_uid: str) -> None:
        """Ask for a derivative (again): a new upload of the same SOP UID restarts its attempts."""
        with self._write() as conn:
            self._queue_derivatives(conn, [sop_uid])

    def _queue_derivatives(self, conn: sa.Connection, sop_uids: list[str]) -> None:
        """``enqueue_derivative`` inside the caller's transaction (registration queues its instances' jobs in the
        transaction that makes them visible: one commit, and never a visible instance without its job)."""
        if not sop_uids:
            return
        now = int(time.time())
        conn.execute(
            self._queue_job, [{"sop_uid": sop, "attempts": 0, "not_before": 0, "created_at": now} for sop in sop_uids]
        )

    @functools.cached_property
    def _queue_job(self) -> Any:
        """The job upsert, built once (it runs in every registration)."""
        stmt = self._insert(derive_jobs)
        return stmt.on_conflict_do_update(
            index_elements=["sop_uid"],
            set_={"attempts": 0, "not_before": 0, "last_error": None, "created_at": stmt.excluded.created_at},
        )

    def claim_derivative(self, *, lease: int, max_attempts: int, now: int | None = None) -> DeriveJob | None:
        """The oldest due job, claimed for ``lease`` seconds; None when nothing is due."""
        now = int(time.time()) if now is None else now
        due = (
            sa.select(derive_jobs.c.sop_uid, derive_jobs.c.attempts)
            .where(derive_jobs.c.attempts < max_attempts, derive_jobs.c.not_before <= now)
            .order_by(derive_jobs.c.not_before, derive_jobs.c.created_at)
            .limit(8)
        )
        with self._read() as conn:
            candidates = conn.execute(due).all()
        for sop_uid, attempts in candidates:
            with self._write() as conn:
                won = conn.execute(
                    derive_jobs.update()
                    .where(derive_jobs.c.sop_uid == sop_uid, derive_jobs.c.attempts == attempts)
                    .values(attempts=attempts + 1, not_before=now + lease)
                ).rowcount
            if won:
                return DeriveJob(sop_uid, attempts + 1)
        return None

    def finish_derivative(self, job: DeriveJob) -> None:
        """Done (or nothing to do): drop the job unless it was enqueued again meanwhile (a new upload)."""
        with self._write() as conn:
            conn.execute(
                derive_jobs.delete().where(derive_jobs.c.sop_uid == job.sop_uid, derive_jobs.c.attempts == job.attempts)
            )

    def fail_derivative(self, job: DeriveJob, error: str, retry_at: int) -> None:
        """An attempt failed: due again at ``retry_at`` (ignored once the attempts are used up)."""
        with self._write() as conn:
            conn.execute(
                derive_jobs.update()
                .where(derive_jobs.c.sop_uid == job.sop_uid, derive_jobs.c.attempts == job.attempts)
                .values(not_before=retry_at, last_error=error[:500])
            )

    def derivative_job(self, sop_uid: str) -> DeriveJob | None:
        """The job of an instance, if any (a finished one has none): for status and tests."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(derive_jobs.c.attempts, derive_jobs.c.last_error).where(derive_jobs.c.sop_uid == sop_uid)
            ).first()
        return None if row is None else DeriveJob(sop_uid, int(row.attempts), row.last_error)

    def publish_derivative(self, sop_uid: str, sha256: str, *, syntax: str, key: str, frame_index: bytes) -> bool:
        """Make a wholly stored derivative visible, only if the instance still has the bytes it was made from."""
        with self._write() as conn:
            return bool(
                conn.execute(
                    instances.update()
                    .where(instances.c.sop_uid == sop_uid, instances.c.sha256 == sha256)
                    .values(derivative_syntax=syntax, derivative_key=key, derivative_index=frame_index)
                ).rowcount
            )
