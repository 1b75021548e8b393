"""What ingest computes once per instance and the read path uses forever after (`docs/design.md` §3)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.uids import InstanceId

# A byte range inside the stored P10 object: (offset, length).
Range = tuple[int, int]


@dataclass(frozen=True)
class BulkRange:
    """One bulkdata element. ``path`` is the BulkDataURI suffix after ``bulkdata/``: ``7FE00010`` at the top
    level, ``00540016/0/00181072``-style (tag/item/tag) inside sequences."""

    path: str
    vr: str
    offset: int
    length: int


@dataclass
class IndexedInstance:
    """Everything about one instance that the catalog stores."""

    ids: InstanceId
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    number_of_frames: int
    # gateway.dicom.frames.FrameIndex, packed with .pack(); None when frames cannot be served as byte ranges
    frame_index: bytes | None
    # media type of one frame when served as stored (application/octet-stream, image/jpeg, image/jp2, ...)
    frame_media_type: str
    bulkdata: list[BulkRange]
    # DICOM JSON (PS3.18 F.2) of the instance, BulkDataURIs relative to the instance: "bulkdata/7FE00010"
    metadata: dict[str, Any]
    # QIDO return attributes (DICOM JSON subsets) at each level
    study_attrs: dict[str, Any] = field(default_factory=dict)
    series_attrs: dict[str, Any] = field(default_factory=dict)
    instance_attrs: dict[str, Any] = field(default_factory=dict)
    # flat values for catalog columns (gateway.dicom.qido_attrs.searchable; keys in SEARCHABLE_KEYS)
    searchable: dict[str, str | int | None] = field(default_factory=dict)
    # ``metadata`` as the catalog stores it (``metadata_json``), once computed: ingest's pool process serialises
    # it, so the request's process (whose one GIL every upload of the worker shares) does not
    metadata_text: str = ""

    def metadata_json(self) -> str:
        """``metadata`` as the catalog stores it: compact JSON, keys in the order the index built them."""
        if not self.metadata_text:
            self.metadata_text = json.dumps(self.metadata, separators=(",", ":"))
        return self.metadata_text
