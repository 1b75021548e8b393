"""Frames and bulk values of instances whose stored bytes are not what a client is sent: Explicit VR Big Endian and
Deflated Explicit VR Little Endian files, and Bits Allocated 1 frames that do not start on a byte boundary.

PS3.18 8.7.3: uncompressed frames and bulk values go out as little-endian bytes (Explicit VR Little Endian) and
the origin server converts. The values are found as ingest found them (``read_file_meta``, ``Walker``,
``native_index``, ``iter_bulk``), read from storage, and byte-swapped (big endian) or sliced out of the inflated
data set (deflated). A 1-bit frame is sent from the first bit of its own first byte, its last byte padded with
zero bits (PS3.5 8.1.1 packs a native frame so; dcm4chee sends such frames so): one of Rows x Columns x Samples per
Pixel bits that is not a multiple of 8 starts inside a byte of the stored value, and is re-packed from the bytes
holding it. Nothing is kept between requests: a big-endian object is read by range (its element headers,
then only the values asked for); a deflated one is read whole and inflated in memory, within ``INFLATE_LIMIT``, for
each request (such files are small: ingest refused any that inflates beyond the limit).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, BinaryIO, cast

import numpy as np
from pydicom.pixels.utils import pack_bits, unpack_bits

from gateway.dicom.frames import native_index
from gateway.dicom.index import (
    DEFLATED_LE,
    EXPLICIT_VR_BE,
    IMPLICIT_VR_LE,
    INFLATE_LIMIT,
    NATIVE_SYNTAXES,
    inflate,
    read_file_meta,
)
from gateway.dicom.model import first_value
from gateway.dicom.walker import PIXEL_TAGS, WORD_BYTES, Element, Walker, iter_bulk, little_endian_words, tag_hex
from gateway.errors import DicomError, FramesNotServable, GatewayError, NotFound
from gateway.storage.base import Storage

CONVERTED_SYNTAXES = frozenset({EXPLICIT_VR_BE, DEFLATED_LE})
_READ_AHEAD = 1 << 16  # element headers are read through a buffer of this size (one storage read each)
_BIT_FRAME_READ = 1 << 12  # a frame's bytes read without the walk: one storage read each, little read ahead


def is_converted(transfer_syntax_uid: str) -> bool:
    """Whether frames and bulk values of an instance stored in this syntax are converted, not byte ranges."""
    return transfer_syntax_uid in CONVERTED_SYNTAXES


def frames_converted(transfer_syntax_uid: str, indexed: bool, number_of_frames: int) -> bool:
    """Whether an instance's frames are made here: a big-endian or deflated file's, and native frames ingest found
    no byte ranges for (``indexed`` False: Bits Allocated 1 frames that do not start on a byte boundary)."""
    return not indexed and number_of_frames > 0 and transfer_syntax_uid in NATIVE_SYNTAXES


class _StoredFile(io.RawIOBase):
    """A stored object as a read-only seekable file, each read one range read from storage."""

    def __init__(self, storage: Storage, key: str, size: int) -> None:
        super().__init__()
        self._storage, self._key, self._size, self._pos = storage, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._size - self._pos)
        if wanted <= 0:
            return 0
        data = self._storage.read_range(self._key, self._pos, wanted)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        """The rest in one storage read (the default reads 8 KB at a time: a request each on S3)."""
        data = self._storage.read_range(self._key, self._pos, max(0, self._size - self._pos))
        self._pos += len(data)
        return data


def _native_length(metadata: Mapping[str, Any], bits: int, count: int) -> int:
    """The even length of a native Pixel Data value of ``count`` frames as the Image Pixel module describes them
    (0 if it describes none)."""
    try:
        pixels = int(first_value(metadata, "00280010", 0)) * int(first_value(metadata, "00280011", 0))
        length = -(-pixels * int(first_value(metadata, "00280002", 1)) * bits * count // 8)
    except (TypeError, ValueError):
        return 0
    return length + length % 2


class ConvertedReader:
    """Reads converted frames and bulk values of one stored object per call. ``bulk_threshold``: ingest's
    (DICOMGW_BULKDATA_THRESHOLD), so the bulkdata paths found here are those its metadata advertises."""

    def __init__(self, storage: Storage, bulk_threshold: int, inflate_limit: int = INFLATE_LIMIT) -> None:
        self._storage = storage
        self._threshold = bulk_threshold
        self._inflate_limit = inflate_limit

    def _walk(self, key: str, size: int) -> tuple[BinaryIO, bool, list[Element]]:
        """The data set's elements (offsets in ``fp``: the object, or its inflated data set) and its byte order."""
        fp: BinaryIO = io.BufferedReader(_StoredFile(self._storage, key, size), _READ_AHEAD)
        try:
            ts = read_file_meta(fp, size)
            if ts == DEFLATED_LE:
                data = inflate(fp, self._inflate_limit)
                fp, size = io.BytesIO(data), len(data)
            little, implicit = ts != EXPLICIT_VR_BE, ts == IMPLICIT_VR_LE
            return fp, little, Walker(fp, size, little=little, implicit=implicit, bulk_threshold=self._threshold).walk()
        except NotFound:
            raise NotFound("the object is missing from storage") from None
        except DicomError:
            # ingest read this very object: it changed in storage since (a server fault, not the client's)
            raise GatewayError("the stored object no longer reads as it did when it was stored") from None

    def frames(
        self,
        key: str,
        size: int,
        metadata: Mapping[str, Any],
        count: int,
        numbers: list[int],
        pixel_range: tuple[int, int] | None = None,
    ) -> list[bytes]:
        """Frames ``numbers`` (1-based, within ``count``) as native little-endian bytes, a 1-bit frame from the
        first bit of its first byte; ``metadata``: the instance's DICOM JSON (its Image Pixel module).
        ``pixel_range``: (offset, length) of a little-endian Pixel Data value as ingest found it (its bulkdata
        range), read as it is without walking the element headers again (~0.3 s for the per-frame functional groups
        of a 1,000-frame segmentation, on every request). ``FramesNotServable`` for encapsulated pixels, or an Image
        Pixel module that does not describe the value."""
        bits = int(first_value(metadata, "00280100", 0) or 0)
        if pixel_range is not None and pixel_range[1] != _native_length(metadata, bits, count):
            pixel_range = None  # not the value its Image Pixel module describes (an item stream?): walk to see
        if pixel_range is not None:
            fp: BinaryIO = io.BufferedReader(_StoredFile(self._storage, key, size), _BIT_FRAME_READ)
            (offset, length), word = pixel_range, 1
        else:
            fp, little, elements = self._walk(key, size)
            pixel = next((el for el in elements if el.tag in PIXEL_TAGS), None)
            if pixel is None or pixel.fragments is not None:
                raise FramesNotServable("this instance has no native pixel data to serve as frames")
            offset, length = pixel.offset, pixel.length
            word = 1 if little else (bits // 8 if bits >= 16 else WORD_BYTES.get(pixel.vr, 1))
        try:
            rows, columns = int(first_value(metadata, "00280010", 0)), int(first_value(metadata, "00280011", 0))
            samples = int(first_value(metadata, "00280002", 1))
            index = native_index(
                value_offset=offset,
                value_length=length,
                rows=rows,
                columns=columns,
                samples_per_pixel=samples,
                bits_allocated=bits,
                number_of_frames=count,
                photometric=str(first_value(metadata, "00280004", "")),
            )
        except (DicomError, TypeError, ValueError):
            raise FramesNotServable("its Image Pixel module does not describe its pixel data") from None
        try:
            if index is not None:
                return [self._value(fp, offset, *index.ranges(n)[0], word) for n in numbers]
            frame_bits = rows * columns * samples  # native_index: Bits Allocated 1, not a whole number of bytes
            if frame_bits * count > length * 8:
                raise FramesNotServable("its pixel data holds fewer bits than its frames")
            return [self._bit_frame(fp, offset, (n - 1) * frame_bits, frame_bits, word) for n in numbers]
        except NotFound:
            raise NotFound("the object is missing from storage") from None

    def _bit_frame(self, fp: BinaryIO, value_offset: int, first_bit: int, frame_bits: int, word: int) -> bytes:
        """``frame_bits`` bits from bit ``first_bit`` of the 1-bit value at ``value_offset``, packed from a byte
        boundary (pydicom's bit order: the first pixel in the least significant bit)."""
        start, end = first_bit // 8, -(-(first_bit + frame_bits) // 8)
        data = self._value(fp, value_offset, value_offset + start, end - start, word)
        skip = first_bit - 8 * start
        pixels = cast(np.ndarray, unpack_bits(data, as_array=True))
        return pack_bits(pixels[skip : skip + frame_bits], pad=False)

    def bulk(self, key: str, size: int, metadata: Mapping[str, Any], path: str) -> bytes:
        """The little-endian value of the bulk element at ``path`` (``7FE00010``, ``00540016/0/00181072``):
        native Pixel Data swapped by Bits Allocated, as its frames are, other values by their VR."""
        fp, little, elements = self._walk(key, size)
        found = dict(iter_bulk(elements)).get(path)
        if found is None or found.fragments is not None:
            raise NotFound("no such bulkdata element")
        bits = int(first_value(metadata, "00280100", 0) or 0) if path == tag_hex(found.tag) else 0
        if little or found.implicit:  # a sequence inside UN is implicit VR little endian even in a big-endian file
            word = 1
        elif found.tag in PIXEL_TAGS and bits >= 16 and path == tag_hex(found.tag):
            word = bits // 8
        else:
            word = WORD_BYTES.get(found.vr, 1)
        return self._value(fp, found.offset, found.offset, found.length, word)

    @staticmethod
    def _value(fp: BinaryIO, value_offset: int, offset: int, length: int, word: int) -> bytes:
        """``length`` bytes from ``offset`` of a value starting at ``value_offset``, its words (counted from the
        value's start: an 8-bit OW frame may start mid-word) swapped."""
        start = offset - (offset - value_offset) % word
        end = offset + length
        end += -(end - value_offset) % word
        fp.seek(start)
        data = fp.read(end - start)
        if len(data) != end - start:
            raise GatewayError("the stored object is shorter than when it was stored")
        return little_endian_words(data, word)[offset - start : offset - start + length]
