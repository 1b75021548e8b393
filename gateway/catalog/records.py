"""What goes into the catalog (``InstanceRecord``) and what comes out (``InstanceRow``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.dicom.model import BulkRange, IndexedInstance
from gateway.numbers import int32_or_none

# Searchable flat values: key -> (DICOM JSON tag, kind). ``kind`` says how to flatten the DICOM JSON value.
SEARCH_FIELDS: dict[str, tuple[str, str]] = {
    "patient_id": ("00100020", "str"),
    "patient_name": ("00100010", "pn"),
    "patient_birth_date": ("00100030", "str"),
    "patient_sex": ("00100040", "str"),
    "study_date": ("00080020", "str"),
    "study_time": ("00080030", "str"),
    "accession_number": ("00080050", "str"),
    "study_id": ("00200010", "str"),
    "study_description": ("00081030", "str"),
    "referring_physician_name": ("00080090", "pn"),
    "modality": ("00080060", "str"),
    "series_number": ("00200011", "int"),
    "series_description": ("0008103E", "str"),
    "instance_number": ("00200013", "int"),
}


def _first(element: Any) -> Any:
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def search_values(metadata: dict[str, Any]) -> dict[str, Any]:
    """Flatten the searchable attributes out of an instance's DICOM JSON. Missing or empty values become None;
    PN values use their Alphabetic group; IS values become int (None when not an integer)."""
    out: dict[str, Any] = {}
    for name, (tag, kind) in SEARCH_FIELDS.items():
        value = _first(metadata.get(tag))
        if kind == "pn":
            value = value.get("Alphabetic") if isinstance(value, dict) else value
        if kind == "int":
            value = int32_or_none(value)
        elif value is not None:
            value = str(value).strip() or None
        out[name] = value
    return out


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
        search = getattr(instance, "metadata_search", None)  # computed with the metadata (ingest's pool)
        flat = dict(search) if search is not None else search_values(instance.metadata)
        # ingest's own flattening (gateway.dicom.qido_attrs.searchable) wins where it has a value
        indexed = getattr(instance, "searchable", None) or {}
        flat.update({name: indexed[name] for name in SEARCH_FIELDS if indexed.get(name) is not None})
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
