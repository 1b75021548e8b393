"""Frames served from block plans (README "Distinct frames without Python": a single frame from 100 on comes from
its block of 100 frames' plan, NGINX alone) as outside clients read them, from multi-frame files other toolkits
wrote, on both storage backends: every frame byte for byte what pydicom extracts from the file, every status and
Content-Type checked, whichever plan answered.

The files, 260 frames each (block 1 whole, block 2 partial) unless named:
- highdicom 0.28: a Legacy Converted Enhanced CT (native, 16-bit), Segmentations (FRACTIONAL: 8-bit frames of an
  odd length; BINARY, whose 1-bit frames do not start on a byte boundary: re-packed, no block; LABELMAP; JPEG-LS
  with an Extended Offset Table; TILED_FULL of a 400-tile slide), Parametric Maps of floats and doubles;
- pydicom 3.0 ``encapsulate``/``encapsulate_extended``: JPEG baseline (Pillow: odd-length frames among them), RLE
  Lossless (pydicom's encoder) and JPEG 2000 (imagecodecs) with a Basic Offset Table, an Extended Offset Table and
  none; JPEG-LS; JPEG and JPEG 2000 in two fragments a frame (no block); JPEG of 199 and 200 frames;
- DCMTK and GDCM (when installed): the enhanced CT in RLE, JPEG lossless and JPEG-LS with and without offset
  tables, JPEG 2000, and big-endian and deflated (converted: no block);
- wsidicom 0.36: a pyramid of a 400-tile slide (JPEG, Basic Offset Table).
The clients: dicomweb-client 0.61 ``retrieve_instance_frames`` (its default multipart Accept and explicit media
types), wsidicom over DICOMweb, and plain HTTP requests with each single-part and multipart Accept.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import imagecodecs
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels.utils import pack_bits
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless, generate_uid

from gateway import nginx_contract as nginx
from gateway.dicomweb.wado import DERIVATIVE_TS
from gateway.tools.synth import make_series, make_wsi
from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import RunningStack, stack_holding
from tests.e2e.test_derivatives import wait_for_derivative
from tests.e2e.test_frame_blocks import log_lines
from tests.e2e.test_highdicom import _parametric_map, _segmentation
from tests.e2e.test_real_files import multipart_parts
from tests.requirements import require

BLOCK = nginx.FRAMES_PER_BLOCK
FRAMES = 260
ROWS, COLUMNS = 17, 19
OCTETS = "application/octet-stream"
# the frame numbers a block plan's edges are made of: below the first block, its first and last, the next block's
# first, the partial last block, the last frame
EDGES = (1, 99, 100, 101, 150, 199, 200, 201)
COUNTS = (199, 200)


def edges(last: int) -> list[int]:
    return [*EDGES, last - 1, last]


pytestmark = [
    pytest.mark.third_party,
    pytest.mark.filterwarnings("ignore:No bulk data URI handler provided:UserWarning"),
]


def _pixels(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (count, ROWS, COLUMNS), dtype=np.uint8)
    # some structure, so each JPEG frame has its own length (odd and even ones: pydicom pads the odd)
    return (base // (1 + np.arange(count) % 7)[:, None, None]).astype(np.uint8)


def _jpeg(frame: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame, "L").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _rle(frame: np.ndarray) -> bytes:
    from pydicom.pixels.encoders import RLELosslessEncoder

    return RLELosslessEncoder.encode(
        frame,
        rows=ROWS,
        columns=COLUMNS,
        samples_per_pixel=1,
        bits_allocated=8,
        bits_stored=8,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
        encoding_plugin="pydicom",
    )


def _j2k(frame: np.ndarray) -> bytes:
    return bytes(imagecodecs.jpeg2k_encode(frame, level=0, codecformat="J2K"))


def _encapsulated(
    template: pydicom.Dataset, path: Path, syntax: str, frames: list[bytes], table: str, per_frame: int = 1
) -> Path:
    """A multi-frame image of ``frames``, encapsulated by pydicom with ``table`` (bot, eot, none) and ``per_frame``
    fragments to a frame."""
    ds = pydicom.Dataset()
    ds.update(template)
    ds.file_meta = pydicom.dataset.FileMetaDataset(template.file_meta)
    ds.SOPInstanceUID = generate_uid(prefix="2.25.")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    ds.file_meta.TransferSyntaxUID = syntax
    ds.NumberOfFrames = len(frames)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            del ds[keyword]
    if table == "eot":
        data, offsets, lengths = encapsulate_extended(frames)
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = offsets, lengths
    else:
        data = encapsulate(frames, fragments_per_frame=per_frame, has_bot=table == "bot")
    ds.PixelData = data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def _renamed(source: Path, path: Path) -> Path:
    """``source`` as an instance of its own (the tools keep the UIDs of the file they convert)."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    ds.save_as(path)
    return path


