"""Index one P10 file at ingest: identity, frame and bulkdata byte ranges, DICOM JSON, QIDO attributes.

Everything the read path needs is computed here once (`docs/design.md` §3). Offsets are absolute offsets in
the stored P10 object, i.e. in the file as given (the gateway stores the bytes it indexed, unchanged).

Big-endian and deflated files are parsed (metadata, QIDO attributes) but their frames and bulkdata are not
byte ranges of the object as a client wants them: ``frame_index`` is None and ``bulkdata`` is empty; their
metadata still names BulkDataURIs, answered by converting the values (``gateway.dicom.converted``, docs/index.md).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.tag import BaseTag, Tag

from gateway.dicom import metadata as meta_json
from gateway.dicom import qido_attrs
from gateway.dicom.frames import (
    FrameIndex,
    encapsulated_index,
    native_frame_length,
    native_index,
    stream_index,
    unpadded_fragments,
)
from gateway.dicom.model import BulkRange, IndexedInstance, PixelFormat
from gateway.dicom.walker import (
    EXTENDED_OFFSET_TABLE,
    EXTENDED_OFFSET_TABLE_LENGTHS,
    KNOWN_VRS,
    LONG_VRS,
    PIXEL_TAGS,
    Element,
    Walker,
    iter_bulk,
    quiet_validation,
)
from gateway.errors import DicomError
from gateway.numbers import INT32_MAX, int32_or_none
from gateway.uids import InstanceId, is_uid

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
# each frame's native little-endian pixels in one fragment (PS3.5 A.4.11): the bytes of an Explicit VR Little Endian
# frame, which is how its frames are served (gateway.dicomweb.wado.bulk_syntax) and rendered
ENCAPSULATED_UNCOMPRESSED_LE = "1.2.840.10008.1.2.1.98"
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, DEFLATED_LE, EXPLICIT_VR_BE})
# Private transfer syntaxes whose data set is not explicit VR little endian, as every other syntax's is (PS3.5 A.4):
# read as that, each was refused for "an invalid VR ... the transfer syntax says explicit VR", which it does not
UNSUPPORTED_PRIVATE_SYNTAXES = {
    # DCMTK's `dcmconv +tg`, GE scanners of the 1990s: implicit VR little endian, pixel data big endian
    "1.2.840.113619.5.2": "GE's private implicit VR little endian with big endian pixel data",
}

# PS3.18 Table 8.7.3-5 (media types of frames and bulkdata by transfer syntax).
_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    # JPEG XL (Supplement 232): Lossless, JPEG Recompression, JPEG XL
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.100.1": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.101.1": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.102.1": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.103.1": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.104.1": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.105.1": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.106.1": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}

_PREAMBLE = 128
_META_LIMIT = 1 << 16  # a file meta element longer than this is not a file meta element
_BUFFER = 1 << 16
INFLATE_LIMIT = 256 << 20  # bytes a deflated data set may inflate to
SPECIFIC_CHARACTER_SET = 0x00080005
_NUMBER_OF_FRAMES = 0x00280008
_PYDICOM_DEFER = 1024  # the pydicom check reads values up to this size; larger ones stay on disk


def frame_media_type(transfer_syntax_uid: str) -> str:
    """Media type of one frame served as stored."""
    return _MEDIA_TYPES.get(transfer_syntax_uid, "application/octet-stream")


def is_video(transfer_syntax_uid: str) -> bool:
    return frame_media_type(transfer_syntax_uid).startswith("video/")


def index_file(
    path: Path, *, bulkdata_threshold: int = 1024, inflate_limit: int = INFLATE_LIMIT
) -> IndexedInstance:
    """Index a Part 10 file without loading its pixel data (``read_instance`` without the dataset)."""
    return read_instance(path, bulkdata_threshold=bulkdata_threshold, inflate_limit=inflate_limit)[0]


def read_instance(
    path: Path, *, bulkdata_threshold: int = 1024, inflate_limit: int = INFLATE_LIMIT
) -> tuple[IndexedInstance, Dataset]:
    """Index a Part 10 file without loading its pixel data, and return the one pydicom dataset every later step
    of ingest reads (the PHI scanner too: one parse per file, `docs/design.md` §3). Values over 1 KB stay on
    disk until read. ``DicomError`` for anything not servable as DICOM: no ``DICM`` prefix or file meta,
    truncation (anywhere, including pixel data fragments), bad structure, missing or invalid Study/Series/SOP
    Instance UID or SOP Class UID, a deflated data set inflating beyond ``inflate_limit`` bytes. ``OSError`` if
    the file cannot be opened."""
    with open(path, "rb", buffering=_BUFFER) as fp:
        size = os.fstat(fp.fileno()).st_size
        ts = read_file_meta(fp, size)
        if ts in UNSUPPORTED_PRIVATE_SYNTAXES:
            raise DicomError(
                f"the Transfer Syntax UID (0002,0010) {ts} is {UNSUPPORTED_PRIVATE_SYNTAXES[ts]}, a private "
                "transfer syntax this gateway does not store: convert the file to a standard one (dcmconv +ti)"
            )
        ranges_valid = ts not in (DEFLATED_LE, EXPLICIT_VR_BE)
        if ts == DEFLATED_LE:
            data = inflate(fp, inflate_limit)
            walker = Walker(
                io.BytesIO(data), len(data), little=True, implicit=False, bulk_threshold=bulkdata_threshold
            )
        else:
            walker = Walker(
                fp,
                size,
                little=ts != EXPLICIT_VR_BE,
                implicit=ts == IMPLICIT_VR_LE,
                bulk_threshold=bulkdata_threshold,
            )
        elements = walker.walk()
        _check_pixel_encoding(ts, elements)
        with quiet_validation():
            ds = _read_pydicom(fp, ts, elements)
            uids = _identity(ds)
            _check_pixel_description(ds, elements)
            number_of_frames = _number_of_frames(ds, elements)
            frame_index = _frame_index(fp, ts, ds, elements, number_of_frames) if ranges_valid else None
            metadata = meta_json.build_metadata(ds, elements, little_endian=ts != EXPLICIT_VR_BE)
            instance_number = int32_or_none(_get(ds, "InstanceNumber"))  # a catalog INTEGER column

    bulkdata = (
        [BulkRange(path=p, vr=el.vr, offset=el.offset, length=el.length) for p, el in iter_bulk(elements)]
        if ranges_valid
        else []
    )
    indexed = IndexedInstance(
        ids=InstanceId(uids[0], uids[1], uids[2]),
        sop_class_uid=uids[3],
        transfer_syntax_uid=ts,
        instance_number=instance_number,
        number_of_frames=number_of_frames,
        frame_index=frame_index.pack() if frame_index is not None else None,
        frame_media_type=frame_media_type(ts),
        bulkdata=bulkdata,
        metadata=metadata,
        study_attrs=qido_attrs.study_attrs(metadata),
        series_attrs=qido_attrs.series_attrs(metadata),
        instance_attrs=qido_attrs.instance_attrs(metadata, ts),
        searchable=qido_attrs.searchable(metadata),
        pixel_format=PixelFormat.of(metadata),
    )
    return indexed, ds


def read_file_meta(fp: BinaryIO, size: int) -> str:
    """Check the preamble and ``DICM`` prefix, walk the group 0002 elements (explicit VR little endian) and
    leave ``fp`` at the first data set element. Returns the Transfer Syntax UID."""
    head = fp.read(_PREAMBLE + 4)
    if not head:  # a part a client sent with nothing in it (a file it failed to read): not "no DICM prefix"
        raise DicomError("not a DICOM Part 10 file (it is empty: 0 bytes)")
    if len(head) < _PREAMBLE + 4 or head[_PREAMBLE:] != b"DICM":
        raise DicomError("not a DICOM Part 10 file (no 'DICM' prefix after the 128-byte preamble)")
    ts: str | None = None
    pos = _PREAMBLE + 4
    declared: tuple[int, int] | None = None  # (0002,0000)'s value and where the elements it counts begin
    while True:
        hdr = fp.read(8)
        if len(hdr) < 8:
            if not hdr and ts is not None:
                break  # a file with file meta and an empty data set: caught later as missing UIDs
            raise DicomError("file is truncated inside the file meta information")
        group, elem = struct.unpack_from("<HH", hdr)
        if group != 0x0002:
            fp.seek(pos)
            break
        vr = hdr[4:6].decode("latin-1")
        if vr in LONG_VRS:
            extra = fp.read(4)
            if len(extra) < 4:
                raise DicomError("file is truncated inside the file meta information")
            length = struct.unpack("<I", extra)[0]
            pos += 12
        elif vr in KNOWN_VRS:
            length = struct.unpack_from("<H", hdr, 6)[0]
            pos += 8
        elif vr.isalpha() and vr.isupper():  # VR-shaped but not a VR (e.g. "UA"): pydicom cannot read it
            raise DicomError(f"file meta element (0002,{elem:04X}) has an invalid VR")
        else:
            raise DicomError("the file meta information is not explicit VR little endian")
        if length > _META_LIMIT or pos + length > size:
            raise DicomError("file meta element is truncated or too long")
        value = fp.read(length)
        pos += length
        if elem == 0x0010:
            ts = value.rstrip(b"\x00 ").decode("ascii", "replace")
        elif elem == 0x0000 and length == 4:
            declared = (struct.unpack("<I", value)[0], pos)
    if declared is not None and declared[0] != pos - declared[1]:
        # PS3.10 7.1: the group length counts the meta elements after it. Readers disagree on a wrong one:
        # pydicom ignores it, DCMTK moves elements past it into the data set or gives up on the file.
        raise DicomError(
            f"the File Meta Information Group Length (0002,0000) is {declared[0]} bytes, but the file meta "
            f"elements after it take {pos - declared[1]}"
        )
    if ts is None:
        raise DicomError("the file meta information has no Transfer Syntax UID (0002,0010)")
    if not is_uid(ts):
        raise DicomError("the Transfer Syntax UID (0002,0010) is not a valid UID")
    return ts


def _read_pydicom(fp: BinaryIO, ts: str, elements: list[Element]) -> Dataset:
    """Every stored instance must be readable by pydicom (what most clients read with), not only by the walker:
    pydicom reads the file (values over ``_PYDICOM_DEFER`` bytes left on disk), decodes the file meta, and must
    find the same elements as the walker at every level. Encapsulated Pixel Data is the one part pydicom would
    scan item by item (~0.1 s for 32,000 frames): the walker has already checked its structure, so pydicom
    stops before it and reads what follows it separately (the returned dataset has no Pixel Data then). Call
    inside ``quiet_validation()``."""
    _check_character_sets(elements)
    pixel = _pixel_element(elements)
    split = pixel is not None and pixel.fragments is not None and ts != DEFLATED_LE
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, defer_size=_PYDICOM_DEFER, stop_before_pixels=split)
        tags: set[int] = set(ds.keys())
        if split:
            assert pixel is not None
            fp.seek(pixel.offset + pixel.length + 8)  # past the sequence delimiter item
            implicit, little = ts == IMPLICIT_VR_LE, ts != EXPLICIT_VR_BE
            tail = read_dataset(fp, implicit, little, defer_size=_PYDICOM_DEFER)
            for tag in tail.keys():
                ds[tag] = tail.get_item(tag)
            tags |= set(tail.keys())
            tags.add(pixel.tag)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; its messages may quote values
        raise DicomError(f"pydicom cannot read the file ({type(exc).__name__})") from None
    for tag in ds.file_meta.keys():
        try:
            ds.file_meta[tag].value  # noqa: B018 - decoding is the check
        except Exception:  # noqa: BLE001
            raise DicomError(f"file meta element {_tag_name(tag)} cannot be decoded by pydicom") from None
    if tags != _walked_tags(elements) or not _same_items(ds, elements):
        raise DicomError("pydicom reads other elements than the index found (ambiguous encoding)")
    return ds


def _check_character_sets(elements: list[Element]) -> None:
    """``DicomError`` naming the element when a Specific Character Set (at any level) names no usable character
    set: pydicom would fail on it with a bare ValueError (e.g. a NUL inside a term breaks the codec lookup)."""
    for el in elements:
        if el.tag == SPECIFIC_CHARACTER_SET and el.value is not None:
            terms = el.value.decode("latin-1").rstrip("\0").split("\\")
            try:
                convert_encodings([term.strip(" ") for term in terms])  # as pydicom reads a CS value
            except (ValueError, LookupError):
                raise DicomError("Specific Character Set (0008,0005) names no usable character set") from None
        for item in el.items or []:
            _check_character_sets(item)


def _walked_tags(elements: list[Element]) -> set[int]:
    """The tags of one walked data set. ``DicomError`` for a tag written twice (PS3.5 7.1: at most once per data
    set): readers disagree on which one counts (pydicom keeps the last, DCMTK the first), so a viewer could show
    a value the PHI scan never saw."""
    tags: set[int] = set()
    for el in elements:
        if el.tag in tags:
            raise DicomError(f"element {_tag_name(el.tag)} appears twice in one data set")
        tags.add(el.tag)
    return tags


def _same_items(ds: Dataset, elements: list[Element]) -> bool:
    """Whether pydicom's sequences hold the walker's items, element for element (the top level is compared by
    the caller)."""
    for el in elements:
        if el.items is None:
            continue
        try:
            items = ds[el.tag].value
        except Exception:  # noqa: BLE001 - pydicom raises many types for garbage values
            return False
        if not isinstance(items, PydicomSequence) or len(items) != len(el.items):
            return False
        for item_ds, item in zip(items, el.items, strict=True):
            if set(item_ds.keys()) != _walked_tags(item) or not _same_items(item_ds, item):
                return False
    return True


def _tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def inflate(fp: BinaryIO, limit: int) -> bytes:
    """Deflated data set (PS3.5 A.5): raw deflate, no zlib header. Inflated in memory, capped so a deflate
    bomb cannot exhaust it; such files are small in practice (structured reports, not images)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(fp.read(), limit)
    except zlib.error as exc:
        raise DicomError("the deflated data set cannot be inflated") from exc
    if inflater.unconsumed_tail:
        raise DicomError(f"the deflated data set inflates to more than {limit} bytes")
    return data


