"""Deleting studies, series and instances, everywhere the gateway keeps them (`docs/design.md` §5 for the order).

1. ``Catalog.hide``: one transaction removes the catalog rows (QIDO, metadata, rendered, thumbnails and WADO-URI
   answer 404 from then on, on every node: they read the catalog) and writes a deletion record (the audit, and
   the journal of the storage keys still to remove).
2. Wait ``DICOMGW_DELETE_SETTLE`` seconds: every node reloads its tombstones within ``DICOMGW_REVOCATION_REFRESH``
   and NGINX reuses a decision for at most ``DICOMGW_AUTH_CACHE_SECONDS``; the decision carries the study's new
   generation, which is part of the plan-cache key, so no node serves a plan made before the delete. Until then a
   node may still serve the old bytes whole, from objects that are still there: never a half body.
3. Remove the stored objects: each instance's object and everything stored next to it under its name
   (thumbnails, and any derived kind added later: ``{sop}.*`` and ``{sop}/...``), skipping an instance that was
   uploaded again meanwhile, holding each instance's upload reservation while its objects go (an upload of it
   waits); then mark the record finished and answer.

A crash after step 1 leaves an unfinished record: ``dicom-gateway reconcile`` finishes it (and never re-registers
its objects as orphans).
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gateway.catalog import Catalog
from gateway.catalog.deletions import Patient, Removed, Target
from gateway.storage import Storage

# The SOP Instance UID of a stored object and of everything derived from it: ``{sop}.dcm``, ``{sop}.thumb.jpg``,
# ``{sop}/...``. A UID's components are digits, so ``1.2.3.thumb.jpg`` is 1.2.3's and ``1.2.3.4.dcm`` is not.
_INSTANCE_FILE = re.compile(r"^(?P<dir>.*/instances/)(?P<sop>[0-9]+(?:\.[0-9]+)*)(?:\.[A-Za-z][^/]*|/.*)$")
# A derived object named by its original's digest: ``{sop}/htj2k-{sha256[:16]}.j2c``, ``{sop}.thumb-{sha256[:16]}.jpg``.
_DERIVED_DIGEST = re.compile(r"/instances/[0-9.]*[0-9][./][^/]*-([0-9a-f]{16})\.[^/]*$")
MAX_REASON = 500
DELETE_CONCURRENCY = 8
# Instances whose objects are removed under one batch of upload reservations (a few seconds of S3 DELETEs at most)
CLAIM_BATCH = 256
# How long a removal waits for an upload of one of its instances (``gateway.ingest.RESERVATION_WAIT_SECONDS``)
CLAIM_WAIT_SECONDS = 10.0

log = logging.getLogger(__name__)


def instance_of(key: str) -> tuple[str, str] | None:
    """(folder, SOP UID) of a stored instance or anything derived from it; None for other keys."""
    found = _INSTANCE_FILE.match(key)
    return None if found is None else (found.group("dir"), found.group("sop"))


@dataclass
class Deleter:
    catalog: Catalog
    storage: Storage
    settle: float
    on_hidden: Callable[[], None] = lambda: None
    sleep: Callable[[float], None] = field(default=time.sleep)

    def delete(
        self,
        targets: list[Target],
        *,
        sub: str,
        reason: str,
        rebuild: bool = False,
        patient: Patient | None = None,
    ) -> list[Removed]:
        """Remove every target that exists (one transaction hides them all), wait out the caches, remove their
        objects. Returns what was removed (empty: nothing was there). A deletion of these targets (or, with
        ``patient``, an erasure of that patient) interrupted after step 1 (its worker killed, NGINX resending the
        DELETE to another one; a catalog or storage outage answered 503 "retry") is finished by this call too and
        returned with the rest: the retry gets its answer, not a 404 "nothing stored there" with the objects left
        until someone runs reconcile. ``rebuild``, ``patient``: ``Catalog.hide``'s (a patient erasure)."""
        removed = self.catalog.hide(targets, sub=sub, reason=reason, rebuild=rebuild, patient=patient)
        if removed:
            self.on_hidden()
        new = {item.id for item in removed}
        interrupted = [
            record
            for record in self.catalog.unfinished_deletions()
            if record["id"] not in new and _names(targets, record)
        ]
        if patient is not None:
            known = {record["id"] for record in interrupted} | new
            interrupted += [r for r in self.catalog.unfinished_erasures(patient) if r["id"] not in known]
        if not removed and not interrupted:
            return []
        # no plan or decision made before a deletion hid its rows may still be in use: the settle of the newest (of
        # an interrupted one alone, what is left of it)
        if removed:
            self.sleep(self.settle)
        else:
            self.sleep(max(0.0, max(r["created_at"] for r in interrupted) + self.settle - time.time()))
        removed += [_removed(record) for record in sorted(interrupted, key=lambda r: r["id"])]
        for item in removed:
            self.remove_objects(list(item.keys))
            self.catalog.finish_deletion(item.id)
        self._scrub()
        return removed

    def _scrub(self) -> None:
        """No copy of the removed rows left in the catalog's files (``Catalog.scrub``) before the answer."""
        if not self.catalog.scrub():
            log.warning("the catalog's files still hold removed rows: a reader kept the checkpoint from finishing")

    def remove_objects(self, keys: list[str]) -> list[str]:
        """Remove the instances' objects and everything stored under their names; an instance stored again (or
        being uploaded) since is left alone. Returns the keys removed. Idempotent."""
        wanted: dict[str, set[str]] = defaultdict(set)
        for key in keys:
            found = instance_of(key)
            if found is not None:
                wanted[found[0]].add(found[1])
        gone: list[str] = []
        for folder, sops in sorted(wanted.items()):
            # one listing per series folder, not one per instance
            names: dict[str, list[str]] = defaultdict(list)
            for key in self.storage.list(folder):
                found = instance_of(key)
                if found is not None and found[0] == folder and found[1] in sops:
                    names[found[1]].append(key)
            ordered = sorted(names)
            for start in range(0, len(ordered), CLAIM_BATCH):
                gone += self._remove_claimed({sop: names[sop] for sop in ordered[start : start + CLAIM_BATCH]})
        return gone

    def _remove_claimed(self, names: dict[str, list[str]]) -> list[str]:
        """Remove the objects ``names`` lists (by SOP UID) holding their instances' upload reservations, as an
        upload holds its instance's: an upload of one of them waits until its objects are gone, then stores its
        own. Checked and then removed without them, an upload stored in between was answered 200 and its object
        removed. (Listed before: an object stored since the listing is an upload's, whose row the claim sees.)"""
        sops = sorted(names)
        claims = self.catalog.reserve_many(sops)
        # An upload holding one ends within moments: waited for (as long as an upload waits for another), the claim
        # then says whether it stored the instance again. Kept for it, a duplicate (which stores nothing) left the
        # removed instance's objects for good, and reconcile registered them again.
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        pause = 0.005
        try:
            while None in claims and time.monotonic() < deadline:
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
                lost = [sop for sop, claim in zip(sops, claims, strict=True) if claim is None]
                again = dict(zip(lost, self.catalog.reserve_many(lost), strict=True))
                claims = [again.get(sop) if claim is None else claim for sop, claim in zip(sops, claims, strict=True)]
        except BaseException:
            # the claims already won are ended (best effort: ``release_many`` owes them to the keeper when the
            # catalog is down): left held for their lease, a retried DELETE within it waited for them as for an
            # upload, then kept those instances' objects for good
            self.catalog.release_many([claim for claim in claims if claim is not None])
            raise
        # what each claim found stored under its UID: an instance stored again keeps its objects; one an upload
        # still holds (its claim lost) keeps everything
        live = {
            sop: None if claim is None else claim.stored
            for sop, claim in zip(sops, claims, strict=True)
            if claim is None or claim.stored
        }
        won = [claim for claim in claims if claim is not None]
        try:
            with self.catalog.holding_all(won):
                gone = [key for sop in sops for key in names[sop] if _stale(key, sop, live)]
                self._delete_all(gone)
        finally:
            self.catalog.release_many(won)
        return gone

    def _delete_all(self, keys: list[str]) -> None:
        # S3 answers one DELETE per request: a few at once, so a study of thousands stays well inside a request's
        # time (boto3 clients are thread-safe; the local backend is just as happy)
        try:
            with ThreadPoolExecutor(max_workers=DELETE_CONCURRENCY) as pool:
                list(pool.map(self.storage.delete, keys))
        except RuntimeError:
            # "cannot schedule new futures after interpreter shutdown": a gunicorn worker past its graceful stop
            # with this request still running. One at a time here, so the deletion still ends before its answer
            # (it was a 500 with the study hidden and its objects left for `reconcile`)
            for key in keys:
                self.storage.delete(key)

    def interrupted(self, older_than: int | None = None) -> list[dict[str, Any]]:
        """The unfinished deletion records a crash left: those older than the settle time (by default), which a
        DELETE still running has not outlived."""
        cutoff = int(time.time() - self.settle) if older_than is None else older_than
        return [record for record in self.catalog.unfinished_deletions() if record["created_at"] <= cutoff]

    def finish_unfinished(self, *, older_than: int | None = None, sub: str | None = None) -> list[dict[str, Any]]:
        """Finish deletion records a crash left unfinished (``reconcile``); records younger than the settle
        time belong to a DELETE still running and are left to it. ``sub``: only that caller's records."""
        done = []
        for record in self.interrupted(older_than):
            if sub not in (None, record["sub"]):
                continue
            removed = self.remove_objects(record["keys"])
            self.catalog.finish_deletion(record["id"])
            done.append({"id": record["id"], "study_uid": record["study_uid"], "removed": len(removed)})
        if done:
            self._scrub()
        return done


