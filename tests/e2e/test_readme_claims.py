"""README claims no other test exercised, each checked through the real stack as README states it: the lines of "Try
the demo by hand" and the portal's token request run as written, the session cookie's lifetime, study- and
series-level rendered and thumbnail paths, the reason header of a DELETE, formula cells in the access-audit CSV,
``/metrics`` from a non-loopback address, ``/readyz`` without its storage folder, ``DICOMGW_STOW_OVERWRITE=1`` and
``DICOMGW_DERIVATIVES=0``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_durability import children_of

COLLECT_BOUND = 30.0  # seconds: several passes of the access audit collector (5 s apart by default)


def json_error(answer: requests.Response, status: int, code: str) -> dict[str, Any]:
    """README: errors are JSON everywhere, ``{"error": code, "detail": ...}``, ``Content-Type: application/json``."""
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json", answer.headers
    body: dict[str, Any] = answer.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    return body


# -- claim: "The cookie outlives its token's session by a minute" (Sessions; and "expiring a minute after the token")


def epoch(text: str) -> int:
    """The API's ``expires_at`` (``2026-12-05T02:38:14Z``) in epoch seconds."""
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def cookie_max_age(answer: requests.Response) -> int:
    [max_age] = re.findall(r"Max-Age=(\d+)", answer.headers["Set-Cookie"])
    return int(max_age)