# other toolkits' writers, each given the enhanced CT (16-bit, 260 frames) and an output path
TOOLS = {
    "dcmtk-rle": ["dcmcrle"],
    "dcmtk-rle-empty": ["dcmcrle", "-ot"],
    "dcmtk-jpeg-lossless": ["dcmcjpeg", "+e1"],
    "dcmtk-jpeg-lossless-empty": ["dcmcjpeg", "+e1", "-ot"],
    "dcmtk-jpegls": ["dcmcjpls"],
    "gdcm-j2k": ["gdcmconv", "--j2k"],
    "gdcm-rle": ["gdcmconv", "--rle"],
    "gdcm-jpegls": ["gdcmconv", "--jpegls"],
    "dcmtk-big-endian": ["dcmconv", "+tb"],
    "dcmtk-deflated": ["dcmconv", "+td"],
}
# frames converted to little-endian bytes by the gateway: each gets its own plan, then the converter's bytes
CONVERTED = {"seg-binary", "dcmtk-big-endian", "dcmtk-deflated"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("block-frames-outside")
    ct_files = make_series(base / "ct", modality="CT", slices=FRAMES, rows=ROWS, columns=COLUMNS, seed=61, clean=True)
    ct = [pydicom.dcmread(p) for p in ct_files]
    shape = (FRAMES, ROWS, COLUMNS)
    mask = np.zeros((*shape, 1), dtype=bool)
    for n in range(FRAMES):
        mask[n, n % ROWS :, (3 * n) % COLUMNS :, 0] = True
    fractional = np.zeros((*shape, 1), dtype=np.float32)
    fractional[..., 0] = (np.arange(np.prod(shape)) % 251 / 250.0).reshape(shape)
    values = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * 0.37 - 150.25).astype(np.float32)
    # a native slide of 20 x 20 tiles of 16 px: its TILED_FULL Segmentation has 400 frames of 256 bits
    wsi = pydicom.dcmread(make_wsi(base / "wsi", frames=400, native=True, tile=16, seed=63, clean=True))
    tiles = np.zeros((1, int(wsi.TotalPixelMatrixRows), int(wsi.TotalPixelMatrixColumns), 1), dtype=bool)
    tiles[0, 5:300:3, 7:310:2, 0] = True
    made = {
        "ct-enhanced": hd.legacy.LegacyConvertedEnhancedCTImage(
            ct, series_instance_uid=hd.UID(), series_number=70, sop_instance_uid=hd.UID(), instance_number=1
        ),
        "seg-fractional": _segmentation(ct, fractional, "FRACTIONAL", 71),
        "seg-binary": _segmentation(ct, mask, "BINARY", 72),
        "pm-float": _parametric_map(ct, values, 73),
        "pm-double": _parametric_map(ct, values.astype(np.float64), 74),
        "seg-jpegls-eot": _segmentation(
            ct, fractional, "FRACTIONAL", 75, transfer_syntax_uid=JPEGLSLossless, use_extended_offset_table=True
        ),
        "seg-labelmap": _segmentation(
            ct, np.where(mask[..., 0], 2, 1).astype(np.uint8), "LABELMAP", 76,
            palette_color_lut_transformation=hd.PaletteColorLUTTransformation.from_colors(["black", "red", "blue"]),
        ),
        "seg-tiled-full": _segmentation(
            [wsi], tiles, "BINARY", 77, tile_pixel_array=True, dimension_organization_type="TILED_FULL",
            omit_empty_frames=False,
        ),
    }
    paths = {}
    for name, dataset in made.items():
        paths[name] = base / f"{name}.dcm"
        dataset.save_as(paths[name])
    pixels = _pixels(FRAMES, 62)
    template = ct[0]
    jpeg = [_jpeg(frame) for frame in pixels]
    assert {len(f) % 2 for f in jpeg} == {0, 1}  # odd frames too: their pad byte is part of the frame (README)
    for table in ("bot", "eot", "none"):
        paths[f"jpeg-{table}"] = _encapsulated(template, base / f"jpeg-{table}.dcm", JPEGBaseline8Bit, jpeg, table)
    rle, j2k = [_rle(f) for f in pixels], [_j2k(f) for f in pixels]
    for table in ("bot", "eot", "none"):
        paths[f"rle-{table}"] = _encapsulated(template, base / f"rle-{table}.dcm", RLELossless, rle, table)
        paths[f"j2k-{table}"] = _encapsulated(template, base / f"j2k-{table}.dcm", JPEG2000Lossless, j2k, table)
    paths["jpeg-bot-2"] = _encapsulated(template, base / "jpeg-bot-2.dcm", JPEGBaseline8Bit, jpeg, "bot", 2)
    paths["j2k-none-2"] = _encapsulated(template, base / "j2k-none-2.dcm", JPEG2000Lossless, j2k, "none", 2)
    paths["jpegls-none"] = _encapsulated(
        template, base / "jpegls.dcm", JPEGLSLossless, [bytes(imagecodecs.jpegls_encode(f)) for f in pixels], "none"
    )
    # DCMTK and GDCM compress the enhanced CT, and DCMTK writes it big-endian and deflated (frames converted)
    for name, command in TOOLS.items():
        if shutil.which(command[0]):
            made_by = base / f"{name}-made.dcm"
            subprocess.run([*command, str(paths["ct-enhanced"]), str(made_by)], check=True, capture_output=True)
            paths[name] = _renamed(made_by, base / f"{name}.dcm")
    for count in COUNTS:  # the last block whole, or holding one frame
        named = base / f"jpeg-{count}.dcm"
        paths[f"jpeg-{count}"] = _encapsulated(template, named, JPEGBaseline8Bit, jpeg[:count], "bot")
    return paths


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> Iterator[RunningStack]:
    moto = request.getfixturevalue("moto_server") if request.param == "s3" else None
    var = tmp_path_factory.mktemp(f"block-outside-{request.param}")
    with stack_holding(var, request.param, moto, list(files.values())) as running:
        yield running