_IDENTITY = (
    ("StudyInstanceUID", "Study Instance UID (0020,000D)"),
    ("SeriesInstanceUID", "Series Instance UID (0020,000E)"),
    ("SOPInstanceUID", "SOP Instance UID (0008,0018)"),
    ("SOPClassUID", "SOP Class UID (0008,0016)"),
)


def _identity(ds: Dataset) -> tuple[str, str, str, str]:
    out = []
    for keyword, name in _IDENTITY:
        try:
            value = ds.get(keyword)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for garbage values
            raise DicomError(f"{name} cannot be decoded") from exc
        if value is None or value == "":
            raise DicomError(f"{name} is missing")
        text = str(value)
        if not is_uid(text):
            raise DicomError(f"{name} is not a valid DICOM UID")
        out.append(text)
    return out[0], out[1], out[2], out[3]


def named_uids(path: Path) -> tuple[InstanceId | None, str | None]:
    """The UIDs a file ingest refused names for itself, as far as they can be read: its SOP Instance, SOP Class,
    Study and Series UIDs from the data set (read up to where it breaks), the first two else from the file meta
    (Media Storage SOP Instance / Class UID); "" for a Study or Series UID not read. So a STOW failure item says
    which instance failed (PS3.18 10.5.3: Referenced SOP Class and Instance UID) even for a truncated file.
    ``(None, class or None)`` without a SOP Instance UID; never raises."""
    found: dict[str, str] = {}
    wanted = {
        "SOPClassUID": "sop_class",
        "SOPInstanceUID": "sop",
        "StudyInstanceUID": "study",
        "SeriesInstanceUID": "series",
    }
    with quiet_validation():
        meta: Dataset
        try:
            meta = pydicom.filereader.read_file_meta_info(path)
        except Exception:  # noqa: BLE001 - a file that broke the index may break pydicom in any way
            meta = Dataset()
        for keyword, name in (("MediaStorageSOPClassUID", "sop_class"), ("MediaStorageSOPInstanceUID", "sop")):
            if is_uid(value := str(_get(meta, keyword) or "").strip()):
                found[name] = value
        ds: Dataset
        try:
            ds = _naming_elements(path, str(_get(meta, "TransferSyntaxUID") or "").strip(), list(wanted))
        except Exception:  # noqa: BLE001 - as above: then the file meta's UIDs are all there is
            ds = Dataset()
        for keyword, name in wanted.items():
            if is_uid(value := str(_get(ds, keyword) or "").strip()):
                found[name] = value
    if "sop" not in found:
        return None, found.get("sop_class")
    return InstanceId(found.get("study", ""), found.get("series", ""), found["sop"]), found.get("sop_class")


