"""Synthetic DICOM: strict pydicom reads, CT geometry, determinism, PHI placement (and its absence with
--clean), and every WSI offset-table layout checked by parsing the file ourselves and fetching the last frame
by offset."""

from __future__ import annotations

import hashlib
import io
import mmap
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
import pytest
from click.testing import CliRunner
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import pixel_array

import gateway.tools.synth as synth_module
from gateway.errors import InvalidUID
from gateway.tools.synth import (
    CT_IMAGE,
    FAKE_PATIENT_NAMES,
    MR_IMAGE,
    WSI_IMAGE,
    Offsets,
    make_series,
    make_wsi,
    synth,
    wsi_tile,
)

UNDEFINED = 0xFFFFFFFF
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
PIXEL_DATA = 0x7FE00010
FAMILY_NAMES = [name.split("^")[0] for name in FAKE_PATIENT_NAMES]


@pytest.fixture(autouse=True)
def strict_reading() -> Iterator[None]:
    """Every dcmread in this module raises on any invalid value instead of warning."""
    before = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        pydicom.config.settings.reading_validation_mode = before


# --- a minimal Explicit VR Little Endian walker, independent of pydicom -------------------------------------


def _element(buf: mmap.mmap, pos: int) -> tuple[int, bytes, int, int, int]:
    """(tag, vr, value position, length, end position) of the element at ``pos``."""
    group, element = struct.unpack_from("<HH", buf, pos)
    vr = bytes(buf[pos + 4 : pos + 6])
    if vr in LONG_VRS:
        (length,) = struct.unpack_from("<I", buf, pos + 8)
        value = pos + 12
    else:
        (length,) = struct.unpack_from("<H", buf, pos + 6)
        value = pos + 8
    end = _skip_items(buf, value) if length == UNDEFINED else value + length
    return (group << 16) | element, vr, value, length, end


def _skip_items(buf: mmap.mmap, pos: int) -> int:
    """Position after the sequence delimiter of an undefined-length SQ or encapsulated Pixel Data."""
    while True:
        group, element, length = struct.unpack_from("<HHI", buf, pos)
        pos += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            return pos
        assert (group, element) == (0xFFFE, 0xE000)
        if length != UNDEFINED:
            pos += length
            continue
        while struct.unpack_from("<HH", buf, pos) != (0xFFFE, 0xE00D):
            pos = _element(buf, pos)[4]
        pos += 8


def top_level(path: Path) -> list[tuple[int, bytes, int, int, int]]:
    """Every top-level element in file order (file meta included), walked from byte 132."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        assert buf[128:132] == b"DICM"
        elements, pos = [], 132
        while pos < len(buf):
            elements.append(_element(buf, pos))
            pos = elements[-1][4]
        assert pos == len(buf)
        return elements


Element = tuple[int, bytes, int, int, int]  # tag, VR, value position, value length, end position


def element_of(elements: list[Element], tag: int) -> Element:
    return next(e for e in elements if e[0] == tag)


def read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def items_from(f: io.BufferedReader, pos: int, stop: int | None) -> Iterator[bytes]:
    """Fragment values from ``pos`` until ``stop`` (exclusive) or the sequence delimiter."""
    f.seek(pos)
    while stop is None or pos < stop:
        group, element, length = struct.unpack("<HHI", f.read(8))
        if (group, element) == (0xFFFE, 0xE0DD):
            return
        assert (group, element) == (0xFFFE, 0xE000)
        yield f.read(length)
        pos += 8 + length


def frame_by_bot(path: Path, number: int) -> bytes:
    """Frame ``number`` (1-based) using only the Basic Offset Table: seek, read."""
    pixel = element_of(top_level_header(path), PIXEL_DATA)
    with path.open("rb") as f:
        f.seek(pixel[2])
        group, element, length = struct.unpack("<HHI", f.read(8))
        assert (group, element) == (0xFFFE, 0xE000) and length > 0
        offsets = struct.unpack(f"<{length // 4}I", f.read(length))
        first = pixel[2] + 8 + length
        stop = first + offsets[number] if number < len(offsets) else None
        return b"".join(items_from(f, first + offsets[number - 1], stop))


def top_level_header(path: Path) -> list[tuple[int, bytes, int, int, int]]:
    """Top-level elements up to and including Pixel Data, without walking the fragments."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        elements, pos = [], 132
        while True:
            group, element = struct.unpack_from("<HH", buf, pos)
            if (group << 16) | element == PIXEL_DATA:
                (length,) = struct.unpack_from("<I", buf, pos + 8)
                elements.append((PIXEL_DATA, bytes(buf[pos + 4 : pos + 6]), pos + 12, length, -1))
                return elements
            elements.append(_element(buf, pos))
            pos = elements[-1][4]


