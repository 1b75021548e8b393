"""Lossless HTJ2K derivatives (gateway.derive) through the real stack: made after the STOW answer by the stack's
worker, served only to an Accept that names them, with Range on single-part frames; the original before the
derivative exists and after its encode failed; P10 retrieve always the original bytes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
import requests

from gateway.catalog import Catalog
from gateway.config import Settings
from gateway.derive import MAX_ATTEMPTS, derivative_key, work
from gateway.dicomweb.wado import DERIVATIVE_TS
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack

HT = f"image/jphc; transfer-syntax={DERIVATIVE_TS}"
HT_OR_ORIGINAL = f"{HT}, application/octet-stream; transfer-syntax=*"
ORIGINAL_TYPE = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
WAIT = 120.0  # bound for the worker on a loaded two-core machine (each poll returns as soon as it is done)


def frame_words(path: Path, n: int = 1) -> np.ndarray[Any, Any]:
    """Frame ``n`` as the stored words (no rescaling, no masking): what a lossless derivative must give back."""
    ds = pydicom.dcmread(path)
    dtype = {(16, 1): "<i2", (16, 0): "<u2", (8, 0): "u1"}[(int(ds.BitsAllocated), int(ds.PixelRepresentation))]
    size = int(ds.Rows) * int(ds.Columns)
    words = np.frombuffer(ds.PixelData, dtype=dtype)
    return words[(n - 1) * size : n * size].reshape(int(ds.Rows), int(ds.Columns))


def frame_url(stack: RunningStack, path: Path, n: int = 1) -> str:
    study, series, sop = uids_of(path)
    root = stack.root(stack.issue([study])["token"])
    return f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/{n}"


def wait_for_derivative(url: str) -> requests.Response:
    deadline = time.monotonic() + WAIT
    while True:
        answer = requests.get(url, headers={"Accept": HT_OR_ORIGINAL}, timeout=30)
        assert answer.status_code == 200, answer.text
        if answer.headers["Content-Type"] == f"{HT}" or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_exact_pixels_and_range_from_the_derivative(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    path = synthetic["ct"][2]
    url = frame_url(stack, path)
    answer = wait_for_derivative(url)
    assert answer.headers["Content-Type"] == HT
    assert answer.headers["Accept-Ranges"] == "bytes"
    code = answer.content
    decoded = imagecodecs.htj2k_decode(code)
    original = frame_words(path)
    assert decoded.dtype == original.dtype
    assert np.array_equal(decoded, original)
    assert len(code) < original.nbytes  # smaller, losslessly
    assert code[:2] == b"\xff\x4f"  # a bare codestream (SOC), as PS3.18 image/jphc frames are

    head = requests.get(url, headers={"Accept": HT_OR_ORIGINAL, "Range": "bytes=0-4095"}, timeout=30)
    assert head.status_code == 206
    assert head.headers["Content-Range"] == f"bytes 0-4095/{len(code)}"
    assert head.headers["Content-Type"] == HT
    assert head.content == code[:4096]
    tail = requests.get(url, headers={"Accept": HT_OR_ORIGINAL, "Range": "bytes=4096-"}, timeout=30)
    assert tail.status_code == 206
    assert head.content + tail.content == code
    beyond = requests.get(url, headers={"Accept": HT_OR_ORIGINAL, "Range": f"bytes={len(code)}-"}, timeout=30)
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(code)}"
    assert beyond.headers["Content-Type"] == "application/json"
    assert beyond.json()["error"] == "range_not_satisfiable"


def test_range_on_original_single_part_frame(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    path = synthetic["ct"][0]
    url = frame_url(stack, path)
    raw = frame_words(path).tobytes()
    part = requests.get(url, headers={"Accept": "application/octet-stream", "Range": "bytes=100-1099"}, timeout=30)
    assert part.status_code == 206
    assert part.headers["Content-Type"] == ORIGINAL_TYPE
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(raw)}"
    assert part.content == raw[100:1100]
    beyond = requests.get(
        url, headers={"Accept": "application/octet-stream", "Range": f"bytes={len(raw)}-"}, timeout=30
    )
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(raw)}"


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "*/*",
        "application/octet-stream",
        "application/octet-stream; transfer-syntax=*",
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        'multipart/related; type="application/octet-stream"',
    ],
)
def test_derivative_only_when_named(stack: RunningStack, synthetic: dict[str, Any], accept: str) -> None:
    path = synthetic["ct"][3]
    url = frame_url(stack, path)
    assert wait_for_derivative(url).headers["Content-Type"] == HT  # it exists: what follows is a choice
    answer = requests.get(url, headers={"Accept": accept} if accept else {}, timeout=30)
    assert answer.status_code == 200
    assert DERIVATIVE_TS not in answer.headers["Content-Type"]
    assert frame_words(path).tobytes() in answer.content
    multi = requests.get(
        url, headers={"Accept": f'multipart/related; type="application/octet-stream"; transfer-syntax={DERIVATIVE_TS}'}
    )
    assert multi.status_code == 200
    assert f"transfer-syntax={DERIVATIVE_TS}".encode() in multi.content
    p10 = requests.get(url.rsplit("/frames/", 1)[0], headers={"Accept": "application/dicom"}, timeout=30)
    assert p10.status_code == 200
    assert p10.content == path.read_bytes()


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A file-backed stack whose worker is stopped before any upload: derivative jobs wait until a test runs one."""
    running = start_stack(tmp_path_factory.mktemp("stack-idle"), "file", None)
    running.stack.kill("derive")
    try:
        yield running
    finally:
        running.stack.stop()