_NAMING_LAST_TAG = 0x0020000E  # Series Instance UID: the last of the UIDs a refused file is named by
_NAMING_INFLATE = 1 << 20  # inflated bytes of a deflated data set searched for them
_NAMING_BARE = 64 << 10  # bytes of a data set sent without preamble and file meta searched for them


def past_naming_uids(tag: int, vr: str | None, length: int) -> bool:
    """pydicom's ``stop_when`` for reading a file's naming UIDs (SOP Class and Instance, Study, Series) alone."""
    # group 0000 (zero bytes read as elements) and 0002 are never data set elements: no UID follows them
    return tag > _NAMING_LAST_TAG or tag < 0x00040000


def _naming_elements(path: Path, ts: str, keywords: list[str]) -> Dataset:
    """The data set of a refused file up to its Series Instance UID, never further: a 200 KB deflated upload
    inflates to 200 MB of zero elements, which pydicom inflates whole (no bound) and parses one by one (minutes
    of a worker, the client timed out); a plain file of zeros is parsed the same way."""
    tags: list[BaseTag | int] = [Tag(keyword) for keyword in keywords]
    with open(path, "rb") as fp:
        if ts != DEFLATED_LE:
            fp.seek(_PREAMBLE)
            if fp.read(4) != b"DICM":
                # a bare data set (no preamble, no file meta), as a client holding one sends it: read as pydicom
                # reads one it is told to, from its head only (its UIDs lead it; 1 MB of zeros took 0.3 s)
                fp.seek(0)
                bare = io.BytesIO(fp.read(_NAMING_BARE))
                return pydicom.filereader.read_partial(bare, stop_when=past_naming_uids, specific_tags=tags, force=True)
            fp.seek(0)
            return pydicom.filereader.read_partial(fp, stop_when=past_naming_uids, specific_tags=tags)
        read_file_meta(fp, os.fstat(fp.fileno()).st_size)
        head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(fp.read(), _NAMING_INFLATE)
        return read_dataset(
            io.BytesIO(head), is_implicit_VR=False, is_little_endian=True, stop_when=past_naming_uids,
            specific_tags=tags,
        )