def all_fragments(path: Path) -> list[bytes]:
    pixel = element_of(top_level_header(path), PIXEL_DATA)
    with path.open("rb") as f:
        f.seek(pixel[2])
        _, _, bot_length = struct.unpack("<HHI", f.read(8))
        return list(items_from(f, pixel[2] + 8 + bot_length, None))


def walk(ds: Dataset, depth: int = 0) -> Iterator[tuple[int, pydicom.DataElement]]:
    """(sequence depth, element) for every element, recursively."""
    for element in ds:
        yield depth, element
        if element.VR == "SQ":
            for item in element.value:
                yield from walk(item, depth + 1)


# --- CT / MR ------------------------------------------------------------------------------------------------


def test_ct_series_reads_strictly_with_consistent_geometry(tmp_path: Path) -> None:
    paths = make_series(tmp_path, slices=12, rows=128, columns=128, seed=1)
    assert [p.name for p in paths] == [f"ct-1-{i:04d}.dcm" for i in range(1, 13)]
    datasets = [pydicom.dcmread(p) for p in paths]
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert {ds.SOPClassUID for ds in datasets} == {CT_IMAGE}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({ds[keyword].value for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 12
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, 13))
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert np.allclose(np.diff(z), -2.5) and float(first.SliceThickness) == 2.5
    assert all(float(ds.SliceLocation) == float(ds.ImagePositionPatient[2]) for ds in datasets)
    assert all(list(map(float, ds.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0] for ds in datasets)
    assert [float(v) for v in first.PixelSpacing] == [3.125, 3.125]  # 400 mm field of view / 128
    assert (first.Rows, first.Columns, first.BitsAllocated, first.PhotometricInterpretation) == (
        128,
        128,
        16,
        "MONOCHROME2",
    )
    assert (first.RescaleSlope, first.RescaleIntercept, first.RescaleType) == (1, -1024, "HU")

    hu = [ds.pixel_array.astype(np.float64) * ds.RescaleSlope + ds.RescaleIntercept for ds in datasets]
    assert hu[0][0, 0] < -900  # air in the corner
    assert -150 < float(np.median(hu[6][54:74, 54:74])) < 150  # soft tissue in the middle
    assert max(float(h.max()) for h in hu) > 700  # bone
    assert float(np.abs(hu[0] - hu[11]).mean()) > 50  # chest vs pelvis: the anatomy changes
    assert all(not np.array_equal(hu[i], hu[i + 1]) for i in range(11))


def test_ct_default_matrix_is_512_and_mr_uses_its_own_sop_class(tmp_path: Path) -> None:
    ct = pydicom.dcmread(make_series(tmp_path / "ct", slices=2)[0])
    assert (ct.Rows, ct.Columns, len(ct.PixelData)) == (512, 512, 512 * 512 * 2)
    mr_paths = make_series(tmp_path / "mr", modality="MR", slices=4, rows=64, columns=64)
    mr = [pydicom.dcmread(p) for p in mr_paths]
    assert {ds.SOPClassUID for ds in mr} == {MR_IMAGE}
    assert mr[0].Modality == "MR" and mr[0].ScanningSequence == "SE" and "RescaleSlope" not in mr[0]
    assert not np.array_equal(mr[0].pixel_array, mr[1].pixel_array)
    assert mr[0].StudyInstanceUID != ct.StudyInstanceUID


def test_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    def digest(paths: list[Path]) -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]

    a = make_series(tmp_path / "a", slices=3, rows=64, columns=64, seed=5)
    b = make_series(tmp_path / "b", slices=3, rows=64, columns=64, seed=5)
    c = make_series(tmp_path / "c", slices=3, rows=64, columns=64, seed=6)
    assert digest(a) == digest(b)
    assert not set(digest(a)) & set(digest(c))
    w1 = make_wsi(tmp_path / "w1", frames=100, seed=5)
    w2 = make_wsi(tmp_path / "w2", frames=100, seed=5)
    w3 = make_wsi(tmp_path / "w3", frames=100, seed=6)
    assert w1.read_bytes() == w2.read_bytes() != w3.read_bytes()
    assert pydicom.dcmread(w1).SOPInstanceUID != pydicom.dcmread(w3).SOPInstanceUID


