"""Faults through the real stack on both backends (issue 11): a gunicorn worker killed with SIGKILL in the middle
of a 50-instance STOW, then an immediate retry; a stored object deleted behind the catalog's back.

The kill is aimed, not timed: a poller watches the catalog's reservation rows (each names the worker pid that holds
it), freezes that worker with SIGSTOP, checks the reservation is still held, and only then kills it. So the worker
dies holding an upload reservation, mid-upload: the state that blocked retries for an hour (defect 7)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, require_strace

INSTANCES = 50


def parent_of(pid: int) -> int:
    """The parent pid, or 0 when the process is already gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(text[text.rfind(")") + 2 :].split()[1])


def kill_a_worker_holding_a_reservation(stack: RunningStack, sops: set[str], stop: threading.Event) -> dict[str, Any]:
    """Poll the stack's catalog until a gunicorn worker holds a reservation of one of ``sops``; SIGKILL it while
    it still does. Returns what was killed (empty when the upload finished first)."""
    master = stack.stack.processes["gunicorn"].pid
    db = sqlite3.connect(f"file:{stack.stack.var_dir / 'catalog.db'}?mode=ro", uri=True, timeout=30)
    try:
        while not stop.is_set():
            rows = db.execute("SELECT sop_uid, owner_pid, nonce FROM reservations").fetchall()
            for sop, pid, nonce in rows:
                if sop not in sops or parent_of(pid) != master:
                    continue
                os.kill(pid, signal.SIGSTOP)
                held = db.execute("SELECT 1 FROM reservations WHERE sop_uid = ? AND nonce = ?", (sop, nonce))
                if held.fetchone() is not None:
                    os.kill(pid, signal.SIGKILL)
                    return {"pid": pid, "sop": sop}
                os.kill(pid, signal.SIGCONT)  # it committed before it stopped: try the next one
            time.sleep(0.001)
    finally:
        db.close()
    return {}


def retrieve(root: str, path: Path) -> requests.Response:
    study, series, sop = uids_of(path)
    return requests.get(
        f"{root}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom"},
        timeout=60,
    )


def test_worker_killed_mid_stow_then_retry_stores_everything(stack: RunningStack, tmp_path: Path) -> None:
    files = make_series(tmp_path / "ct", modality="CT", slices=INSTANCES, seed=71 if stack.backend == "file" else 72)
    study = uids_of(files[0])[0]
    by_sop = {uids_of(p)[2]: p for p in files}
    root = stack.root(stack.issue([study], actions=["read", "write"])["token"])
    stop = threading.Event()
    killed: dict[str, Any] = {}
    poller = threading.Thread(
        target=lambda: killed.update(kill_a_worker_holding_a_reservation(stack, set(by_sop), stop))
    )
    poller.start()
    try:
        first = stack.stow(files)
    except requests.RequestException as error:  # the connection died with the worker
        first = error  # type: ignore[assignment]
    finally:
        stop.set()
        poller.join()
    assert killed, f"the upload finished before a worker could be killed holding a reservation: {first}"
    assert not isinstance(first, requests.Response) or first.status_code != 200
    print(f"killed worker {killed['pid']} holding the reservation of {killed['sop']}")

    # Nothing half-visible: whatever QIDO lists retrieves byte-identically; the killed instance is not listed.
    listed = requests.get(f"{root}/studies/{study}/instances", params={"limit": "1000"}, timeout=30)
    assert listed.status_code in (200, 404), listed.text
    visible = [item["00080018"]["Value"][0] for item in (listed.json() if listed.status_code == 200 else [])]
    assert killed["sop"] not in visible
    for sop in visible:
        answer = retrieve(root, by_sop[sop])
        assert answer.status_code == 200 and answer.content == by_sop[sop].read_bytes(), sop

    # reconcile sees the dead worker's reservation (a dry run changes nothing) ...
    env = {**os.environ, **stack.stack.gateway_env()}
    command = [sys.executable, "-m", "gateway.cli", "reconcile"]
    report = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 1, report.stderr
    # the dead worker may have held several (its STOW threads, or one reservation batch of the group commit): each
    # is one of this upload's instances and none is visible
    stale = json.loads(report.stdout)["stale_reservations"]
    assert killed["sop"] in stale and set(stale) <= set(by_sop) - set(visible), stale

    # ... but the retry does not wait for it: at once, every instance stored, byte-identical.
    retry = stack.stow(files)
    assert retry.status_code == 200, retry.text[:2000]
    listed = requests.get(f"{root}/studies/{study}/instances", params={"limit": "1000"}, timeout=30)
    assert sorted(item["00080018"]["Value"][0] for item in listed.json()) == sorted(by_sop)
    for path in files:
        answer = retrieve(root, path)
        assert answer.status_code == 200
        assert answer.content == path.read_bytes(), uids_of(path)[2]
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200

    # What the killed worker had spooled (the part it was ingesting, the parts queued behind it: copies of the
    # upload, PHI included) is removed once a worker starts in its place; it was left in the folder for good.
    spool = stack.stack.var_dir / "spool"
    deadline = time.monotonic() + 30
    while left := sorted(p.name for p in spool.iterdir() if p.name.startswith(("part-", "stow-"))):
        assert time.monotonic() < deadline, f"spool files left by the killed worker: {left}"
        time.sleep(0.2)