def _get(ds: Dataset, keyword: str) -> Any:
    """The decoded value, or None when absent or undecodable (e.g. IS "abc")."""
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom raises many types for garbage values
        return None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _pixel_element(elements: list[Element]) -> Element | None:
    for el in elements:
        if el.tag in PIXEL_TAGS:
            return el
    return None


def _check_pixel_encoding(ts: str, elements: list[Element]) -> None:
    """``DicomError`` for encapsulated (undefined-length) pixel data under a native transfer syntax (PS3.5 A.4
    allows it only in the compressed ones): its item headers would be served and rendered as pixels, as when a
    tool rewrote a compressed file's Transfer Syntax UID without decoding it."""
    pixel = _pixel_element(elements)
    if pixel is not None and pixel.fragments is not None and ts in NATIVE_SYNTAXES:
        raise DicomError(
            f"Pixel Data {_tag_name(pixel.tag)} is encapsulated (undefined length), which the native transfer "
            f"syntax {ts} does not allow"
        )


_PIXEL_DESCRIPTION = (
    ("SamplesPerPixel", "(0028,0002)"),
    ("Rows", "(0028,0010)"),
    ("Columns", "(0028,0011)"),
    ("BitsAllocated", "(0028,0100)"),
    ("BitsStored", "(0028,0101)"),
    ("HighBit", "(0028,0102)"),
    ("PixelRepresentation", "(0028,0103)"),
    ("PlanarConfiguration", "(0028,0006)"),
)


