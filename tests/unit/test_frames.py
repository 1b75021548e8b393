"""FrameIndex packing and the frame-boundary sources (EOT, BOT, fragment walk), on in-memory item streams."""

from __future__ import annotations

import io
import struct
import time

import pytest

from gateway.dicom.frames import FrameIndex, encapsulated_index, native_index
from gateway.errors import DicomError, FrameNotFound, NotFound


def items_stream(bot: list[int] | None, fragments: list[bytes], lead: int = 100) -> tuple[io.BytesIO, list]:
    """``lead`` junk bytes, then BOT item and fragment items as in Pixel Data; returns the (offset, length)
    list."""
    out = bytearray(b"\x00" * lead)
    table = b"".join(struct.pack("<I", o) for o in (bot or []))
    items = []
    for payload in [table, *fragments]:
        out += struct.pack("<HHI", 0xFFFE, 0xE000, len(payload))
        items.append((len(out), len(payload)))
        out += payload
    out += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return io.BytesIO(bytes(out)), items


def frame_bytes(fp: io.BytesIO, index: FrameIndex, n: int) -> bytes:
    data = fp.getvalue()
    return b"".join(data[o : o + length] for o, length in index.ranges(n))


def test_native_ranges_and_roundtrip() -> None:
    index = FrameIndex.native(1000, 512, 3)
    again = FrameIndex.unpack(index.pack())
    assert again == index
    assert again.count == 3
    assert again.ranges(1) == [(1000, 512)]
    assert again.ranges(3) == [(2024, 512)]
    assert again.total_length(2) == 512
    assert len(index.pack()) == 21  # fixed size, whatever the frame count


@pytest.mark.parametrize("n", [0, -1, 4])
def test_out_of_range_frames_are_not_found(n: int) -> None:
    index = FrameIndex.native(0, 10, 3)
    with pytest.raises(FrameNotFound) as info:
        index.ranges(n)
    assert isinstance(info.value, NotFound)
    assert info.value.status == 404
    enc = FrameIndex.encapsulated([(10, 4), (20, 4), (30, 4)], [0, 2])
    with pytest.raises(FrameNotFound):
        enc.ranges(n if n != 4 else 3)


def test_encapsulated_multi_fragment_roundtrip() -> None:
    index = FrameIndex.encapsulated([(10, 4), (20, 6), (40, 2), (50, 8)], [0, 1, 3])
    again = FrameIndex.unpack(index.pack())
    assert again.count == 3
    assert again.ranges(1) == [(10, 4)]
    assert again.ranges(2) == [(20, 6), (40, 2)]
    assert again.ranges(3) == [(50, 8)]
    assert again.total_length(2) == 8
    # 64-bit offsets survive packing (files larger than 4 GiB)
    big = FrameIndex.unpack(FrameIndex.encapsulated([(5 << 32, 7)], [0]).pack())
    assert big.ranges(1) == [(5 << 32, 7)]


def test_single_ranges_are_each_frames_one_range() -> None:
    """``single_ranges`` answers what ``ranges`` answers frame by frame, or None where a frame is not one non-empty
    fragment (a block plan is then not made)."""
    fragments = [(10 + 100 * i, 5 + i % 3) for i in range(12)] + [(5000, 0), (6000, 9), (7000, 4), (8000, 6)]
    index = FrameIndex.unpack(FrameIndex.encapsulated(fragments, [*range(12), 12, 14]).pack())  # 13: empty + one
    for first, last in ((1, 12), (3, 7), (12, 12), (5, 5)):
        assert index.single_ranges(first, last) == [index.ranges(n)[0] for n in range(first, last + 1)]
    assert index.single_ranges(10, 13) is None  # frame 13: an empty fragment, then its bytes
    assert index.single_ranges(14, 14) is None  # frame 14: two fragments
    for first, last in ((0, 3), (3, 2), (14, 15)):
        with pytest.raises(FrameNotFound):
            index.single_ranges(first, last)
    native = FrameIndex.native(100, 7, 5)
    assert native.single_ranges(2, 5) == [(107, 7), (114, 7), (121, 7), (128, 7)]
    assert FrameIndex.native(100, 0, 5).single_ranges(1, 5) is None
    big = FrameIndex.encapsulated([(5 << 32, 7), (6 << 32, 1)], [0, 1])
    assert big.single_ranges(1, 2) == [(5 << 32, 7), (6 << 32, 1)]


@pytest.mark.parametrize("firsts", [[1, 2], [0, 0], [0, 3], [0, 2, 1]])
def test_encapsulated_rejects_bad_frame_starts(firsts: list[int]) -> None:
    with pytest.raises(ValueError):
        FrameIndex.encapsulated([(10, 4), (20, 4), (30, 4)], firsts)


@pytest.mark.parametrize(
    "data", [b"", b"\x00" * 5, b"\x07" + b"\x00" * 20, b"\x01" + struct.pack("<II", 1, 1)]
)
def test_unpack_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        FrameIndex.unpack(data)