def pydicom_frames(path: Path) -> list[bytes]:
    """Each frame as pydicom extracts it from the file: the fragments (pad byte included) of an encapsulated frame,
    the frame's slice of native pixel data (1-bit frames: its bits re-packed from a byte boundary, PS3.5 8.1.1)."""
    ds = pydicom.dcmread(path)
    count = int(ds.get("NumberOfFrames") or 1)
    keyword = next(k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds)
    data = ds[keyword].value
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return list(generate_frames(data, number_of_frames=count))
    if ds.BitsAllocated == 1:
        return [pack_bits(frame, pad=False) for frame in ds.pixel_array.reshape(count, -1)]
    if not ds.file_meta.TransferSyntaxUID.is_little_endian or ds.file_meta.TransferSyntaxUID.is_deflated:
        # PS3.18 8.7.3.3.1: a big-endian or deflated file's frames are served as little-endian bytes
        return [frame.astype(frame.dtype.newbyteorder("<")).tobytes() for frame in ds.pixel_array.reshape(count, -1)]
    size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
    return [data[n * size : (n + 1) * size] for n in range(count)]


def media_type_of(path: Path) -> tuple[str, str]:
    """(the single-part media type frames are served in, the transfer syntax they are labelled with)."""
    from gateway.dicom.index import frame_media_type

    ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if not pydicom.uid.UID(ts).is_compressed:
        return OCTETS, "1.2.840.10008.1.2.1"
    return frame_media_type(ts), ts


