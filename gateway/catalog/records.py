"""What goes into the catalog (``InstanceRecord``) and what comes out (``InstanceRow``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.dicom.model import BulkRange, IndexedInstance

# The searchable catalog columns an instance fills; their values are flattened from its DICOM JSON by
# ``gateway.dicom.qido_attrs.searchable`` (ingest computes them with the metadata, in its pool process).
STUDY_FIELDS = (
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
SERIES_FIELDS = (
    "modality",
    "series_number",
    "series_description",
    "performed_procedure_step_start_date",
    "performed_procedure_step_start_time",
)
SEARCH_FIELDS = (*STUDY_FIELDS, *SERIES_FIELDS, "instance_number")


def search_values(metadata: dict[str, Any], flat: dict[str, Any] | None = None) -> dict[str, Any]:
    """The searchable values of an instance's DICOM JSON (keys of ``SEARCH_FIELDS``). Missing or empty values
    become None; PN values use their Alphabetic group; IS values become int (None when not an integer). ``flat``:
    the metadata's ``gateway.dicom.qido_attrs.searchable``, when ingest already made it (in its pool process);
    ``metadata`` is then not read."""
    if not flat:
        # imported here: qido_attrs loads pydicom's dictionary, which a process that only parses uploads (the
        # spool, gateway.dicomweb.multipart, imports this package) must not carry (tests/unit/test_multipart.py)
        from gateway.dicom.qido_attrs import searchable

        flat = searchable(metadata)
    return {name: flat.get(name) for name in SEARCH_FIELDS}


@dataclass
class InstanceRecord:
    """One stored instance to register: the ingest index plus where and what the stored object is.

    ``values`` holds the searchable flat values (keys of ``SEARCH_FIELDS``); ``from_indexed`` fills it from
    the instance's DICOM JSON when not given. ``replace=True`` lets a different object take over a known SOP
    UID."""

    instance: IndexedInstance
    storage_key: str
    size: int
    sha256: str
    etag: str
    values: dict[str, Any] = field(default_factory=dict)
    replace: bool = False
    tenant: str | None = None
    destination: str | None = None

    @classmethod
    def from_indexed(
        cls,
        instance: IndexedInstance,
        *,
        storage_key: str,
        size: int,
        sha256: str,
        etag: str,
        values: dict[str, Any] | None = None,
        replace: bool = False,
        tenant: str | None = None,
        destination: str | None = None,
    ) -> InstanceRecord:
        # the pool made the flat values: ``instance.metadata`` is not touched, since reading it would parse the
        # whole DICOM JSON back from its text in the request's process (IndexedInstance.__getstate__)
        flat = search_values({}, instance.searchable) if instance.searchable else search_values(instance.metadata)
        if values:
            flat.update(values)
        return cls(instance, storage_key, size, sha256, etag, flat, replace, tenant, destination)


@dataclass(frozen=True)
class InstanceRow:
    """A stored instance as the read path sees it. ``frame_index`` (packed bytes), ``metadata`` and
    ``bulkdata`` (JSON text) are returned as stored, unparsed: the frame path needs only the index and the
    key. ``metadata`` is None when the row was loaded with ``with_metadata=False``."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    number_of_frames: int
    storage_key: str
    size: int
    sha256: str
    etag: str
    frame_index: bytes | None
    frame_media_type: str
    bulkdata: str
    metadata: str | None
    attrs: str
    thumbnail_key: str | None
    created_at: int
    tenant: str | None = None
    destination: str | None = None
    derivative_syntax: str | None = None
    derivative_key: str | None = None
    derivative_index: bytes | None = None

    def bulk_ranges(self) -> list[BulkRange]:
        return [BulkRange(path, vr, offset, length) for path, vr, offset, length in json.loads(self.bulkdata)]

    def bulk_range(self, path: str) -> BulkRange | None:
        """The bulkdata element at ``path`` (``7FE00010``, ``00540016/0/00181072``), or None."""
        for item in self.bulk_ranges():
            if item.path == path:
                return item
        return None

    def metadata_json(self) -> dict[str, Any]:
        if self.metadata is None:
            raise ValueError("row was loaded without metadata")
        result: dict[str, Any] = json.loads(self.metadata)
        return result