def _stale(key: str, sop: str, live: dict[str, str | None]) -> bool:
    """Whether ``key`` is the removed instance's: every object of an instance not stored again; of one stored again
    during the settle, a derivative or thumbnail named by another original's digest (``gateway.derive``,
    ``gateway.render.thumbnail``: the deleted version's pixels, which nothing would ever remove otherwise). One being
    uploaded keeps everything."""
    if sop not in live:
        return True
    sha256 = live[sop]
    digest = _DERIVED_DIGEST.search(key)
    return sha256 is not None and digest is not None and digest.group(1) != sha256[:16]


def _names(targets: list[Target], record: dict[str, Any]) -> bool:
    """Whether a deletion record removed one of ``targets`` or something inside it."""
    return any(
        record["study_uid"] == target.study
        and target.series in (None, record["series_uid"])
        and target.sop in (None, record["sop_uid"])
        for target in targets
    )


def _removed(record: dict[str, Any]) -> Removed:
    """An unfinished deletion record as what its DELETE removed (series and instances from its storage keys)."""
    keys = tuple(record["keys"])
    found = [instance_of(key) for key in keys]
    return Removed(
        id=record["id"],
        target=Target(record["study_uid"], record["series_uid"], record["sop_uid"]),
        sop_uids=tuple(sorted({f[1] for f in found if f is not None})),
        series_uids=tuple(sorted({key.split("/series/", 1)[1].split("/", 1)[0] for key in keys if "/series/" in key})),
        keys=keys,
    )


def summary(removed: list[Removed]) -> dict[str, Any]:
    """What a deletion removed, by UID and count (never a PHI value). ``series``: the series it took instances from,
    each once (an erasure or a retention run removes several instances of one series as separate targets)."""
    return {
        "studies": sorted({item.target.study for item in removed}),
        "series": len({series for item in removed for series in item.series_uids}),
        "instances": sum(len(item.sop_uids) for item in removed),
        "deletions": [
            {
                "id": item.id,
                "level": item.target.level,
                "study_uid": item.target.study,
                "series_uid": item.target.series,
                "sop_uid": item.target.sop,
                "instances": len(item.sop_uids),
            }
            for item in removed
        ],
    }


def check_reason(reason: str) -> str:
    """A short, printable reason (it is stored and listed; a person should never type PHI into it)."""
    from gateway.errors import BadRequest

    if len(reason) > MAX_REASON or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in reason):  # C0, DEL, C1
        raise BadRequest(f"reason must be printable text of at most {MAX_REASON} characters")
    return reason