NAMES = ["ct-enhanced", "seg-fractional", "seg-binary", "pm-float", "pm-double", "seg-jpegls-eot", "seg-labelmap",
         "seg-tiled-full", "jpeg-bot", "jpeg-eot", "jpeg-none", "rle-bot",
         "rle-eot", "rle-none", "j2k-bot", "j2k-eot", "j2k-none", "jpeg-bot-2", "j2k-none-2", "jpegls-none", *TOOLS]


def file_of(files: dict[str, Path], name: str) -> Path:
    require(name in files, f"{TOOLS.get(name, [name])[0]} is not installed")
    return files[name]


def token_root(stack: RunningStack, path: Path) -> str:
    study, series, sop = uids_of(path)
    return f"{stack.root(stack.issue([study])['token'])}/studies/{study}/series/{series}/instances/{sop}"


# S3 reads a frame's ranges where the local folder reads the same ranges from a file, from the same plans: there,
# one file for each way a frame is put together (native, one fragment with and without a table, fragments joined,
# converted from deflated and from 1-bit), not the whole corpus again (four of the suite's slowest minutes)
S3_NAMES = ("ct-enhanced", "jpeg-bot", "jpeg-none", "jpeg-bot-2", "dcmtk-deflated", "seg-binary")
assert BACKENDS[0] == "file"  # the folder-only test below names the stack fixture's first param: one stack each
FOLDER_ONLY = [name for name in NAMES if name not in S3_NAMES]


@pytest.mark.parametrize("name", S3_NAMES)
def test_every_frame_of_an_outside_file_is_what_pydicom_extracts(
    stack: RunningStack, files: dict[str, Path], name: str
) -> None:
    """On both backends (the stack fixture's params)."""
    assert_every_frame_is_what_pydicom_extracts(stack, files, name)


@pytest.mark.parametrize("stack", ["file"], indirect=True)
@pytest.mark.parametrize("name", FOLDER_ONLY)
def test_every_frame_of_more_outside_files_is_what_pydicom_extracts(
    stack: RunningStack, files: dict[str, Path], name: str
) -> None:
    """The rest of the corpus, from the local folder."""
    assert_every_frame_is_what_pydicom_extracts(stack, files, name)


def assert_every_frame_is_what_pydicom_extracts(stack: RunningStack, files: dict[str, Path], name: str) -> None:
    """Every one of the 260 frames alone, in its own media type and as application/octet-stream (the block's plan
    made, then cached), and the frames at the blocks' edges again (every plan cached), against pydicom's
    extraction; one past the last is the JSON 404."""
    path = file_of(files, name)
    frames = pydicom_frames(path)
    last = len(frames)
    assert last == (400 if name == "seg-tiled-full" else FRAMES)
    media, ts = media_type_of(path)
    address = token_root(stack, path)
    for accept in sorted({media, OCTETS}):
        edges = {1, 2, 99, 100, 101, 150, 199, 200, 201, last - 1, last}
        for attempt, numbers in enumerate((range(1, last + 1), sorted(edges))):
            for number in numbers:
                frame = frames[number - 1]
                answer = requests.get(f"{address}/frames/{number}", headers={"Accept": accept}, timeout=30)
                assert answer.status_code == 200, (accept, attempt, number, answer.text[:200])
                assert answer.headers["Content-Type"] == f"{accept}; transfer-syntax={ts}", (accept, number)
                assert answer.content == frame, (accept, attempt, number)
        for number in (last + 1, last + BLOCK, 5 * BLOCK + 5, 999_999_999):
            answer = requests.get(f"{address}/frames/{number}", headers={"Accept": accept}, timeout=30)
            assert (answer.status_code, answer.headers["Content-Type"]) == (404, "application/json"), number
            assert answer.json()["error"] == "frame_not_found"