def test_study_uid_is_used_and_validated(tmp_path: Path) -> None:
    paths = make_series(tmp_path, slices=2, rows=32, columns=32, study_uid="1.2.3.4")
    wsi = make_wsi(tmp_path, frames=4, study_uid="1.2.3.4")
    assert {pydicom.dcmread(p).StudyInstanceUID for p in [*paths, wsi]} == {"1.2.3.4"}
    with pytest.raises(InvalidUID):
        make_series(tmp_path, slices=1, study_uid="1.2.x")
    with pytest.raises(ValueError, match="modality"):
        make_series(tmp_path, modality="US")


# --- PHI, and the absence of it -----------------------------------------------------------------------------


def test_phi_hides_where_real_files_hide_it(tmp_path: Path) -> None:
    path = make_series(tmp_path, slices=1, rows=32, columns=32, seed=2, patient="MRN42")[0]
    ds = pydicom.dcmread(path)
    family, given = str(ds.PatientName).split("^")
    assert family in FAMILY_NAMES and ds.PatientID == "MRN42"
    for keyword in (
        "PatientBirthDate",
        "PatientSex",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "StudyDate",
        "AcquisitionDate",
        "InstitutionName",
        "InstitutionAddress",
        "DeviceSerialNumber",
        "OperatorsName",
        "ReferringPhysicianName",
    ):
        assert ds[keyword].value, keyword
    assert ds.OtherPatientIDsSequence[0].PatientID
    assert f"{given} {family}" in ds.StudyDescription and family in ds.ImageComments
    deep = [e.value for depth, e in walk(ds) if e.VR == "PN" and depth >= 3]
    # RequestAttributes > ScheduledProtocolCode > ProtocolContext > PersonName
    assert deep == [ds.PatientName]
    assert ds[0x0009, 0x0010].value == "ACME_SYNTH 1.0"
    private_item = ds[0x0009, 0x1002].value[0]
    assert private_item[0x0009, 0x1010].value == ds.PatientName
    assert ds[0x0009, 0x1001].value == f"{given} {family}"

    # The name after Pixel Data: in file order, and invisible to stop_before_pixels.
    tags = [e[0] for e in top_level(path)]
    assert tags.index(0x7FE11001) > tags.index(PIXEL_DATA)
    assert ds[0x7FE1, 0x1001].value == ds.PatientName
    assert (0x7FE1, 0x1001) not in pydicom.dcmread(path, stop_before_pixels=True)
    assert path.read_bytes().count(family.encode()) >= 8


def assert_clean(path: Path, header_only: bool = False) -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=header_only)
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert ds.PatientName == "" and ds.PatientBirthDate == "" and ds.StudyDate == ""
    elements = list(walk(ds))
    assert not [e.tag for _, e in elements if e.tag.group % 2], "private tags"
    assert not [e.tag for _, e in elements if e.VR == "PN" and e.value], "names"
    for keyword in (
        "InstitutionName",
        "OperatorsName",
        "PatientAddress",
        "OtherPatientIDsSequence",
        "StudyDescription",
        "ImageComments",
        "RequestAttributesSequence",
    ):
        assert keyword not in ds, keyword
    raw = read_at(path, 0, 2_000_000)
    assert not [name for name in FAMILY_NAMES if name.encode() in raw]


def test_clean_series_has_no_phi_and_nothing_after_pixel_data(tmp_path: Path) -> None:
    path = make_series(tmp_path, slices=2, rows=32, columns=32, seed=2, clean=True)[0]
    assert_clean(path)
    assert top_level(path)[-1][0] == PIXEL_DATA
    assert pydicom.dcmread(path).PatientID == ""


