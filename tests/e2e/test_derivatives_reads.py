"""What the derivative worker (gateway.derive) reads, through the real stack. A long compressed cine is decoded in
one pass over its file: the worker read the frames before frame n again for each n (663 MB read for a 7 MB,
400-frame JPEG Lossless cine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1, generate_uid

from tests.e2e.conftest import BACKENDS
from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_derivatives_decoded import HT, frame_url, wait_for_derivative
from tests.fixtures.compressed import ENCODERS, pydicom_file
from tests.fixtures.servers import MotoServer

CINE_FRAMES = 400


def long_cine(path: Path) -> Path:
    """A 400-frame 128x128 16-bit JPEG Lossless SV1 cine with an empty Basic Offset Table (as many writers leave it),
    each frame different: MR_small's pixels tiled, shifted by one column per frame."""
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    image = np.tile(ds.pixel_array.astype(np.int32), (2, 2)).clip(0, 4095).astype("<u2")
    encode = ENCODERS[JPEGLosslessSV1]
    ds.PixelData = encapsulate([encode(np.roll(image, n, axis=1), 16) for n in range(CINE_FRAMES)], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds.Rows, ds.Columns = image.shape
    ds.NumberOfFrames, ds.PixelRepresentation, ds.BitsStored, ds.HighBit = CINE_FRAMES, 0, 16, 15
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reads")
    return {"cine.dcm": long_cine(folder / "cine.dcm")}


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    moto: MotoServer | None = request.getfixturevalue("moto_server") if request.param == "s3" else None
    running = start_stack(tmp_path_factory.mktemp(f"reads-{request.param}"), request.param, moto)
    try:
        yield running
    finally:
        running.stack.stop()


def bytes_read(pid: int) -> int:
    """Every byte the process has read (files, sockets, pipes): ``rchar`` of /proc/<pid>/io."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"])


def test_a_long_compressed_cine_is_decoded_in_one_pass(stack: RunningStack, files: dict[str, Path]) -> None:
    path = files["cine.dcm"]
    worker = stack.stack.processes["derive"].pid
    before = bytes_read(worker)
    answer = stack.stow([path])
    assert answer.status_code == 200, answer.text
    last = wait_for_derivative(frame_url(stack, path, CINE_FRAMES))
    assert last.headers["Content-Type"] == HT
    read = bytes_read(worker) - before
    # a few times the size: the download (2x on S3, 1x from a folder), the one decoding pass, the job table's polls;
    # finding each frame from the first fragment read 95 times the size
    size = path.stat().st_size
    assert read < 8 * size, f"the worker read {read} bytes of a {size}-byte instance"
    frames = pydicom.dcmread(path).pixel_array
    for n in (1, CINE_FRAMES // 2, CINE_FRAMES):
        code = last.content if n == CINE_FRAMES else wait_for_derivative(frame_url(stack, path, n)).content
        assert np.array_equal(imagecodecs.htj2k_decode(code), frames[n - 1]), f"frame {n}"
