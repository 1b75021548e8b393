"""index_file on pydicom-written files: exact frame and bulkdata bytes read back at the returned offsets."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from gateway.dicom.frames import FrameIndex
from gateway.dicom.index import frame_media_type, index_file
from gateway.dicom.model import IndexedInstance
from gateway.errors import DicomError
from tests.unit import dicom_builders as b


def frames_of(path: Path, packed: bytes | None) -> list[bytes]:
    assert packed is not None
    index = FrameIndex.unpack(packed)
    return [b.read_ranges(path, index.ranges(n)) for n in range(1, index.count + 1)]


def bulk_bytes(path: Path, indexed: IndexedInstance) -> dict[str, bytes]:
    return {r.path: b.read_ranges(path, [(r.offset, r.length)]) for r in indexed.bulkdata}


def native_file(path: Path, ts: str = b.ExplicitVRLittleEndian, frames: int = 4) -> tuple[Path, list[bytes]]:
    ds = b.image(b.base(), 10, 12, 16, frames)
    data = b.native_frames(frames, 10 * 12 * 2)
    ds.PixelData = b"".join(data)
    ds["PixelData"].VR = "OW"
    return b.write(ds, path, ts), data


@pytest.mark.parametrize("ts", [b.ExplicitVRLittleEndian, b.ImplicitVRLittleEndian])
def test_native_multiframe_16bit(tmp_path: Path, ts: str) -> None:
    path, data = native_file(tmp_path / "n.dcm", ts)
    indexed = index_file(path)
    assert (indexed.ids.study, indexed.ids.series, indexed.ids.sop) == (b.STUDY, b.SERIES, b.SOP)
    assert indexed.sop_class_uid == b.CT_IMAGE
    assert indexed.transfer_syntax_uid == ts
    assert indexed.number_of_frames == 4
    assert indexed.instance_number == 7
    assert indexed.frame_media_type == "application/octet-stream"
    assert frames_of(path, indexed.frame_index) == data
    assert [(r.path, r.vr) for r in indexed.bulkdata] == [("7FE00010", "OW")]
    assert bulk_bytes(path, indexed)["7FE00010"] == b"".join(data)


@pytest.mark.parametrize(("columns", "ranges"), [(8, [(0, 3), (3, 3)]), (7, None)])
def test_bits_allocated_1_frames_are_ranges_when_each_is_whole_bytes(
    tmp_path: Path, columns: int, ranges: list[tuple[int, int]] | None
) -> None:
    """3 x 8 bits: frame 2 starts at byte 3. 3 x 7 bits: frame 2 starts at bit 5 of byte 2, no range."""
    ds = b.image(b.base(), 3, columns, 1, 2)
    ds.BitsStored, ds.HighBit = 1, 0
    ds.PixelData = b"\x55" * 16
    ds["PixelData"].VR = "OB"
    path = b.write(ds, tmp_path / "bits1.dcm")
    indexed = index_file(path)
    offset = indexed.bulkdata[0].offset
    if ranges is None:
        assert indexed.frame_index is None
    else:
        frames = FrameIndex.unpack(indexed.frame_index or b"")
        assert [frames.ranges(n) for n in (1, 2)] == [[(offset + start, length)] for start, length in ranges]
    assert indexed.number_of_frames == 2
    assert bulk_bytes(path, indexed) == {"7FE00010": b"\x55" * 16}


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"bot": True}, 5),
        ({"extended": True}, 5),
        ({"bot": False}, 5),  # empty BOT, fragments == frames
        ({"fragments_per_frame": 3, "bot": True}, 15),
        ({"fragments_per_frame": 3, "bot": False}, 15),  # empty BOT: split on SOI
    ],
)
def test_encapsulated_jpeg(tmp_path: Path, kwargs: dict, fragments: int) -> None:
    data = b.jpeg_frames(5, 64)
    path = b.encapsulated(tmp_path / "j.dcm", data, **kwargs)
    indexed = index_file(path)
    assert indexed.frame_media_type == "image/jpeg"
    assert indexed.number_of_frames == 5
    assert frames_of(path, indexed.frame_index) == data
    assert repr(FrameIndex.unpack(indexed.frame_index or b"")).endswith(f"{fragments} fragments>")
    pixel = [r for r in indexed.bulkdata if r.path == "7FE00010"]
    assert len(pixel) == 1 and pixel[0].vr == "OB"
    # The Pixel Data value range covers the items (BOT first) up to, excluding, the sequence delimiter.
    value = bulk_bytes(path, indexed)["7FE00010"]
    assert value[:4] == b"\xfe\xff\x00\xe0"
    assert path.read_bytes()[pixel[0].offset + pixel[0].length :][:4] == b"\xfe\xff\xdd\xe0"


def test_bot_needed_when_fragments_do_not_start_frames(tmp_path: Path) -> None:
    """Frames without any codestream marker and two fragments each: only the BOT can tell where frames
    start."""
    data = [bytes([i]) * 40 for i in range(1, 4)]
    path = b.encapsulated(tmp_path / "bot.dcm", data, fragments_per_frame=2, bot=True)
    assert frames_of(path, index_file(path).frame_index) == data
    no_bot = b.encapsulated(tmp_path / "nobot.dcm", data, fragments_per_frame=2, bot=False)
    assert index_file(no_bot).frame_index is None  # cannot be split: whole-instance only


def test_single_frame_all_fragments(tmp_path: Path) -> None:
    data = [b"\xff\xd8" + b"\x01" * 100 + b"\xff\xd9"]
    path = b.encapsulated(tmp_path / "one.dcm", data, fragments_per_frame=4, bot=False)
    indexed = index_file(path)
    assert FrameIndex.unpack(indexed.frame_index or b"").ranges(1).__len__() == 4
    assert frames_of(path, indexed.frame_index) == data


def test_encapsulated_uncompressed_without_an_item_has_no_frames(tmp_path: Path) -> None:
    """An Encapsulated Uncompressed file (1.2.840.10008.1.2.1.98) of odd-length frames whose Pixel Data holds no item
    (not even the Basic Offset Table) was an IndexError cutting the pads of fragments there are none of: its upload
    a "could not be processed" and ``reconcile --repair`` stopped on it. It is indexed without frames, as any
    encapsulated Pixel Data whose frames cannot be found."""
    ds = b.image(b.base(), 3, 3, 8, 1)
    path = b.write(ds, tmp_path / "empty.dcm", "1.2.840.10008.1.2.1.98")
    # Pixel Data of undefined length holding only its Sequence Delimitation Item
    path.write_bytes(
        path.read_bytes()
        + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    indexed = index_file(path)
    assert (indexed.transfer_syntax_uid, indexed.number_of_frames, indexed.frame_index) == (
        "1.2.840.10008.1.2.1.98", 1, None)


def test_video_is_indexed_as_one_stream(tmp_path: Path) -> None:
    """A video's frames cannot be told apart: its index is the whole stream, every fragment in order (served as its
    Pixel Data bulkdata, never as frames)."""
    stream = [b"\x00\x00\x01\xb3" * 10, b"\x00\x00\x01\xb8" * 7, b"\x01\x02" * 5]
    path = b.encapsulated(
        tmp_path / "v.dcm", stream, transfer_syntax="1.2.840.10008.1.2.4.102", number_of_frames=30, bot=False
    )
    indexed = index_file(path)
    assert indexed.frame_media_type == "video/mp4"
    assert [r.path for r in indexed.bulkdata] == ["7FE00010"]
    index = FrameIndex.unpack(indexed.frame_index or b"")
    assert index.count == 1 and len(index.ranges(1)) == 3
    assert frames_of(path, indexed.frame_index) == [b"".join(stream)]


@pytest.mark.parametrize("ts", [b.ExplicitVRBigEndian, b.DeflatedExplicitVRLittleEndian])
def test_big_endian_and_deflated_have_no_byte_ranges(tmp_path: Path, ts: str) -> None:
    """Their frames and bulk values are converted on the read path (gateway.dicom.converted), never served as byte
    ranges of the object; the metadata still names their BulkDataURIs."""
    path, _ = native_file(tmp_path / "x.dcm", ts)
    indexed = index_file(path)
    assert indexed.transfer_syntax_uid == ts
    assert indexed.ids.sop == b.SOP
    assert indexed.number_of_frames == 4
    assert indexed.frame_index is None
    assert indexed.bulkdata == []
    assert indexed.metadata["00280010"] == {"vr": "US", "Value": [10]}
    assert indexed.metadata["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
    assert indexed.frame_media_type == "application/octet-stream"


@pytest.mark.parametrize("ts", [b.ExplicitVRLittleEndian, b.ImplicitVRLittleEndian])
def test_nested_bulkdata_and_elements_after_pixel_data(tmp_path: Path, ts: str) -> None:
    ds, expected = b.nested_dataset()
    path = b.write(ds, tmp_path / "nested.dcm", ts)
    indexed = index_file(path)
    assert bulk_bytes(path, indexed) == expected
    assert {r.path: r.vr for r in indexed.bulkdata}["FFFCFFFC"] == "OB"
    # the small OB stays inline
    item0 = indexed.metadata["04000500"]["Value"][0]
    assert item0["04000520"] == {"vr": "OB", "InlineBinary": "AQIDBA=="}


def test_bulkdata_threshold(tmp_path: Path) -> None:
    ds, expected = b.nested_dataset()
    path = b.write(ds, tmp_path / "nested.dcm")
    paths = {r.path for r in index_file(path, bulkdata_threshold=2).bulkdata}
    assert paths == set(expected) | {"04000500/0/04000520"}
    paths = {r.path for r in index_file(path, bulkdata_threshold=4096).bulkdata}
    assert paths == {"7FE00010"}  # Pixel Data is always bulk


def test_index_of_32000_frames(tmp_path: Path) -> None:
    data = b.jpeg_frames(32_000, 24)
    path = b.encapsulated(tmp_path / "wsi.dcm", data, bot=False)
    start = time.perf_counter()
    indexed = index_file(path)
    elapsed = time.perf_counter() - start
    print(f"index_file, 32,000 encapsulated frames (empty BOT): {elapsed * 1000:.0f} ms (target < 2 s)")
    index = FrameIndex.unpack(indexed.frame_index or b"")
    for n in (1, 16_000, 32_000):
        assert b.read_ranges(path, index.ranges(n)) == data[n - 1]


# --- rejections --------------------------------------------------------------------------------------------


def test_non_dicom_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"%PDF-1.4 not dicom at all" * 20)
    with pytest.raises(DicomError, match="DICM"):
        index_file(path)
    path.write_bytes(b"")  # an empty part: said so, not "no DICM prefix"
    with pytest.raises(DicomError, match=r"^not a DICOM Part 10 file \(it is empty: 0 bytes\)$"):
        index_file(path)


def test_missing_file_meta(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x08\x00\x16\x00UI\x04\x001.2\x00")
    with pytest.raises(DicomError, match="Transfer Syntax"):
        index_file(path)


@pytest.mark.parametrize(
    ("vr", "detail"),
    [
        (b"UA", r"file meta element \(0002,0013\) has an invalid VR"),
        # a real VR whose value pydicom cannot decode (10 bytes of FD): the walker alone would store it
        (b"FD", r"file meta element \(0002,0013\) cannot be decoded by pydicom"),
    ],
)
def test_file_meta_pydicom_cannot_read_is_refused(tmp_path: Path, vr: bytes, detail: str) -> None:
    path, _ = native_file(tmp_path / "n.dcm")
    data = path.read_bytes()
    at = data.index(b"\x02\x00\x13\x00SH")  # Implementation Version Name, written by pydicom
    path.write_bytes(data[: at + 4] + vr + data[at + 6 :])
    value_length = struct.unpack_from("<H", data, at + 6)[0]
    assert value_length % 8 != 0  # so that FD cannot be decoded
    with pytest.raises(DicomError, match=detail):
        index_file(path)


@pytest.mark.parametrize("cut", [10, 200, 400, -1, -5, -30])
def test_truncated_native(tmp_path: Path, cut: int) -> None:
    path, _ = native_file(tmp_path / "n.dcm")
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(DicomError):
        index_file(path)


@pytest.mark.parametrize("cut", [-1, -8, -9, -40, -70])
def test_truncated_fragments(tmp_path: Path, cut: int) -> None:
    path = b.encapsulated(tmp_path / "j.dcm", b.jpeg_frames(3, 32))
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(DicomError, match="truncated"):
        index_file(path)


def test_truncated_inside_sequence(tmp_path: Path) -> None:
    ds, _ = b.nested_dataset()
    path = b.write(ds, tmp_path / "nested.dcm")
    data = path.read_bytes()
    cut = data.index(b"\x00\x04\x00\x05")  # inside the first Encrypted Attributes Sequence
    path.write_bytes(data[: cut + 20])
    with pytest.raises(DicomError, match="truncated"):
        index_file(path)


def test_native_pixel_data_too_short(tmp_path: Path) -> None:
    ds = b.image(b.base(), 10, 10, 16, 3)
    ds.PixelData = b"\x00" * (10 * 10 * 2 * 2)  # two frames' worth for three frames
    path = b.write(ds, tmp_path / "short.dcm")
    with pytest.raises(DicomError, match="fewer than 3 frame"):
        index_file(path)


@pytest.mark.parametrize(
    "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
)
def test_missing_uids(tmp_path: Path, keyword: str) -> None:
    ds = b.base()
    delattr(ds, keyword)
    meta_ds = b.base()  # file meta needs the SOP UIDs; build it from a complete copy
    path = tmp_path / "m.dcm"
    b.write(meta_ds, path)
    ds.file_meta = meta_ds.file_meta
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomError, match="is missing"):
        index_file(path)


@pytest.mark.parametrize("bad", ["1.2.abc", "1.2..3", "1." + "2" * 70, "1.2.3\\1.2.4"])
def test_invalid_uid(tmp_path: Path, bad: str) -> None:
    ds = b.base()
    path = b.write(ds, tmp_path / "ok.dcm")
    with b.lenient_pydicom():
        ds.SeriesInstanceUID = bad
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomError, match="Series Instance UID .* not a valid DICOM UID"):
        index_file(path)


def test_error_details_name_tags_not_values(tmp_path: Path) -> None:
    ds = b.base(PatientName="Secret^Name")
    path = b.write(ds, tmp_path / "ok.dcm")
    with b.lenient_pydicom():
        ds.StudyInstanceUID = "Secret^Name"
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomError) as info:
        index_file(path)
    assert "Secret" not in info.value.detail


def test_media_types() -> None:
    assert frame_media_type("1.2.840.10008.1.2.4.50") == "image/jpeg"
    assert frame_media_type("1.2.840.10008.1.2.4.70") == "image/jpeg"
    assert frame_media_type("1.2.840.10008.1.2.4.80") == "image/jls"
    assert frame_media_type("1.2.840.10008.1.2.4.91") == "image/jp2"
    assert frame_media_type("1.2.840.10008.1.2.4.93") == "image/jpx"
    assert frame_media_type("1.2.840.10008.1.2.5") == "image/dicom-rle"
    assert frame_media_type("1.2.840.10008.1.2.4.110") == "image/jxl"
    assert frame_media_type("1.2.840.10008.1.2.1") == "application/octet-stream"
    assert frame_media_type("1.2.3.4") == "application/octet-stream"


def test_undefined_length_un_is_an_implicit_vr_sequence(tmp_path: Path) -> None:
    """PS3.5 6.2.2: a sequence sent as UN of undefined length is implicit VR little endian inside."""
    path = b.write(b.base(), tmp_path / "un.dcm")
    inner = struct.pack("<HHI", 0x0040, 0x0009, 4) + b"SPS1"  # Scheduled Procedure Step ID, implicit VR
    inner += struct.pack("<HHI", 0x0400, 0x0520, 1100) + b"\x05" * 1100  # Encrypted Content (bulk-sized OB)
    with open(path, "ab") as f:  # the data set runs to the end of the file, so appending adds an element
        f.write(struct.pack("<HH2sHI", 0x0040, 0x0275, b"UN", 0, 0xFFFFFFFF))
        f.write(
            struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        )
        f.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    indexed = index_file(path)
    item = indexed.metadata["00400275"]["Value"][0]
    assert item["00400009"] == {"vr": "SH", "Value": ["SPS1"]}
    assert item["04000520"] == {"vr": "OB", "BulkDataURI": "bulkdata/00400275/0/04000520"}
    assert bulk_bytes(path, indexed) == {"00400275/0/04000520": b"\x05" * 1100}


def test_deflate_bomb_is_refused(tmp_path: Path) -> None:
    path, _ = native_file(tmp_path / "d.dcm", b.DeflatedExplicitVRLittleEndian)
    with pytest.raises(DicomError, match="inflates to more than 100 bytes"):
        index_file(path, inflate_limit=100)


def test_implicit_data_set_under_an_explicit_transfer_syntax_is_named(tmp_path: Path) -> None:
    # pydicom guesses and reads such a file (SC_rgb_jpeg.dcm in its test files); a conformant reader cannot
    path, _ = native_file(tmp_path / "n.dcm", b.ImplicitVRLittleEndian)
    implicit = b"\x02\x00\x10\x00UI\x12\x00" + b.ImplicitVRLittleEndian.encode() + b"\0"
    explicit = b"\x02\x00\x10\x00UI\x14\x00" + b.ExplicitVRLittleEndian.encode() + b"\0"
    data = path.read_bytes()
    assert data.count(implicit) == 1
    changed = bytearray(data.replace(implicit, explicit))
    struct.pack_into("<I", changed, 140, struct.unpack_from("<I", changed, 140)[0] + 2)  # the meta grew 2 bytes
    path.write_bytes(bytes(changed))
    with pytest.raises(DicomError, match="looks implicit VR, but the transfer syntax says explicit VR"):
        index_file(path)
