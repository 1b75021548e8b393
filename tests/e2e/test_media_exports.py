"""Media exports as users bring them, through the real stack on both backends: a CD made by DCMTK's ``dcmmkdir``
and a USB stick made by GDCM's ``gdcmgendir`` over pydicom's test files (8.3 upper-case names without extension in
nested folders, PS3.12), with what a real CD carries besides (AUTORUN.INF, a viewer, README, an HTML index, an
empty file, symlink loops), a PACS export of data sets without the PS3.10 wrapping, archives, files whose File Meta
is wrong; ``dicom-gateway upload`` on them (exit code, summary lines, what the catalog then holds, byte for byte),
raw STOW of the same files, a re-run and an upload cut by Ctrl-C then resumed."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pydicom.data
import pytest
import requests
from pydicom.uid import generate_uid

from tests.e2e.conftest import BACKENDS
from tests.e2e.harness import RunningStack, ctrl_c_as_from_a_terminal, start_stack
from tests.fixtures.servers import MotoServer

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
CD_FILES = ["CT_small.dcm", "MR_small.dcm", "reportsi.dcm"]  # explicit VR LE: the General Purpose CD-R profile
USB_FILES = ["SC_rgb_small_odd.dcm", "SC_ybr_full_422_uncompressed.dcm"]
PREAMBLE_NOTE = "wrapped into a PS3.10 file (the data set had no File Meta or preamble): "
DICOMDIR_NOTE = "skipped (a DICOMDIR, the index of the media, not an instance): "


@pytest.fixture(scope="module", params=BACKENDS)
def running(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    moto: MotoServer | None = request.getfixturevalue("moto_server") if request.param == "s3" else None
    stack = start_stack(tmp_path_factory.mktemp(f"media-{request.param}"), request.param, moto)
    yield stack
    stack.stack.stop()


def upload(stack: RunningStack, *paths: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        upload_command(stack, *paths, extra=extra),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=upload_env(stack),
    )


def upload_command(stack: RunningStack, *paths: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "upload", *map(str, paths), "--url", f"{stack.url}/dicomweb", *extra]


def upload_env(stack: RunningStack) -> dict[str, str]:
    return {**os.environ, "DICOMGW_API_KEY": stack.stack.api_key, "COLUMNS": "400"}


def summary_lines(stdout: str) -> list[str]:
    """The summary table's rows, cells stripped: ``"stored | 3 | 1234"``."""
    rows = [line.split("│")[1:-1] for line in stdout.split("Failed files")[0].splitlines() if line.count("│") == 4]
    return [" | ".join(cell.strip() for cell in row) for row in rows]


def failed_rows(stdout: str) -> dict[str, str]:
    """File → reason from the "Failed files" table."""
    if "Failed files" not in stdout:
        return {}
    rows = [line.split("│") for line in stdout.split("Failed files")[1].splitlines() if line.count("│") == 3]
    return {row[1].strip(): row[2].strip() for row in rows}  # the header row is drawn with ┃, not │


def row(label: str, files: list[Path] | int, size: int | None = None) -> str:
    if isinstance(files, int):
        return f"{label} | {files} | {size}"
    return f"{label} | {len(files)} | {sum(p.stat().st_size for p in files) if size is None else size}"


def instance(stack: RunningStack, sop: str) -> tuple[list[dict[str, object]], bytes | None]:
    """QIDO's answer for one SOP Instance UID and, when it has one, the instance retrieved as stored."""
    found = requests.get(
        f"{stack.url}/dicomweb/instances", params={"SOPInstanceUID": sop}, headers=stack.api_headers, timeout=10
    )
    assert found.status_code == 200, found.text
    items = found.json()
    if len(items) != 1:
        return items, None
    study, series = items[0]["0020000D"]["Value"][0], items[0]["0020000E"]["Value"][0]
    whole = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers={**stack.api_headers, "Accept": "application/dicom"},
        timeout=10,
    )
    assert whole.status_code == 200, whole.text
    return items, whole.content


def sop_of(path: Path) -> str:
    return str(pydicom.dcmread(path, force=True, stop_before_pixels=True).SOPInstanceUID)


