"""``dicom-gateway upload`` on what users bring: a CD or USB export as another toolkit wrote it (pydicom's
``dicomdirtests``: DICOMDIRs in several encodings, image files without extensions, a README), through the real stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pydicom.data
import pytest
import requests

from tests.e2e.harness import RunningStack, start_stack

EXPORT = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
DICOMDIR_NOTE = "skipped (a DICOMDIR, the index of the media, not an instance): "


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    stack = start_stack(tmp_path_factory.mktemp("upload-cli"), "file", None)
    yield stack
    stack.stack.stop()


def upload(stack: RunningStack, folder: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway.cli", "upload", str(folder), "--url", f"{stack.url}/dicomweb"]
    env = {**os.environ, "DICOMGW_API_KEY": stack.stack.api_key, "COLUMNS": "400"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)


def summary(stdout: str) -> dict[str, str]:
    cells = [line.split("│") for line in stdout.splitlines() if line.count("│") == 4]
    return {c[1].strip(): c[2].strip() for c in cells}


def test_a_cd_export_uploads_whole_and_its_dicomdirs_are_skipped(running: RunningStack, tmp_path: Path) -> None:
    """Every export has a DICOMDIR. It was sent as an instance, failed ("Study Instance UID is missing") and the
    upload of a complete CD exited 1; now it is skipped with a note, and every instance it indexes is stored."""
    export = tmp_path / "cd"
    shutil.copytree(EXPORT, export)
    directories = sorted(
        p
        for p in export.rglob("*")
        if p.is_file()
        and p.read_bytes()[128:132] == b"DICM"
        and pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    )
    assert len(directories) >= 2  # the export and its variants really hold DICOMDIRs

    first = upload(running, export)
    assert first.returncode == 0, first.stdout + first.stderr
    for directory in directories:
        assert f"{DICOMDIR_NOTE}{directory}" in first.stderr
    rows = summary(first.stdout)
    not_dicom = sum(1 for p in export.rglob("*") if p.is_file() and p.read_bytes()[128:132] != b"DICM")
    skipped = len(directories) + not_dicom + duplicates(export)
    assert rows["failed"] == "0" and rows["skipped"] == str(skipped), rows

    # What the DICOMDIRs index (their directory records, as pydicom reads them) is on the server, byte for byte.
    indexed = [entry for d in ("DICOMDIR", "TINY_ALPHA/DICOMDIR") for entry in indexed_files(export / d)]
    assert len(indexed) > 70
    for sop, path in indexed:
        found = requests.get(
            f"{running.url}/dicomweb/instances",
            params={"SOPInstanceUID": sop},
            headers=running.api_headers,
            timeout=10,
        )
        assert found.status_code == 200 and len(found.json()) == 1, path
        item = found.json()[0]
        study, series = item["0020000D"]["Value"][0], item["0020000E"]["Value"][0]
        whole = requests.get(
            f"{running.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}",
            headers={**running.api_headers, "Accept": "application/dicom"},
            timeout=10,
        )
        assert whole.status_code == 200 and whole.content == path.read_bytes(), path

    again = upload(running, export)
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary(again.stdout)["already present"] == rows["stored"]


def indexed_files(dicomdir: Path) -> list[tuple[str, Path]]:
    """(SOP Instance UID, file) of each IMAGE record of a DICOMDIR (PS3.3 F.5)."""
    records = pydicom.dcmread(dicomdir).DirectoryRecordSequence
    return [
        (str(r.ReferencedSOPInstanceUIDInFile), dicomdir.parent.joinpath(*r.ReferencedFileID))
        for r in records
        if r.DirectoryRecordType == "IMAGE"
    ]


def duplicates(export: Path) -> int:
    """Instance files whose SOP Instance UID an earlier file (in the upload's sorted order) already has."""
    seen: set[str] = set()
    duplicates = 0
    for path in sorted(export.rglob("*")):
        if not path.is_file() or path.read_bytes()[128:132] != b"DICM":
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10":
            continue
        duplicates += ds.SOPInstanceUID in seen
        seen.add(ds.SOPInstanceUID)
    return duplicates