def _check_pixel_description(ds: Dataset, elements: list[Element]) -> None:
    """``DicomError`` for an image whose pixel description is not the US PS3.6 gives it (an explicit VR of PN, DA,
    SQ...): pydicom reads such a Rows as a name, which was stored, then each rendering of it a 500. UN is pydicom's
    to read as US."""
    if _pixel_element(elements) is None:
        return
    for keyword, tag in _PIXEL_DESCRIPTION:
        element = ds.get_item(keyword)
        if element is not None and element.VR not in (None, "US", "UN"):
            raise DicomError(f"{keyword} {tag} has the VR {element.VR}, not US as PS3.6 gives it")


def _number_of_frames(ds: Dataset, elements: list[Element]) -> int:
    """0 when there is no pixel data; Number of Frames (default 1 when absent or empty) otherwise."""
    if _pixel_element(elements) is None:
        return 0
    if "NumberOfFrames" not in ds:
        return 1
    raw = next((el.value for el in elements if el.tag == _NUMBER_OF_FRAMES), None)
    if raw is not None and not raw.strip(b" \0"):
        return 1  # empty (pydicom reads it as None, which was refused as no number)
    value = _get(ds, "NumberOfFrames")
    n = _int_or_none(value)
    if n is None or not 1 <= n <= INT32_MAX:
        raise DicomError("Number of Frames (0028,0008) is not a positive integer")
    return n


