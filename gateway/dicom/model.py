"""What ingest computes once per instance and the read path uses forever after (`docs/design.md` §3)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    # ``gateway.catalog.records.search_values(metadata)``, once computed (by ingest's pool process, like the text)
    metadata_search: dict[str, Any] | None = None

    def metadata_json(self) -> str:
        """``metadata`` as the catalog stores it: compact JSON, keys in the order the index built them."""
        if not self.metadata_text:
            self.metadata_text = json.dumps(self.metadata, separators=(",", ":"))
        return self.metadata_text

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a pool process's answer to the request's process) without ``metadata`` once its text is made:
        the request's process stores the text, and rebuilding the dict's few hundred objects cost it CPU under
        its one GIL on every upload. The dict is parsed back from the text if anything reads it."""
        state = dict(self.__dict__)
        if self.metadata_text:
            del state["metadata"]
        return state

    if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any attribute of the class

        def __getattr__(self, name: str) -> Any:
            # reached only for an attribute the instance lacks: ``metadata`` of an unpickled instance
            if name == "metadata" and "metadata_text" in self.__dict__:
                self.__dict__["metadata"] = json.loads(self.metadata_text)
                return self.__dict__["metadata"]
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