# frames in more than one fragment, or re-packed 1-bit frames: each gets its own plan from Python (no block)
NO_BLOCKS = {"jpeg-bot-2", "j2k-none-2", *CONVERTED}


@pytest.mark.parametrize("name", S3_NAMES)
def test_dicomweb_client_reads_the_frames_at_each_block_edge(
    stack: RunningStack, files: dict[str, Path], name: str
) -> None:
    """On both backends (the stack fixture's params)."""
    assert_dicomweb_client_reads_the_frames_at_each_block_edge(stack, files, name)


@pytest.mark.parametrize("stack", ["file"], indirect=True)
@pytest.mark.parametrize("name", FOLDER_ONLY)
def test_dicomweb_client_reads_the_frames_of_more_files_at_each_block_edge(
    stack: RunningStack, files: dict[str, Path], name: str
) -> None:
    """The rest of the corpus, from the local folder."""
    assert_dicomweb_client_reads_the_frames_at_each_block_edge(stack, files, name)


def assert_dicomweb_client_reads_the_frames_at_each_block_edge(
    stack: RunningStack, files: dict[str, Path], name: str
) -> None:
    """dicomweb-client's ``retrieve_instance_frames``, one frame a call (a single-frame URI: the block path), with
    its default multipart Accept and with the file's own media type; one past the last is an HTTPError 404. The
    access log shows which plan answered: the block's for frames 101-199 once frame 100 made it (none made by
    Python), or each frame's own for an instance whose frames are not single fragments."""
    path = file_of(files, name)
    frames = pydicom_frames(path)
    media, ts = media_type_of(path)
    study, series, sop = uids_of(path)
    agent = f"block-outside-{uuid.uuid4().hex}"
    client = DICOMwebClient(url=stack.root(stack.issue([study])["token"]), headers={"User-Agent": agent})
    for media_types in (None, ((media, ts),), ((media,),)):
        for number in edges(len(frames)):
            [frame] = client.retrieve_instance_frames(study, series, sop, [number], media_types=media_types)
            assert bytes(frame) == frames[number - 1], (media_types, number)
        with pytest.raises(requests.HTTPError) as refused:
            client.retrieve_instance_frames(study, series, sop, [len(frames) + 1], media_types=media_types)
        assert refused.value.response.status_code == 404
    # the first pass (dicomweb-client's own Accept, which no other test here sends): frames 101, 150 and 199 after 100
    lines = {n: log_lines(stack, f"{sop}/frames/{n}", agent)[0] for n in (100, 101, 150, 199)}
    if name in NO_BLOCKS:
        # the block's 404, then the frame's own plan (and, for 1-bit frames, the converter's bytes: one hop more)
        hops = " : 200" if name in CONVERTED else ""
        assert [lines[n]["upstream_status"] for n in (100, 101)] == [f"404 : 200{hops}", f"200{hops}"], lines
    else:
        assert [(lines[n]["cache"], lines[n]["upstream_status"]) for n in (100, 101, 150, 199)] == [
            ("MISS", "200"), *[("HIT", "")] * 3
        ], lines


