"""Where each frame lives in the stored P10 object, packed small so the read path answers in microseconds.

Layout of ``FrameIndex.pack()`` (little-endian, fixed-width fields, so ``ranges(n)`` is two ``unpack_from``
calls and never decodes the whole index):

* native:        ``B kind=0 | I count | Q first_offset | Q frame_length``  (frame n starts at first +
  (n-1)*length)
* encapsulated:  ``B kind=1 | I count | I fragments`` then ``fragments × Q`` data offsets, ``fragments × I``
  data lengths, ``count × I`` index of each frame's first fragment (a frame runs up to the next frame's first
  fragment).

Offsets are absolute file offsets of fragment *data* (after the 8-byte item header). One frame may map to
several ranges; the bytes of the frame are their concatenation (including any even-length padding byte of the
fragment).
"""

from __future__ import annotations

import logging
import struct
import sys
from array import array
from collections.abc import Sequence
from typing import BinaryIO

from gateway.errors import DicomError, FrameNotFound

log = logging.getLogger(__name__)

_KIND_NATIVE = 0
_KIND_ENCAPSULATED = 1
_NATIVE = struct.Struct("<BIQQ")
_ENCAP = struct.Struct("<BII")
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
# Fragment starts that begin a new frame when the offset table is empty: JPEG / JPEG-LS SOI, JPEG 2000
# codestream SOC, JP2 (and JPEG XL container) signature box, JPEG XL codestream signature.
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f", b"\x00\x00\x00\x0c", b"\xff\x0a")


def _le(arr: array[int]) -> bytes:
    if sys.byteorder != "little":
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def _array(typecode: str, buf: bytes, at: int, count: int) -> array[int]:
    """``count`` little-endian items of ``typecode`` from ``buf`` at byte ``at``."""
    items = array(typecode)
    items.frombytes(buf[at : at + items.itemsize * count])
    if sys.byteorder != "little":
        items.byteswap()
    return items


