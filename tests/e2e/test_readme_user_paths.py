"""What a new user copies from README.md, run as written through the real stack (session 20): each test names the
README line it checks and asserts the exact status, headers and bytes the README promises."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, ctrl_c_as_from_a_terminal, stack_holding


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, synthetic: dict[str, Any]) -> Iterator[RunningStack]:
    """One local-folder stack holding the synthetic CT (these paths do not depend on the storage backend)."""
    with stack_holding(tmp_path_factory.mktemp("readme-user-file"), "file", None, list(synthetic["ct"])) as running:
        yield running


# -- README, HTTP API: "GET /api/v1/admin/audit?...: pages of `limit` (1-1000, default 100) ... A malformed UID,
# cursor or an unknown parameter is a JSON 400"; the deletion audit is "paged the same way". A limit over 1000 was
# cut to 1000 in silence (a 200) up to 2**31 - 1, and above that a 400 naming 2147483647 as the bound.


@pytest.mark.parametrize("kind", ["", "kind=deletion&"])
@pytest.mark.parametrize("limit", ["1001", "5000", "2147483647"])
def test_audit_limit_over_1000_is_a_json_400_naming_the_bound(stack: RunningStack, kind: str, limit: str) -> None:
    answer = requests.get(
        f"{stack.url}/api/v1/admin/audit?{kind}limit={limit}", headers=stack.api_headers, timeout=30
    )
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.content == b'{"error": "bad_request", "detail": "limit: expected an integer from 1 to 1000"}'


@pytest.mark.parametrize("kind", ["", "kind=deletion&"])
def test_audit_limit_1000_is_a_page(stack: RunningStack, kind: str) -> None:
    answer = requests.get(f"{stack.url}/api/v1/admin/audit?{kind}limit=1000", headers=stack.api_headers, timeout=30)
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert set(body) == {"items", "next_cursor"} and body["next_cursor"] is None


# -- README, Command line: `upload PATH... --url ROOT`; Tokens: the query `?token=` is accepted on every DICOMweb
# path. A root copied with its `?token=T` kept the query in front of `/studies` (`{root}?token=T/studies`): every
# file failed with a 405 and the exit was 2. It now sends T as `--token` does; a root that is no http(s) URL, or
# holds another query or a fragment, is one usage line (exit 2) instead of a failed row per file.


def cli_upload(folder: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DICOMGW_API_KEY", "DICOMGW_TOKEN")}
    command = [sys.executable, "-m", "gateway.cli", "upload", str(folder), "--url", url, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**env, "COLUMNS": "400"})


def summary(stdout: str) -> dict[str, str]:
    cells = [line.split("│") for line in stdout.splitlines() if line.count("│") == 4]
    return {c[1].strip(): c[2].strip() for c in cells}


def test_upload_to_a_root_with_its_query_token(stack: RunningStack, tmp_path: Path) -> None:
    files = make_series(tmp_path / "ct", modality="CT", slices=2, rows=32, columns=32, seed=2020, clean=True)
    study = uids_of(files[0])[0]
    token = stack.issue([study], actions=["read", "write"])["token"]
    root = f"{stack.url}/dicomweb?token={token}"

    first = cli_upload(tmp_path / "ct", root)
    assert first.returncode == 0, first.stdout + first.stderr
    assert summary(first.stdout) == {"stored": "2", "already present": "0", "failed": "0", "skipped": "0"}
    assert token not in first.stdout + first.stderr  # URLs are never printed: they may carry the token

    listed = requests.get(f"{stack.url}/dicomweb/studies/{study}/instances?token={token}", timeout=30)
    assert listed.status_code == 200 and listed.headers["Content-Type"] == "application/dicom+json"
    assert sorted(item["00080018"]["Value"][0] for item in listed.json()) == sorted(uids_of(f)[2] for f in files)

    again = cli_upload(tmp_path / "ct", root)  # resume asks with the same token: nothing sent twice
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary(again.stdout) == {"stored": "0", "already present": "2", "failed": "0", "skipped": "0"}


@pytest.mark.parametrize(
    ("url", "extra", "message"),
    [
        ("notaurl", (), "expected an http:// or https:// DICOMweb root, e.g. https://host/t/TOKEN/dicomweb"),
        ("{url}/dicomweb?limit=1", (), "a DICOMweb root holds no query but ?token=..."),
        ("{url}/dicomweb?token=", (), "a DICOMweb root holds no query but ?token=..."),
        ("{url}/dicomweb?%74oken=abc", (), "a DICOMweb root holds no query but ?token=..."),
        ("{url}/dicomweb#frag", (), "a DICOMweb root holds no fragment (#)"),
        ("{url}/dicomweb?token=abc", ("--token", "xyz"), "its ?token= and --token (or DICOMGW_TOKEN) differ"),
    ],
)
def test_upload_to_what_is_no_root_is_one_line(
    stack: RunningStack, tmp_path: Path, url: str, extra: tuple[str, ...], message: str
) -> None:
    make_series(tmp_path / "ct", modality="CT", slices=1, rows=32, columns=32, seed=2021, clean=True)
    done = cli_upload(tmp_path / "ct", url.format(url=stack.url), *extra)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"Error: Invalid value for '--url': {message}\n")


# -- README, HTTP API: the admin audit and the access trail take each of their parameters once. A repeated one was
# read by its first value alone: `study=A&study=B` listed A's rows only, as if that had been the question.


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("access?study=1.2.3&study=1.2.4", "study"),
        ("access?subject=a&subject=b", "subject"),
        ("access?limit=5&limit=5", "limit"),
        ("access?format=csv&format=json", "format"),
        ("audit?study_uid=1.2.3&study_uid=1.2.4", "study_uid"),
        ("audit?kind=deletion&kind=hook", "kind"),
        ("audit?kind=deletion&cursor=5&cursor=6", "cursor"),
    ],
)
def test_an_admin_query_parameter_given_twice_is_a_json_400(stack: RunningStack, query: str, name: str) -> None:
    answer = requests.get(f"{stack.url}/api/v1/admin/{query}", headers=stack.api_headers, timeout=30)
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.content == b'{"error": "bad_request", "detail": "%s given more than once"}' % name.encode()


# -- README, HTTP API: `GET /api/v1/admin/quarantine` lists the held files and takes no parameter. `?limit=5` (what
# the audit and access siblings take) was a 200 listing every held file, the parameter read by no one; now a JSON
# 400 naming it, as its siblings answer an unknown parameter.


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("limit=5", "limit"),
        ("limit=5&limit=5", "limit"),
        ("cursor=3&kind=hook", "cursor, kind"),
        ("study_uid=1.2.3", "study_uid"),
    ],
)
def test_the_quarantine_listing_refuses_a_parameter(stack: RunningStack, query: str, names: str) -> None:
    answer = requests.get(f"{stack.url}/api/v1/admin/quarantine?{query}", headers=stack.api_headers, timeout=30)
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.content == b'{"error": "bad_request", "detail": "unknown parameters: %s"}' % names.encode()
    listed = requests.get(f"{stack.url}/api/v1/admin/quarantine", headers=stack.api_headers, timeout=30)
    assert listed.status_code == 200 and listed.headers["Content-Type"] == "application/json"
    assert listed.json() == {"items": []}


def test_the_access_trails_malformed_study_is_named(stack: RunningStack) -> None:
    answer = requests.get(f"{stack.url}/api/v1/admin/access?study=abc", headers=stack.api_headers, timeout=30)
    assert answer.status_code == 400 and answer.headers["Content-Type"] == "application/json"
    assert answer.content == b'{"error": "invalid_uid", "detail": "study is not a valid DICOM UID"}'


def test_each_admin_query_parameter_once_still_answers(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    study = uids_of(synthetic["ct"][0])[0]
    for query in (f"access?study={study}&limit=5&format=json", "audit?kind=deletion&limit=5"):
        answer = requests.get(f"{stack.url}/api/v1/admin/{query}", headers=stack.api_headers, timeout=30)
        assert answer.status_code == 200, (answer.status_code, answer.text[:300])
        assert answer.headers["Content-Type"] == "application/json"
        assert set(answer.json()) == {"items", "next_cursor"}


# -- README, Tokens: `GET /api/v1/session?token=...&next=/viewer/...` sets the cookie and 303s to `next`. Two tokens
# or two targets took the first in silence (a 303 with the first token as the cookie); now a JSON 400.


@pytest.mark.parametrize("name", ["token", "next"])
def test_the_session_exchange_takes_each_parameter_once(
    stack: RunningStack, synthetic: dict[str, Any], name: str
) -> None:
    token = stack.issue([uids_of(synthetic["ct"][0])[0]])["token"]
    query = f"token={token}&token={token}" if name == "token" else f"token={token}&next=/viewer/&next=/viewer/x"
    answer = requests.get(f"{stack.url}/api/v1/session?{query}", allow_redirects=False, timeout=30)
    assert answer.status_code == 400 and answer.headers["Content-Type"] == "application/json"
    assert "Set-Cookie" not in answer.headers
    assert answer.content == b'{"error": "bad_request", "detail": "%s given more than once"}' % name.encode()
    once = requests.get(
        f"{stack.url}/api/v1/session?token={token}&next=/viewer/", allow_redirects=False, timeout=30
    )
    assert once.status_code == 303 and once.headers["Location"] == "/viewer/"
    assert once.headers["Set-Cookie"].startswith(f"dicomgw_token={token}; ")


# -- README, Command line: `synth ct|mr|wsi --out DIR [...]` writes synthetic DICOM (docs/synth.md: `--patient`
# names the PatientID). One over LO's 64 characters, with a backslash or a control character was written as given
# (a pydicom warning, an invalid file); now a one-line usage error, and what it takes goes through the stack whole.


@pytest.mark.parametrize("patient", ["x" * 65, "a\\b", "a\tb", ""])
@pytest.mark.parametrize("kind", ["ct", "us"])
def test_synth_refuses_a_patient_id_dicom_cannot_hold(tmp_path: Path, kind: str, patient: str) -> None:
    size = ["--slices", "1", "--rows", "16", "--columns", "16"] if kind == "ct" else ["--frames", "1"]
    command = [sys.executable, "-m", "gateway.cli", "synth", kind, "--out", str(tmp_path / "out"), *size]
    done = subprocess.run([*command, "--patient", patient], capture_output=True, text=True, timeout=120)
    message = "Error: Invalid value for '--patient': a Patient ID is 1-64 characters, no backslash and no control"
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"{message} character\n")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_synth_patient_id_of_64_characters_is_stored_and_found(stack: RunningStack, tmp_path: Path) -> None:
    patient = "MRN-" + "7" * 60
    command = [sys.executable, "-m", "gateway.cli", "synth", "ct", "--out", str(tmp_path / "ct")]
    done = subprocess.run(
        [*command, "--slices", "1", "--rows", "16", "--columns", "16", "--seed", "2022", "--patient", patient],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    upload = cli_upload(tmp_path / "ct", f"{stack.url}/dicomweb", "--api-key", stack.stack.api_key)
    assert upload.returncode == 0, upload.stdout + upload.stderr
    found = requests.get(
        f"{stack.url}/dicomweb/studies", params={"PatientID": patient}, headers=stack.api_headers, timeout=30
    )
    assert found.status_code == 200 and found.headers["Content-Type"] == "application/dicom+json"
    [match] = found.json()
    assert match["00100020"] == {"vr": "LO", "Value": [patient]}


# -- README, Command line: `synth ct|mr|wsi --out DIR`. Ctrl-C while it wrote a series was click's `Aborted!`, exit 1
# (the status of a failure), and the file being written was left truncated under its .dcm name, which `upload` of
# the folder then sent and the gateway refused; the whole-slide image was already written aside and renamed.


def test_ctrl_c_during_synth_leaves_only_whole_files_and_exits_130(tmp_path: Path) -> None:
    import signal
    import time

    import pydicom

    out = tmp_path / "ct"
    command = [sys.executable, "-m", "gateway.cli", "synth", "ct", "--out", str(out), "--slices", "5000"]
    # SIGINT as a terminal's Ctrl-C delivers it, whatever this test runner's own disposition of it is
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_from_a_terminal,
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.dcm"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert (process.returncode, stdout, stderr) == (
        130,
        "",
        "stopped (Ctrl-C): the files written are whole; the same command again writes them all\n",
    )
    written = sorted(out.iterdir())
    assert written and all(path.suffix == ".dcm" for path in written), written
    for path in written:
        assert len(pydicom.dcmread(path).PixelData) == 512 * 512 * 2, path


# -- README, Command line: `scan PATH...` exits "0 clean or skipped, 1 PHI found, 2 unreadable". Ctrl-C in a folder's
# scan was click's `Aborted!`, exit 1: a script gating an import on the status read "PHI found" for files it never
# scanned (or, testing for 2, went on).


def test_ctrl_c_during_scan_is_no_verdict_and_exits_130(tmp_path: Path) -> None:
    import json
    import signal

    files = make_series(tmp_path / "export", modality="CT", slices=400, rows=16, columns=16, seed=2801, clean=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "scan", str(tmp_path / "export")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_from_a_terminal,
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # scanning has begun
    assert json.loads(first)["status"] == "clean"
    process.send_signal(signal.SIGINT)
    # read through the same buffered reader as readline: communicate() reads the pipe itself, and the lines readline
    # had already buffered past the first were lost to it (the test failed when scanning ran ahead of the signal)
    assert process.stderr is not None
    with process.stdout, process.stderr:
        rest, stderr = process.stdout.read(), process.stderr.read()
    process.wait(timeout=60)
    reports = [first, *rest.splitlines()]
    assert process.returncode == 130, (process.returncode, stderr)
    assert 0 < len(reports) < len(files)
    assert stderr == f"stopped (Ctrl-C) after {len(reports)} files: the rest were not scanned, so no verdict\n"
