"""Lossless HTJ2K derivatives of the sources real archives and CD exports store (gateway.derive), through the real
stack on both storage backends: JPEG Lossless (SV1 and Process 14), JPEG-LS lossless, RLE Lossless, JPEG 2000
lossless, big-endian and deflated files, single and multi-frame. They had none (only native little-endian
instances did): a mobile viewer loaded their stored frames. Each frame is fetched as the viewer asks for it
(``viewer/src/dicomweb.js``: the derivative named in the ``accept`` parameter, the stored frame as the fallback)
and decodes to exactly pydicom's pixel array of the source, decoded with the project's codec registration.
Lossy sources get none; a source whose pixel data does not decode is skipped once, with a log line and no PHI,
and the worker goes on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import imagecodecs
import numpy as np
import pydicom
import pytest
import requests
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

import gateway.derive  # noqa: F401 - pydicom decodes the sources with the codec plugin the worker registers
from gateway.catalog import Catalog
from gateway.dicomweb.wado import DERIVATIVE_TS
from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import RunningStack, module_stack
from tests.e2e.test_compressed_render import fresh_copy
from tests.e2e.test_real_files import display_values
from tests.e2e.test_rendered_params import rle_of_zeros
from tests.e2e.test_viewer import NetworkLog, browser, open_page, wait_ready  # noqa: F401 - browser is a fixture
from tests.e2e.test_viewer_real_files import coarse, image_area
from tests.fixtures.compressed import compressed_twin, pydicom_file, signed_12_bit

HT = f"image/jphc; transfer-syntax={DERIVATIVE_TS}"
# what the viewer sends (viewer/src/dicomweb.js ACCEPT_EITHER; the image loader's own Accept header)
VIEWER_QUERY = "accept=" + quote(
    f"image/jphc;transfer-syntax={DERIVATIVE_TS},application/octet-stream;transfer-syntax=*"
)
LOADER_ACCEPT = "multipart/related; type=application/octet-stream"
WAIT = 120.0  # bound for the stack's worker on a loaded two-core machine
PATIENT = "SENTINEL^UNDECODABLE"  # must never reach a log

SHIPPED = [
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless, signed 16-bit
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "J2K_pixelrep_mismatch.dcm",  # JPEG 2000 lossless whose codestream's signedness pydicom corrects
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "image_dfl.dcm",  # deflated, 8-bit
]
TWINS: dict[str, tuple[str, UID]] = {
    "mr-sv1.dcm": ("MR_small.dcm", JPEGLosslessSV1),
    "mr-process14.dcm": ("MR_small.dcm", JPEGLossless),
    "s12-sv1.dcm": ("s12.dcm", JPEGLosslessSV1),  # signed, Bits Stored 12 of 16: negative values
    "cine-sv1.dcm": ("cine.dcm", JPEGLosslessSV1),
    "cine-jpegls.dcm": ("cine.dcm", JPEGLSLossless),
}
MADE = ["cine-rle.dcm", "cine-deflated.dcm"]
LOSSLESS = [*SHIPPED, *TWINS, *MADE]
# JPEG 2000 (lossy), JPEG Extended 12-bit, JPEG-LS near-lossless, HTJ2K
LOSSY = ["JPEG2000.dcm", "JPGExtended.dcm", "JPEGLSNearLossless_16.dcm", "mr-htj2k.dcm"]


def multi_frame(path: Path) -> Path:
    """MR_small.dcm's pixels as a native three-frame cine, each frame different (signed 16-bit)."""
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    first = ds.pixel_array.astype(np.int32)
    frames = np.stack([first, first[::-1] - 900, (first * 3) % 4000 - 2000]).clip(-32768, 32767).astype("<i2")
    ds.PixelData, ds.NumberOfFrames = frames.tobytes(), 3
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path


