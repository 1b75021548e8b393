"""Big-endian and deflated files (pydicom's own test files) through the real stack, on both storage backends: their
frames and bulk values are no byte ranges of the stored object as a client receives them, so Python converts them
(PS3.18 8.7.3: little-endian bytes, Explicit VR Little Endian). They answered a 406 "frames_not_servable", and a
viewer opening such a study showed nothing. Checked with the unmodified dicomweb-client against pydicom's reading."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file

from tests.e2e.conftest import BACKENDS
from tests.e2e.harness import RunningStack, start_stack
from tests.fixtures.servers import MotoServer

EXPLICIT_LE = ("application/octet-stream", "1.2.840.10008.1.2.1")
# big endian 16-bit, 32-bit 15-frame, 8-bit colour in OW (word-swapped bytes, odd length), and a deflated data set
FILES = ["MR_small_bigendian.dcm", "rtdose_expb.dcm", "SC_rgb_small_odd_big_endian.dcm", "image_dfl.dcm"]


def _path(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, name
    return Path(found)


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    moto: MotoServer | None = request.getfixturevalue("moto_server") if request.param == "s3" else None
    running = start_stack(tmp_path_factory.mktemp(f"converted-{request.param}"), request.param, moto)
    try:
        answer = running.stow([_path(name) for name in FILES])
        assert answer.status_code == 200, answer.text
        yield running
    finally:
        running.stack.stop()


def _client(stack: RunningStack, ds: Any) -> DICOMwebClient:
    return DICOMwebClient(url=stack.root(stack.issue([str(ds.StudyInstanceUID)])["token"]))


def _little_endian_frames(ds: Any) -> list[bytes]:
    """pydicom's pixel_array, frame by frame, as little-endian bytes (what PS3.18 8.7.3 has the origin send)."""
    pixels = ds.pixel_array
    frames = pixels if int(ds.get("NumberOfFrames") or 1) > 1 else pixels[np.newaxis]
    return [frame.astype(frame.dtype.newbyteorder("<")).tobytes() for frame in frames]


def _url(client: DICOMwebClient, ds: Any) -> str:
    series = f"{client.base_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    return f"{series}/instances/{ds.SOPInstanceUID}"


@pytest.mark.parametrize("name", FILES)
def test_frames_are_the_pixels_in_little_endian(stack: RunningStack, name: str) -> None:
    ds = pydicom.dcmread(_path(name))
    client = _client(stack, ds)
    expected = _little_endian_frames(ds)
    uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    last = len(expected)
    # dicomweb-client's default (multipart, any syntax), then Explicit VR Little Endian by name, first and last frame
    assert client.retrieve_instance_frames(*uids, frame_numbers=[1]) == [expected[0]]
    numbers = [1, last] if last > 1 else [1]  # a list never asks for more frames than the instance holds
    got = client.retrieve_instance_frames(*uids, frame_numbers=numbers, media_types=(EXPLICIT_LE,))
    assert got == [expected[n - 1] for n in numbers]
    octets = {"Accept": "application/octet-stream"}
    single = requests.get(f"{_url(client, ds)}/frames/{last}", headers=octets, timeout=30)
    assert single.status_code == 200, single.text
    assert single.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert single.headers["Accept-Ranges"] == "bytes"
    assert single.headers["Cache-Control"] == "private, no-cache"
    assert single.content == expected[-1]
    ranged = requests.get(f"{_url(client, ds)}/frames/1", headers={**octets, "Range": "bytes=1-6"}, timeout=30)
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"] == f"bytes 1-6/{len(expected[0])}"
    assert ranged.content == expected[0][1:7]


@pytest.mark.parametrize("name", FILES)
def test_pixel_data_bulkdata_is_little_endian(stack: RunningStack, name: str) -> None:
    """The metadata names a BulkDataURI for Pixel Data (it named none: only the whole instance held the value),
    which answers the value in little endian: every frame, and an odd-length value's padding byte."""
    ds = pydicom.dcmread(_path(name))
    client = _client(stack, ds)
    metadata = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri == f"{_url(client, ds)}/bulkdata/7FE00010"
    value = b"".join(_little_endian_frames(ds))
    value += b"\0" * (len(ds.PixelData) - len(value))
    assert client.retrieve_bulkdata(uri) == [value]
    assert client.retrieve_bulkdata(uri, byte_range=(2, 9)) == [value[2:10]]