def test_the_session_cookie_lives_a_minute_past_its_token(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    study = uids_of(synthetic["ct"][0])[0]
    issued = stack.issue([study], ttl=600)
    before = int(time.time())
    answer = requests.get(
        f"{stack.url}/api/v1/session", params={"token": issued["token"]}, allow_redirects=False, timeout=10
    )
    after = int(time.time())
    assert answer.status_code == 303 and answer.headers["Location"] == "/viewer/"
    # the remaining lifetime of the token, counted in whole seconds when the answer was made, plus 60
    expires_at = epoch(issued["expires_at"])
    assert cookie_max_age(answer) in {expires_at - now + 60 for now in range(before, after + 1)}
    assert expires_at - before <= 600
    assert 600 + 60 - (after - before) - 1 <= cookie_max_age(answer) <= 600 + 60


def test_the_session_cookie_lives_a_minute_past_the_session(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    study = uids_of(synthetic["ct"][0])[0]
    issued = stack.issue([study], ttl=60, session_max=900)
    before = int(time.time())
    answer = requests.get(
        f"{stack.url}/api/v1/session", params={"token": issued["token"]}, allow_redirects=False, timeout=10
    )
    after = int(time.time())
    assert answer.status_code == 303
    end = epoch(issued["session_expires_at"])
    assert cookie_max_age(answer) in {end - now + 60 for now in range(before, after + 1)}
    assert cookie_max_age(answer) > 60 + 60  # the session's end, not the 60 s token's


# -- claim: "Try the demo by hand": README's own shell lines, run as written with the token root in ROOT


def readme_by_hand_block() -> str:
    """The ``sh`` block under "Try the demo by hand", as README holds it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    after = readme.split("Try the demo by hand", 1)[1]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_demo_by_hand_lines_run_as_written(stack: RunningStack, synthetic: dict[str, Any], tmp_path: Path) -> None:
    """Each line of README's "Try the demo by hand" in bash with Debian's curl and python3, ROOT the pasted token
    root: the search lists only the token's study, the UIDs it picks lead to a frame whose bytes are the file's
    pixels, and the tampered token's line prints 401."""
    study = uids_of(synthetic["ct"][0])[0]
    root = stack.root(stack.issue([study])["token"])
    lines = readme_by_hand_block().splitlines()
    assert lines[0].startswith("ROOT='http://127.0.0.1:8080/t/.../dicomweb'"), lines[0]
    script = "\n".join([f"ROOT='{root}'", *lines[1:], 'echo "$ST $SE $IN"'])
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    *listed, tampered, uids = done.stdout.splitlines()
    [only] = requests.get(f"{root}/studies", timeout=30).json()  # "QIDO: only the token's study"
    assert only["0020000D"]["Value"] == [study]
    assert listed == json.dumps([only], indent=4).splitlines()[:10]  # json.tool's, cut by head
    assert tampered == "401"
    st, se, sop = uids.split()
    assert st == study
    [file] = [f for f in [*synthetic["ct"], *synthetic["ct_b"]] if uids_of(f) == (st, se, sop)]
    assert (tmp_path / "f.raw").read_bytes() == pydicom.dcmread(file).PixelData


def test_the_portal_iframe_curl_line_runs_as_written(stack: RunningStack, tmp_path: Path) -> None:
    """README, "Viewer and embedding": the portal's ``curl`` for a token, run as written on the stack's address with
    ``$API_KEY`` set, is a 201 whose ``viewer_url`` is the iframe's ``src`` that README shows."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("Portal iframe (server side first gets the URL from the API):", 1)[1]
    command = block.split("```sh\n", 1)[1].split("```", 1)[0]
    iframe = block.split("```html\n", 1)[1].split("```", 1)[0]
    assert command.count("https://dicom.example.org") == 1, command
    status_line = "curl -s -w '\\n%{http_code}' "
    script = command.replace("https://dicom.example.org", stack.url).replace("curl -s ", status_line)
    env = {**os.environ, "API_KEY": stack.stack.api_key}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    body, status = done.stdout.rsplit("\n", 1)
    assert (done.returncode, done.stderr, status) == (0, "", "201"), (done.stderr, done.stdout)
    issued = json.loads(body)
    assert set(issued) == {"token", "expires_at", "jti", "dicomweb_root", "viewer_url"}
    [src] = re.findall(r'src="([^"]+)"', iframe)
    assert issued["viewer_url"] == src.replace("https://dicom.example.org", stack.url).replace("TOKEN", issued["token"])


# -- claim: "a study's and a series' rendered and thumbnail are those of its representative image" (HTTP API); they
# were a JSON 404 "no such DICOMweb resource", so dicomweb-client's retrieve_series_rendered failed (PS3.18 10.4.1.1.4
# and 10.4.3.3.4 name both levels; Orthanc's plugin answers them with one instance's rendering).


def study_with_a_document_first(stack: RunningStack, folder: Path) -> tuple[list[Path], pydicom.Dataset]:
    """A CT series (Series Number 2) and, listed before it (Series Number 1), an Encapsulated PDF: no image."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    seed = 7400 if stack.backend == "file" else 7401
    ct = make_series(folder / "ct", modality="CT", slices=3, rows=160, columns=160, seed=seed, clean=True)
    source = pydicom.dcmread(ct[0], stop_before_pixels=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"pdf-{seed}"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pdf = pydicom.Dataset()
    pdf.file_meta = meta
    pdf.SOPClassUID, pdf.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    pdf.StudyInstanceUID, pdf.PatientID = source.StudyInstanceUID, source.PatientID
    pdf.SeriesInstanceUID = generate_uid(entropy_srcs=[f"pdf-{seed}-series"])
    pdf.SeriesNumber, pdf.InstanceNumber, pdf.Modality = 1, 1, "DOC"
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"
    pdf.save_as(folder / "report.dcm", enforce_file_format=True)
    assert stack.stow([folder / "report.dcm", *ct]).status_code == 200
    return ct, pdf


def test_study_and_series_level_renderings(stack: RunningStack, tmp_path: Path) -> None:
    ct, pdf = study_with_a_document_first(stack, tmp_path)
    study, series, _ = uids_of(ct[0])
    middle = uids_of(ct[1])[2]  # of three images, ordered by Instance Number
    root = stack.root(stack.issue([study])["token"])
    instance = f"{root}/studies/{study}/series/{series}/instances/{middle}"
    for query, accept, media in (
        ("", {}, "image/jpeg"),
        ("", {"Accept": "image/png"}, "image/png"),
        ("?viewport=16,16&window=40,400", {"Accept": "image/gif"}, "image/gif"),
    ):
        expected = requests.get(f"{instance}/rendered{query}", headers=accept, timeout=30)
        assert (expected.status_code, expected.headers["Content-Type"]) == (200, media)
        # the study's first series (the PDF) holds no image: the study is shown by the CT series' middle image
        for path in (f"/studies/{study}/rendered", f"/studies/{study}/series/{series}/rendered"):
            answer = requests.get(f"{root}{path}{query}", headers=accept, timeout=30)
            assert (answer.status_code, answer.headers["Content-Type"]) == (200, media), (path, answer.text[:300])
            assert answer.content == expected.content, path
    # a series of a document only is rendered as its instance is: the PDF itself
    document = requests.get(f"{root}/studies/{study}/series/{pdf.SeriesInstanceUID}/rendered", timeout=30)
    assert (document.status_code, document.headers["Content-Type"]) == (200, "application/pdf")
    assert document.content == pdf.EncapsulatedDocument
    json_error(requests.get(f"{root}/studies/{study}/rendered", headers={"Accept": "video/mp4"}, timeout=30), 406,
               "not_acceptable")  # fmt: skip

    thumbnail = requests.get(f"{root}/studies/{study}/thumbnail", timeout=30)
    assert (thumbnail.status_code, thumbnail.headers["Content-Type"]) == (200, "image/jpeg"), thumbnail.text[:300]
    assert thumbnail.content == requests.get(f"{instance}/thumbnail", timeout=30).content
    assert thumbnail.content == requests.get(f"{root}/studies/{study}/series/{series}/thumbnail", timeout=30).content
    from PIL import Image

    with Image.open(io.BytesIO(thumbnail.content)) as image:
        assert image.format == "JPEG" and max(image.size) == 128  # README: thumbnails are 128 px JPEG

    # a series token reaches its series' rendering, not the study's
    series_root = stack.root(stack.issue([study], series=[series])["token"])
    assert requests.get(f"{series_root}/studies/{study}/series/{series}/rendered", timeout=30).status_code == 200
    for path in (f"/studies/{study}/rendered", f"/studies/{study}/thumbnail"):
        assert json_error(requests.get(f"{series_root}{path}", timeout=30), 403, "out_of_scope")["detail"] == (
            "the token reaches only some series of this study"
        )
    # a series of another study is no series of this one
    other = uids_of(stack.uploaded["files"][0])
    json_error(requests.get(f"{root}/studies/{study}/series/{other[1]}/rendered", timeout=30), 404, "not_found")


# -- claim: DELETE's "optional X-DICOMGW-Reason header (≤ 500 printable characters ...)"


@pytest.mark.parametrize("control", ["\x01", "\x1b", "\x7f", "\t"])
def test_a_delete_reason_with_a_control_character_is_a_400(stack: RunningStack, tmp_path: Path, control: str) -> None:
    seed = 7100 + ord(control) + (0 if stack.backend == "file" else 500)
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=seed, clean=True)
    study, series, sop = uids_of(path)
    assert stack.stow([path]).status_code == 200
    answer = requests.delete(
        f"{stack.url}/dicomweb/studies/{study}",
        headers={**stack.api_headers, "X-DICOMGW-Reason": f"portal{control}withdrew"},
        timeout=120,
    )
    body = json_error(answer, 400, "bad_request")
    assert body["detail"] == "reason must be printable text of at most 500 characters"  # the gateway's, not NGINX's
    # refused before anything was removed: the instance is still served
    token = stack.issue([study])["token"]
    listed = requests.get(f"{stack.root(token)}/studies/{study}/instances", timeout=30)
    assert listed.status_code == 200
    assert [item["00080018"]["Value"] for item in listed.json()] == [[sop]]
    done = requests.delete(
        f"{stack.url}/dicomweb/studies/{study}",
        headers={**stack.api_headers, "X-DICOMGW-Reason": "clean up"},
        timeout=120,
    )
    assert done.status_code == 204


# -- claim: the access audit CSV: "cells a spreadsheet would run as a formula are prefixed with '"


def test_the_audit_csv_defuses_formula_cells(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    study, series, _ = uids_of(synthetic["ct"][0])
    tag = uuid.uuid4().hex[:8]
    subjects = [f"=HYPERLINK(1){tag}", f"+1{tag}", f"-1{tag}", f"@SUM{tag}"]
    for subject in subjects:
        token = stack.issue([study], sub=subject)["token"]
        assert requests.get(f"{stack.root(token)}/studies/{study}/series", timeout=30).status_code == 200
    for subject in subjects:
        deadline = time.monotonic() + COLLECT_BOUND
        while True:
            params = {"subject": subject, "format": "csv"}
            answer = requests.get(
                f"{stack.url}/api/v1/admin/access", params=params, headers=stack.api_headers, timeout=10
            )
            assert answer.status_code == 200, answer.text[:300]
            rows = list(csv.DictReader(io.StringIO(answer.text)))
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert len(rows) == 1, (subject, answer.text)
        assert rows[0]["sub"] == "'" + subject
        assert rows[0]["study_uid"] == study and rows[0]["status"] == "200"
        as_json = requests.get(
            f"{stack.url}/api/v1/admin/access", params={"subject": subject}, headers=stack.api_headers, timeout=10
        )
        assert [item["sub"] for item in as_json.json()["items"]] == [subject]  # JSON keeps the value as it is


# -- claims that need a stack of their own (local folder) -------------------------------------------------------


def test_metrics_is_refused_from_another_address(stack: RunningStack) -> None:
    """README, HTTP API: ``GET /metrics`` is "loopback only" (NGINX allows 127.0.0.1 and ::1). A client on another
    address is refused by NGINX before the gateway: 127.0.0.2, which every Linux loopback answers, stands in for
    one, so no network is needed."""
    import http.client

    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    assert requests.get(f"{stack.url}/metrics", timeout=10).status_code == 200  # from 127.0.0.1: served
    client = http.client.HTTPConnection(host, int(port), timeout=10, source_address=("127.0.0.2", 0))
    try:
        client.request("GET", "/metrics")
        answer = client.getresponse()
        status, content_type, body = answer.status, answer.getheader("Content-Type"), answer.read()
    finally:
        client.close()
    assert (status, content_type) == (403, "application/json")
    assert json.loads(body)["error"] == "forbidden" and b"# TYPE" not in body
    stack.settle_access_log()
    lines = [entry for entry in stack.access_log() if entry["uri"] == "/metrics" and entry["remote"] == "127.0.0.2"]
    assert [(line["status"], line["upstream_status"]) for line in lines] == [(403, "")]  # NGINX refused it


@pytest.fixture
def file_stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningStack]:
    env: dict[str, str] = getattr(request, "param", {})
    running = start_stack(tmp_path / "var", "file", None, **env)
    try:
        yield running
    finally:
        running.stack.stop()


def test_readyz_names_a_missing_storage_folder(file_stack: RunningStack) -> None:
    """README: ``/readyz`` is "200 when storage and catalog answer, else 503 naming the failing check"."""
    ready = requests.get(f"{file_stack.url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"storage": "ok", "catalog": "ok"}}
    folder = Path(file_stack.stack.storage_url.removeprefix("file://"))
    assert folder.is_dir()
    moved = folder.with_name(folder.name + ".away")
    folder.rename(moved)
    try:
        answer = requests.get(f"{file_stack.url}/readyz", timeout=30)
        assert answer.status_code == 503, answer.text
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json() == {"status": "unavailable", "checks": {"storage": "storage_unavailable", "catalog": "ok"}}
        assert not folder.exists()  # the probe made no folder in its place
        # gunicorn replaces killed workers: the new ones find the folder gone too (each worker used to create it,
        # so an empty folder stood in for the lost one and uploads and /readyz said all was well)
        master = file_stack.stack.processes["gunicorn"].pid
        killed = set(children_of(master))
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(set(children_of(master)) - killed) < len(killed):
            assert time.monotonic() < deadline, "gunicorn did not replace its workers"
            time.sleep(0.2)
        while (answer := requests.get(f"{file_stack.url}/readyz", timeout=30)).status_code not in (200, 503):
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.2)
        assert answer.status_code == 503, answer.text
        assert not folder.exists()
    finally:
        moved.rename(folder)
    assert requests.get(f"{file_stack.url}/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize("file_stack", [{"DICOMGW_STOW_OVERWRITE": "1"}], indirect=True)
def test_stow_overwrite_replaces_the_instance(file_stack: RunningStack, tmp_path: Path) -> None:
    """README: ``DICOMGW_STOW_OVERWRITE=1``: "a STOW of a known SOP Instance UID with different bytes replaces it"."""
    [path] = make_series(tmp_path / "ct", modality="CT", slices=1, rows=16, columns=16, seed=7301, clean=True)
    study, series, sop = uids_of(path)
    first = file_stack.stow([path])
    assert first.status_code == 200, first.text
    ds = pydicom.dcmread(path)
    ds.InstanceNumber = 99
    ds.save_as(path)
    replaced = path.read_bytes()
    second = file_stack.stow([path])
    assert second.status_code == 200, second.text
    body = second.json()
    assert "00081198" not in body  # no FailedSOPSequence: not 0x0111
    [ref] = body["00081199"]["Value"]
    assert ref["00081155"]["Value"] == [sop]
    token = file_stack.issue([study])["token"]
    instance = f"{file_stack.root(token)}/studies/{study}/series/{series}/instances/{sop}"
    retrieved = requests.get(instance, headers={"Accept": "application/dicom"}, timeout=30)
    assert retrieved.status_code == 200
    assert retrieved.content == replaced
    [metadata] = requests.get(f"{instance}/metadata", timeout=30).json()
    assert metadata["00200013"]["Value"] == [99]
    listed = requests.get(f"{file_stack.root(token)}/studies/{study}/instances", timeout=30).json()
    assert [item["00080018"]["Value"] for item in listed] == [[sop]]  # replaced, not added beside it
    stored = [key for key in file_stack.storage().list(f"studies/{study}/") if key.endswith(".dcm")]
    assert len(stored) == 1


@pytest.mark.parametrize("file_stack", [{"DICOMGW_DERIVATIVES": "0"}], indirect=True)
def test_no_derivative_is_made_with_derivatives_off(file_stack: RunningStack, tmp_path: Path) -> None:
    """README: ``DICOMGW_DERIVATIVES`` "0: none are made". No job is queued, so even a derivative worker run here
    (with derivatives on) finds nothing to make, and a frame request naming only HTJ2K stays a 406."""
    import threading

    from gateway.catalog import Catalog
    from gateway.config import Settings
    from gateway.derive import work
    from gateway.dicomweb.wado import DERIVATIVE_TS

    files = make_series(tmp_path / "ct", modality="CT", slices=2, rows=64, columns=64, seed=7401, clean=True)
    assert file_stack.stow(files).status_code == 200
    settings = Settings.from_env(
        {**file_stack.stack.gateway_env(), "DICOMGW_MODE": "development", "DICOMGW_DERIVATIVES": "1"}
    )
    assert work(settings, threading.Event(), once=True) == 0
    catalog = Catalog(file_stack.stack.database_url)
    study = uids_of(files[0])[0]
    for path in files:
        assert catalog.derivative_job(uids_of(path)[2]) is None
    assert [key for key in file_stack.storage().list(f"studies/{study}/") if "/htj2k-" in key] == []
    _, series, sop = uids_of(files[0])
    url = f"{file_stack.root(file_stack.issue([study])['token'])}/studies/{study}/series/{series}/instances/{sop}"
    only = requests.get(
        f"{url}/frames/1", headers={"Accept": f"image/jphc; transfer-syntax={DERIVATIVE_TS}"}, timeout=30
    )
    json_error(only, 406, "not_acceptable")
    either = requests.get(
        f"{url}/frames/1",
        headers={"Accept": f"image/jphc; transfer-syntax={DERIVATIVE_TS}, application/octet-stream; transfer-syntax=*"},
        timeout=30,
    )
    assert either.status_code == 200
    assert either.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert either.content == pydicom.dcmread(files[0]).PixelData
