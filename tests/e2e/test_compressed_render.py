"""The compressed syntaxes real archives export, rendered through the real stack on both storage backends: JPEG
Lossless (SV1, the usual syntax of CD exports, and Process 14), JPEG-LS lossless and near-lossless, 12-bit JPEG
Extended and HTJ2K, and JPEG 2000 of 16-bit colour. pydicom has no decoder for them here (Pillow refuses the
last); the gateway adds imagecodecs' (``gateway.dicom.codecs``). ``rendered`` and ``thumbnail`` answered a JSON
406 for all of them (a portal's study list showed no thumbnail).

A lossless file renders byte for byte as its uncompressed twin does (the same pixels, the same metadata: the
rendering is deterministic), at frame 1 and at the last frame, as a thumbnail and by WADO-URI as image/jpeg; a
lossy one as pydicom decodes it."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from PIL import Image
from pydicom.uid import UID, HTJ2KLossless, JPEG2000Lossless, JPEGLossless, JPEGLosslessSV1, generate_uid

import gateway.render  # noqa: F401 - pydicom decodes the reference pictures with the plugin the gateway registers
from tests.e2e.conftest import BACKENDS
from tests.e2e.harness import RunningStack, module_stack
from tests.e2e.test_real_files import assert_renders_as_pydicom_decodes
from tests.fixtures.compressed import compressed_twin, pydicom_file, signed_12_bit

# name -> (how it is made: a pydicom file, or a twin of a source in a syntax), the uncompressed twin it must render as
SHIPPED = {
    "SC_rgb_jpeg_gdcm.dcm": "SC_rgb_rle.dcm",  # JPEG Lossless SV1, RGB (GDCM)
    "MR_small_jpeg_ls_lossless.dcm": "MR_small.dcm",  # JPEG-LS lossless, signed 16-bit (CharLS)
}
TWINS: dict[str, tuple[str, UID]] = {
    "mr-sv1.dcm": ("MR_small.dcm", JPEGLosslessSV1),
    "mr-process14.dcm": ("MR_small.dcm", JPEGLossless),  # predictor 6
    "mr-htj2k.dcm": ("MR_small.dcm", HTJ2KLossless),
    "rgb-2frame-sv1.dcm": ("SC_rgb_rle_2frame.dcm", JPEGLosslessSV1),
    "s12-sv1.dcm": ("s12.dcm", JPEGLosslessSV1),  # signed, Bits Stored 12 of 16: negative values
    "s12-htj2k.dcm": ("s12.dcm", HTJ2KLossless),
    "rgb16-2frame-j2k.dcm": ("SC_rgb_rle_16bit_2frame.dcm", JPEG2000Lossless),  # Pillow refuses 16-bit colour
}
# lossy: no twin holds their pixels
LOSSY = ["JPEGLSNearLossless_16.dcm", "JPGExtended.dcm", "SC_rgb_jls_lossy_line.dcm"]


def fresh_copy(source: Path, target: Path) -> Path:
    """The file as its own instance in its own study (pydicom's twins share UIDs; two of these files have no
    Study Instance UID at all); pixels and encoding untouched."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if "SOPClassUID" not in ds:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.save_as(target, enforce_file_format=False)
    return target


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every file stored, by name: each compressed one, its reference twin as ``<name>.reference``."""
    folder = tmp_path_factory.mktemp("compressed")
    s12 = signed_12_bit(folder / "s12-source.dcm")
    made: dict[str, Path] = {}
    for name, reference in SHIPPED.items():
        made[name] = fresh_copy(pydicom_file(name), folder / name)
        made[f"{name}.reference"] = fresh_copy(pydicom_file(reference), folder / f"{name}.reference.dcm")
    for name, (source, syntax) in TWINS.items():
        path = s12 if source == "s12.dcm" else pydicom_file(source)
        made[name] = compressed_twin(path, syntax, folder / name)
        made[f"{name}.reference"] = fresh_copy(path, folder / f"{name}.reference.dcm")
    for name in LOSSY:
        made[name] = fresh_copy(pydicom_file(name), folder / name)
    return made


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]
) -> Iterator[RunningStack]:
    yield from module_stack(request, tmp_path_factory, "compressed", list(files.values()))


def url(stack: RunningStack, path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    series = f"{stack.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    return f"{series}/instances/{ds.SOPInstanceUID}"


def get(stack: RunningStack, address: str, accept: str) -> requests.Response:
    return requests.get(address, headers={"Accept": accept, **stack.api_headers}, timeout=60)


def thumbnail_size(path: Path) -> tuple[int, int]:
    """Within 128 x 128, aspect ratio kept, never enlarged (Pillow's thumbnail)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frame = Image.new("L", (int(ds.Columns), int(ds.Rows)))
    frame.thumbnail((128, 128))
    return frame.size


def wado_uri_jpeg(stack: RunningStack, path: Path) -> bytes:
    """WADO-URI's ``contentType=image/jpeg`` of the instance (PS3.18 9), the way legacy portals show it."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uids = {"studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID, "objectUID": ds.SOPInstanceUID}
    answer = requests.get(
        f"{stack.url}/dicomweb/wado",
        params={"requestType": "WADO", **{k: str(v) for k, v in uids.items()}, "contentType": "image/jpeg"},
        headers=stack.api_headers,
        timeout=60,
    )
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "image/jpeg"), answer.text[:200]
    return answer.content


def image(stack: RunningStack, address: str, accept: str) -> bytes:
    answer = get(stack, address, accept)
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, accept), answer.text[:200]
    return answer.content


@pytest.mark.parametrize("name", [*SHIPPED, *TWINS])
def test_a_lossless_file_renders_as_its_uncompressed_twin(
    stack: RunningStack, files: dict[str, Path], name: str
) -> None:
    compressed, reference = url(stack, files[name]), url(stack, files[f"{name}.reference"])
    frames = int(pydicom.dcmread(files[name], stop_before_pixels=True).get("NumberOfFrames") or 1)
    for path in ["rendered", *(f"frames/{n}/rendered" for n in sorted({1, frames}))]:
        expected = image(stack, f"{reference}/{path}", "image/png")
        assert image(stack, f"{compressed}/{path}", "image/png") == expected, path
    thumbnail = image(stack, f"{compressed}/thumbnail", "image/jpeg")
    assert thumbnail == image(stack, f"{reference}/thumbnail", "image/jpeg")
    assert Image.open(io.BytesIO(thumbnail)).size == thumbnail_size(files[name])
    assert wado_uri_jpeg(stack, files[name]) == wado_uri_jpeg(stack, files[f"{name}.reference"])


@pytest.mark.parametrize("name", LOSSY)
def test_a_lossy_file_renders_as_pydicom_decodes_it(stack: RunningStack, files: dict[str, Path], name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(files[name])
    address = url(stack, files[name])
    assert_renders_as_pydicom_decodes(ds, image(stack, f"{address}/rendered", "image/png"))
    thumbnail = Image.open(io.BytesIO(image(stack, f"{address}/thumbnail", "image/jpeg")))
    assert (thumbnail.format, thumbnail.size) == ("JPEG", thumbnail_size(files[name]))
