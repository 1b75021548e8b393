"""Repair after a crash between "object stored" and "catalog committed" (`docs/design.md` §5).

An object under ``studies/`` without a catalog row is invisible (reads go through the catalog). Reconcile finds
such orphans; with ``repair`` it indexes each one and registers it (the object was written after the hooks ran,
so it is what the policy allowed), or deletes it when it is not readable DICOM. It also lists upload reservations
whose owner is gone (a worker killed mid-upload; see ``gateway.catalog.admin``) and, with ``repair``, clears them.

A deletion a crash interrupted (``gateway.lifecycle``: catalog rows hidden, objects not yet removed) is reported
and, with ``repair``, finished first: its objects are never taken for orphans and registered again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from gateway.catalog import Catalog
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
    pending = catalog.unfinished_deletions()
    finished = deleter.finish_unfinished() if repair else []
    being_deleted = {key for record in catalog.unfinished_deletions() for key in record["keys"]}
    known = catalog.all_instance_keys()
    orphans = [
        key
        for key in storage.list("studies/")
        if key.endswith(".dcm") and key not in known and key not in being_deleted
    ]
    repaired: list[str] = []
    deleted: list[str] = []
    conflicts: list[dict[str, str]] = []
    if repair:
        spool = Path(settings.tmp_dir or tempfile.gettempdir())
        sweep_spool(spool)  # what a repair killed before this one left: copies of stored objects
        for key in orphans:
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
                    deleted.append(key)
                    continue
                if indexed.ids.key != key:
                    storage.delete(key)  # not where its UIDs say: never served, never registered
                    deleted.append(key)
                    continue
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
                    catalog.register_instance(record)
                except Conflict as error:  # e.g. its series belongs to another study: leave it for a person
                    conflicts.append({"key": key, "reason": error.code})
                    continue
                repaired.append(key)
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