class FrameIndex:
    """Byte ranges of every frame of one instance. Build with ``native``/``encapsulated`` (or the ``*_index``
    helpers below), store ``pack()``, rebuild with ``unpack`` on the hot path."""

    __slots__ = (
        "_buf",
        "_frag_len_at",
        "_first_at",
        "_nfrag",
        "_first_offset",
        "_frame_length",
        "count",
        "kind",
    )

    def __init__(self, buf: bytes) -> None:
        """Use ``unpack``; the constructor trusts nothing it was not told, so it validates sizes."""
        if len(buf) < 1:
            raise ValueError("empty frame index")
        self._buf = buf
        self.kind = buf[0]
        self._first_offset = self._frame_length = self._nfrag = self._frag_len_at = self._first_at = 0
        if self.kind == _KIND_NATIVE:
            if len(buf) != _NATIVE.size:
                raise ValueError("bad native frame index")
            _, self.count, self._first_offset, self._frame_length = _NATIVE.unpack(buf)
        elif self.kind == _KIND_ENCAPSULATED:
            if len(buf) < _ENCAP.size:
                raise ValueError("bad encapsulated frame index")
            _, self.count, self._nfrag = _ENCAP.unpack_from(buf)
            self._frag_len_at = _ENCAP.size + 8 * self._nfrag
            self._first_at = self._frag_len_at + 4 * self._nfrag
            if len(buf) != self._first_at + 4 * self.count:
                raise ValueError("bad encapsulated frame index")
        else:
            raise ValueError(f"unknown frame index kind {self.kind}")

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def native(cls, first_offset: int, frame_length: int, count: int) -> FrameIndex:
        return cls(_NATIVE.pack(_KIND_NATIVE, count, first_offset, frame_length))

    @classmethod
    def encapsulated(cls, fragments: Sequence[tuple[int, int]], first_fragment: Sequence[int]) -> FrameIndex:
        """``fragments``: (data offset, length) in file order; ``first_fragment[i]``: index of frame i+1's
        first fragment (strictly increasing, starting at 0)."""
        n = len(fragments)
        prev = -1
        for f in first_fragment:
            if not prev < f < n:
                raise ValueError("first fragment indexes must increase within the fragment list")
            prev = f
        if first_fragment and first_fragment[0] != 0:
            raise ValueError("the first frame must start at the first fragment")
        offsets = array("Q", (o for o, _ in fragments))
        lengths = array("I", (length for _, length in fragments))
        firsts = array("I", first_fragment)
        head = _ENCAP.pack(_KIND_ENCAPSULATED, len(first_fragment), n)
        return cls(head + _le(offsets) + _le(lengths) + _le(firsts))

    def pack(self) -> bytes:
        return self._buf

    @classmethod
    def unpack(cls, data: bytes) -> FrameIndex:
        return cls(bytes(data))

    # --- queries -----------------------------------------------------------------------------------------
    def ranges(self, n: int) -> list[tuple[int, int]]:
        """(offset, length) ranges of 1-based frame ``n``, in order. ``FrameNotFound`` outside 1..count."""
        if not 1 <= n <= self.count:
            raise FrameNotFound(f"frame {n} does not exist; the instance has {self.count} frame(s)")
        if self.kind == _KIND_NATIVE:
            return [(self._first_offset + (n - 1) * self._frame_length, self._frame_length)]
        buf = self._buf
        first = _I.unpack_from(buf, self._first_at + 4 * (n - 1))[0]
        end = _I.unpack_from(buf, self._first_at + 4 * n)[0] if n < self.count else self._nfrag
        off_at, len_at = _ENCAP.size, self._frag_len_at
        pairs = [
            (_Q.unpack_from(buf, off_at + 8 * i)[0], _I.unpack_from(buf, len_at + 4 * i)[0])
            for i in range(first, end)
        ]
        # an empty fragment (a zero-length item, legal and even) holds none of the frame's bytes: as a range it was
        # /_seg/{first}-{first - 1}, which storage refuses, and NGINX closed the connection without an answer (444)
        return [pair for pair in pairs if pair[1]]

    def single_ranges(self, first: int, last: int) -> list[tuple[int, int]] | None:
        """The one (offset, length) range of each frame ``first..last`` (1-based, inclusive, within 1..count), as
        ``ranges`` gives it; None when any of them is not one non-empty fragment. What a block plan of frames is
        made of (``Planner.block``): a hundred frames read at once, without a hundred calls of ``ranges``."""
        if not 1 <= first <= last <= self.count:
            raise FrameNotFound(f"frames {first}-{last} are not all in the instance's {self.count} frame(s)")
        if self.kind == _KIND_NATIVE:
            length = self._frame_length
            return [(self._first_offset + (n - 1) * length, length) for n in range(first, last + 1)] if length else None
        starts = _array("I", self._buf, self._first_at + 4 * (first - 1), last - first + 1)
        end = _I.unpack_from(self._buf, self._first_at + 4 * last)[0] if last < self.count else self._nfrag
        if end - starts[0] != len(starts):  # some frame holds more than one fragment
            return None
        offsets = _array("Q", self._buf, _ENCAP.size + 8 * starts[0], len(starts))
        lengths = _array("I", self._buf, self._frag_len_at + 4 * starts[0], len(starts))
        if min(lengths) == 0:
            return None
        return list(zip(offsets, lengths, strict=True))

    def total_length(self, n: int) -> int:
        """Bytes in frame ``n`` (what a single-part response's Content-Length is)."""
        return sum(length for _, length in self.ranges(n))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrameIndex) and other._buf == self._buf

    def __hash__(self) -> int:
        return hash(self._buf)

    def __repr__(self) -> str:
        kind = "native" if self.kind == _KIND_NATIVE else f"encapsulated, {self._nfrag} fragments"
        return f"<FrameIndex {self.count} frames, {kind}>"


# --- builders used by gateway.dicom.index ----------------------------------------------------------------


def native_index(
    *,
    value_offset: int,
    value_length: int,
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    number_of_frames: int,
    photometric: str = "",
) -> FrameIndex | None:
    """Native (uncompressed) pixel data: frames are back to back. Bits Allocated 1 frames are too when each is a
    whole number of bytes; None when they are not (a frame then starts inside a byte: ``gateway.dicom.converted``
    re-packs it).
    ``DicomError`` if the value is shorter than the frames it must hold."""
    if bits_allocated == 1 and rows * columns * samples_per_pixel % 8:
        return None
    bits_valid = bits_allocated == 1 or (bits_allocated > 0 and bits_allocated % 8 == 0)
    if rows <= 0 or columns <= 0 or samples_per_pixel <= 0 or not bits_valid:
        raise DicomError("Rows, Columns, Samples per Pixel or Bits Allocated are missing or invalid")
    if number_of_frames <= 0:
        raise DicomError("Number of Frames must be a positive integer")
    frame_length = native_frame_length(rows, columns, samples_per_pixel, bits_allocated, photometric)
    if frame_length * number_of_frames > value_length:
        raise DicomError(
            f"Pixel Data holds {value_length} bytes, fewer than {number_of_frames} frame(s) of {frame_length}"
        )
    return FrameIndex.native(value_offset, frame_length, number_of_frames)