def run_worker_until(running: RunningStack, done: Any) -> None:
    """The real worker loop in this process, until ``done()`` (bounded)."""
    stop = threading.Event()
    settings = Settings.from_env({**running.stack.gateway_env(), "DICOMGW_MODE": "development"})
    thread = threading.Thread(target=work, args=(settings, stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    try:
        while not done() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert done()


def test_original_until_the_derivative_exists(idle: RunningStack, tmp_path: Path) -> None:
    files = make_series(tmp_path / "ct", modality="CT", slices=2, seed=41, clean=True)
    assert idle.stow(files).status_code == 200
    url = frame_url(idle, files[0])
    before = requests.get(url, headers={"Accept": HT_OR_ORIGINAL}, timeout=30)
    assert before.status_code == 200
    assert before.headers["Content-Type"] == ORIGINAL_TYPE
    assert before.content == frame_words(files[0]).tobytes()
    only = requests.get(url, headers={"Accept": HT}, timeout=30)
    assert only.status_code == 406  # no transcoding: nothing it accepts exists yet
    assert only.headers["Content-Type"] == "application/json"

    def served() -> bool:
        answer = requests.get(url, headers={"Accept": HT_OR_ORIGINAL}, timeout=30)
        return answer.headers["Content-Type"] == HT

    run_worker_until(idle, served)
    after = requests.get(url, headers={"Accept": HT_OR_ORIGINAL}, timeout=30)
    assert np.array_equal(imagecodecs.htj2k_decode(after.content), frame_words(files[0]))


def test_original_after_the_encode_failed(idle: RunningStack, tmp_path: Path) -> None:
    files = make_series(tmp_path / "ct", modality="CT", slices=1, seed=43, clean=True)
    assert idle.stow(files).status_code == 200
    study, series, sop = uids_of(files[0])
    catalog = Catalog(idle.stack.database_url)
    row = catalog.get_instance(sop, with_metadata=False)
    assert row is not None
    # A real write failure: a plain file stands where the derivative's folder must go.
    blocker = (
        Path(idle.stack.storage_url.removeprefix("file://")) / Path(derivative_key(row.storage_key, row.sha256)).parent
    )
    blocker.write_bytes(b"")

    def given_up() -> bool:
        job = catalog.derivative_job(sop)
        return job is not None and job.attempts >= MAX_ATTEMPTS

    run_worker_until(idle, given_up)
    job = catalog.derivative_job(sop)
    assert job is not None and (job.last_error or "").startswith("StorageUnavailable")
    url = frame_url(idle, files[0])
    answer = requests.get(url, headers={"Accept": HT_OR_ORIGINAL}, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == ORIGINAL_TYPE
    assert answer.content == frame_words(files[0]).tobytes()