@pytest.mark.parametrize("name", FILES)
def test_rendered_and_thumbnail_are_images(stack: RunningStack, name: str) -> None:
    ds = pydicom.dcmread(_path(name))
    url = _url(_client(stack, ds), ds)
    rendered = requests.get(f"{url}/rendered", headers={"Accept": "image/png"}, timeout=30)
    assert (rendered.status_code, rendered.headers["Content-Type"]) == (200, "image/png"), rendered.text[:200]
    image = Image.open(io.BytesIO(rendered.content))
    assert image.size == (int(ds.Columns), int(ds.Rows))
    thumbnail = requests.get(f"{url}/thumbnail", headers={"Accept": "image/jpeg"}, timeout=30)
    assert (thumbnail.status_code, thumbnail.headers["Content-Type"]) == (200, "image/jpeg"), thumbnail.text[:200]
    assert Image.open(io.BytesIO(thumbnail.content)).format == "JPEG"
    # WADO-URI without contentType: an image is rendered as image/jpeg (PS3.18 9); these came as application/dicom
    root = url.split("/studies/")[0]
    uids = {"studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID, "objectUID": ds.SOPInstanceUID}
    wado = requests.get(f"{root}/wado", params={"requestType": "WADO", **uids}, timeout=30)
    assert (wado.status_code, wado.headers["Content-Type"]) == (200, "image/jpeg"), wado.text[:200]
    assert Image.open(io.BytesIO(wado.content)).size == (int(ds.Columns), int(ds.Rows))


def test_a_syntax_the_gateway_cannot_produce_is_a_json_406(stack: RunningStack) -> None:
    """Frames go out in little endian only (no transcoding to another syntax): the stored big-endian or deflated
    syntax named alone is the usual JSON 406, and so is a bulk value asked for in it."""
    stored = {"MR_small_bigendian.dcm": "1.2.840.10008.1.2.2", "image_dfl.dcm": "1.2.840.10008.1.2.1.99"}
    for name, syntax in stored.items():
        ds = pydicom.dcmread(_path(name))
        url = _url(_client(stack, ds), ds)
        for path in ("frames/1", "bulkdata/7FE00010"):
            accept = f'multipart/related; type="application/octet-stream"; transfer-syntax={syntax}'
            answer = requests.get(f"{url}/{path}", headers={"Accept": accept}, timeout=30)
            assert (answer.status_code, answer.headers["Content-Type"]) == (406, "application/json"), (name, path)
            assert answer.json()["error"] == "not_acceptable"


def test_a_frame_past_the_last_is_a_json_404(stack: RunningStack) -> None:
    ds = pydicom.dcmread(_path("rtdose_expb.dcm"))
    url = _url(_client(stack, ds), ds)
    answer = requests.get(f"{url}/frames/16", headers={"Accept": "application/octet-stream"}, timeout=30)
    assert (answer.status_code, answer.headers["Content-Type"]) == (404, "application/json")
    detail = "frame 16 does not exist; the instance has 15 frame(s)"
    assert answer.json() == {"error": "frame_not_found", "detail": detail}


def test_inline_binary_of_a_big_endian_file_is_little_endian(stack: RunningStack, tmp_path: Path) -> None:
    """A word value under the bulk data threshold is InlineBinary: it held the stored big-endian bytes while a longer
    one's BulkDataURI answers little-endian ones, so a 256-entry palette lookup table (512 bytes) read back swapped
    (0x0100 for 1) where a 1024-entry one read right. Both are now the little-endian value, as PS3.18 8.7.3 has it."""
    ds = pydicom.dcmread(_path("MR_small_bigendian.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    short, long = np.arange(256, dtype=np.uint16), np.arange(1024, dtype=np.uint16) * 3
    ds.add_new(0x00281201, "OW", short.astype(">u2").tobytes())  # Red Palette Color Lookup Table Data
    ds.add_new(0x00281202, "OW", long.astype(">u2").tobytes())  # Green: over the 1024-byte threshold
    ds.add_new(0x00660016, "OF", np.array([1.5, -2.0], dtype=">f4").tobytes())  # Point Coordinates Data
    path = tmp_path / "be-lut.dcm"
    pydicom.dcmwrite(path, ds, little_endian=False, implicit_vr=False)
    assert stack.stow([path]).status_code == 200
    client = _client(stack, ds)
    metadata = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert metadata["00281201"] == {"vr": "OW", "InlineBinary": base64.b64encode(short.tobytes()).decode()}
    assert metadata["00660016"] == {"vr": "OF", "InlineBinary": "AADAPwAAAMA="}  # 1.5, -2.0 as little-endian floats
    assert client.retrieve_bulkdata(metadata["00281202"]["BulkDataURI"]) == [long.tobytes()]
