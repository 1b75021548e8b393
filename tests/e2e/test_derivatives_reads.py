"""What the derivative worker (gateway.derive) reads, through the real stack. An instance that cannot have a
derivative (colour, 32-bit) is known as such from what ingest read: it is never queued, and a job an older version
queued for it is finished without a storage read (the stored object removed, the job still ends as a skip, not as
a failed download). A long compressed cine is decoded in one pass over its file: the worker read the frames before
frame n again for each n (663 MB read for a 7 MB, 400-frame JPEG Lossless cine)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1, generate_uid

from gateway.catalog import Catalog
from gateway.catalog.derivatives import DeriveJob
from gateway.tools.stack import Stack, free_port
from tests.e2e.conftest import BACKENDS, uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_compressed_render import fresh_copy
from tests.e2e.test_derivatives_decoded import HT, WAIT, frame_url, wait_for_derivative
from tests.fixtures.compressed import ENCODERS, compressed_twin, pydicom_file
from tests.fixtures.servers import MotoServer

# no derivative: colour JPEG Lossless SV1, colour RLE, native colour, native 32-bit monochrome (15 frames)
SKIPPED = ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", "SC_rgb_small_odd.dcm", "rtdose.dcm"]
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
    made = {name: fresh_copy(pydicom_file(name), folder / name) for name in SKIPPED}
    made["mr-sv1.dcm"] = compressed_twin(pydicom_file("MR_small.dcm"), JPEGLosslessSV1, folder / "mr-sv1.dcm")
    made["mr-native.dcm"] = fresh_copy(pydicom_file("MR_small.dcm"), folder / "mr-native.dcm")
    made["cine.dcm"] = long_cine(folder / "cine.dcm")
    return made


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    moto: MotoServer | None = request.getfixturevalue("moto_server") if request.param == "s3" else None
    running = start_stack(tmp_path_factory.mktemp(f"reads-{request.param}"), request.param, moto)
    try:
        yield running
    finally:
        running.stack.stop()


def settled(catalog: Catalog, sop: str) -> DeriveJob | None:
    """The instance's job once the worker is done with it: None when finished, else the failed job."""
    deadline = time.monotonic() + WAIT
    while (job := catalog.derivative_job(sop)) is not None and job.last_error is None:
        assert time.monotonic() < deadline, f"the worker never took the job of {sop}"
        time.sleep(0.2)
    return job


def bytes_read(pid: int) -> int:
    """Every byte the process has read (files, sockets, pipes): ``rchar`` of /proc/<pid>/io."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"])


def test_colour_and_32_bit_instances_are_never_queued(tmp_path: Path, files: dict[str, Path]) -> None:
    # no worker: the job table shows what ingest queued
    stack = Stack(tmp_path / "var", port=free_port(), derive_worker=False)
    stack.start()
    try:
        answer = RunningStack(stack, "file").stow([files[name] for name in [*SKIPPED, "mr-sv1.dcm", "mr-native.dcm"]])
        assert answer.status_code == 200, answer.text
        catalog = Catalog(stack.database_url)
        for name in SKIPPED:
            assert catalog.derivative_job(uids_of(files[name])[2]) is None, name
        for name in ("mr-sv1.dcm", "mr-native.dcm"):  # monochrome 16-bit: queued as before
            assert catalog.derivative_job(uids_of(files[name])[2]) == DeriveJob(uids_of(files[name])[2], 0), name
    finally:
        stack.stop()


def test_a_job_queued_by_an_older_version_is_skipped_without_a_storage_read(
    stack: RunningStack, files: dict[str, Path]
) -> None:
    answer = stack.stow([files[name] for name in [*SKIPPED, "mr-sv1.dcm"]])
    assert answer.status_code == 200, answer.text
    assert wait_for_derivative(frame_url(stack, files["mr-sv1.dcm"], 1)).headers["Content-Type"] == HT
    catalog, storage = Catalog(stack.stack.database_url), stack.storage()
    for name in SKIPPED:
        sop = uids_of(files[name])[2]
        row = catalog.get_instance(sop, with_metadata=False)
        assert row is not None, name
        storage.delete(row.storage_key)  # nothing left to read
        assert storage.head(row.storage_key) is None, name
        catalog.enqueue_derivative(sop)  # what a version before this one queued at ingest
    for name in SKIPPED:
        sop = uids_of(files[name])[2]
        assert settled(catalog, sop) is None, name  # finished as a skip; a download would have failed
        row = catalog.get_instance(sop, with_metadata=False)
        assert row is not None and row.derivative_key is None, name
    log = (stack.stack.var_dir / "logs" / "derive.out").read_text(errors="replace")
    assert "failed" not in log and "Traceback" not in log, log[-2000:]
    assert log.count("derivative not_eligible") == len(SKIPPED)  # these jobs only: STOW queued none of them


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