def test_clean_wsi_has_no_phi_and_nothing_after_pixel_data(tmp_path: Path) -> None:
    path = make_wsi(tmp_path, frames=20, seed=2, clean=True, patient="ANON-7")
    assert_clean(path)
    assert top_level(path)[-1][0] == PIXEL_DATA
    assert pydicom.dcmread(path, stop_before_pixels=True).PatientID == "ANON-7"


# --- WSI ----------------------------------------------------------------------------------------------------


def test_wsi_attributes_a_viewer_needs(tmp_path: Path) -> None:
    path = make_wsi(tmp_path, frames=2000, seed=3)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == WSI_IMAGE == "1.2.840.10008.5.1.4.1.1.77.1.6"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.Rows, ds.Columns) == (
        "YBR_FULL_422",
        3,
        256,
        256,
    )
    assert ds.NumberOfFrames == 2000 and ds.DimensionOrganizationType == "TILED_FULL"
    assert (ds.TotalPixelMatrixColumns // 256) * (ds.TotalPixelMatrixRows // 256) == 2000
    assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (50 * 256, 40 * 256)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.00025, 0.00025]
    assert ds.OpticalPathSequence[0].ICCProfile[36:40] == b"acsp"
    assert ds.SpecimenDescriptionSequence[0].SpecimenUID and ds.ContainerIdentifier
    # pydicom decodes the last frame, and it is the tile we meant to write.
    decoded = pixel_array(path, index=1999)
    assert decoded.shape == (256, 256, 3)
    expected = np.asarray(Image.open(io.BytesIO(wsi_tile(3, 2000, frames=2000))).convert("RGB"))
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 2


LAYOUTS = [("bot", 1), ("bot", 2), ("empty", 1), ("empty", 3), ("eot", 1)]


@pytest.mark.parametrize(("offsets", "fragments"), LAYOUTS)
def test_last_frame_is_reachable_through_the_offset_table(
    tmp_path: Path, offsets: Offsets, fragments: int
) -> None:
    frames, seed = 2000, 4
    path = make_wsi(tmp_path, frames=frames, offsets=offsets, fragments_per_frame=fragments, seed=seed)
    expected = wsi_tile(seed, frames, frames=frames)
    assert expected[:2] == b"\xff\xd8" and b"frame 0000002000" in expected and len(expected) % 2 == 0
    assert expected != wsi_tile(seed, frames - 1, frames=frames)

    elements = top_level(path)  # walks every fragment: item lengths all defined and even, file ends cleanly
    tags = [e[0] for e in elements]
    pixel = element_of(elements, PIXEL_DATA)
    assert pixel[3] == UNDEFINED and tags[tags.index(PIXEL_DATA) + 1] == 0x7FE10010
    fragments_seen = all_fragments(path)
    assert len(fragments_seen) == frames * fragments
    assert all(len(f) % 2 == 0 for f in fragments_seen)
    bot_length = struct.unpack("<I", read_at(path, pixel[2] + 4, 4))[0]

    if offsets == "bot":
        assert bot_length == 4 * frames
        assert frame_by_bot(path, frames) == expected
        assert frame_by_bot(path, 1) == wsi_tile(seed, 1, frames=frames)
    elif offsets == "eot":
        assert bot_length == 0
        table = element_of(elements, 0x7FE00001)
        lengths = element_of(elements, 0x7FE00002)
        assert table[1] == lengths[1] == b"OV"
        starts = struct.unpack(f"<{frames}Q", read_at(path, table[2], table[3]))
        sizes = struct.unpack(f"<{frames}Q", read_at(path, lengths[2], lengths[3]))
        item = pixel[2] + 8 + starts[-1]
        assert struct.unpack("<HHI", read_at(path, item, 8)) == (0xFFFE, 0xE000, sizes[-1])
        assert read_at(path, item + 8, sizes[-1]) == expected
    else:
        assert bot_length == 0 and 0x7FE00001 not in tags
        # No table: a frame starts at every fragment that starts with a JPEG SOI marker.
        soi = [i for i, f in enumerate(fragments_seen) if f[:2] == b"\xff\xd8"]
        assert len(soi) == frames
        assert b"".join(fragments_seen[soi[-1] :]) == expected

    # pydicom agrees on the same frame (a second, independent parser). Without any table it can only count
    # fragments, so the multi-fragment "empty" layout is left to the SOI check above.
    extended: tuple[bytes, bytes] | None = None
    if offsets == "eot":
        extended = (read_at(path, table[2], table[3]), read_at(path, lengths[2], lengths[3]))
    if fragments == 1 or offsets == "bot":
        with path.open("rb") as f:
            f.seek(pixel[2])
            assert get_frame(f, frames - 1, number_of_frames=frames, extended_offsets=extended) == expected