@pytest.mark.parametrize("name", NAMES)
def test_multipart_single_frames_name_their_part_type_and_syntax(
    stack: RunningStack, files: dict[str, Path], name: str
) -> None:
    """One frame as multipart/related (what OHIF and dicomweb-client ask): the part's Content-Type and bytes, from a
    block's plan or a frame's own, are the same."""
    path = file_of(files, name)
    frames = pydicom_frames(path)
    media, ts = media_type_of(path)
    address = token_root(stack, path)
    accept = f'multipart/related; type="{media}"; transfer-syntax={ts}'
    for number in edges(len(frames)):
        answer = requests.get(f"{address}/frames/{number}", headers={"Accept": accept}, timeout=30)
        assert answer.status_code == 200, (number, answer.text[:200])
        assert answer.headers["Content-Type"].startswith(f'multipart/related; type="{media}"; boundary=')
        assert [(ct, body) for ct, body in multipart_parts(answer)] == [(media, frames[number - 1])], number


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """wsidicom's pyramid of a slide of 20 x 20 tiles of 256 px at the base (400 frames: blocks 1-3 whole, block 4
    partial), JPEG with a Basic Offset Table, every level down to one tile."""
    from wsidicom import WsiDicom

    root = tmp_path_factory.mktemp("block-outside-slide")
    source = make_wsi(root / "source", frames=400, clean=True, study_uid=generate_uid())
    out = root / "pyramid"
    out.mkdir()
    with WsiDicom.open(source.parent) as local:
        local.save(out, add_missing_levels=True, offset_table="bot")
    return sorted(out.iterdir())