def rewritten(source: Path, path: Path, syntax: UID) -> Path:
    """``source`` as a new instance in ``syntax``: RLE by pydicom's own encoder, deflated by pydicom's writer."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def undecodable(path: Path) -> Path:
    """A JPEG Lossless instance whose one fragment is no codestream (a JPEG start, then noise): ingest stores it
    (it never decodes pixels); pydicom's decoders all refuse it."""
    ds = pydicom.dcmread(compressed_twin(pydicom_file("MR_small.dcm"), JPEGLosslessSV1, path))
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(range(256)) * 8])
    ds.PatientName = PATIENT
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("decoded")
    sources = {"s12.dcm": signed_12_bit(folder / "s12-source.dcm"), "cine.dcm": multi_frame(folder / "cine.dcm")}
    made: dict[str, Path] = {"undecodable.dcm": undecodable(folder / "undecodable.dcm")}  # first in the queue
    for name in SHIPPED + LOSSY[:-1]:
        made[name] = fresh_copy(pydicom_file(name), folder / name)
    for name, (source, syntax) in {**TWINS, "mr-htj2k.dcm": ("MR_small.dcm", HTJ2KLossless)}.items():
        made[name] = compressed_twin(sources.get(source) or pydicom_file(source), syntax, folder / name)
    made["cine-rle.dcm"] = rewritten(sources["cine.dcm"], folder / "cine-rle.dcm", RLELossless)
    deflated = DeflatedExplicitVRLittleEndian
    made["cine-deflated.dcm"] = rewritten(sources["cine.dcm"], folder / "cine-deflated.dcm", deflated)
    made["huge-rle.dcm"] = rle_of_zeros(folder / "huge-rle.dcm", 12000)
    return made


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> Iterator[RunningStack]:
    yield from module_stack(request, tmp_path_factory, "decoded", list(files.values()))


def frame_url(stack: RunningStack, path: Path, n: int) -> str:
    study, series, sop = uids_of(path)
    root = stack.root(stack.issue([study])["token"])
    return f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/{n}"


def viewer_get(url: str, **headers: str) -> requests.Response:
    return requests.get(f"{url}?{VIEWER_QUERY}", headers={"Accept": LOADER_ACCEPT, **headers}, timeout=30)


def wait_for_derivative(url: str) -> requests.Response:
    deadline = time.monotonic() + WAIT
    while True:
        answer = viewer_get(url)
        assert answer.status_code == 200, answer.text[:300]
        if answer.headers["Content-Type"] == HT or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def pydicom_frames(path: Path) -> list[np.ndarray[Any, Any]]:
    ds = pydicom.dcmread(path)
    return list(ds.pixel_array) if int(ds.get("NumberOfFrames") or 1) > 1 else [ds.pixel_array]