def test_native_index_rules() -> None:
    args = dict(
        value_offset=100, rows=2, columns=3, samples_per_pixel=1, bits_allocated=16, number_of_frames=2
    )
    index = native_index(value_length=24, **args)  # type: ignore[arg-type]
    assert index is not None and index.ranges(2) == [(112, 12)]
    # Bits Allocated 1: 6-bit frames do not start on a byte boundary (converted on request); 8-bit ones do
    assert native_index(value_length=24, **{**args, "bits_allocated": 1}) is None  # type: ignore[arg-type]
    bits = native_index(value_length=2, **{**args, "bits_allocated": 1, "columns": 4})  # type: ignore[arg-type]
    assert bits is not None and bits.ranges(2) == [(101, 1)]
    with pytest.raises(DicomError, match="fewer than 2 frame"):
        native_index(value_length=1, **{**args, "bits_allocated": 1, "columns": 4})  # type: ignore[arg-type]
    with pytest.raises(DicomError, match="fewer than 2 frame"):
        native_index(value_length=23, **args)  # type: ignore[arg-type]
    # YBR_FULL_422: two samples per pixel on the wire
    ybr = native_index(
        value_offset=0, value_length=8, rows=2, columns=2, samples_per_pixel=3, bits_allocated=8,
        number_of_frames=1, photometric="YBR_FULL_422",
    )  # fmt: skip
    assert ybr is not None and ybr.ranges(1) == [(0, 8)]


def test_bot_gives_frame_starts_even_without_markers() -> None:
    frags = [b"AAAA", b"BBBB", b"CC", b"DDDDDD"]
    # frame 1 = A+B, frame 2 = C+D; offsets count from the first fragment's item header
    fp, items = items_stream([0, 8 + 4 + 8 + 4], frags)
    index = encapsulated_index(fp, items, 2)
    assert index is not None
    assert frame_bytes(fp, index, 1) == b"AAAABBBB"
    assert frame_bytes(fp, index, 2) == b"CCDDDDDD"


def test_extended_offset_table_wins() -> None:
    frags = [b"AAAA", b"BBBB", b"CCCC"]
    fp, items = items_stream(None, frags)
    eot = struct.pack("<QQ", 0, 24)  # frames start at fragments 0 and 2
    lengths = struct.pack("<QQ", 8, 4)
    index = encapsulated_index(fp, items, 2, extended_offsets=eot, extended_lengths=lengths)
    assert index is not None
    assert frame_bytes(fp, index, 1) == b"AAAABBBB"
    assert frame_bytes(fp, index, 2) == b"CCCC"


def test_bad_offset_table_falls_back_to_fragments() -> None:
    frames = [b"\xff\xd8" + b"x" * 6, b"\xff\xd8" + b"y" * 6]
    fp, items = items_stream([0, 5], frames)  # 5 is not an item boundary
    index = encapsulated_index(fp, items, 2)
    assert index is not None
    assert [frame_bytes(fp, index, n) for n in (1, 2)] == frames
    # wrong number of entries: ignored as well
    fp, items = items_stream([0], frames)
    index = encapsulated_index(fp, items, 2)
    assert index is not None and frame_bytes(fp, index, 2) == frames[1]


def test_empty_bot_single_frame_takes_all_fragments() -> None:
    fp, items = items_stream(None, [b"ab", b"cd", b"ef"])
    index = encapsulated_index(fp, items, 1)
    assert index is not None and index.count == 1
    assert frame_bytes(fp, index, 1) == b"abcdef"


@pytest.mark.parametrize("marker", [b"\xff\xd8", b"\xff\x4f", b"\x00\x00\x00\x0c"])
def test_empty_bot_splits_on_codestream_starts(marker: bytes) -> None:
    frags = [marker + b"11", b"22", marker + b"33", b"44", b"55"]
    fp, items = items_stream(None, frags)
    index = encapsulated_index(fp, items, 2)
    assert index is not None
    assert frame_bytes(fp, index, 1) == marker + b"1122"
    assert frame_bytes(fp, index, 2) == marker + b"334455"


def test_unfindable_frames_give_none() -> None:
    fp, items = items_stream(None, [b"11", b"22", b"33"])
    assert encapsulated_index(fp, items, 2) is None
    fp, items = items_stream(None, [])
    assert encapsulated_index(fp, items, 1) is None


def test_unpack_and_ranges_of_32000_frames() -> None:
    n = 32_000
    packed = FrameIndex.encapsulated([(1000 + 40 * i, 32) for i in range(n)], range(n)).pack()
    rounds = 20_000
    start = time.perf_counter()
    for i in range(rounds):
        FrameIndex.unpack(packed).ranges(1 + (i * 7919) % n)
    per_call = (time.perf_counter() - start) / rounds
    print(f"unpack+ranges on a {n}-frame index: {per_call * 1e6:.1f} µs")
    assert FrameIndex.unpack(packed).ranges(n) == [(1000 + 40 * (n - 1), 32)]
