"""What ingest computes once per instance and the read path uses forever after (`docs/design.md` §3)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway import fastjson
from gateway.uids import InstanceId

# A byte range inside the stored P10 object: (offset, length).
Range = tuple[int, int]
# The most pixels of one frame the gateway decodes (8192 x 8192: a mammogram or a 50-megapixel photograph is below
# it), to render it or derive from it. Decoding takes some 10 bytes a pixel, and a compressed frame can declare far
# more than its file holds: a 4.5 MB RLE file of a 12000 x 12000 frame held 1.5 GB of a worker
MAX_DECODED_PIXELS = 2**26


def first_value(metadata: Mapping[str, Any], tag: str, default: Any) -> Any:
    """The first value of a DICOM JSON element (PS3.18 F.2), ``default`` when it is absent or has none."""
    values = (metadata.get(tag) or {}).get("Value") or [default]
    return values[0] if values[0] is not None else default


class PixelFormat(NamedTuple):
    """How one pixel is stored (Image Pixel module, PS3.3 C.7.6.3): what decides whether an instance can have a
    lossless derivative (``gateway.derive``), known from the metadata without reading the pixels."""

    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    pixel_representation: int

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> PixelFormat | None:
        """The format the metadata describes (absent elements as pydicom's defaults the worker reads), or None
        when a value is no number."""
        try:
            return cls(
                int(first_value(metadata, "00280002", 1)),
                str(first_value(metadata, "00280004", "")),
                int(first_value(metadata, "00280100", 0)),
                int(first_value(metadata, "00280103", 0)),
            )
        except (TypeError, ValueError):
            return None


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
    # ``study_attrs`` ... as the catalog stores them (``attrs_json``), once computed: keyed "study", "series",
    # "instance"
    attrs_text: dict[str, str] = field(default_factory=dict)
    # made in ingest's pool process with the metadata, so the request's process decides whether to queue a
    # derivative without parsing the metadata again; None: not known
    pixel_format: PixelFormat | None = None

    def metadata_json(self) -> str:
        """``metadata`` as the catalog stores it: compact UTF-8 JSON (orjson, ``gateway.fastjson``), keys in the
        order the index built them. A DS that is no finite number (an overflow) is ``null``: RFC 8259 JSON has no
        NaN or Infinity, which ``JSON.parse`` refuses."""
        if not self.metadata_text:
            self.metadata_text = fastjson.dumps(self.metadata).decode()
        return self.metadata_text

    def attrs_json(self, level: str) -> str:
        """The QIDO attributes of ``level`` ("study", "series", "instance") as the catalog stores them."""
        text = self.attrs_text.get(level)
        if text is None:
            text = self.attrs_text[level] = fastjson.dumps(getattr(self, f"{level}_attrs")).decode()
        return text

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a pool process's answer to the request's process) without the dicts whose JSON text is made
        (the metadata, the QIDO attributes): the request's process stores the texts, and rebuilding the dicts'
        few hundred objects cost it CPU under its one GIL on every upload. A dict is parsed back from its text
        if anything reads it."""
        state = dict(self.__dict__)
        if self.metadata_text:
            del state["metadata"]
        for level in self.attrs_text:
            state.pop(f"{level}_attrs", None)
        return state

    if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any attribute of the class

        def __getattr__(self, name: str) -> Any:
            # reached only for an attribute the instance lacks: a dict left out of the pickle (__getstate__)
            texts = self.__dict__.get("attrs_text", {})
            if name == "metadata" and "metadata_text" in self.__dict__:
                text = self.metadata_text
            elif name.endswith("_attrs") and name[: -len("_attrs")] in texts:
                text = texts[name[: -len("_attrs")]]
            else:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            self.__dict__[name] = fastjson.loads(text)
            return self.__dict__[name]