def _frame_index(
    fp: BinaryIO, ts: str, ds: Dataset, elements: list[Element], number_of_frames: int
) -> FrameIndex | None:
    pixel = _pixel_element(elements)
    if pixel is None or number_of_frames == 0:
        return None
    if pixel.fragments is not None:
        if is_video(ts):
            # video: frames are not separable; its index is the whole stream, served as the Pixel Data bulkdata and
            # never as frames (gateway.dicomweb.wado.to_cached). A native syntax with encapsulation is refused
            return stream_index(pixel.fragments)
        eot = {
            el.tag: el.value
            for el in elements
            if el.tag in (EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS)
        }
        fragments = pixel.fragments
        if ts == ENCAPSULATED_UNCOMPRESSED_LE:
            fragments = unpadded_fragments(fragments, _native_frame_length(ds))
        return encapsulated_index(
            fp,
            fragments,
            number_of_frames,
            extended_offsets=eot.get(EXTENDED_OFFSET_TABLE),
            extended_lengths=eot.get(EXTENDED_OFFSET_TABLE_LENGTHS),
        )
    if ts not in NATIVE_SYNTAXES:
        return None  # defined-length pixel data under a compressed syntax: nothing sensible to index
    return native_index(
        value_offset=pixel.offset,
        value_length=pixel.length,
        **_image_pixel(ds),
        number_of_frames=number_of_frames,
    )


def _image_pixel(ds: Dataset) -> dict[str, Any]:
    """The Image Pixel attributes that give a native frame's length (``native_index``'s keywords)."""
    return {
        "rows": _int_or_none(_get(ds, "Rows")) or 0,
        "columns": _int_or_none(_get(ds, "Columns")) or 0,
        "samples_per_pixel": _int_or_none(_get(ds, "SamplesPerPixel")) or 1,
        "bits_allocated": _int_or_none(_get(ds, "BitsAllocated")) or 0,
        "photometric": str(_get(ds, "PhotometricInterpretation") or ""),
    }


def _native_frame_length(ds: Dataset) -> int:
    """A native frame's bytes; 0 when Bits Allocated is no whole number of bytes (1-bit frames: nothing to cut)."""
    pixel = _image_pixel(ds)
    return native_frame_length(**pixel) if pixel["bits_allocated"] % 8 == 0 else 0