def copy_as_83(sources: list[str], folder: Path, start: int) -> list[Path]:
    """Copies under 8.3 upper-case names without extension, two per subfolder (IMAGES/S0000n/IM00000n)."""
    copies = []
    for n, name in enumerate(sources, start):
        target = folder / "IMAGES" / f"S{n // 2:05d}" / f"IM{n:06d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TEST_FILES / name, target)
        copies.append(target)
    return copies


def add_cd_extras(media: Path) -> list[Path]:
    """What a real CD carries besides DICOM (files the upload must skip); symlink loops are not files at all."""
    extras = {
        "AUTORUN.INF": b"[autorun]\r\nopen=VIEWER\\VIEWER.EXE\r\nicon=VIEWER\\VIEWER.EXE,0\r\n",
        "VIEWER/VIEWER.EXE": b"MZ\x90\x00\x03" + b"\0" * 59 + b"This program cannot be run in DOS mode.\r\n" * 4,
        "README.TXT": b"PATIENT CD\r\nInsert the CD and run VIEWER.EXE.\r\n",
        "INDEX.HTM": b"<html><body><a href='IMAGES/'>Images</a></body></html>\n",
        "EMPTY": b"",
    }
    written = []
    for name, content in extras.items():
        path = media / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    (media / "VIEWER" / "LOOP").symlink_to("..")  # a directory loop
    (media / "A.LNK").symlink_to("B.LNK")  # a symlink loop: neither resolves
    (media / "B.LNK").symlink_to("A.LNK")
    return written


@pytest.fixture
def media(tmp_path: Path) -> dict[str, list[Path]]:
    """The CD (dcmmkdir's DICOMDIR) and the USB stick (gdcmgendir's), their instances and their extras."""
    cd, usb = tmp_path / "CD", tmp_path / "USB"
    cd_images = copy_as_83(CD_FILES, cd, 1)
    usb_images = copy_as_83(USB_FILES, usb, 11)
    made = subprocess.run(
        ["dcmmkdir", "--recurse", "+I", "IMAGES"], cwd=cd, capture_output=True, text=True, check=False
    )
    assert made.returncode == 0 and (cd / "DICOMDIR").is_file(), made.stderr
    made = subprocess.run(
        ["gdcmgendir", "-r", "-i", "IMAGES", "-o", "DICOMDIR"], cwd=usb, capture_output=True, text=True, check=False
    )
    assert made.returncode == 0 and (usb / "DICOMDIR").is_file(), made.stdout + made.stderr
    return {
        "images": cd_images + usb_images,
        "dicomdirs": [cd / "DICOMDIR", usb / "DICOMDIR"],
        "extras": add_cd_extras(cd),
        "roots": [cd, usb],
    }


