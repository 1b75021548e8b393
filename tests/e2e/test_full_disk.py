"""A full disk through the real stack (local-folder storage): each folder the stack writes to sits on a small tmpfs
of its own, which a test fills with a file and then frees again.

- NGINX's own temp and cache folders: reads and uploads answered as usual, only not cached.

Mounting needs root (as in CI's VM): without it every test here skips, saying why.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_read_path import parse_multipart
from tests.e2e.test_stow import referenced

FRAMES = "multipart/related; type=application/octet-stream"
FRAME_TYPE = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"  # make_series: Explicit VR LE


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """``folder`` on a tmpfs of ``size`` for the block; unmounted after it (the stack must be stopped first)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as error:  # no mount(8) at all
        pytest.skip(f"cannot mount a tmpfs: {error}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (the full-disk tests need root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """A new file taking the free space of ``folder``'s file system but about ``leave`` bytes."""
    filler = folder / f"filler-{len(list(folder.glob('filler-*')))}"
    stat = os.statvfs(folder)
    wanted = stat.f_bavail * stat.f_frsize - leave
    chunk = b"\0" * 65536
    written = 0
    with open(filler, "wb") as out:
        try:
            while written < wanted:
                written += out.write(chunk[: min(len(chunk), wanted - written)])
                out.flush()
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    return filler


@contextlib.contextmanager
def running(var_dir: Path, **env: str) -> Iterator[RunningStack]:
    stack = start_stack(var_dir, "file", None, **env)
    try:
        yield stack
    finally:
        stack.stack.stop()


def sent(files: list[Path]) -> dict[str, bytes]:
    return {uids_of(path)[2]: path.read_bytes() for path in files}


def test_nginx_temp_and_cache_folders_full_still_serve_reads_and_uploads(tmp_path: Path) -> None:
    """NGINX's temp and cache folders full: a decision or plan it cannot cache ended the request with no answer
    at all (a closed connection, for every DICOMweb request on a new decision). Now each is served uncached: new
    tokens' QIDO, metadata, frames and instances answer with the stored bytes, and an upload is stored."""
    files = make_series(tmp_path / "ct", modality="CT", slices=3, seed=95, clean=True)
    var = tmp_path / "var"
    with (
        tmpfs(var / "nginx" / "tmp", "1m") as temp,
        tmpfs(var / "nginx" / "cache", "1m") as cache,
        running(var) as stack,
    ):
        assert stack.stow(files).status_code == 200
        fill(temp)
        fill(cache)
        study, series, _ = uids_of(files[0])
        for attempt in range(2):  # the second time as well: nothing was cached the first
            root = stack.root(stack.issue([study], actions=["read", "write"])["token"])
            qido = requests.get(f"{root}/studies/{study}/instances", timeout=30)
            assert qido.status_code == 200, (attempt, qido.text)
            assert sorted(row["00080018"]["Value"][0] for row in qido.json()) == sorted(sent(files))
            for path in files:
                _, _, sop = uids_of(path)
                base = f"{root}/studies/{study}/series/{series}/instances/{sop}"
                metadata = requests.get(f"{base}/metadata", timeout=30)
                assert metadata.status_code == 200, metadata.text
                assert metadata.json()[0]["00080018"]["Value"] == [sop]
                frame = requests.get(f"{base}/frames/1", headers={"Accept": FRAMES}, timeout=30)
                assert frame.status_code == 200, frame.text
                assert parse_multipart(frame) == [(FRAME_TYPE, pydicom.dcmread(path).PixelData)]
                whole = requests.get(base, headers={"Accept": "application/dicom"}, timeout=30)
                assert whole.status_code == 200, whole.text
                assert hashlib.sha256(whole.content).digest() == hashlib.sha256(path.read_bytes()).digest()
        more = make_series(tmp_path / "more", modality="CT", slices=2, seed=96, clean=True, study_uid=study)
        upload = stack.stow(more, root=root)
        assert upload.status_code == 200, upload.text
        assert len(referenced(upload)) == 2
        assert [path.name for path in cache.iterdir() if path.is_file()] == ["filler-0"]  # no probe left behind
