"""Converted frames and bulk values (gateway.dicom.converted) of pydicom-written big-endian and deflated files in
local-folder storage, against pydicom's own pixel_array: the cases the real files do not hold (an 8-bit OW frame
starting mid-word, a multi-frame deflated file, a value inside a sequence) and what a missing object answers."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pack_bits, unpack_bits
from pydicom.sequence import Sequence

from gateway.dicom.converted import ConvertedReader
from gateway.dicom.index import index_file
from gateway.errors import FramesNotServable, NotFound
from gateway.storage.local import LocalStorage
from tests.unit import dicom_builders as b


def _stored(tmp_path: Path, ds: Dataset, ts: str) -> tuple[LocalStorage, str, int, dict[str, Any]]:
    storage = LocalStorage(f"file://{tmp_path}/store", create=True)
    path = b.write(ds, tmp_path / "x.dcm", ts)
    stored = storage.put_file("x.dcm", path)
    return storage, "x.dcm", stored.size, index_file(path).metadata


def _pixels_le(path: Path) -> list[bytes]:
    pixels = pydicom.dcmread(path).pixel_array
    return [frame.astype(frame.dtype.newbyteorder("<")).tobytes() for frame in pixels]


@pytest.mark.parametrize(("bits", "samples"), [(8, 3), (16, 1), (32, 1)])
@pytest.mark.parametrize("ts", [b.ExplicitVRBigEndian, b.DeflatedExplicitVRLittleEndian])
def test_every_frame_is_pydicoms_pixels_in_little_endian(tmp_path: Path, ts: str, bits: int, samples: int) -> None:
    """3x3 RGB 8-bit frames are 27 bytes: the second starts mid-word of the big-endian OW value."""
    ds = b.image(b.base(), 3, 3, bits, 3, samples)
    ds.PixelData = b"".join(b.native_frames(3, 3 * 3 * samples * bits // 8)) + (b"\0" if bits == 8 else b"")
    ds["PixelData"].VR = "OW"
    storage, key, size, metadata = _stored(tmp_path, ds, ts)
    expected = _pixels_le(tmp_path / "x.dcm")
    reader = ConvertedReader(storage, bulk_threshold=1024)
    assert reader.frames(key, size, metadata, 3, [1, 2, 3, 2]) == [*expected, expected[1]]
    value = reader.bulk(key, size, metadata, "7FE00010")
    assert value[: sum(map(len, expected))] == b"".join(expected)


def test_a_bulk_value_in_a_sequence_is_swapped_by_its_vr(tmp_path: Path) -> None:
    ds = b.image(b.base(), 2, 2, 16, 1)
    ds.PixelData = bytes(8)
    ds["PixelData"].VR = "OW"
    item = Dataset()
    item.add_new(0x00281201, "OW", bytes(range(256)) * 8)  # Red Palette Color Lookup Table Data
    ds.add_new(0x00409096, "SQ", Sequence([item]))  # Real World Value Mapping Sequence
    storage, key, size, metadata = _stored(tmp_path, ds, b.ExplicitVRBigEndian)
    value = ConvertedReader(storage, bulk_threshold=1024).bulk(key, size, metadata, "00409096/0/00281201")
    assert value == np.frombuffer(bytes(range(256)) * 8, ">u2").astype("<u2").tobytes()
    with pytest.raises(NotFound):
        ConvertedReader(storage, bulk_threshold=1024).bulk(key, size, metadata, "00409096/1/00281201")


def test_an_inline_value_in_a_sequence_is_its_bulk_value_under_a_lower_threshold(tmp_path: Path) -> None:
    """Metadata's InlineBinary of a big-endian word value is the bytes its BulkDataURI answers (little endian),
    the same value whatever the threshold."""
    ds = b.image(b.base(), 2, 2, 16, 1)
    ds.PixelData = bytes(8)
    ds["PixelData"].VR = "OW"
    item = Dataset()
    item.add_new(0x00281201, "OW", bytes(range(256)))  # 128 words: inline under 1024
    item.add_new(0x00660016, "OF", np.array([1.5, -2.0], ">f4").tobytes())  # Point Coordinates Data
    ds.add_new(0x00409096, "SQ", Sequence([item]))
    storage, key, size, metadata = _stored(tmp_path, ds, b.ExplicitVRBigEndian)
    inline = metadata["00409096"]["Value"][0]
    as_bulk = ConvertedReader(storage, bulk_threshold=16).bulk(key, size, metadata, "00409096/0/00281201")
    assert base64.b64decode(inline["00281201"]["InlineBinary"]) == as_bulk
    assert as_bulk == np.frombuffer(bytes(range(256)), ">u2").astype("<u2").tobytes()
    assert base64.b64decode(inline["00660016"]["InlineBinary"]) == np.array([1.5, -2.0], "<f4").tobytes()


@pytest.mark.parametrize("vr", ["OB", "OW"])
@pytest.mark.parametrize(("rows", "columns"), [(3, 5), (4, 4)])
@pytest.mark.parametrize(
    "ts", [b.ExplicitVRLittleEndian, b.ImplicitVRLittleEndian, b.ExplicitVRBigEndian, b.DeflatedExplicitVRLittleEndian]
)
def test_a_1_bit_frame_is_its_pixels_packed_from_a_byte_boundary(
    tmp_path: Path, ts: str, rows: int, columns: int, vr: str
) -> None:
    """15-bit frames start inside a byte (frame 2 at bit 15, in the second word of an OW value); 16-bit ones do
    not. Either way frame n is its own pixels from the first bit of its first byte (PS3.5 8.1.1)."""
    ds = b.image(b.base(), rows, columns, 1, 5)
    ds.BitsStored, ds.HighBit = 1, 0
    mask = np.random.default_rng(7).integers(0, 2, 5 * rows * columns, dtype=np.uint8)
    ds.PixelData = pack_bits(mask)  # pydicom writes the value's bytes unchanged in every byte order
    ds["PixelData"].VR = vr
    storage, key, size, metadata = _stored(tmp_path, ds, ts)
    if ts == b.ExplicitVRBigEndian and vr == "OW":
        # PS3.5 7.3: an OW value is 16-bit words, each stored big endian; the bit stream is in the words (DCMTK reads
        # it so, and the gateway swaps an 8-bit OW value so too); pydicom 3.0 unpacks the bytes as stored instead
        swapped = np.frombuffer(ds.PixelData, ">u2").astype("<u2").tobytes()
        pixels = np.asarray(unpack_bits(swapped))[: mask.size].reshape(5, -1)
    else:
        pixels = pydicom.dcmread(tmp_path / "x.dcm").pixel_array.reshape(5, -1)
        assert np.array_equal(pixels.ravel(), mask)
    frames = ConvertedReader(storage, bulk_threshold=1024).frames(key, size, metadata, 5, [2, 5, 1, 2])
    assert frames == [pack_bits(pixels[n - 1], pad=False) for n in (2, 5, 1, 2)]


def test_1_bit_pixel_data_shorter_than_its_frames_is_not_servable(tmp_path: Path) -> None:
    ds = b.image(b.base(), 3, 5, 1, 8)
    ds.BitsStored, ds.HighBit = 1, 0
    ds.PixelData = bytes(14)  # 8 frames of 15 bits need 15 bytes
    storage, key, size, metadata = _stored(tmp_path, ds, b.ExplicitVRBigEndian)
    with pytest.raises(FramesNotServable):
        ConvertedReader(storage, bulk_threshold=1024).frames(key, size, metadata, 8, [1])


def test_a_missing_object_is_the_whole_objects_404(tmp_path: Path) -> None:
    ds = b.image(b.base(), 2, 2, 16, 1)
    ds.PixelData = bytes(8)
    storage, key, size, metadata = _stored(tmp_path, ds, b.DeflatedExplicitVRLittleEndian)
    storage.delete(key)
    with pytest.raises(NotFound, match="^the object is missing from storage$"):
        ConvertedReader(storage, bulk_threshold=1024).frames(key, size, metadata, 1, [1])


class _CountingStorage(LocalStorage):
    """Local storage that counts its range reads."""

    reads = 0

    def read_range(self, key: str, start: int, length: int) -> bytes:
        type(self).reads += 1
        return super().read_range(key, start, length)


@pytest.mark.parametrize("ts", [b.ExplicitVRLittleEndian, b.ImplicitVRLittleEndian])
def test_a_1_bit_frame_of_a_little_endian_file_is_one_range_read_from_ingests_range(tmp_path: Path, ts: str) -> None:
    """With the Pixel Data range ingest found, a frame is one storage read of its bytes, not a walk of the element
    headers (a 1,000-frame segmentation's per-frame functional groups took ~0.3 s a request); a range that is not
    the value the Image Pixel module describes (an item stream's) is walked instead."""
    ds = b.image(b.base(), 3, 5, 1, 4)
    ds.BitsStored, ds.HighBit = 1, 0
    ds.ReferencedImageSequence = Sequence([Dataset() for _ in range(300)])  # headers of a few pages
    for item in ds.ReferencedImageSequence:
        item.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.8.9.10"
    ds.PixelData = pack_bits(np.random.default_rng(9).integers(0, 2, 60, dtype=np.uint8))
    path = b.write(ds, tmp_path / "x.dcm", ts)
    storage = _CountingStorage(f"file://{tmp_path}/store", create=True)
    size = storage.put_file("x.dcm", path).size
    indexed = index_file(path)
    [pixel] = [(r.offset, r.length) for r in indexed.bulkdata if r.path == "7FE00010"]
    reader = ConvertedReader(storage, bulk_threshold=1024)
    walked = reader.frames("x.dcm", size, indexed.metadata, 4, [4, 1])
    _CountingStorage.reads = 0
    assert reader.frames("x.dcm", size, indexed.metadata, 4, [4, 1], pixel_range=pixel) == walked
    assert _CountingStorage.reads == 2
    item_stream = (pixel[0], pixel[1] + 16)
    assert reader.frames("x.dcm", size, indexed.metadata, 4, [4, 1], pixel_range=item_stream) == walked
    assert _CountingStorage.reads > 4