def native_frame_length(rows: int, columns: int, samples_per_pixel: int, bits_allocated: int, photometric: str) -> int:
    """The bytes one uncompressed frame holds (Bits Allocated a multiple of 8, or 1 with whole bytes)."""
    # PS3.5 8.2.1 / PS3.3 C.7.6.3.1.2: YBR_FULL_422 native data carries two samples per pixel, not three.
    samples2 = 4 if photometric == "YBR_FULL_422" and samples_per_pixel == 3 else 2 * samples_per_pixel
    return rows * columns * samples2 * bits_allocated // 16


def unpadded_fragments(items: Sequence[tuple[int, int]], frame_length: int) -> list[tuple[int, int]]:
    """Encapsulated Uncompressed Explicit VR Little Endian's items (PS3.5 A.4.11: one frame a fragment, a frame
    of odd length followed by a padding byte) with each such fragment's length cut to the frame's: the pad is no
    pixel, and a frame of a 3 x 3 8-bit image is 9 bytes as a native one's is (it was served as 10)."""
    if not items or frame_length <= 0 or frame_length % 2 == 0:  # no item: no table, no fragment to cut
        return list(items)
    return [items[0], *((offset, frame_length if n == frame_length + 1 else n) for offset, n in items[1:])]


def stream_index(items: Sequence[tuple[int, int]]) -> FrameIndex | None:
    """Every fragment of encapsulated Pixel Data (``items`` as for ``encapsulated_index``, the Basic Offset Table
    left out) as the ranges of one piece: a video stream, whose frames cannot be told apart and which PS3.18
    8.7.3.3.2 serves whole (its note 5: video bulkdata is one part holding every frame). None without a fragment."""
    if len(items) < 2:
        return None
    return FrameIndex.encapsulated(list(items[1:]), [0])


def encapsulated_index(
    fp: BinaryIO,
    items: Sequence[tuple[int, int]],
    number_of_frames: int,
    *,
    extended_offsets: bytes | None = None,
    extended_lengths: bytes | None = None,
) -> FrameIndex | None:
    """Encapsulated pixel data. ``items``: (data offset, length) of every item of Pixel Data, the Basic Offset
    Table first. Frame starts come from, in order of trust: the Extended Offset Table, a non-empty Basic
    Offset Table, then the fragments themselves (one per frame when the counts match, all in one frame when
    there is one frame, else split where a fragment starts a JPEG / JPEG-LS / JPEG 2000 codestream). An offset
    table that does not land on item boundaries is ignored (logged) in favour of the next source. None when no
    source works: the frames cannot be served as ranges (the instance still can, whole)."""
    if number_of_frames <= 0 or len(items) < 2:
        return None
    bot, fragments = items[0], list(items[1:])
    # Offset tables count from the first byte of the first fragment's item header.
    base = fragments[0][0] - 8
    starts = {off - 8 - base: i for i, (off, _) in enumerate(fragments)}

    def from_offsets(offsets: Sequence[int], source: str) -> FrameIndex | None:
        if len(offsets) != number_of_frames:
            log.warning("%s has %d entries for %d frames; ignored", source, len(offsets), number_of_frames)
            return None
        firsts = [starts.get(o, -1) for o in offsets]
        try:
            return FrameIndex.encapsulated(fragments, firsts)
        except ValueError:
            log.warning("%s does not point at fragment boundaries; ignored", source)
            return None

    if extended_offsets:
        if len(extended_offsets) % 8 or (
            extended_lengths is not None and len(extended_lengths) != len(extended_offsets)
        ):
            log.warning("Extended Offset Table has an invalid length; ignored")
        else:
            index = from_offsets(array_from(extended_offsets, "Q"), "Extended Offset Table")
            if index is not None:
                return index
    if bot[1]:
        fp.seek(bot[0])
        table = fp.read(bot[1])
        if len(table) != bot[1] or bot[1] % 4:
            log.warning("Basic Offset Table is unreadable; ignored")
        else:
            index = from_offsets(array_from(table, "I"), "Basic Offset Table")
            if index is not None:
                return index

    if len(fragments) == number_of_frames:
        return FrameIndex.encapsulated(fragments, range(number_of_frames))
    if number_of_frames == 1:
        return FrameIndex.encapsulated(fragments, [0])
    firsts = []
    for i, (off, length) in enumerate(fragments):
        fp.seek(off)
        if fp.read(min(4, length)).startswith(_FRAME_STARTS):
            firsts.append(i)
    if len(firsts) == number_of_frames and firsts[0] == 0:
        return FrameIndex.encapsulated(fragments, firsts)
    log.warning(
        "cannot find frame boundaries: %d fragments, %d codestream starts, %d frames",
        len(fragments),
        len(firsts),
        number_of_frames,
    )
    return None


def array_from(data: bytes, typecode: str) -> array[int]:
    """Little-endian unsigned integers (offset tables) as an array, whatever the host byte order."""
    arr = array(typecode)
    arr.frombytes(data)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr
