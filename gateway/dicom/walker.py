"""A structural walk over a DICOM data set: where each element's value sits in the file, without reading bulk
values.

Why not just ``pydicom.dcmread``: it forgets where values were (the read path needs exact absolute offsets of
every bulk value and of every Pixel Data fragment), ``stop_before_pixels`` hides elements stored after Pixel
Data, and it reads undefined-length (encapsulated) Pixel Data into memory to find its end. This walker reads
element headers with ``read``/``seek`` on a buffered file and skips bulk values; value decoding (character
sets, ambiguous VRs, PN, IS/DS, ...) stays pydicom's job, on pydicom's own reading of the same file, checked
element for element against this walk (``gateway.dicom.index.read_instance``).

Supported encodings: implicit VR little endian, explicit VR little and big endian, and sequences of undefined
length inside explicit UN (encoded as implicit VR little endian, PS3.5 6.2.2). Structural errors (truncation,
a bad item tag, absurd nesting) raise ``DicomError`` whose detail names tags, never values.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR

from gateway.errors import DicomError

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
# Bytes per swapped word of a big-endian value, by VR (PS3.5 7.3); OB and UN are bytes, never swapped.
WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}

# Elements of these VRs longer than the threshold are bulkdata (PS3.18 F.2.7): skipped, never read.
BULK_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
PIXEL_TAGS = frozenset({PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA})
# The frame index needs these values even though they are bulk-sized (OV, 8 bytes per frame).
_ALWAYS_READ = frozenset({EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS})
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
KNOWN_VRS = LONG_VRS | frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST",
     "TM", "UI", "UL", "US"}
)  # fmt: skip
_MAX_DEPTH = 32


def tag_hex(tag: int) -> str:
    """``7FE00010``: the DICOM JSON key and the BulkDataURI path segment of a tag."""
    return f"{tag:08X}"


@dataclass(slots=True)
class Element:
    """One element as found in the file. ``offset`` is the absolute offset of the value (for undefined length:
    of the first item header); ``length`` excludes the closing sequence delimiter item."""

    tag: int
    vr: str  # as written (explicit) or from the dictionary, ambiguous binary VRs resolved (implicit)
    offset: int
    length: int
    implicit: bool  # encoding of this element (an explicit file can nest implicit data inside UN)
    bulk: bool
    value: bytes | None = None  # None when skipped (bulk)
    items: list[list[Element]] | None = None  # sequences: the elements of each item
    fragments: list[tuple[int, int]] | None = (
        None  # encapsulated: (data offset, length) of each item, BOT first
    )


@dataclass
class Walker:
    """Walks one data set. ``size`` is the total size of ``fp`` (offsets are checked against it)."""

    fp: BinaryIO
    size: int
    little: bool
    implicit: bool
    bulk_threshold: int
    pos: int = 0
    _hh: struct.Struct = field(init=False)
    _i: struct.Struct = field(init=False)
    _h: struct.Struct = field(init=False)

    def __post_init__(self) -> None:
        e = "<" if self.little else ">"
        self._hh = struct.Struct(e + "HH")
        self._i = struct.Struct(e + "I")
        self._h = struct.Struct(e + "H")
        self.pos = self.fp.tell()

    # --- low level ---------------------------------------------------------------------------------------
    def _read(self, n: int, what: str) -> bytes:
        data = self.fp.read(n)
        if len(data) != n:
            raise DicomError(f"file is truncated inside {what}")
        self.pos += n
        return data

    def _skip(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise DicomError(f"file is truncated inside {what}")
        self.fp.seek(n, 1)
        self.pos += n

    def _tag_and_length(self, hdr: bytes) -> tuple[int, int]:
        group, elem = self._hh.unpack_from(hdr)
        return (group << 16) | elem, self._i.unpack_from(hdr, 4)[0]

    # --- data sets ---------------------------------------------------------------------------------------
    def walk(self) -> list[Element]:
        """The top-level data set, from the current position to the end of the file."""
        return self._dataset(end=None, implicit=self.implicit, depth=0, where="the data set", nested=False)

    def _dataset(
        self, *, end: int | None, implicit: bool, depth: int, where: str, nested: bool
    ) -> list[Element]:
        """Elements until ``end`` (defined-length item), an item delimiter (undefined-length item) or EOF
        (top)."""
        if depth > _MAX_DEPTH:
            raise DicomError(f"sequences nested deeper than {_MAX_DEPTH} levels in {where}")
        out: list[Element] = []
        while end is None or self.pos < end:
            hdr = self.fp.read(8)
            if not hdr and not nested:
                break
            if len(hdr) != 8:
                raise DicomError(f"file is truncated inside {where}")
            self.pos += 8
            tag, length32 = self._tag_and_length(hdr)
            if tag == ITEM_DELIMITER:
                if not nested or end is not None:
                    raise DicomError(f"unexpected item delimiter in {where}")
                return out
            if tag >> 16 == 0xFFFE:
                raise DicomError(f"unexpected item tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) in {where}")
            out.append(self._element(tag, hdr, length32, implicit, depth))
        if end is not None and self.pos != end:
            raise DicomError(f"an element overruns its item in {where}")
        return out

    def _element(self, tag: int, hdr: bytes, length32: int, implicit: bool, depth: int) -> Element:
        name = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if implicit:
            vr = implicit_vr(tag)
            length = length32
        else:
            try:
                vr = hdr[4:6].decode("ascii")
            except UnicodeDecodeError:
                vr = "??"
            if vr not in KNOWN_VRS:
                if implicit_vr(tag) != "UN" and self.pos + length32 <= self.size:
                    # what pydicom guesses (and then reads differently): say so rather than just "invalid VR"
                    raise DicomError(
                        f"element {name} has an invalid VR: the data set looks implicit VR, but the transfer "
                        "syntax says explicit VR"
                    )
                raise DicomError(f"element {name} has an invalid VR")
            if vr in LONG_VRS:
                length = self._i.unpack(self._read(4, name))[0]
            else:
                length = self._h.unpack_from(hdr, 6)[0]

        offset = self.pos
        if length == UNDEFINED:
            if vr == "SQ" or (implicit and tag not in PIXEL_TAGS):
                items, vlen = self._sequence(tag, implicit, depth)
                return Element(tag, "SQ", offset, vlen, implicit, False, items=items)
            if vr == "UN":
                # PS3.5 6.2.2: a UN of undefined length is a sequence encoded in implicit VR little endian.
                if not self.little:
                    raise DicomError(f"element {name}: undefined-length UN in a big-endian file")
                items, vlen = self._sequence(tag, True, depth)
                return Element(tag, "SQ", offset, vlen, True, False, items=items)
            fragments, vlen = self._fragments(name)
            return Element(tag, vr, offset, vlen, implicit, True, fragments=fragments)

        if vr == "SQ":
            items, _ = self._sequence(tag, implicit, depth, length=length)
            return Element(tag, "SQ", offset, length, implicit, False, items=items)

        bulk = tag in PIXEL_TAGS or (vr in BULK_VRS and length > self.bulk_threshold)
        if bulk and tag not in _ALWAYS_READ:
            self._skip(length, name)
            return Element(tag, vr, offset, length, implicit, True)
        if offset + length > self.size:
            raise DicomError(f"file is truncated inside {name}")
        return Element(tag, vr, offset, length, implicit, bulk, value=self._read(length, name))

    def _sequence(
        self, tag: int, implicit: bool, depth: int, length: int = UNDEFINED
    ) -> tuple[list[list[Element]], int]:
        name = f"sequence ({tag >> 16:04X},{tag & 0xFFFF:04X})"
        start = self.pos
        end = None if length == UNDEFINED else start + length
        if end is not None and end > self.size:
            raise DicomError(f"file is truncated inside {name}")
        items: list[list[Element]] = []
        while end is None or self.pos < end:
            hdr = self._read(8, name)
            item_tag, item_len = self._tag_and_length(hdr)
            if item_tag == SEQUENCE_DELIMITER:
                if end is None:
                    return items, self.pos - 8 - start
                raise DicomError(f"unexpected sequence delimiter in defined-length {name}")
            if item_tag != ITEM:
                raise DicomError(f"expected an item in {name}")
            where = f"item {len(items)} of {name}"
            if item_len == UNDEFINED:
                items.append(
                    self._dataset(end=None, implicit=implicit, depth=depth + 1, where=where, nested=True)
                )
            else:
                if self.pos + item_len > self.size:
                    raise DicomError(f"file is truncated inside {where}")
                items.append(
                    self._dataset(
                        end=self.pos + item_len, implicit=implicit, depth=depth + 1, where=where, nested=True
                    )
                )
        if self.pos != end:
            raise DicomError(f"an item overruns {name}")
        return items, length

    def _fragments(self, name: str) -> tuple[list[tuple[int, int]], int]:
        """Item headers of encapsulated data, read one by one (8 bytes each) and skipped over: fast, and pixel
        data never enters memory. Returns the (data offset, length) of every item, the Basic Offset Table
        first."""
        start = self.pos
        fragments: list[tuple[int, int]] = []
        read, unpack, seek, size = self.fp.read, self._tag_and_length, self.fp.seek, self.size
        pos = self.pos
        append = fragments.append
        while True:
            hdr = read(8)
            if len(hdr) != 8:
                raise DicomError(f"file is truncated inside {name} (no sequence delimiter)")
            pos += 8
            tag, length = unpack(hdr)
            if tag == SEQUENCE_DELIMITER:
                break
            if tag != ITEM or length == UNDEFINED:
                raise DicomError(f"{name}: fragment {len(fragments)} is not a defined-length item")
            if pos + length > size:
                raise DicomError(f"file is truncated inside {name} (fragment {len(fragments)})")
            append((pos, length))
            seek(length, 1)
            pos += length
        self.pos = pos
        return fragments, pos - 8 - start


def implicit_vr(tag: int) -> str:
    """Dictionary VR for implicit VR data; ambiguous binary VRs resolve to OW (PS3.5 A.1: implicit VR pixel
    data and LUT data are OW), unknown and private data to UN. Non-binary ambiguous VRs ("US or SS") are left
    for pydicom, which resolves them with the data set as context."""
    if tag & 0xFFFF == 0:
        return "UL"
    if (tag >> 16) & 1:
        return "LO" if 0x10 <= (tag & 0xFFFF) <= 0xFF else "UN"
    try:
        vr: str = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if " or " in vr:
        return "OW" if "OW" in vr else vr
    return vr


def iter_bulk(elements: list[Element], prefix: str = "") -> Iterator[tuple[str, Element]]:
    """Every bulk element at any depth with its BulkDataURI path (``7FE00010``, ``00540016/0/00181072``)."""
    for el in elements:
        key = prefix + tag_hex(el.tag)
        if el.items is not None:
            for i, item in enumerate(el.items):
                yield from iter_bulk(item, f"{key}/{i}/")
        elif el.bulk:
            yield key, el


_validation_lock = threading.Lock()


@contextmanager
def quiet_validation() -> Iterator[None]:
    """Decode values with pydicom's value validation off. Its default (warn) logs the offending *value*,
    which may be PHI; with validation off, values that cannot be converted at all still raise, and callers
    drop them naming only the tag. pydicom keeps this setting globally, so the switch is serialised with a
    lock."""
    with _validation_lock:
        settings = pydicom_config.settings
        saved = settings._reading_validation_mode
        settings.reading_validation_mode = pydicom_config.IGNORE
        try:
            yield
        finally:
            settings._reading_validation_mode = saved


def little_endian_words(data: bytes, word: int) -> bytes:
    """Big-endian words of ``word`` bytes as little-endian ones; a trailing partial word (an odd-length value a
    writer left unpadded) is kept as it is."""
    whole = len(data) - len(data) % word if word > 1 else 0
    if not whole:
        return data
    return np.frombuffer(data[:whole], dtype=f">u{word}").astype(f"<u{word}").tobytes() + data[whole:]