@pytest.fixture
def missing(stack: RunningStack, tmp_path: Path) -> tuple[str, Path, str]:
    """(token root, the file, its study) of an instance stored through STOW whose object was then deleted from
    storage behind the catalog's back."""
    files = make_series(tmp_path / "gone", modality="CT", slices=2, seed=73 if stack.backend == "file" else 74)
    answer = stack.stow(files)
    assert answer.status_code == 200, answer.text
    study, series, sop = uids_of(files[0])
    stack.storage().delete(f"studies/{study}/series/{series}/instances/{sop}.dcm")
    return stack.root(stack.issue([study])["token"]), files[0], study


def assert_never_other_bytes(url: str, headers: dict[str, str], original: bytes) -> None:
    """A JSON 404/503, or a transfer that aborts; never a complete 200 whose body is something else."""
    try:
        answer = requests.get(url, headers=headers, timeout=60)
        body = answer.content
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError):
        return  # aborted transfer: the client knows it failed
    if answer.status_code == 200:
        assert original in body or body in original, f"{url}: a 200 with other bytes"
        pytest.fail(f"{url}: 200 for an object that no longer exists")
    assert answer.status_code in (404, 503), (url, answer.status_code, body[:200])
    assert answer.headers["Content-Type"] == "application/json", (url, answer.headers["Content-Type"], body[:200])
    assert answer.json()["error"]


@pytest.mark.parametrize(
    ("suffix", "accept"),
    [
        ("", "application/dicom"),
        ("", "multipart/related; type=application/dicom"),
        ("/frames/1", "application/octet-stream"),
        ("/frames/1", "multipart/related; type=application/octet-stream"),
        ("/rendered", "image/jpeg"),
        ("/thumbnail", "image/jpeg"),
    ],
)
def test_missing_object_is_never_a_200_with_other_bytes(
    stack: RunningStack, missing: tuple[str, Path, str], suffix: str, accept: str
) -> None:
    root, path, _ = missing
    study, series, sop = uids_of(path)
    url = f"{root}/studies/{study}/series/{series}/instances/{sop}{suffix}"
    assert_never_other_bytes(url, {"Accept": accept}, path.read_bytes())


def test_missing_object_frames_and_bulkdata_answer_the_json_404_of_the_whole_object(
    stack: RunningStack, missing: tuple[str, Path, str]
) -> None:
    """Frames and bulkdata of an object the local folder lost answered 200, then closed the connection with no answer
    at all (NGINX's 444 at the plan's first include); they answer what the whole-object GET answers: a JSON 404.
    On S3 nothing checks the object before the plan (a HEAD on every first view): the transfer aborts."""
    root, path, _ = missing
    study, series, sop = uids_of(path)
    url = f"{root}/studies/{study}/series/{series}/instances/{sop}"
    gone = {"error": "not_found", "detail": "the object is missing from storage"}
    octets = {"Accept": "application/octet-stream"}
    for suffix, headers in [
        ("", {"Accept": "application/dicom"}),
        ("/frames/1", octets),  # one frame: njs's block path, then Python's plan
        ("/frames/1", {"Accept": "multipart/related; type=application/octet-stream"}),
        ("/frames/1", {**octets, "Range": "bytes=0-9"}),  # Python's plan directly
        ("/bulkdata/7FE00010", octets),
        ("/bulkdata/7FE00010", {"Accept": "multipart/related; type=application/octet-stream"}),
    ]:
        if stack.backend == "s3" and suffix:
            assert_never_other_bytes(url + suffix, headers, path.read_bytes())
            continue
        answer = requests.get(url + suffix, headers=headers, timeout=30)
        assert (answer.status_code, answer.headers["Content-Type"]) == (404, "application/json"), (suffix, headers)
        assert answer.json() == gone, (suffix, headers)