@pytest.mark.parametrize("name", LOSSLESS)
def test_a_lossless_source_gets_a_derivative_of_its_exact_pixels(
    stack: RunningStack, files: dict[str, Path], name: str
) -> None:
    path = files[name]
    expected = pydicom_frames(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    stored = {(8, 0): "u1", (16, 0): "<u2", (16, 1): "<i2"}[(int(ds.BitsAllocated), int(ds.PixelRepresentation))]
    for n, frame in enumerate(expected, start=1):
        url = frame_url(stack, path, n)
        answer = wait_for_derivative(url)
        assert answer.headers["Content-Type"] == HT, f"frame {n}"
        assert answer.content[:2] == b"\xff\x4f"  # a bare codestream (SOC)
        decoded = imagecodecs.htj2k_decode(answer.content)
        assert decoded.dtype == np.dtype(stored)
        assert np.array_equal(decoded, frame), f"frame {n}"
        # the viewer's preview: the first bytes by Range, as for a native instance's derivative
        head = viewer_get(url, Range="bytes=0-1023")
        assert head.status_code == 206
        assert head.headers["Content-Range"] == f"bytes 0-1023/{len(answer.content)}"
        assert head.content == answer.content[:1024]
        # named in the Accept header instead (NGINX answers from a block of frame plans where the stored frames are
        # byte ranges): the same codestream
        either = f"{HT}, application/octet-stream; transfer-syntax=*"
        by_header = requests.get(url, headers={"Accept": either}, timeout=30)
        assert (by_header.status_code, by_header.headers["Content-Type"]) == (200, HT)
        assert by_header.content == answer.content
    # the viewer's probe (a one-byte request) finds it; a client not naming it gets the stored frame's syntax
    probe = viewer_get(frame_url(stack, path, 1), Range="bytes=0-0")
    assert probe.status_code == 206 and DERIVATIVE_TS in probe.headers["Content-Type"]
    plain = requests.get(frame_url(stack, path, 1), headers={"Accept": "*/*"}, timeout=30)
    assert plain.status_code == 200 and DERIVATIVE_TS not in plain.headers["Content-Type"]


def test_lossy_sources_keep_their_stored_frames(stack: RunningStack, files: dict[str, Path]) -> None:
    # a lossless instance stored in the same request has its derivative: the worker has been through the queue
    control = wait_for_derivative(frame_url(stack, files["mr-sv1.dcm"], 1))
    assert control.headers["Content-Type"] == HT
    catalog = Catalog(stack.stack.database_url)
    for name in LOSSY:
        sop = uids_of(files[name])[2]
        row = catalog.get_instance(sop, with_metadata=False)
        assert row is not None and row.derivative_key is None, name
        assert catalog.derivative_job(sop) is None, name  # never queued
        answer = viewer_get(frame_url(stack, files[name], 1))
        assert answer.status_code == 200, name
        assert DERIVATIVE_TS not in answer.headers["Content-Type"], name
        assert answer.headers["Content-Type"].startswith(("application/octet-stream", "image/")), name


def test_an_undecodable_source_is_skipped_once(stack: RunningStack, files: dict[str, Path]) -> None:
    log = stack.stack.var_dir / "logs" / "derive.out"
    line = "derivative skipped: pydicom cannot decode the pixel data"
    deadline = time.monotonic() + WAIT
    while line not in (log.read_text(errors="replace") if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log.read_text(errors="replace")
    assert text.count(line) == 1, text[-2000:]  # one attempt: no retry of what fails the same way again
    assert PATIENT not in text and "SENTINEL" not in text
    assert "Traceback" not in text and " ERROR " not in text  # not a crash: one warning says it all
    sop = uids_of(files["undecodable.dcm"])[2]
    catalog = Catalog(stack.stack.database_url)
    assert catalog.derivative_job(sop) is None  # finished, not waiting for a retry
    row = catalog.get_instance(sop, with_metadata=False)
    assert row is not None and row.derivative_key is None
    # the worker went on: the instances queued after it have their derivative
    assert wait_for_derivative(frame_url(stack, files["cine-sv1.dcm"], 3)).headers["Content-Type"] == HT
    answer = viewer_get(frame_url(stack, files["undecodable.dcm"], 1))
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == f"application/octet-stream; transfer-syntax={JPEGLosslessSV1}"


def test_a_frame_too_large_to_decode_gets_no_derivative(stack: RunningStack, files: dict[str, Path]) -> None:
    """A 4.5 MB RLE file declaring one 12000 x 12000 frame: decoding it took 1.5 GB of the worker, and a larger one
    would exhaust the machine, retried after each crash. Above ``MAX_DECODED_PIXELS`` the source is not derived: its
    job ends without a retry, and its frame is served as stored."""
    path = files["huge-rle.dcm"]
    sop = uids_of(path)[2]
    catalog = Catalog(stack.stack.database_url)
    deadline = time.monotonic() + WAIT
    while catalog.derivative_job(sop) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert catalog.derivative_job(sop) is None  # finished, not waiting for a retry
    row = catalog.get_instance(sop, with_metadata=False)
    assert row is not None and row.derivative_key is None
    answer = viewer_get(frame_url(stack, path, 1))
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == f"application/octet-stream; transfer-syntax={RLELossless}"
    [stored] = generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1)
    assert answer.content == stored


@pytest.mark.browser
@pytest.mark.parametrize("stack", ["file"], indirect=True)
@pytest.mark.parametrize("name", ["cine-sv1.dcm", "cine-deflated.dcm"])
def test_the_viewer_loads_a_compressed_cine_from_its_derivative(
    stack: RunningStack, files: dict[str, Path], browser: Any, name: str  # noqa: F811 - the fixture from test_viewer
) -> None:
    """The bundled viewer opens a three-frame JPEG Lossless (or deflated) cine progressively from the derivative of
    each frame (it loaded the stored frames before), and shows frame 1 as pydicom decodes it."""
    path = files[name]
    for n in (1, 2, 3):
        assert wait_for_derivative(frame_url(stack, path, n)).headers["Content-Type"] == HT
    ds = pydicom.dcmread(path)
    log = NetworkLog()
    page = open_page(browser, log, viewport={"width": 600, "height": 500})
    page.goto(stack.issue([str(ds.StudyInstanceUID)], ttl=600)["viewer_url"])
    wait_ready(page)
    page.wait_for_function("() => document.getElementById('viewport').dataset.fullQualityMs !== undefined")
    data = page.evaluate("() => ({...document.getElementById('viewport').dataset})")
    assert (data["progressive"], data["quality"]) == ("true", "full")
    assert page.locator("#error").is_hidden()
    pixels = [r for r in log.requests if "/frames/" in r.url and "/rendered" not in r.url]
    assert {r.url.split("?")[0].rsplit("/", 1)[1] for r in pixels} == {"1", "2", "3"}
    served = {r.response().headers["content-type"] for r in pixels if r.response() is not None}
    assert served == {HT}
    shown = image_area(page, int(ds.Rows), int(ds.Columns))
    correlation = float(np.corrcoef(coarse(shown).ravel(), coarse(display_values(ds)).ravel())[0, 1])
    assert correlation > 0.9, f"the picture does not follow pydicom's ({correlation:.2f})"
    page.context.close()
