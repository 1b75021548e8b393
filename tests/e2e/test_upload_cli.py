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

from gateway.tools.synth import make_series
from tests.e2e.harness import RunningStack, start_stack

EXPORT = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
DICOMDIR_NOTE = "skipped (a DICOMDIR, the index of the media, not an instance): "


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    stack = start_stack(tmp_path_factory.mktemp("upload-cli"), "file", None)
    yield stack
    stack.stack.stop()


def upload(stack: RunningStack, folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway.cli", "upload", str(folder), "--url", f"{stack.url}/dicomweb", *options]
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


POLICY = """
version = "upload-cli-1"

[destinations.clinical-eu]
storage = "default"
region = "eu-west-1"
identifiable_allowed = true

[[rules]]
id = "no-tenant"
match = { tenant = "" }
action = "reject"
reason = "uploads must name a tenant (X-DICOMGW-Tenant)"

[[rules]]
id = "clinic"
match = { tenant = "klinik-zürich" }
action = "route"
destination = "clinical-eu"

[default]
action = "reject"
reason = "no policy rule covers this upload"
"""


@pytest.fixture(scope="module")
def policy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    base = tmp_path_factory.mktemp("upload-cli-policy")
    policy = base / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    stack = start_stack(base / "stack", "file", None, DICOMGW_PHI_POLICY=str(policy))
    yield stack
    stack.stack.stop()


def test_the_upload_names_the_tenant_and_region_the_policy_matches_on(
    policy_stack: RunningStack, tmp_path: Path
) -> None:
    """README's example policy refuses an upload that names no tenant, and routes identifiable data only with the
    region it comes from; `upload` could send neither header, so under such a policy it stored nothing. `--tenant`
    and `--region` send them (UTF-8, as the policy writes `zürich`) with every STOW request."""
    from gateway.tools.synth import make_series

    files = make_series(tmp_path / "series", modality="CT", slices=2, rows=16, columns=16, seed=271)
    folder = str(tmp_path / "series")

    unnamed = upload(policy_stack, Path(folder))
    assert unnamed.returncode == 1, unnamed.stdout + unnamed.stderr
    assert unnamed.stdout.count("uploads must name a tenant (X-DICOMGW-Tenant) (0x0110)") == 2, unnamed.stdout

    elsewhere = upload(policy_stack, Path(folder), "--tenant", "klinik-zürich", "--region", "us-east-1")
    assert elsewhere.returncode == 1, elsewhere.stdout + elsewhere.stderr
    refusal = "identifiable data from region 'us-east-1' may not go to destination 'clinical-eu' in region 'eu-west-1'"
    assert elsewhere.stdout.count(refusal) == 2, elsewhere.stdout

    for option, bad, said in (
        ("--tenant", "a,b", "one value: no comma"),
        ("--tenant", " ", "must not be empty"),
        ("--tenant", "a\tb", "no control character"),
        ("--region", "eu-west-1,us-east-1", "one value: no comma"),
        ("--region", "", "must not be empty"),
        ("--region", "eu-west-1\n", "no control character"),
    ):
        context = {"--tenant": "klinik-zürich", "--region": "eu-west-1", option: bad}
        usage = upload(policy_stack, Path(folder), *(item for pair in context.items() for item in pair))
        assert usage.returncode == 2 and f"Invalid value for '{option}': {said}" in usage.stderr, usage.stderr
        assert usage.stdout == ""

    named = upload(policy_stack, Path(folder), "--tenant", "klinik-zürich", "--region", "eu-west-1")
    assert named.returncode == 0, named.stdout + named.stderr
    assert summary(named.stdout)["stored"] == "2", named.stdout
    for path in files:
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        found = requests.get(
            f"{policy_stack.url}/dicomweb/instances",
            params={"SOPInstanceUID": sop},
            headers=policy_stack.api_headers,
            timeout=10,
        )
        assert found.status_code == 200 and len(found.json()) == 1, path.name
        study, series = found.json()[0]["0020000D"]["Value"][0], found.json()[0]["0020000E"]["Value"][0]
        whole = requests.get(
            f"{policy_stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}",
            headers={**policy_stack.api_headers, "Accept": "application/dicom"},
            timeout=10,
        )
        assert whole.status_code == 200 and whole.content == path.read_bytes(), path.name
        audit = requests.get(
            f"{policy_stack.url}/api/v1/admin/audit",
            params={"sop_uid": sop},
            headers=policy_stack.api_headers,
            timeout=10,
        )
        decisions = [(item["decision"], item["rule"]) for item in audit.json()["items"]]
        assert decisions[0] == ("route", "clinic"), decisions


def test_files_that_break_pydicom_fail_alone_and_the_rest_is_uploaded(running: RunningStack, tmp_path: Path) -> None:
    """Reading a file's UIDs, ``upload`` let pydicom's own errors out: a deflated data set that does not inflate
    (``zlib.error``) or sequences nested 5000 deep after the UIDs (``RecursionError``, read to the end) were a
    traceback, exit 1, and no file of the folder was sent. Now the first has failed with its reason, the second is
    the server's to judge (0xC000, as DCMTK's storescu sends what it cannot parse), and the good file is stored."""
    folder = tmp_path / "mixed"
    [good] = make_series(folder, modality="CT", slices=1, rows=16, columns=16, seed=198, clean=True)
    data = good.read_bytes()
    group_end = 144 + int.from_bytes(data[140:144], "little")
    meta = pydicom.filereader.read_file_meta_info(good)
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    deflated = pydicom.filebase.DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(deflated, meta, enforce_standard=True)
    (folder / "garbage-deflated.dcm").write_bytes(data[:128] + b"DICM" + deflated.getvalue() + bytes(range(256)) * 8)
    after_series = data.index(b"\x20\x00\x10\x00", group_end)  # (0020,0010) Study ID follows the Series UID
    nested = (b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * 5000
    sop = str(pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID)
    other = (sop[:-1] + ("1" if sop[-1] != "1" else "2")).encode()  # another instance, UIDs as long
    (folder / "nested.dcm").write_bytes(data[:after_series].replace(sop.encode(), other) + nested)

    ran = upload(running, folder)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stdout + ran.stderr
    rows = summary(ran.stdout)
    assert (rows["stored"], rows["failed"]) == ("1", "2"), ran.stdout
    lines = {line.split("│")[1].strip(): line for line in ran.stdout.splitlines() if line.count("│") == 3}
    assert "unreadable DICOM header (error)" in lines[str(folder / "garbage-deflated.dcm")], ran.stdout
    assert "(0xC000)" in lines[str(folder / "nested.dcm")], ran.stdout


@pytest.mark.parametrize("root", ["", "/dicom-web"])
def test_a_url_that_is_not_the_dicomweb_root_says_so(running: RunningStack, tmp_path: Path, root: str) -> None:
    """`--url http://host:port`, the address `stack up` prints, without the DICOMweb path (or with Orthanc's
    `/dicom-web`): every file failed with "HTTP 404: no such resource", which did not say what to change. The reason
    now asks whether --url is the DICOMweb root and names this gateway's; nothing was stored, exit 2."""
    make_series(tmp_path / "ct", modality="CT", slices=1, rows=16, columns=16, seed=199, clean=True)
    command = [sys.executable, "-m", "gateway.cli", "upload", str(tmp_path / "ct"), "--url", running.url + root]
    env = {**os.environ, "DICOMGW_API_KEY": running.stack.api_key, "COLUMNS": "400"}
    ran = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stdout + ran.stderr
    rows = summary(ran.stdout)
    assert (rows["stored"], rows["failed"]) == ("0", "1"), ran.stdout
    [reason] = [line.split("│")[2].strip() for line in ran.stdout.splitlines() if line.count("│") == 3]
    assert reason == (
        "HTTP 404: no such resource (is --url the DICOMweb root? STOW-RS posts to its /studies: this gateway's root"
        " ends in /dicomweb, http://HOST:PORT/dicomweb, a token's in /t/TOKEN/dicomweb)"
    ), ran.stdout


def test_an_instance_whose_file_failed_is_sent_from_its_next_file(running: RunningStack, tmp_path: Path) -> None:
    """pydicom's ``badVR.dcm`` (Number of Frames '1A', refused 0xC000) and its ``rtdose*.dcm`` share one SOP Instance
    UID. ``upload`` sends one file an instance: ``badVR.dcm`` failed, and the others were "skipped (same SOP Instance
    UID as badVR.dcm)" as if it were stored, so the instance was never sent. The next file of it is now sent in
    the failed one's place (a note says so); the rest stay skipped."""
    folder = tmp_path / "same-instance"
    folder.mkdir()
    test_files = Path(pydicom.data.__file__).parent / "test_files"
    for name in ("badVR.dcm", "rtdose.dcm", "rtdose_rle.dcm"):
        shutil.copyfile(test_files / name, folder / name)
    ran = upload(running, folder)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stdout + ran.stderr  # badVR.dcm failed
    assert (summary(ran.stdout)["stored"], summary(ran.stdout)["failed"], summary(ran.stdout)["skipped"]) == (
        "1", "1", "1"
    ), ran.stdout
    stderr = " ".join(ran.stderr.split())  # rich wraps long notes
    assert f"sending {folder / 'rtdose.dcm'} in place of {folder / 'badVR.dcm'}, which failed" in stderr, stderr
    ds = pydicom.dcmread(folder / "rtdose.dcm")
    token = running.issue([str(ds.StudyInstanceUID)])["token"]
    stored = requests.get(
        f"{running.root(token)}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        headers={"Accept": "application/dicom"},
        timeout=60,
    )
    assert stored.status_code == 200 and stored.content == (folder / "rtdose.dcm").read_bytes()