def test_missing_object_aborts_a_study_retrieve(stack: RunningStack, missing: tuple[str, Path, str]) -> None:
    root, _, study = missing
    assert_never_other_bytes(f"{root}/studies/{study}", {"Accept": "multipart/related; type=application/dicom"}, b"")


def test_missing_object_by_wado_uri(stack: RunningStack, missing: tuple[str, Path, str]) -> None:
    root, path, study = missing
    _, series, sop = uids_of(path)
    query = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}&contentType=application/dicom"
    assert_never_other_bytes(f"{root}/wado?{query}", {}, path.read_bytes())


def test_a_hung_storage_makes_readyz_503_within_seconds(tmp_path: Path) -> None:
    """An S3 endpoint that accepts connections but never answers (moto frozen with SIGSTOP): /readyz held the
    probe for 3 attempts of 60 s (200 s) and then said "ok". It answers 503 naming storage within seconds, and
    200 again once storage answers."""
    from tests.e2e.harness import start_stack
    from tests.fixtures.servers import start_moto

    moto = start_moto()
    running = start_stack(tmp_path / "var", "s3", moto)
    try:
        assert requests.get(f"{running.url}/readyz", timeout=10).status_code == 200
        moto.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = requests.get(f"{running.url}/readyz", timeout=60)
            took = time.monotonic() - started
        finally:
            moto.process.send_signal(signal.SIGCONT)
        assert answer.status_code == 503, answer.text
        assert answer.json()["checks"] == {"storage": "storage_unavailable", "catalog": "ok"}
        assert took < 30, took  # one 3-second attempt, far below the 200 s it took
        assert requests.get(f"{running.url}/readyz", timeout=30).status_code == 200
    finally:
        running.stack.stop()
        moto.stop()