def test_a_cd_and_a_usb_stick_upload_whole(running: RunningStack, media: dict[str, list[Path]]) -> None:
    """Both media in one command: every instance stored byte for byte, the DICOMDIRs and the CD's extras skipped
    with a note each, the symlink loops neither followed nor reported, exit 0; a re-run sends nothing."""
    first = upload(running, *media["roots"])
    assert first.returncode == 0, first.stdout + first.stderr
    images, skipped = media["images"], media["dicomdirs"] + media["extras"]
    assert summary_lines(first.stdout) == [
        row("stored", images),
        row("already present", 0, 0),
        row("failed", 0, 0),
        row("skipped", skipped),
    ]
    for directory in media["dicomdirs"]:
        assert f"{DICOMDIR_NOTE}{directory}" in first.stderr
    for extra in media["extras"]:
        assert f"skipped (not a DICOM file): {extra}" in first.stderr
    assert "LNK" not in first.stderr + first.stdout and "LOOP" not in first.stderr + first.stdout
    for path in images:
        found, stored = instance(running, sop_of(path))
        assert len(found) == 1 and stored == path.read_bytes(), path

    again = upload(running, *media["roots"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary_lines(again.stdout) == [
        row("stored", 0, 0),
        row("already present", images),
        row("failed", 0, 0),
        row("skipped", skipped),
    ]


def strip_file_meta(source: Path) -> bytes:
    """The data set of a PS3.10 file: what follows the preamble, DICM and the File Meta group."""
    data = source.read_bytes()
    (group_length,) = struct.unpack_from("<I", data, 140)
    return data[144 + group_length :]


def test_a_pacs_export_without_ps310_wrapping_is_wrapped_not_changed(running: RunningStack, tmp_path: Path) -> None:
    """Data sets without preamble and File Meta (implicit and explicit VR), one with a preamble but no File Meta,
    one with File Meta but no preamble: each is sent as a PS3.10 file (STOW takes nothing else, PS3.18 8.7.3)
    whose data set is the file's bytes unchanged, and the raw file sent by STOW is a failure item, nothing stored."""
    export = tmp_path / "PACS"
    export.mkdir()
    bare = {  # file → its data set
        export / "RTSTRUCT": (TEST_FILES / "rtstruct.dcm").read_bytes(),  # implicit VR little endian, as PACS wrote
        export / "EXPLVR": (TEST_FILES / "ExplVR_LitEndNoMeta.dcm").read_bytes(),
        export / "PREAMBLE": strip_file_meta(TEST_FILES / "rtdose.dcm"),
    }
    for path, data_set in bare.items():
        path.write_bytes(data_set)
    (export / "PREAMBLE").write_bytes((TEST_FILES / "rtdose.dcm").read_bytes()[:132] + bare[export / "PREAMBLE"])
    no_preamble = export / "NOPREAMB"
    no_preamble.write_bytes((TEST_FILES / "rtplan.dcm").read_bytes()[132:])

    # sent raw, each is refused as the JSON failure item PS3.18 10.5.3 has: nothing stored, no 5xx
    not_part10 = "not a DICOM Part 10 file (no 'DICM' prefix after the 128-byte preamble)"
    reasons = {path: not_part10 for path in [*bare, no_preamble]}
    reasons[export / "PREAMBLE"] = "the file meta information has no Transfer Syntax UID (0002,0010)"
    for path, reason in reasons.items():
        raw = running.stow([path])
        assert raw.status_code == 409, raw.text
        assert raw.headers["Content-Type"].startswith("application/dicom+json")
        failed = raw.json()["00081198"]["Value"]
        assert [item["00081197"]["Value"] for item in failed] == [[0xC000]]
        assert failed[0]["00091001"]["Value"] == [reason]
        single = requests.post(  # the same file as a single-part application/dicom body
            f"{running.url}/dicomweb/studies",
            data=path.read_bytes(),
            headers={**running.api_headers, "Content-Type": "application/dicom", "Accept": "application/dicom+json"},
            timeout=30,
        )
        assert single.status_code == 409 and single.json()["00081198"] == raw.json()["00081198"], single.text
        assert instance(running, sop_of(path))[0] == []

    done = upload(running, export)
    assert done.returncode == 0, done.stdout + done.stderr
    for path in [*bare, no_preamble]:
        assert f"{PREAMBLE_NOTE}{path}" in done.stderr
    lines = summary_lines(done.stdout)
    assert lines[0].startswith("stored | 4 | ") and lines[1:] == [
        row("already present", 0, 0),
        row("failed", 0, 0),
        row("skipped", 0, 0),
    ]
    for path, data_set in {**bare, no_preamble: None}.items():
        found, stored = instance(running, sop_of(path))
        assert len(found) == 1 and stored is not None, path
        assert stored[128:132] == b"DICM" and stored[:128] == b"\0" * 128
        if data_set is None:  # only the preamble was missing: the file is as it was after it
            assert stored[132:] == path.read_bytes()
            continue
        meta = pydicom.dcmread(io.BytesIO(stored), stop_before_pixels=True).file_meta
        assert stored.endswith(data_set) and len(stored) == 144 + meta.FileMetaInformationGroupLength + len(data_set)
        assert meta.MediaStorageSOPInstanceUID == sop_of(path)
        # DCMTK reads the wrapped file with the transfer syntax its File Meta declares
        dumped = subprocess.run(["dcmdump", "-q", "-"], input=stored, capture_output=True, check=False)
        assert dumped.returncode == 0 and sop_of(path).encode() in dumped.stdout

    again = upload(running, export)
    assert again.returncode == 0 and summary_lines(again.stdout)[1].startswith("already present | 4 | ")


def test_a_wrong_file_meta_fails_with_the_servers_reason(running: RunningStack, tmp_path: Path) -> None:
    """A File Meta Information Group Length that does not count the group, and a Transfer Syntax UID that
    disagrees with the data set: PS3.10 makes the File Meta authoritative, readers disagree on such files, so the
    gateway refuses them (0xC000 with the reason) and the upload says which file and why, exit 1."""
    broken = tmp_path / "BROKEN"
    broken.mkdir()
    group_length = broken / "GRPLEN"
    data = bytearray((TEST_FILES / "liver_1frame.dcm").read_bytes())
    struct.pack_into("<I", data, 140, struct.unpack_from("<I", data, 140)[0] + 10)
    group_length.write_bytes(bytes(data))
    syntax = broken / "BIGEND"
    source = (TEST_FILES / "test-SR.dcm").read_bytes()
    assert source.count(b"1.2.840.10008.1.2.1\0") == 1
    syntax.write_bytes(source.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.2\0"))

    done = upload(running, broken)
    assert done.returncode == 1, done.stdout + done.stderr
    assert summary_lines(done.stdout) == [
        row("stored", 0, 0),
        row("already present", 0, 0),
        row("failed", [group_length, syntax]),
        row("skipped", 0, 0),
    ]
    reasons = failed_rows(done.stdout)
    assert reasons[str(group_length)].startswith("the File Meta Information Group Length (0002,0000) is ")
    assert reasons[str(group_length)].endswith("(0xC000)")
    # read as big endian, the little-endian data set is garbage at once
    assert reasons[str(syntax)] == "element (5800,0000) has an invalid VR (0xC000)"
    for source in ("liver_1frame.dcm", "test-SR.dcm"):
        assert instance(running, sop_of(TEST_FILES / source))[0] == []


def test_archives_are_skipped_with_a_note_naming_why(running: RunningStack, tmp_path: Path) -> None:
    """A portal's .dcm.gz and .zip of a study are not unpacked (what they expand to is the user's call): each is
    skipped with a note that says what to do, and nothing is sent (exit 2: no DICOM file found)."""
    portal = tmp_path / "portal"
    portal.mkdir()
    series = sorted((TEST_FILES / "dicomdirtests" / "98892001" / "CT5N").iterdir())
    (portal / "slice.dcm.gz").write_bytes(gzip.compress(series[0].read_bytes()))
    with zipfile.ZipFile(portal / "study.zip", "w") as archive:
        for path in series:
            archive.write(path, f"CT5N/{path.name}")
    done = upload(running, portal)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"skipped (a gzip file: decompress it first (gunzip), then upload the .dcm): {portal / 'slice.dcm.gz'}" in (
        done.stderr
    )
    assert f"skipped (a ZIP archive: unpack it first, then upload the folder): {portal / 'study.zip'}" in done.stderr
    assert summary_lines(done.stdout)[3] == row("skipped", [portal / "slice.dcm.gz", portal / "study.zip"])


def synthetic_series(folder: Path, count: int) -> list[Path]:
    """``count`` instances of one new series, from CT_small with new UIDs (test material, not what is checked)."""
    source = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()
    paths = []
    for n in range(count):
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        source.InstanceNumber = n + 1
        path = folder / f"IM{n:06d}"
        source.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def count_stored(stack: RunningStack, paths: list[Path]) -> int:
    study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    found = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/instances", headers=stack.api_headers, params={"limit": 1000}, timeout=10
    )
    if found.status_code == 404:  # none of the study stored yet
        return 0
    assert found.status_code == 200, found.text
    return len(found.json())


def test_an_upload_cut_by_ctrl_c_resumes_without_sending_twice(running: RunningStack, tmp_path: Path) -> None:
    """SIGINT while batches go out: no further batch starts, the one in flight finishes, the summary says what is
    stored and what was not sent, exit 130. The re-run sends exactly the rest; the series is then whole."""
    folder = tmp_path / "series"
    folder.mkdir()
    paths = synthetic_series(folder, 240)  # many, so a loaded machine cannot send them all before the signal
    one_per_request = ("--concurrency", "1", "--batch-bytes", "1")
    cli = subprocess.Popen(
        upload_command(running, folder, extra=one_per_request),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=upload_env(running),
        preexec_fn=ctrl_c_as_from_a_terminal,
    )
    deadline = time.monotonic() + 60
    while count_stored(running, paths) < 3:
        assert cli.poll() is None and time.monotonic() < deadline, "the upload ended before it could be interrupted"
        time.sleep(0.02)
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 130, out + err
    stored = count_stored(running, paths)
    assert 3 <= stored < len(paths)
    # one file per request, one request at a time, in the sorted order: what is stored is the first files
    assert summary_lines(out) == [
        row("stored", paths[:stored]),
        row("already present", 0, 0),
        row("failed", 0, 0),
        row("skipped", 0, 0),
        row("not sent", paths[stored:]),
    ]
    # the failed-files table lists 100 files, then how many more
    not_sent = {str(p): "not sent: the upload was interrupted (Ctrl-C)" for p in paths[stored:][:100]}
    if len(paths) - stored > 100:
        not_sent[f"... and {len(paths) - stored - 100} more"] = ""
    assert failed_rows(out) == not_sent

    resumed = upload(running, folder, extra=one_per_request)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert summary_lines(resumed.stdout) == [
        row("stored", paths[stored:]),
        row("already present", paths[:stored]),
        row("failed", 0, 0),
        row("skipped", 0, 0),
    ]
    assert count_stored(running, paths) == len(paths)
    for path in paths[:: len(paths) // 6]:
        assert instance(running, sop_of(path))[1] == path.read_bytes()


def test_an_unreadable_file_fails_and_the_rest_is_stored(running: RunningStack, tmp_path: Path) -> None:
    """A file the user cannot read may be an instance of the export: it is reported failed with why (exit 1), not
    skipped as no DICOM, and the readable instances are stored. As root every file is readable, so the CLI then
    runs as nobody (``setpriv``), as a user's upload would."""
    stick = tmp_path / "USB"
    readable, unreadable = copy_as_83(["examples_rgb_color.dcm", "waveform_ecg.dcm"], stick, 21)
    unreadable.chmod(0)
    command = upload_command(running, stick)
    if os.geteuid() == 0:
        for folder in [tmp_path, *tmp_path.parents]:  # pytest makes its folders 0700: let nobody reach the stick
            if folder.stat().st_mode & 0o001:
                break
            folder.chmod(folder.stat().st_mode | 0o055)
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=upload_env(running))
    assert done.returncode == 1, done.stdout + done.stderr
    assert summary_lines(done.stdout) == [
        row("stored", [readable]),
        row("already present", 0, 0),
        row("failed", 1, 0),
        row("skipped", 0, 0),
    ]
    assert failed_rows(done.stdout) == {str(unreadable): "cannot read the file (PermissionError)"}
    assert instance(running, sop_of(readable))[1] == readable.read_bytes()


def test_a_second_file_of_the_same_instance_is_skipped_with_a_note(running: RunningStack, tmp_path: Path) -> None:
    """A stick holding one image twice (the series copied into a second folder, a corrected file beside the first): the
    second file of a SOP Instance UID is not sent. It was counted under "skipped" without a note, so a summary of 2
    skipped came with 1 line saying why; each skipped file now has its note naming the file it repeats."""
    stick = tmp_path / "USB"
    first, other = copy_as_83(["CT_small.dcm", "MR_small.dcm"], stick, 31)
    same = stick / "SERIES2" / "IM000031"  # after IMAGES/ in the sorted walk
    same.parent.mkdir()
    shutil.copyfile(first, same)
    changed = stick / "SERIES2" / "IM000032"  # the same instance with other bytes: not the one to store silently
    dataset = pydicom.dcmread(other)
    dataset.PatientComments = "corrected copy"
    dataset.save_as(changed, enforce_file_format=True)
    (stick / "README.TXT").write_bytes(b"PATIENT STICK\r\n")

    done = upload(running, stick)
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary_lines(done.stdout)[3] == row("skipped", [same, changed, stick / "README.TXT"])
    assert f"skipped (same SOP Instance UID as {first}): {same}" in done.stderr
    assert f"skipped (same SOP Instance UID as {other}): {changed}" in done.stderr
    assert f"skipped (not a DICOM file): {stick / 'README.TXT'}" in done.stderr
    assert done.stderr.count("skipped (") == 3
    assert instance(running, sop_of(other))[1] == other.read_bytes()


def tiny_series(folder: Path, count: int) -> list[Path]:
    """``count`` one-pixel secondary captures of one new series (about 600 bytes each: many files, little disk)."""
    dataset = pydicom.Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.PatientID, dataset.Modality = "TINY", "OT"
    dataset.Rows = dataset.Columns = dataset.SamplesPerPixel = 1
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PhotometricInterpretation, dataset.PixelData = "MONOCHROME2", b"\0\0"
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    paths = []
    for n in range(count):
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.InstanceNumber = n + 1
        path = folder / f"IM{n:06d}"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_ctrl_c_before_the_first_batch_says_what_was_not_sent_and_exits_130(
    running: RunningStack, tmp_path: Path
) -> None:
    """SIGINT while the upload still reads the files (or asks what the server has): it was click's "Aborted!" and
    exit 1, which the README gives to "some files failed", with no summary. Now it is as a Ctrl-C later on: one line
    saying nothing was sent, the summary with a "not sent" row, exit 130; nothing is stored and the re-run sends
    everything."""
    folder = tmp_path / "export"
    folder.mkdir()
    paths = tiny_series(folder, 1000)
    note = folder / "IM000500.TXT"  # read after IM000500: its note says the upload is half-way through reading
    note.write_bytes(b"PATIENT CD\r\n")
    # a server that takes the connection and never answers: an upload that read every file before the signal came
    # (the test's process descheduled on a loaded machine) waits in its resume query, still before any batch
    with socket.create_server(("127.0.0.1", 0)) as silent:
        command = [*upload_command(running, folder)[:-1], f"http://127.0.0.1:{silent.getsockname()[1]}/dicomweb"]
        cli = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**upload_env(running), "PYTHONFAULTHANDLER": "1"},
            preexec_fn=ctrl_c_as_from_a_terminal,
        )
        assert cli.stderr is not None
        assert cli.stderr.readline() == f"skipped (not a DICOM file): {note}\n"
        cli.send_signal(signal.SIGINT)
        try:
            out, err = cli.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # it hung once on a loaded machine: where, then (faulthandler on SIGABRT)
            cli.send_signal(signal.SIGABRT)
            out, err = cli.communicate(timeout=30)
            pytest.fail(f"the upload did not end after its Ctrl-C; its threads:\n{err[-6000:]}")
    assert cli.returncode == 130, out + err
    assert "stopped (Ctrl-C) before any file was sent" in err and "Aborted!" not in err
    lines = summary_lines(out)
    assert lines[:4] == [
        row("stored", 0, 0),
        row("already present", 0, 0),
        row("failed", 0, 0),
        row("skipped", [note]),
    ]
    assert lines[4].startswith("not sent | ")
    read = int(lines[4].split(" | ")[1])
    assert 501 <= read <= len(paths)  # the signal came before any batch (while reading, or asking the server)
    assert lines[4] == row("not sent", paths[:read])
    assert set(failed_rows(out).values()) == {"not sent: the upload was interrupted (Ctrl-C)", ""}
    assert count_stored(running, paths) == 0

    again = upload(running, folder)
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary_lines(again.stdout)[0] == row("stored", paths)
    assert count_stored(running, paths) == len(paths)