def test_wsidicom_reads_every_tile_of_a_level_of_hundreds(stack: RunningStack, slide: list[Path]) -> None:
    """wsidicom over DICOMweb (one tile, one single-frame request) reads every tile of the 400-tile base level and
    of the 100-tile level above it as it reads them from the files: tiles 100 and on come from block plans."""
    from wsidicom import WsiDicom, WsiDicomWebClient

    answer = stack.stow(slide)
    assert answer.status_code == 200 and "00081198" not in answer.json(), answer.text
    first = pydicom.dcmread(slide[0], stop_before_pixels=True)
    client = WsiDicomWebClient(DICOMwebClient(url=stack.root(stack.issue([first.StudyInstanceUID])["token"])))
    syntax = first.file_meta.TransferSyntaxUID
    with (
        WsiDicom.open(slide[0].parent) as local,
        WsiDicom.open_web(client, first.StudyInstanceUID, [first.SeriesInstanceUID], requested_transfer_syntax=syntax)
        as web,
    ):
        assert [level.size.width for level in web.levels] == [level.size.width for level in local.levels]
        for number in (0, 1):
            level = local.levels[number]
            columns, rows = -(-level.size.width // 256), -(-level.size.height // 256)
            assert columns * rows == (400, 100)[number]
            for y in range(rows):
                for x in range(columns):
                    tile = local.read_encoded_tile(number, (x, y))
                    assert web.read_encoded_tile(number, (x, y)) == tile, (number, x, y)
        location, size = (256 * 12 - 100, 256 * 15 - 80), (600, 500)  # across four tiles from frame 300 on
        expected = np.asarray(local.read_region(location, 0, size))
        assert np.array_equal(np.asarray(web.read_region(location, 0, size)), expected)


@pytest.mark.parametrize("count", COUNTS)
def test_the_last_frames_whole_block_or_alone_in_one(stack: RunningStack, files: dict[str, Path], count: int) -> None:
    """199 frames: block 1 is whole and ends the instance; 200: frame 200 is alone in block 2. Every frame from 99
    on is pydicom's, and each past the last (in the same block or beyond) the JSON 404, twice (blocks cached)."""
    path = files[f"jpeg-{count}"]
    frames = pydicom_frames(path)
    assert len(frames) == count
    address = token_root(stack, path)
    for _ in range(2):
        for number in range(99, count + 1):
            answer = requests.get(f"{address}/frames/{number}", headers={"Accept": "image/jpeg"}, timeout=30)
            assert (answer.status_code, answer.content) == (200, frames[number - 1]), number
            assert answer.headers["Content-Type"] == f"image/jpeg; transfer-syntax={JPEGBaseline8Bit}"
        for number in (count + 1, count + 2, 299, 300, 301):
            answer = requests.get(f"{address}/frames/{number}", headers={"Accept": "image/jpeg"}, timeout=30)
            assert (answer.status_code, answer.headers["Content-Type"]) == (404, "application/json"), number
            assert answer.json()["error"] == "frame_not_found"


def test_frames_over_a_megabyte_in_a_block(
    stack: RunningStack, files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A block holding frames over 1 MB (a whole-slide tile of high quality): served from the block on S3; on the
    local folder, whose small ranges NGINX reads in memory (FILE_SEGMENT_MAX), each frame gets its own plan. The
    same bytes either way, single part and multipart."""
    ds = pydicom.dcmread(files["jpeg-bot"])
    frames = list(generate_frames(ds.PixelData, number_of_frames=FRAMES))
    rng = np.random.default_rng(64)
    for number, size in ((121, nginx.FILE_SEGMENT_MAX), (150, nginx.FILE_SEGMENT_MAX + 200_001)):
        frames[number - 1] = frames[number - 1][:2] + rng.bytes(size) + b"\xff\xd9"  # odd or even: padded by pydicom
    path = tmp_path_factory.mktemp("block-outside-large") / "large.dcm"
    ds.PixelData = encapsulate([frame.rstrip(b"\0") if frame.endswith(b"\xd9\0") else frame for frame in frames])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    ds.save_as(path)
    assert stack.stow([path]).status_code == 200
    expected = pydicom_frames(path)
    address = token_root(stack, path)
    agent = f"block-outside-{uuid.uuid4().hex}"
    for number in (99, 100, 101, 121, 150, 199, 200):
        headers = {"Accept": "image/jpeg", "User-Agent": agent}
        answer = requests.get(f"{address}/frames/{number}", headers=headers, timeout=60)
        assert (answer.status_code, answer.content) == (200, expected[number - 1]), number
        multipart = 'multipart/related; type="image/jpeg"'
        answer = requests.get(f"{address}/frames/{number}", headers={"Accept": multipart}, timeout=60)
        assert answer.status_code == 200, number
        assert multipart_parts(answer) == [("image/jpeg", expected[number - 1])], number
    sop = uids_of(path)[2]
    made = [log_lines(stack, f"{sop}/frames/{n}", agent)[0]["upstream_status"] for n in (100, 101)]
    local = not stack.stack.storage_url.startswith("s3:")
    assert made == (["404 : 200", "200"] if local else ["200", ""]), made


def test_the_htj2k_derivative_of_an_outside_file_from_its_blocks(stack: RunningStack, files: dict[str, Path]) -> None:
    """The lossless HTJ2K copy the worker makes of highdicom's 260-frame enhanced CT (README, derivatives), asked
    for by its transfer syntax: each frame, from the derivative's blocks from 100 on, decodes to pydicom's pixels of
    that frame, and is the bytes of the frame's own plan (the Accept query parameter sends it there)."""
    path = files["ct-enhanced"]
    pixels = pydicom.dcmread(path).pixel_array
    address = token_root(stack, path)
    asked = f"image/jphc; transfer-syntax={DERIVATIVE_TS}"
    first = wait_for_derivative(f"{address}/frames/1")
    assert first.headers["Content-Type"] == asked, "no derivative was made"
    for number in edges(FRAMES):
        answer = requests.get(f"{address}/frames/{number}", headers={"Accept": asked}, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (200, asked), number
        assert np.array_equal(imagecodecs.htj2k_decode(answer.content), pixels[number - 1]), number
        own = requests.get(f"{address}/frames/{number}", params={"accept": asked}, timeout=30)
        assert (own.status_code, own.content) == (200, answer.content), number
