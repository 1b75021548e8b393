"""Repair after a crash between "object stored" and "catalog committed" (`docs/design.md` §5).

An object under ``studies/`` without a catalog row is invisible (reads go through the catalog). Reconcile finds
such orphans; with ``repair`` it indexes each one and registers it (the object was written after the hooks ran,
so it is what the policy allowed), or deletes it when it is not readable DICOM. It also lists upload reservations
whose owner is gone (a worker killed mid-upload; see ``gateway.catalog.admin``) and, with ``repair``, clears them.

A deletion a crash interrupted (``gateway.lifecycle``: catalog rows hidden, objects not yet removed) is reported
and, with ``repair``, finished first: its objects are never taken for orphans and registered again.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from gateway.catalog import Catalog
from gateway.catalog.admin import Reservation
from gateway.catalog.deletions import sop_of_key
from gateway.catalog.records import InstanceRecord
from gateway.config import Settings
from gateway.dicom.index import index_file
from gateway.errors import Conflict, DicomError
from gateway.ingest import sha256_of
from gateway.lifecycle import Deleter
from gateway.spool import spool_folder, spool_unavailable, sweep_spool
from gateway.storage import Storage, open_storage


def reconcile(settings: Settings, *, repair: bool) -> dict[str, Any]:
    storage = open_storage(settings.storage_url)
    catalog = Catalog(settings.database_url)
    try:
        # `db upgrade` migrates, as for the workers: a misspelled catalog URL was made, migrated and then filled
        # with every stored instance as an "orphan"
        catalog.require_current_schema(then="before reconciling")
        return _reconcile(settings, storage, catalog, repair=repair)
    finally:
        catalog.close()


def _reconcile(settings: Settings, storage: Storage, catalog: Catalog, *, repair: bool) -> dict[str, Any]:
    deleter = Deleter(catalog, storage, settings.delete_settle)
    pending = deleter.interrupted()  # a DELETE waiting out its settle is under way, not interrupted
    finished = deleter.finish_unfinished() if repair else []
    being_deleted = {key for record in catalog.unfinished_deletions() for key in record["keys"]}
    known = catalog.all_instance_keys()
    orphans = [
        key
        for key in storage.list("studies/")
        if key.endswith(".dcm") and key not in known and key not in being_deleted
    ]
    # an upload's object is stored before its row is committed: while the upload holds the instance's reservation
    # it is that upload's to register (with its tenant and audit record), no orphan
    held = catalog.in_flight(sorted({sop for key in orphans if (sop := sop_of_key(key))}))
    orphans = [key for key in orphans if sop_of_key(key) not in held]
    repaired: list[str] = []
    deleted: list[str] = []
    conflicts: list[dict[str, str]] = []
    if repair:
        spool = Path(settings.tmp_dir or tempfile.gettempdir())
        sweep_spool(spool)  # what a repair killed before this one left: copies of stored objects
        for key in list(orphans):
            # held while it is repaired, as an upload holds it: an upload starting meanwhile waits for it
            sop = sop_of_key(key)
            [claim] = catalog.reserve_many([sop]) if sop else [None]
            if sop and (claim is None or claim.stored is not None):  # an upload took it, or has registered it
                if claim is not None:
                    catalog.release(claim)
                orphans.remove(key)
                continue
            outcome = ""
            try:
                # its lease beaten while the repair runs, as an upload's is: a large object (a whole-slide image
                # downloaded from S3, then indexed) could outlast the lease's 60 s, and an upload of the instance
                # then took it over and stored its own bytes while this one registered the orphan's
                with catalog.holding(claim) if claim is not None else contextlib.nullcontext():
                    outcome = _repair(settings, storage, catalog, key, spool, claim)
            finally:
                if claim is not None and outcome != "registered":  # a registration ended it
                    catalog.release(claim)
            if outcome == "registered":
                repaired.append(key)
            elif outcome == "deleted":
                deleted.append(key)
            else:
                conflicts.append({"key": key, "reason": outcome})
    stale = catalog.stale_reservations(clear=repair)
    return {
        "orphans": orphans,
        "registered": repaired,
        "deleted": deleted,
        "conflicts": conflicts,
        "stale_reservations": stale,
        "unfinished_deletions": [
            {"id": r["id"], "study_uid": r["study_uid"], "level": r["level"], "created_at": r["created_at"]}
            for r in pending
        ],
        "finished_deletions": finished,
    }


def _repair(
    settings: Settings, storage: Storage, catalog: Catalog, key: str, spool: Path, claim: Reservation | None
) -> str:
    """Register the orphan at ``key`` under ``claim`` (its instance's reservation), or delete it when it is no
    readable DICOM or not where its UIDs say. Returns "registered", "deleted" or the conflict's code."""
    with spool_folder(spool, "reconcile") as tmp:
        local = tmp / "orphan.dcm"
        try:
            storage.download(key, local)
        except OSError as exc:  # the folder full or gone: one line (the CLI's), not a traceback
            raise spool_unavailable(exc) from None
        try:
            indexed = index_file(local, bulkdata_threshold=settings.bulkdata_threshold)
        except DicomError:
            storage.delete(key)
            return "deleted"
        if indexed.ids.key != key:
            storage.delete(key)  # not where its UIDs say: never served, never registered
            return "deleted"
        head = storage.head(key)
        assert head is not None
        record = InstanceRecord.from_indexed(
            indexed,
            storage_key=key,
            size=head.size,
            sha256=sha256_of(local),
            etag=head.etag,
            replace=False,
        )
        try:
            catalog.register_instance(record, reservation=claim)
        except Conflict as error:  # e.g. its series belongs to another study: leave it for a person
            return error.code
        return "registered"
