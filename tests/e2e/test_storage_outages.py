"""Storage outages as a viewer meets them (session 19), through the real stack: S3 (moto's server behind a relay
that refuses connections, hangs, or answers 503 SlowDown, as an outage shows) and the local folder (its folder
gone, as an unmounted volume).

Every read kind a viewer uses is asked during and after the outage. Where the failure is known before the answer
starts, the client gets a JSON 503 with Retry-After (CORS included, so a browser viewer can read it); where NGINX
has started a composed answer, the transfer fails (no status, or a chunked body never terminated), never a complete
wrong answer. QIDO and metadata, which need only the catalog, are served throughout. Once storage answers, every
read is served again, byte for byte, within the documented pause (5 s), with nothing restarted; an upload refused
during the outage stores nothing, and the same upload afterwards stores every instance.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.derive import derivative_key
from gateway.dicomweb.multipart import multipart_boundary
from gateway.tools.stack import Stack, free_port
from gateway.tools.synth import make_series, make_wsi
from tests.e2e.conftest import uids_of
from tests.e2e.harness import AWS_TEST_ENV, RunningStack, start_stack, storage_unmounted
from tests.fixtures.servers import MotoServer, StorageFaults, create_bucket, start_moto

ORIGIN = "https://portal.example"  # the harness's allowed CORS origin
PAUSE = 5.0  # seconds reads NGINX composes from S3 are refused after a failure (njs/dgw_storage.js)

# reads NGINX composes from storage with SSI (the 200 goes out before a byte range is fetched)
COMPOSED = ("instance multipart", "series", "study", "frame", "frame octets", "frames", "bulkdata", "bulkdata range")
# reads answered whole: an object by X-Accel-Redirect (its status comes from storage) or Python's renderings
WHOLE = ("instance", "thumbnail", "wado-uri", "rendered", "wado-uri jpeg")
# reads of the catalog alone
CATALOG = ("qido", "metadata")


@dataclass
class Answer:
    """What a client got: ``complete`` is False when the connection ended before a whole answer (no status line,
    or a body cut short: a chunked body not terminated, fewer bytes than Content-Length)."""

    complete: bool
    status: int = 0
    headers: dict[str, str] | None = None
    body: bytes = b""
    took: float = 0.0

    def payload(self) -> bytes:
        """The body, with a multipart boundary (new for each uncached plan) replaced by a constant."""
        content_type = (self.headers or {}).get("content-type", "")
        if content_type.startswith("multipart/"):
            return self.body.replace(multipart_boundary(content_type).encode(), b"BOUNDARY")
        return self.body


def fetch(stack: RunningStack, path: str, headers: dict[str, str], timeout: float = 60) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", stack.stack.port, timeout=timeout)
    started = time.monotonic()
    try:
        connection.request("GET", path, headers={"Origin": ORIGIN, **headers})
        response = connection.getresponse()
        found = {k.lower(): v for k, v in response.getheaders()}
        try:
            body = response.read()
        except http.client.IncompleteRead:
            return Answer(False, response.status, found, took=time.monotonic() - started)
        return Answer(True, response.status, found, body, time.monotonic() - started)
    except (http.client.RemoteDisconnected, ConnectionError):
        return Answer(False, took=time.monotonic() - started)
    finally:
        connection.close()


def assert_json_503(name: str, answer: Answer) -> None:
    assert answer.complete and answer.status == 503, (name, answer)
    assert answer.headers is not None
    assert answer.headers["content-type"] == "application/json", (name, answer.headers)
    assert answer.headers["retry-after"] == "5", (name, answer.headers)
    assert answer.headers["access-control-allow-origin"] == ORIGIN, (name, answer.headers)
    assert json.loads(answer.body)["error"] == "storage_unavailable", (name, answer.body)


def assert_failed_or_json_503(name: str, answer: Answer) -> None:
    """The first read to meet the failure: a failed transfer, or the JSON 503; never a complete other answer."""
    if answer.complete:
        assert_json_503(name, answer)


@dataclass
class Data:
    stack: RunningStack
    reads: dict[str, tuple[str, dict[str, str]]]
    before: dict[str, Answer]
    big_series: str  # a 20 MB series retrieve: still being sent when storage goes away


def reads_of(root: str, ct: list[Path], wsi: Path) -> dict[str, tuple[str, dict[str, str]]]:
    study, series, sop = uids_of(ct[0])
    wsi_study, wsi_series, wsi_sop = uids_of(wsi)
    instance = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    slide = f"{root}/studies/{wsi_study}/series/{wsi_series}/instances/{wsi_sop}"
    wado = f"{root}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    return {
        "instance": (instance, {"Accept": "application/dicom"}),
        "instance multipart": (instance, {}),
        "series": (f"{root}/studies/{study}/series/{series}", {}),
        "study": (f"{root}/studies/{study}", {}),
        "metadata": (f"{instance}/metadata", {}),
        "frame": (f"{slide}/frames/3", {}),
        "frame octets": (f"{slide}/frames/4", {"Accept": "application/octet-stream"}),
        "frames": (f"{slide}/frames/1,2,5", {}),
        "bulkdata": (f"{instance}/bulkdata/7FE00010", {}),
        "bulkdata range": (f"{instance}/bulkdata/7FE00010", {"Range": "bytes=0-99"}),
        "rendered": (f"{instance}/rendered", {}),
        "thumbnail": (f"{root}/studies/{study}/series/{series}/thumbnail", {}),
        "wado-uri": (f"{wado}&contentType=application/dicom", {}),
        "wado-uri jpeg": (wado, {}),
        "qido": (f"{root}/studies?StudyInstanceUID={study}", {}),
    }


def stored_data(base: Path, stack: RunningStack, big: bool) -> Data:
    ct = make_series(base / "ct", modality="CT", slices=3, rows=64, columns=64, seed=1901, clean=True)
    wsi = make_wsi(base / "wsi", frames=40, seed=1902, clean=True)
    files = [*ct, wsi]
    if big:
        files += make_series(base / "big", modality="CT", slices=40, seed=1903, clean=True)
    assert stack.stow(files).status_code == 200
    token = stack.issue(sorted({uids_of(path)[0] for path in files}))["token"]
    reads = reads_of(f"/t/{token}/dicomweb", ct, wsi)
    before = {name: fetch(stack, path, headers) for name, (path, headers) in reads.items()}
    for name, answer in before.items():
        assert answer.complete and answer.status in (200, 206), (name, answer)
    big_study, big_series, _ = uids_of(files[-1])
    return Data(stack, reads, before, f"/t/{token}/dicomweb/studies/{big_study}/series/{big_series}")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Data, StorageFaults]]:
    moto = start_moto()
    faults = StorageFaults(moto.endpoint)
    base = tmp_path_factory.mktemp("outage-s3")
    running = start_stack(base / "var", "s3", MotoServer(moto.process, faults.endpoint))
    try:
        yield stored_data(base, running, big=True), faults
    finally:
        running.stack.stop()
        faults.close()
        moto.stop()


def listed_instances(stack: RunningStack, study: str) -> int:
    """How many instances QIDO lists in ``study`` (0 when it lists no such study)."""
    query = {"StudyInstanceUID": study, "includefield": "NumberOfStudyRelatedInstances"}
    answer = requests.get(f"{stack.url}/dicomweb/studies", params=query, headers=stack.api_headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return sum(int(item["00201208"]["Value"][0]) for item in answer.json())


def assert_served_again(data: Data, within: float) -> None:
    """Every read answers as before the outage, within ``within`` seconds of storage answering again."""
    deadline = time.monotonic() + within
    for name, (path, headers) in data.reads.items():
        while (answer := fetch(data.stack, path, headers)).status == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        expected = data.before[name]
        assert answer.complete and answer.status == expected.status, (name, answer)
        assert answer.payload() == expected.payload(), name


@pytest.mark.parametrize("failure", ["refused", "slowdown"])
def test_reads_during_an_s3_outage_are_json_503s_and_served_again_after(
    s3: tuple[Data, StorageFaults], failure: str, tmp_path: Path
) -> None:
    """Frames, bulkdata and multipart retrieves were each an aborted transfer (a closed connection, no status) for
    as long as S3 refused connections or answered 503 SlowDown. The first read to meet the failure still is (its
    200 was under way); the next ones get the JSON 503 with Retry-After before their answer starts, as the whole
    object, WADO-URI, thumbnail and rendered reads did already. QIDO and metadata are served throughout; nothing
    is refused for longer than the pause once S3 answers."""
    data, faults = s3
    stack = data.stack
    faults.set(failure)
    try:
        first = fetch(stack, *data.reads["frame"])
        assert_failed_or_json_503("first frame", first)
        during = {name: fetch(stack, path, headers) for name, (path, headers) in data.reads.items()}
        for name in (*COMPOSED, *WHOLE):
            assert_json_503(name, during[name])
        for name in CATALOG:
            assert during[name].complete and during[name].status == 200, (name, during[name])
            assert during[name].body == data.before[name].body, name
        # the auth step still answers first: no credential is a 401, not news of the outage
        path, headers = data.reads["frame"]
        anonymous = fetch(stack, "/dicomweb/" + path.split("/dicomweb/", 1)[1], headers)
        assert (anonymous.status, json.loads(anonymous.body)["error"]) == (401, "token_missing")
        # a frame never asked for before (no plan cached), asked during the outage: refused, and served after
        fresh = data.reads["frame"][0].replace("/frames/3", "/frames/7")
        assert_json_503("uncached frame", fetch(stack, fresh, {}))
        # an upload: refused whole, nothing of it listed
        seed = 1910 + len(failure)
        upload = make_series(tmp_path, modality="CT", slices=3, rows=32, columns=32, seed=seed, clean=True)
        refused = stack.stow(upload)
        assert (refused.status_code, refused.headers["Retry-After"]) == (503, "5"), refused.text
        assert refused.json()["error"] == "storage_unavailable"
        study = uids_of(upload[0])[0]
        assert listed_instances(stack, study) == 0
    finally:
        faults.set("up")
    assert_served_again(data, within=PAUSE + 5)
    assert fetch(stack, fresh, {}).status == 200
    stored = stack.stow(upload)
    assert stored.status_code == 200, stored.text
    assert len(stored.json()["00081199"]["Value"]) == 3
    assert listed_instances(stack, study) == 3


def test_a_hung_s3_fails_a_read_within_seconds_then_refuses_at_once(s3: tuple[Data, StorageFaults]) -> None:
    """An S3 that accepts connections and never answers held every frame for NGINX's 60 s read timeout before
    closing the connection, read after read. The first read now fails after 10 s (Python's own S3 timeout), and
    the reads after it within the pause are the JSON 503 at once."""
    data, faults = s3
    faults.set("hung")
    try:
        first = fetch(data.stack, *data.reads["frame"])
        assert_failed_or_json_503("first frame", first)
        assert first.took < 20, first.took  # NGINX's 10 s, where it was 60 (slack for a loaded CI machine)
        for name in ("frame", "frames", "study", "bulkdata range", "instance"):
            answer = fetch(data.stack, *data.reads[name])
            assert_json_503(name, answer)
            assert answer.took < 3, (name, answer.took)  # at once: no 10 s wait on storage
    finally:
        faults.set("up")
    assert_served_again(data, within=PAUSE + 5)


def test_a_retrieve_under_way_when_s3_goes_is_a_failed_transfer(s3: tuple[Data, StorageFaults]) -> None:
    """A 20 MB series retrieve that has started is cut (its chunked body never terminated), never ended as if it
    were complete."""
    data, faults = s3
    connection = http.client.HTTPConnection("127.0.0.1", data.stack.stack.port, timeout=30)
    try:
        connection.request("GET", data.big_series)
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
        start = response.read(256 * 1024)
        assert len(start) == 256 * 1024
        faults.set("refused")
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            response.read()
    finally:
        connection.close()
        faults.set("up")
    assert_served_again(data, within=PAUSE + 5)


# -- the local folder ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Data]:
    base = tmp_path_factory.mktemp("outage-file")
    running = start_stack(base / "var", "file", None)
    try:
        yield stored_data(base, running, big=False)
    finally:
        running.stack.stop()


def test_a_storage_folder_gone_is_a_503_not_a_404(local: Data) -> None:
    """The local folder gone (an unmounted volume): a whole object, WADO-URI and a thumbnail were a 404 "the
    object is missing from storage", which a client or cache keeps as the object's fate, while Python's reads said
    503. All are the JSON 503 with Retry-After now; composed reads fail their transfer (the local folder's reads
    are per file, so no earlier failure refuses them first); the catalog's reads are served; once the folder is
    back everything is, byte for byte."""
    with storage_unmounted(local.stack):
        during = {name: fetch(local.stack, path, headers) for name, (path, headers) in local.reads.items()}
    for name in WHOLE:
        assert_json_503(name, during[name])
    for name in COMPOSED:
        assert not during[name].complete, (name, during[name])
    for name in CATALOG:
        assert during[name].complete and during[name].body == local.before[name].body, name
    assert_served_again(local, within=1)


def test_a_delete_while_the_storage_folder_is_gone_is_a_503_and_its_retry_removes_everything(
    local: Data, tmp_path: Path
) -> None:
    """A DELETE while the local folder was unmounted was a 204 with every object left: its removals found nothing
    to remove, as did `reconcile`'s listing, which then reported the folder clean (exit 0). Once the folder was
    back, `reconcile --repair` registered the objects again and the deleted study was served. Now the DELETE is the
    JSON 503 with the study hidden and its deletion unfinished, `reconcile` fails in one line, and the DELETE sent
    again once the folder is back removes every object."""
    files = make_series(tmp_path / "series", modality="CT", slices=2, rows=16, columns=16, seed=1921, clean=True)
    stack = local.stack
    assert stack.stow(files).status_code == 200
    study = uids_of(files[0])[0]
    keys = sorted(stack.storage().list(f"studies/{study}/"))
    assert [key.rsplit("/", 1)[1] for key in keys] == sorted(f"{uids_of(f)[2]}.dcm" for f in files)
    url = f"{stack.url}/dicomweb/studies/{study}"
    env = {**os.environ, **stack.stack.gateway_env()}
    reconcile = [sys.executable, "-m", "gateway.cli", "reconcile"]
    with storage_unmounted(stack):
        answer = requests.delete(url, headers=stack.api_headers, timeout=60)
        assert (answer.status_code, answer.headers["Content-Type"]) == (503, "application/json"), answer.text
        assert (answer.json()["error"], answer.headers["Retry-After"]) == ("storage_unavailable", "5"), answer.text
        done = subprocess.run([*reconcile, "--repair"], env=env, capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout) == (1, ""), done
        assert done.stderr == "Error: storage_unavailable: storage folder is missing\n", done.stderr
    assert sorted(stack.storage().list(f"studies/{study}/")) == keys  # nothing removed, nothing lost track of
    assert requests.get(url + "/metadata", headers=stack.api_headers, timeout=30).status_code == 404
    assert requests.delete(url, headers=stack.api_headers, timeout=60).status_code == 204
    assert list(stack.storage().list(f"studies/{study}/")) == []
    left = subprocess.run([*reconcile, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert left.returncode == 0, left
    report = json.loads(left.stdout)
    assert (report["orphans"], report["unfinished_deletions"]) == ([], []), report


def test_a_missing_object_in_a_present_folder_stays_a_404(local: Data, tmp_path: Path) -> None:
    """Only the folder's absence is an outage: an object removed behind the catalog's back is still the 404."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=1920, clean=True)
    assert local.stack.stow([path]).status_code == 200
    study, series, sop = uids_of(path)
    obj = next(p for p in (local.stack.stack.file_root or Path("/nonexistent")).rglob(f"{sop}*"))
    obj.unlink()
    headers: dict[str, Any] = {**local.stack.api_headers, "Accept": "application/dicom"}
    url = f"{local.stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    answer = requests.get(url, headers=headers, timeout=10)
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found"), answer.text


def test_a_preflight_during_an_s3_outage_is_answered_and_the_read_is_the_503(s3: tuple[Data, StorageFaults]) -> None:
    """A browser viewer sending Authorization preflights every read. Once a read had met the outage, the preflight
    of a frame or a retrieve went to the auth step without credentials, a 403: the browser reported a failed CORS
    request instead of the JSON 503 and its Retry-After. The preflight is the 204 it always is, and the read after
    it the 503."""
    data, faults = s3
    stack = data.stack
    faults.set("refused")
    try:
        assert_failed_or_json_503("first frame", fetch(stack, *data.reads["frame"]))
        preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
        preflight["Access-Control-Request-Headers"] = "authorization"
        for name in ("frame", "instance multipart", "bulkdata"):
            path = "/dicomweb/" + data.reads[name][0].split("/dicomweb/", 1)[1]
            answer = requests.options(f"{stack.url}{path}", headers=preflight, timeout=10)
            assert answer.status_code == 204, (name, answer.status_code, answer.text)
            assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN, name
            assert "Authorization" in answer.headers["Access-Control-Allow-Headers"], name
            assert_json_503(name, fetch(stack, path, {**stack.api_headers, **data.reads[name][1]}))
    finally:
        faults.set("up")
    assert_served_again(data, within=PAUSE + 5)


def test_a_request_storage_refuses_alone_refuses_no_other_read(s3: tuple[Data, StorageFaults]) -> None:
    """A whole object's request carries the client's own preconditions to storage. An If-Modified-Since storage
    cannot take (moto answers 30 Feb with a 500) was recorded as an outage: every client's frames were the JSON
    503 for 5 s, for one request anyone could repeat. It is that request's 503 alone now; a date outside the
    grammar (99 Foo) is ignored as RFC 9110 13.1.3 says, and the object served."""
    data, _ = s3
    stack = data.stack
    path, headers = data.reads["instance"]
    ignored = fetch(stack, path, {**headers, "If-Modified-Since": "Sun, 99 Foo 2026 99:99:99 GMT"})
    assert (ignored.status, ignored.body) == (200, data.before["instance"].body)
    refused = fetch(stack, path, {**headers, "If-Modified-Since": "Mon, 30 Feb 2026 00:00:00 GMT"})
    assert_json_503("instance", refused)
    for name in ("frame", "frames", "study", "bulkdata range"):
        answer = fetch(stack, *data.reads[name])
        assert answer.complete and answer.status == data.before[name].status, (name, answer)
        assert answer.payload() == data.before[name].payload(), name


# -- a frozen S3 process -------------------------------------------------------------------------------------


def test_an_upload_to_a_frozen_s3_opens_the_pause_and_the_retry_after_it_stores_all(tmp_path: Path) -> None:
    """moto_server stopped (SIGSTOP: connections accepted by the kernel, nothing read, nothing answered), as a hung
    S3 is met by an upload larger than the socket buffers: its PUT times out in ``send()``, which botocore reports
    as a closed connection. That was not counted as storage stalling, so every later upload waited its three
    attempts again (about 18 s each, a STOW of many large files minutes) and held a thread. The first upload is
    now the JSON 503 with Retry-After, the uploads after it are refused at once by the pause (its own detail), and
    once S3 answers the same upload stores the file: its object and catalog row both there, no spool file left."""
    moto = start_moto()
    create_bucket(moto.endpoint, "dgw-frozen")
    env = {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": moto.endpoint}
    # one worker: the pause is each worker's own, and the second upload must meet the first one's
    stack = Stack(
        tmp_path / "var", port=free_port(), storage_url="s3://dgw-frozen/data", extra_env=env, gunicorn_workers=1
    )
    stack.start()
    running = RunningStack(stack, "s3")
    try:
        # 32 MB: more than loopback's socket buffers take while moto reads nothing
        [big] = make_series(tmp_path / "big", modality="CT", slices=1, rows=4096, columns=4096, seed=1930, clean=True)
        study, series, sop = uids_of(big)
        os.kill(moto.process.pid, signal.SIGSTOP)
        try:
            first = running.stow([big])
            second = running.stow([big])
        finally:
            os.kill(moto.process.pid, signal.SIGCONT)
        for answer in (first, second):
            assert answer.status_code == 503, answer.text
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.headers["Retry-After"] == "5"
            assert answer.json()["error"] == "storage_unavailable", answer.text
        assert first.json()["detail"] == "storage write failed (ConnectionClosedError)", first.text
        assert second.json()["detail"] == "storage is not answering, try again shortly", second.text
        assert listed_instances(running, study) == 0
        deadline = time.monotonic() + PAUSE + 30
        while (retry := running.stow([big])).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert retry.status_code == 200, retry.text
        assert listed_instances(running, study) == 1
        # the derivative worker may already have written the frame's HTJ2K copy, named by the file's digest
        stored = f"studies/{study}/series/{series}/instances/{sop}.dcm"
        derivative = derivative_key(stored, hashlib.sha256(big.read_bytes()).hexdigest())
        assert set(running.storage().list("studies/")) - {derivative} == {stored}
        spool = running.stack.var_dir / "spool"
        assert sorted(p.name for p in spool.iterdir() if p.name.startswith(("part-", "stow-"))) == []
    finally:
        running.stack.stop()
        moto.stop()