def test_a_folder_of_links_to_study_folders_uploads_what_they_hold(running: RunningStack, tmp_path: Path) -> None:
    """A staging folder whose entries are symbolic links to study folders elsewhere (on a NAS, another disk), as an
    operator gathers what to import: the linked folders were not entered, the upload found no file, exit 2
    "nothing sent"; a link among real folders was passed over silently (exit 0, "everything is on the server",
    its instances never sent). A linked folder is now entered as any folder, each folder once: a link back up (a
    loop) is neither followed twice nor reported."""
    archive, staging = tmp_path / "archive", tmp_path / "staging"
    for folder in (archive / "STUDY1" / "SERIES", archive / "STUDY2", staging):
        folder.mkdir(parents=True)
    first, second = tiny_series(archive / "STUDY1" / "SERIES", 2), tiny_series(archive / "STUDY2", 1)
    (staging / "STUDY1").symlink_to(archive / "STUDY1")
    (staging / "STUDY2").symlink_to(archive / "STUDY2")
    (archive / "STUDY1" / "SERIES" / "UP").symlink_to("..")  # a loop inside a linked folder
    linked = [staging / "STUDY1" / p.relative_to(archive / "STUDY1") for p in first]
    linked += [staging / "STUDY2" / p.relative_to(archive / "STUDY2") for p in second]

    done = upload(running, staging)
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary_lines(done.stdout) == [
        row("stored", linked),
        row("already present", 0, 0),
        row("failed", 0, 0),
        row("skipped", 0, 0),
    ]
    assert "UP" not in done.stdout + done.stderr
    for path in first + second:
        assert instance(running, sop_of(path))[1] == path.read_bytes(), path