def test_native_wsi_frames_sit_at_fixed_offsets(tmp_path: Path) -> None:
    path = make_wsi(tmp_path, native=True, seed=5)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (ds.NumberOfFrames, ds.PhotometricInterpretation, ds.LossyImageCompression) == (64, "RGB", "00")
    size = 256 * 256 * 3
    pixel = element_of(top_level(path), PIXEL_DATA)
    assert pixel[3] == 64 * size
    last = read_at(path, pixel[2] + 63 * size, size)
    assert last == wsi_tile(5, 64, native=True)
    assert last != read_at(path, pixel[2] + 62 * size, size)
    assert np.array_equal(pixel_array(path, index=63), np.frombuffer(last, np.uint8).reshape(256, 256, 3))


def test_bad_wsi_options_are_refused_before_writing(tmp_path: Path) -> None:
    for kwargs, message in [
        ({"offsets": "eot", "fragments_per_frame": 2}, "one fragment per frame"),
        ({"native": True, "fragments_per_frame": 2}, "JPEG only"),
        ({"frames": 0}, "frames"),
        ({"tile": 100}, "multiple of 16"),
        ({"offsets": "nope"}, "offsets"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_wsi(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_default_32000_frame_wsi_frame_32000_is_reachable(tmp_path: Path) -> None:
    for cache in (synth_module._base_tiles, synth_module._jpeg_tiles, synth_module._layout):
        cache.cache_clear()  # time the tile encoding too, not just the streaming
    started = time.perf_counter()
    path = make_wsi(tmp_path)
    elapsed = time.perf_counter() - started
    size = path.stat().st_size
    print(f"\n32,000-frame WSI: {size / 1e6:.0f} MB written in {elapsed:.2f} s")
    try:
        assert pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames == 32000
        assert frame_by_bot(path, 32000) == wsi_tile(0, 32000)
        assert frame_by_bot(path, 16000) == wsi_tile(0, 16000)
        assert b"frame 0000032000" in frame_by_bot(path, 32000)
    finally:
        path.unlink()


# --- command line -------------------------------------------------------------------------------------------


def test_cli_writes_files_and_rejects_bad_options(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        synth,
        [
            "ct",
            "--out",
            str(tmp_path / "ct"),
            "--slices",
            "3",
            "--rows",
            "32",
            "--columns",
            "32",
            "--seed",
            "9",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 3 CT files" in result.output and len(list((tmp_path / "ct").glob("ct-9-*.dcm"))) == 3
    result = runner.invoke(
        synth,
        ["mr", "--out", str(tmp_path / "mr"), "--slices", "2", "--rows", "32", "--columns", "32", "--clean"],
    )
    assert result.exit_code == 0, result.output
    assert_clean(tmp_path / "mr" / "mr-0-0001.dcm")
    result = runner.invoke(
        synth, ["wsi", "--out", str(tmp_path / "wsi"), "--frames", "12", "--offsets", "eot"]
    )
    assert result.exit_code == 0, result.output
    assert "12 frames" in result.output and (tmp_path / "wsi" / "wsi-0.dcm").exists()

    for args, message in [
        (["wsi", "--native", "--offsets", "eot"], "--offsets applies to JPEG"),
        (["wsi", "--offsets", "eot", "--fragments-per-frame", "2"], "one fragment per frame"),
        (["wsi", "--frames", "0"], "frames must be"),
        (["ct", "--study-uid", "not-a-uid"], "not a valid DICOM UID"),
        (["ct", "--slices", "0"], "slices must be"),
    ]:
        result = runner.invoke(synth, [*args, "--out", str(tmp_path / "bad")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())