def test_a_hung_storage_holds_no_thread_for_long(tmp_path: Path) -> None:
    """Each read of an S3 that accepts connections and never answers held a gunicorn thread for 3 x 60 s: a few
    dozen renderings from one token took every thread, and QIDO and /healthz, which need no storage, went
    unanswered. Now a call waits at most 2 x 10 s, after which the process refuses storage calls at once (a JSON
    503 with Retry-After) for 5 s at a time, and serves again as soon as storage answers."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.e2e.harness import start_stack
    from tests.fixtures.servers import start_moto

    moto = start_moto()
    running = start_stack(tmp_path / "var", "s3", moto)
    try:
        files = make_series(tmp_path / "ct", modality="CT", slices=4, rows=32, columns=32, seed=2111, clean=True)
        assert running.stow(files).status_code == 200
        urls = []
        for path in files:
            study, series, sop = uids_of(path)
            urls.append(f"{running.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered")
        assert requests.get(urls[0], headers=running.api_headers, timeout=30).status_code == 200
        moto.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=32) as pool:
                answers = list(
                    pool.map(
                        lambda url: requests.get(url, headers=running.api_headers, timeout=120),
                        [urls[n % len(urls)] for n in range(32)],
                    )
                )
                took = time.monotonic() - started
                # every thread free again: a query that needs no storage is answered at once
                query = requests.get(f"{running.url}/dicomweb/studies", headers=running.api_headers, timeout=5)
        finally:
            moto.process.send_signal(signal.SIGCONT)
        assert query.status_code == 200
        assert took < 60, took  # 32 renderings over 16 threads took minutes (each 3 x 60 s)
        for answer in answers:
            assert (answer.status_code, answer.headers["Content-Type"]) == (503, "application/json"), answer.text
            assert answer.headers["Retry-After"] == "5"
            assert answer.json()["error"] == "storage_unavailable"
        deadline = time.monotonic() + 30
        while (again := requests.get(urls[1], headers=running.api_headers, timeout=30)).status_code == 503:
            assert time.monotonic() < deadline, again.text
            time.sleep(0.5)
        assert again.status_code == 200 and again.content[:2] == b"\xff\xd8"
    finally:
        moto.process.send_signal(signal.SIGCONT)
        running.stack.stop()
        moto.stop()


def test_uploading_the_same_file_again_restores_an_object_storage_lost(stack: RunningStack, tmp_path: Path) -> None:
    """An object removed behind the gateway's back (or lost in a restore) left its instance listed and every read
    a 404, and the same file uploaded again was a "duplicate" that changed nothing. It puts the object back now."""
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=198, clean=True)
    study, series, sop = uids_of(path)
    assert stack.stow([path]).status_code == 200
    stack.storage().delete(f"studies/{study}/series/{series}/instances/{sop}.dcm")
    url = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    headers = {**stack.api_headers, "Accept": "application/dicom; transfer-syntax=*"}
    lost = requests.get(url, headers=headers, timeout=30)
    assert (lost.status_code, lost.json()["error"]) == (404, "not_found")
    again = stack.stow([path])
    assert again.status_code == 200
    [item] = again.json()["00081199"]["Value"]
    assert item["00091002"]["Value"] == ["DUPLICATE"]  # the catalog already had it: nothing registered twice
    restored = requests.get(url, headers=headers, timeout=30)
    assert (restored.status_code, restored.content) == (200, path.read_bytes())


@pytest.mark.parametrize("stack", ["file"], indirect=True)  # strace stops the worker as it flushes the folder
def test_reconcile_leaves_an_upload_in_flight_to_its_upload(stack: RunningStack, tmp_path: Path) -> None:
    """Session 29: `reconcile --repair` (cron, or an operator after a crash) run while uploads go on took an upload
    whose object was stored but whose row was not yet committed for an orphan, and registered it as one: without
    the upload's tenant (retention then kept it by the default days, not its tenant's) or its audit record, and the
    upload itself was answered as a duplicate of what it had sent. The worker is stopped right after its object's
    rename (strace, SIGSTOP, as it flushes the folder): reconcile now takes the instance's upload reservation
    before it registers an orphan, and an instance whose upload holds it is no orphan."""
    require_strace()
    [path] = make_series(tmp_path / "s", modality="CT", slices=1, rows=16, columns=16, seed=2290, clean=True)
    study, series, sop = uids_of(path)
    key = f"studies/{study}/series/{series}/instances/{sop}.dcm"
    master = stack.stack.processes["gunicorn"].pid
    workers = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and parent_of(int(pid)) == master]
    trace, attached = tmp_path / "trace", tmp_path / "attached"
    # the folder is opened right after the object's rename, to flush it (strace's -P names a rename by its source,
    # a temporary name)
    folder = str((stack.storage().root / key).parent)
    with attached.open("w") as log:
        strace = subprocess.Popen(
            ["strace", "-f", "-o", str(trace), "-P", folder, "-e", "trace=openat",
             "-e", "inject=openat:signal=SIGSTOP:when=1", *(f"-p{pid}" for pid in workers)],
            stderr=log,
        )  # fmt: skip
    stopped = 0
    answer: list[requests.Response] = []
    upload = threading.Thread(target=lambda: answer.append(stack.stow([path], **{"X-DICOMGW-Tenant": "trial"})))
    try:
        deadline = time.monotonic() + 60
        while attached.read_text().count("attached") < len(workers):  # one line per worker, naming its threads
            assert time.monotonic() < deadline and strace.poll() is None, attached.read_text()
            time.sleep(0.01)
        upload.start()
        while "stopped by SIGSTOP" not in (text := trace.read_text() if trace.exists() else ""):
            assert time.monotonic() < deadline and upload.is_alive(), "the upload's worker never stored its object"
            time.sleep(0.01)
        stopped = int(re.findall(r"^(\d+) .*stopped by SIGSTOP", text, re.M)[0])
        assert stack.storage().head(key) is not None  # stored, not yet registered: the upload holds it
        env = {**os.environ, **stack.stack.gateway_env()}
        command = [sys.executable, "-m", "gateway.cli", "reconcile", "--repair"]
        report = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    finally:
        strace.terminate()
        strace.wait(timeout=30)
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        upload.join(timeout=120)
    assert report.returncode in (0, 1), report.stderr
    found = json.loads(report.stdout)
    assert key not in found["orphans"] and key not in found["registered"], found
    [stored] = answer
    assert stored.status_code == 200, stored.text[:2000]
    [item] = stored.json()["00081199"]["Value"]
    assert item.get("00091002", {}).get("Value") != ["DUPLICATE"]  # stored by this upload, not by reconcile
    db = sqlite3.connect(f"file:{stack.stack.var_dir / 'catalog.db'}?mode=ro", uri=True, timeout=30)
    try:
        assert db.execute("SELECT tenant FROM instances WHERE sop_uid = ?", (sop,)).fetchall() == [("trial",)]
    finally:
        db.close()


def open_slow_upload(stack: RunningStack, credential: str | None = None) -> socket.socket:
    """A STOW whose client sends its headers and the start of a 2 MB body, then nothing (a phone on a bad line).
    ``credential``: the Authorization value (default the API key; "" for none)."""
    credential = f"Bearer {stack.stack.api_key}" if credential is None else credential
    head = (
        "POST /dicomweb/studies HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{stack.stack.port}\r\n"
        + (f"Authorization: {credential}\r\n" if credential else "")
        + 'Content-Type: multipart/related; type="application/dicom"; boundary=SLOW\r\n'
        "Content-Length: 2000000\r\n\r\n"
        "--SLOW\r\nContent-Type: application/dicom\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", stack.stack.port), timeout=10)
    sock.sendall(head.encode() + b"\0" * 128)
    return sock


@pytest.mark.parametrize("credential", ["", "Bearer not-a-token"])
def test_refused_slow_uploads_take_no_upload_slot(stack: RunningStack, tmp_path: Path, credential: str) -> None:
    """Only uploads the auth decision lets through count against DICOMGW_MAX_UPLOADS. NGINX's limit_conn counted
    every POST before its auth: refused ones, whose bodies NGINX kept reading to discard them, held every slot for
    up to 30 s, so anyone without a credential could keep every real upload out with a few slow connections."""
    seed = 2101 + 2 * (stack.backend != "file") + bool(credential)  # a study of its own per backend and case
    [path] = make_series(tmp_path, modality="CT", slices=1, rows=16, columns=16, seed=seed, clean=True)
    refused = [open_slow_upload(stack, credential) for _ in range(2 * stack.stack.gunicorn_threads + 1)]
    try:
        for sock in refused:  # each refused at once, its body not yet sent
            sock.settimeout(10)
            head = sock.recv(65536).split(b"\r\n", 1)[0]
            assert head.startswith(b"HTTP/1.1 401 "), head
        for sock in refused:  # still sending: NGINX goes on reading their bodies to discard them
            sock.sendall(b"\0" * 128)
        answer = stack.stow([path])
        assert answer.status_code == 200, answer.text[:300]
    finally:
        for sock in refused:
            sock.close()


def test_slow_uploads_never_take_the_threads_reads_need(stack: RunningStack, synthetic: dict[str, Any]) -> None:
    """Uploads stream to gunicorn unbuffered, one thread each for the whole body: more slow uploads than a worker
    has threads made every read and /readyz wait for a free one (503 after 5 s). NGINX lets half of one worker's
    threads hold uploads (DICOMGW_MAX_UPLOADS) and answers the next upload at once, before its body: a JSON 503 with
    Retry-After. Reads stay fast meanwhile, and once the slow uploads end, an upload is taken again."""
    ct = synthetic["ct"][0]
    assert stack.stow([ct]).status_code == 200  # stored (or already there): something to read
    study, series, sop = uids_of(ct)
    root = stack.root(stack.issue([study])["token"])
    limit = int(stack.stack.nginx_values()["DICOMGW_MAX_UPLOADS"])
    assert limit == stack.stack.gunicorn_threads // 2
    slow = [open_slow_upload(stack) for _ in range(2 * stack.stack.gunicorn_threads + 1)]
    try:
        answered = []
        deadline = time.monotonic() + 10
        while len(answered) < len(slow) - limit and time.monotonic() < deadline:
            ready, _, _ = select.select([s for s in slow if s not in answered], [], [], 0.2)
            answered.extend(ready)
        assert len(answered) == len(slow) - limit  # the ones over the limit, answered without their body
        for sock in answered:
            head, _, body = sock.recv(65536).partition(b"\r\n\r\n")
            status, *lines = head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines)
            assert status.startswith("HTTP/1.1 503 "), head
            assert (headers["Retry-After"], headers["Content-Type"]) == ("5", "application/json"), head
            assert json.loads(body) == {
                "error": "gateway_unavailable",
                "detail": "too many uploads at once, try again shortly",
            }
        # meanwhile every kind of read is served at once: decisions, QIDO, frames, readiness
        frame = f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/1"
        for url, accept in ((f"{root}/studies", "application/dicom+json"), (frame, "application/octet-stream")):
            answer = requests.get(url, headers={"Accept": accept}, timeout=4)
            assert answer.status_code == 200, (url, answer.status_code, answer.text[:200])
        assert requests.get(f"{stack.url}/readyz", timeout=4).status_code == 200
    finally:
        for sock in slow:
            sock.close()
    deadline = time.monotonic() + 30
    while (answer := stack.stow([ct])).status_code == 503:  # NGINX notices the closed uploads
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)
    assert answer.status_code == 200, answer.text[:300]


def _cluster_pids(port: int) -> list[int]:
    """The postmaster listening on ``port`` and every process it started (the backends the pool holds)."""
    found = subprocess.run(["pgrep", "-f", "--", f"-p {port} "], capture_output=True, text=True, check=False)
    pids = {int(pid) for pid in found.stdout.split()}
    for pid in list(pids):
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
        pids |= {int(child) for child in children.stdout.split()}
    return sorted(pids)


@pytest.mark.postgres
def test_a_frozen_catalog_makes_readyz_503_within_seconds(tmp_path: Path) -> None:
    """A PostgreSQL that holds its connections and never answers (every process of the cluster frozen with
    SIGSTOP, as a stalled database server or a half-dead failover looks from the gateway): /readyz waited for the
    database as long as it was frozen (over 90 s here), holding a gunicorn thread each time it was asked. It
    answers 503 naming the catalog within seconds, a second probe joins the first one's wait instead of holding
    another thread, reads get a JSON 503, and all is answered again once the database is."""
    import psycopg

    from gateway.tools.postgres import private_postgres
    from gateway.tools.stack import Stack, free_port

    with private_postgres() as server:
        admin = f"host={server.host} port={server.port} user=postgres dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE frozen")
        stack = Stack(tmp_path / "var", port=free_port(), database_url=server.url("frozen"))
        stack.start()
        try:
            assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200
            token = requests.post(
                f"{stack.url}/api/v1/tokens",
                json={"sub": "frozen", "studies": ["2.25.1"]},
                headers={"Authorization": f"Bearer {stack.api_key}"},
                timeout=10,
            ).json()["token"]
            pids = _cluster_pids(server.port)
            assert len(pids) > 2  # the postmaster and its backends
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                answers = []
                for _ in range(3):
                    started = time.monotonic()
                    answer = requests.get(f"{stack.url}/readyz", timeout=60)
                    answers.append((answer.status_code, answer.json(), time.monotonic() - started))
                started = time.monotonic()
                search = requests.get(f"{stack.url}/t/{token}/dicomweb/studies", timeout=60)
                search_took = time.monotonic() - started
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            for status, body, took in answers:
                assert (status, body) == (
                    503,
                    {"status": "unavailable", "checks": {"catalog": "catalog_unavailable", "storage": "ok"}},
                )
                assert took < 6, took  # READY_WAIT is 3 s
            assert search.status_code == 503 and search.headers["Content-Type"] == "application/json", search.text
            assert search.json()["error"] == "gateway_unavailable" and search_took < 15, search_took
            deadline = time.monotonic() + 30
            while requests.get(f"{stack.url}/readyz", timeout=30).status_code != 200:
                assert time.monotonic() < deadline, "readyz did not recover"
                time.sleep(0.5)
            assert requests.get(f"{stack.url}/t/{token}/dicomweb/studies", timeout=30).status_code == 200
        finally:
            stack.stop()
