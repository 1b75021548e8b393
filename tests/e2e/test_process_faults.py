"""Parts of a running stack killed and started again (session 17): the catalog's PostgreSQL killed in the middle of
a STOW, then restarted; the access audit collector killed under `dicom-gateway stack up`.

While a part is down, every answer is a JSON error within seconds (503 with Retry-After for our side's outage);
once it is back, the same requests succeed at once, without restarting anything else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import lines_until
from tests.e2e.test_faults import parent_of

STOW_FAILED = "00081198"
FAILURE_REASON = "00081197"
OUT_OF_RESOURCES = 0xA700

# each study's instance count beside the instances it holds: equal in every row after a rolled-back registration
STUDY_COUNTS = (
    "SELECT s.num_instances, (SELECT count(*) FROM instances i WHERE i.study_uid = s.study_uid) FROM studies s"
)
ADVISORY_LOCKS = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"  # a registration's lock, held or not


def throttled(body: bytes, seconds: float, pieces: int = 40) -> Iterator[bytes]:
    """The body in ``pieces`` chunks over ``seconds``: the upload is still going when the catalog is killed."""
    step = len(body) // pieces + 1
    for start in range(0, len(body), step):
        yield body[start : start + step]
        time.sleep(seconds / pieces)


def kill_postmaster_while_a_reservation_is_held(
    server: Any, database: str, upload: threading.Thread, after: int
) -> dict[str, Any]:
    """Poll the catalog's reservation rows once ``after`` instances are stored; once an upload holds one, freeze
    its gunicorn worker (SIGSTOP), check the row is still there and written, SIGKILL the postmaster, and let the
    worker go on: its catalog dies in the middle of storing an instance. Aimed, not timed (as in test_faults.py).
    Returns the reservation (empty when ``upload``, the thread sending it, ended first)."""
    import psycopg

    dsn = f"host={server.host} port={server.port} user=postgres dbname={database}"
    with psycopg.connect(dsn, autocommit=True) as db:
        while upload.is_alive() and db.execute("SELECT count(*) FROM instances").fetchone()[0] < after:
            time.sleep(0.005)
        while upload.is_alive():
            for sop, pid, nonce in db.execute("SELECT sop_uid, owner_pid, nonce FROM reservations").fetchall():
                os.kill(pid, signal.SIGSTOP)
                try:
                    held = db.execute("SELECT 1 FROM reservations WHERE nonce = %s", (nonce,)).fetchone()
                    if held is not None:
                        # a reservation is committed without waiting for the flush (gateway.catalog.admin); the WAL
                        # writer writes it within 200 ms, which a crash this soon after would not leave it
                        db.execute("CHECKPOINT")
                        server.kill()
                        return {"sop": sop, "pid": pid}
                finally:
                    os.kill(pid, signal.SIGCONT)
            time.sleep(0.001)
    return {}


def assert_stored_whole(stack: Any, root: str, headers: dict[str, str], study: str, files: list[Path]) -> None:
    """Every file listed in its study and served byte for byte under ``root``, and ``reconcile --dry-run`` finds
    nothing: no object stored without its catalog row, no reservation left behind."""
    listed = requests.get(
        f"{root}/studies/{study}/instances", headers={"Accept": "application/dicom+json", **headers}, timeout=30
    )
    assert listed.status_code == 200 and len(listed.json()) == len(files), listed.text[:300]
    for path in files:
        _, series, sop = uids_of(path)
        url = f"{root}/studies/{study}/series/{series}/instances/{sop}"
        accept = {"Accept": 'multipart/related; type="application/dicom"', **headers}
        got = requests.get(url, headers=accept, timeout=30)
        assert got.status_code == 200 and path.read_bytes() in got.content
    env = {**os.environ, **stack.gateway_env()}
    report = subprocess.run(
        [str(Path(sys.executable).with_name("dicom-gateway")), "reconcile", "--dry-run"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stdout + report.stderr


def json_503(answer: requests.Response, took: float) -> None:
    assert answer.status_code == 503, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json", answer.headers
    assert answer.headers["Retry-After"] == "5", answer.headers
    assert answer.json()["error"] in ("gateway_unavailable", "catalog_unavailable"), answer.text
    assert took < 6, took


@contextlib.contextmanager
def stack_on_private_postgres(var: Path, database: str) -> Iterator[tuple[Any, Any]]:
    """(a PostgreSQL cluster of its own, a stack whose catalog is ``database`` there), stopped afterwards: the tests
    kill its postmaster. A crash loses no acknowledged commit, as in production (the throwaway cluster turns that
    off for speed)."""
    import psycopg

    from gateway.tools.postgres import private_postgres
    from gateway.tools.stack import Stack, free_port

    with private_postgres({"synchronous_commit": "on"}) as server:
        admin = f"host={server.host} port={server.port} user=postgres dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")
        stack = Stack(var, port=free_port(), database_url=server.url(database), derive_worker=False)
        stack.start()
        try:
            yield server, stack
        finally:
            stack.stop()


@pytest.mark.postgres
def test_postgres_killed_mid_stow_then_restarted(tmp_path: Path) -> None:
    """SIGKILL of the catalog's postmaster while a 20-instance STOW holds an instance's reservation: the upload is
    answered (202: each instance stored, or failed with 0xA700, and Retry-After: 5 for the failed ones; before, no
    Retry-After), reads are JSON 503s with Retry-After during the outage,
    and once PostgreSQL is back (no gunicorn restart) the first QIDO, metadata and uncached frame are 200 and the
    same STOW, sent again at once, stores every instance. Before, the dead upload's reservation outlived the
    outage: its worker could not release it while the catalog was down and lived on, so the retry got "another
    upload of this instance is in progress" (0xA700) for the rest of the one-minute lease."""
    import pydicom

    from gateway.dicomweb.multipart import encode_multipart

    before = make_series(tmp_path / "before", modality="CT", slices=3, seed=71, clean=True)
    files = make_series(tmp_path / "ct", modality="CT", slices=20, seed=72, clean=True)
    old_study, old_series, _ = uids_of(before[0])
    study = uids_of(files[0])[0]
    with stack_on_private_postgres(tmp_path / "var", "faults") as (server, stack):
        api = {"Authorization": f"Bearer {stack.api_key}"}

        def stow(data: Any, content_type: str) -> requests.Response:
            headers = {"Content-Type": content_type, "Accept": "application/dicom+json", **api}
            return requests.post(f"{stack.url}/dicomweb/studies", data=data, headers=headers, timeout=60)

        first = encode_multipart(before)
        assert stow(first, first.content_type).status_code == 200
        claims = {"sub": "faults", "studies": [old_study, study]}
        token = requests.post(f"{stack.url}/api/v1/tokens", json=claims, headers=api, timeout=10).json()["token"]
        root = f"{stack.url}/t/{token}/dicomweb"
        sops = [uids_of(path)[2] for path in before]
        reads = {
            "qido": (f"{root}/studies", "application/dicom+json"),
            "metadata": (f"{root}/studies/{old_study}/series/{old_series}/metadata", "application/dicom+json"),
            "frame": (f"{root}/studies/{old_study}/series/{old_series}/instances/{sops[1]}/frames/1",
                      "application/octet-stream"),
        }  # fmt: skip

        body = encode_multipart(files)
        raw = b"".join(body)
        answers: list[requests.Response] = []
        upload = threading.Thread(target=lambda: answers.append(stow(throttled(raw, 4.0), body.content_type)))
        upload.start()
        try:
            # some of the upload is stored first: the answer must list it (3 instances of `before` are stored)
            killed = kill_postmaster_while_a_reservation_is_held(server, "faults", upload, after=3 + 5)
        finally:
            upload.join(60)
        assert killed, "the upload ended before any reservation was seen"
        assert answers, "the upload was never answered"
        answer = answers[0]
        # what was stored is acknowledged; the rest failed for the outage (0xA700), to be sent again after
        # Retry-After, as a 503 would say; never a 5xx page or a hang
        assert answer.status_code == 202, (answer.status_code, answer.text[:300])
        assert answer.headers["Retry-After"] == "5", answer.headers
        failed = answer.json()[STOW_FAILED]["Value"]
        assert failed and {item[FAILURE_REASON]["Value"][0] for item in failed} == {OUT_OF_RESOURCES}
        assert len(answer.json()["00081199"]["Value"]) + len(failed) == 20

        time.sleep(2.5)  # NGINX's decision cache (DICOMGW_AUTH_CACHE_SECONDS, 2 s) no longer answers
        for url, accept in reads.values():
            started = time.monotonic()
            json_503(requests.get(url, headers={"Accept": accept}, timeout=30), time.monotonic() - started)
        started = time.monotonic()
        json_503(stow(body, body.content_type), time.monotonic() - started)

        server.start()
        # the first requests after the restart: no dead pooled connection is handed out
        qido = requests.get(reads["qido"][0], headers={"Accept": reads["qido"][1]}, timeout=30)
        assert qido.status_code == 200, qido.text[:300]
        assert old_study in qido.text
        meta = requests.get(reads["metadata"][0], headers={"Accept": reads["metadata"][1]}, timeout=30)
        assert meta.status_code == 200 and len(meta.json()) == 3, meta.text[:300]
        frame = requests.get(reads["frame"][0], headers={"Accept": reads["frame"][1]}, timeout=30)
        assert frame.status_code == 200, frame.text[:300]
        assert frame.content == pydicom.dcmread(before[1]).PixelData

        again = stow(body, body.content_type)
        assert again.status_code == 200, again.text[:2000]
        assert_stored_whole(stack, root, {}, study, files)


def collector_pids(var: Path) -> list[int]:
    """The access audit collectors `stack up` runs for ``var`` (each runs in its stack's folder)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"collect" in argv and b"audit" in argv and Path(os.readlink(proc / "cwd")) == var:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=5).status_code == 200
    except (requests.ConnectionError, requests.Timeout):  # NGINX not listening yet, or a loaded machine's slow start
        return False


def test_audit_collector_killed_under_stack_up(tmp_path: Path) -> None:
    """SIGKILL of the access audit collector under `dicom-gateway stack up`: reads go on being served, stack up
    starts the collector again (at most once per RESTART_PAUSE) and says so, and every request answered while it
    was down reaches the access audit, once. Before, stack up took the collector's exit for the gateway's and
    stopped everything: every client then met a refused connection."""
    from gateway.dicomweb.multipart import encode_multipart
    from gateway.tools.stack import RESTART_PAUSE, free_port

    var = (tmp_path / "var").resolve()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMGW_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "stack", "up", "--no-seed", "--port", str(port), "--var", str(var)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, "DICOMGW_DERIVATIVES": "0"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (collector_pids(var) and ready(url)):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=30)
            time.sleep(0.2)
        api = {"Authorization": f"Bearer {(var / 'api.key').read_text().strip()}"}
        files = make_series(tmp_path / "ct", modality="CT", slices=2, seed=73, clean=True)
        study, series, sop = uids_of(files[0])
        body = encode_multipart(files)
        stored = requests.post(
            f"{url}/dicomweb/studies", data=body, timeout=60,
            headers={"Content-Type": body.content_type, "Accept": "application/dicom+json", **api},
        )  # fmt: skip
        assert stored.status_code == 200, stored.text[:300]
        claims = {"sub": "while-collector-down", "studies": [study]}
        token = requests.post(f"{url}/api/v1/tokens", json=claims, headers=api, timeout=10).json()["token"]
        root = f"{url}/t/{token}/dicomweb"

        [collector] = collector_pids(var)
        os.kill(collector, signal.SIGKILL)
        killed_at = time.monotonic()
        for _ in range(3):  # served at once, whatever the collector's state
            search = requests.get(f"{root}/studies", headers={"Accept": "application/dicom+json"}, timeout=10)
            assert search.status_code == 200 and study in search.text, (search.status_code, search.text[:200])
            frame = requests.get(
                f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                headers={"Accept": "application/octet-stream"}, timeout=10,
            )  # fmt: skip
            assert frame.status_code == 200 and len(frame.content) == 512 * 512 * 2
        # started again (not before RESTART_PAUSE after its start, so within that and a look of stack up)
        while not [pid for pid in collector_pids(var) if pid != collector]:
            assert process.poll() is None, process.communicate(timeout=30)
            assert time.monotonic() - killed_at < RESTART_PAUSE + 5, "the collector was not started again"
            time.sleep(0.2)
        # every request answered while it was down is on record, once
        deadline = time.monotonic() + 30
        while True:
            rows = requests.get(
                f"{url}/api/v1/admin/access", params={"subject": "while-collector-down"}, headers=api, timeout=10
            ).json()["items"]
            if len(rows) >= 6 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert sorted(row["action"] for row in rows) == ["frames"] * 3 + ["search"] * 3, rows
        assert {row["status"] for row in rows} == {200}
        assert ready(url)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "collector exited unexpectedly; started it again." in err, err
    assert "stopping" not in err and "Traceback" not in err, err
    assert not collector_pids(var)


def kill_workers_inside_a_registration(
    server: Any, database: str, master: int, upload: threading.Thread
) -> list[int]:
    """Poll PostgreSQL until a registration transaction is open (the group commit's batch holds its study's advisory
    lock, ``_LOCK_STUDY``, from its first statement to its commit), freeze every gunicorn worker, check the lock is
    still held (the commit has not happened), then SIGKILL them: the one running the batch dies between its
    statements and its commit. Returns the pids killed (none when ``upload``, the thread sending it, ended first)."""
    import psycopg

    dsn = f"host={server.host} port={server.port} user=postgres dbname={database}"
    open_batch = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = " + (
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    with psycopg.connect(dsn, autocommit=True) as db:
        while upload.is_alive():
            if db.execute(open_batch).fetchone()[0]:
                workers = [int(pid) for pid in subprocess.run(
                    ["pgrep", "-P", str(master)], capture_output=True, text=True, check=False
                ).stdout.split()]  # fmt: skip
                for pid in workers:
                    os.kill(pid, signal.SIGSTOP)
                if db.execute(open_batch).fetchone()[0]:
                    for pid in workers:
                        os.kill(pid, signal.SIGKILL)
                    return workers
                for pid in workers:
                    os.kill(pid, signal.SIGCONT)  # it committed before it stopped: wait for the next batch
            time.sleep(0.001)
    return []


@pytest.mark.postgres
def test_workers_killed_inside_a_registration_commit_then_the_retry_stores_everything(tmp_path: Path) -> None:
    """SIGKILL of the gunicorn workers while the group commit's registration transaction is open on PostgreSQL
    (its statements run, its commit not yet sent): test_faults.py kills a worker while it stores an object and
    holds a reservation; here the death lands inside the catalog transaction of several uploads at once. The
    database rolls the batch back when the connection drops (no instance half registered, no study lock left
    held), the STOW is answered with a JSON error, and the same STOW sent again at once stores every instance:
    the dead worker's reservations are taken over (its pid is gone), the objects it stored without a row are
    written again and registered, and reconcile finds nothing left over."""
    import psycopg

    from gateway.dicomweb.multipart import encode_multipart

    with stack_on_private_postgres(tmp_path / "var", "killed") as (server, stack):
        api = {"Authorization": f"Bearer {stack.api_key}"}

        def stow(body: Any, data: Any = None) -> requests.Response:
            headers = {"Content-Type": body.content_type, "Accept": "application/dicom+json", **api}
            data = body if data is None else data
            return requests.post(f"{stack.url}/dicomweb/studies", data=data, headers=headers, timeout=60)

        def upload_and_kill(seed: int) -> tuple[list[Path], Any, list[requests.Response], list[int]]:
            """A 20-instance study sent slowly, and the workers killed inside one of its registrations."""
            files = make_series(tmp_path / f"ct{seed}", modality="CT", slices=20, rows=128, columns=128, seed=seed,
                                clean=True)  # fmt: skip
            body = encode_multipart(files)
            answers: list[requests.Response] = []
            upload = threading.Thread(target=lambda: answers.append(stow(body, throttled(b"".join(body), 3.0))))
            upload.start()
            try:
                killed = kill_workers_inside_a_registration(server, "killed", stack.processes["gunicorn"].pid, upload)
            finally:
                upload.join(60)
            return files, body, answers, killed

        # a batch's transaction is open a few milliseconds: on a loaded machine the poll can miss every one of an
        # upload, which is then simply stored; another study is sent until one is caught
        for seed in (74, 76, 78):
            files, body, answers, killed = upload_and_kill(seed)
            if killed:
                break
            assert answers[0].status_code == 200, answers[0].text[:2000]
        assert killed, "three uploads ended before a registration transaction was seen open"
        study = uids_of(files[0])[0]
        # NGINX's JSON 503 for a gateway that died under the request; nothing says "stored"
        json_503(answers[0], 0)

        with psycopg.connect(f"host={server.host} port={server.port} user=postgres dbname=killed") as db:
            # rolled back whole: no advisory lock left once PostgreSQL has ended the killed worker's backend (it
            # notices the closed socket a moment later: a fresh-clone run read the lock before), and every study row
            # counts the instances it holds
            deadline = time.monotonic() + 10
            while (locks := db.execute(ADVISORY_LOCKS).fetchone()[0]) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert locks == 0
            rows = db.execute(STUDY_COUNTS).fetchall()
            assert all(counted == held for counted, held in rows), rows

        deadline = time.monotonic() + 30  # gunicorn's master starts new workers
        while True:
            again = stow(body)
            if again.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert again.status_code == 200, again.text[:2000]
        claims = {"sub": "killed", "studies": [study]}
        token = requests.post(f"{stack.url}/api/v1/tokens", json=claims, headers=api, timeout=10).json()["token"]
        root = f"{stack.url}/t/{token}/dicomweb"
        assert_stored_whole(stack, root, {}, study, files)


# SQLite cannot show an open transaction to another process; this makes the registration the one long write: each
# instance row takes ~0.1 s to insert (a reservation, a few rows without it, takes a millisecond)
SLOW_REGISTRATION = (
    "CREATE TRIGGER slow_registration AFTER INSERT ON instances BEGIN SELECT count(*) FROM (WITH RECURSIVE "
    "c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT x FROM c); END"
)


def kill_workers_inside_a_sqlite_write(catalog: Path, master: int, upload: threading.Thread) -> list[int]:
    """Poll until the catalog's write lock is held twice 50 ms apart (the slow registration, ``SLOW_REGISTRATION``),
    freeze every gunicorn worker, check the lock is still held (the commit has not happened), then SIGKILL them.
    Returns the pids killed (none when ``upload``, the thread sending it, ended first)."""
    import sqlite3

    def locked() -> bool:
        probe = sqlite3.connect(catalog, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()

    while upload.is_alive():
        if locked() and not time.sleep(0.05) and locked():
            workers = [int(pid) for pid in subprocess.run(
                ["pgrep", "-P", str(master)], capture_output=True, text=True, check=False
            ).stdout.split()]  # fmt: skip
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            if locked():
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                return workers
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)
    return []


def test_workers_killed_inside_a_sqlite_registration_then_the_retry_stores_everything(tmp_path: Path) -> None:
    """The SQLite side of the test above: the workers SIGKILLed while the registration transaction holds the
    catalog's write lock. Its pages in the write-ahead log were never committed, so no reader sees them, the lock
    dies with the process, and the same STOW sent again stores every instance, reconcile finding nothing."""
    import sqlite3

    from gateway.dicomweb.multipart import encode_multipart
    from gateway.tools.stack import Stack, free_port

    files = make_series(tmp_path / "ct", modality="CT", slices=12, rows=128, columns=128, seed=75, clean=True)
    study = uids_of(files[0])[0]
    stack = Stack(tmp_path / "var", port=free_port(), derive_worker=False)
    stack.start()
    catalog = stack.var_dir / "catalog.db"
    try:
        with sqlite3.connect(catalog) as db:
            db.execute(SLOW_REGISTRATION)
        api = {"Authorization": f"Bearer {stack.api_key}"}
        body = encode_multipart(files)

        def stow() -> requests.Response:
            headers = {"Content-Type": body.content_type, "Accept": "application/dicom+json", **api}
            return requests.post(f"{stack.url}/dicomweb/studies", data=body, headers=headers, timeout=120)

        answers: list[requests.Response] = []
        upload = threading.Thread(target=lambda: answers.append(stow()))
        upload.start()
        try:
            killed = kill_workers_inside_a_sqlite_write(catalog, stack.processes["gunicorn"].pid, upload)
        finally:
            upload.join(120)
        assert killed, "the upload ended before its registration was seen holding the write lock"
        json_503(answers[0], 0)
        with sqlite3.connect(catalog) as db:
            db.execute("DROP TRIGGER slow_registration")
            rows = db.execute(STUDY_COUNTS).fetchall()
            assert all(counted == held for counted, held in rows), rows

        deadline = time.monotonic() + 30  # gunicorn's master starts new workers
        while (again := stow()).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert again.status_code == 200, again.text[:2000]
        assert_stored_whole(stack, f"{stack.url}/dicomweb", api, study, files)
    finally:
        stack.stop()


def test_derivative_worker_killed_mid_encode_leaves_no_copy_of_the_instance(tmp_path: Path) -> None:
    """Session 26: the derivative worker SIGKILLed while it encodes (the OOM killer on a large instance) left its
    work folder in the spool, ``source.dcm`` a whole copy of the stored instance (PHI included), for good: the
    worker started again did not look for it, and a DELETE (or an erasure) of the study left it there. The worker
    names its folder as the spool names an upload's part (host, pid, start time), and one starting sweeps what a
    dead one left, as a gunicorn worker does."""
    from gateway.dicomweb.multipart import encode_multipart
    from gateway.tools.stack import RESTART_PAUSE, Stack, free_port

    files = make_series(tmp_path / "ct", modality="CT", slices=40, rows=512, columns=512, seed=76, clean=True)
    study = uids_of(files[0])[0]
    stack = Stack(tmp_path / "var", port=free_port())
    stack.start()
    spool = stack.var_dir / "spool"
    try:
        api = {"Authorization": f"Bearer {stack.api_key}"}
        body = encode_multipart(files)
        headers = {"Content-Type": body.content_type, "Accept": "application/dicom+json", **api}
        stored = requests.post(f"{stack.url}/dicomweb/studies", data=body, headers=headers, timeout=120)
        assert stored.status_code == 200, stored.text[:2000]
        worker = stack.processes["derive"]
        deadline = time.monotonic() + 60
        while not (folders := [p for p in spool.iterdir() if (p / "source.dcm").exists()]):
            assert time.monotonic() < deadline and worker.poll() is None, "the worker never started an encode"
            time.sleep(0.005)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(30)
        assert (folders[0] / "source.dcm").exists()  # what the killed worker left

        time.sleep(RESTART_PAUSE)
        assert stack.supervise() == (["derive"], [])  # as `stack up` does every second
        deadline = time.monotonic() + 30
        while folders[0].exists():
            assert time.monotonic() < deadline, f"the new worker left {folders[0].name}: {os.listdir(folders[0])}"
            time.sleep(0.1)
        gone = requests.delete(f"{stack.url}/dicomweb/studies/{study}", headers=api, timeout=120)
        assert gone.status_code == 204, gone.text
        deadline = time.monotonic() + 60  # the jobs left find nothing stored; one under way ends and cleans up
        while left := [p.name for p in spool.iterdir()]:
            assert time.monotonic() < deadline, f"left in the spool after the DELETE: {left}"
            time.sleep(0.1)
    finally:
        stack.stop()


def processes_in(var: Path) -> dict[int, list[bytes]]:
    """Every process running in ``var`` (each process `stack up` starts runs in its stack's folder): pid -> argv."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) == var:
                found[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
    return found


def test_gunicorn_master_killed_under_stack_up_is_a_failed_exit_and_the_next_start_serves_everything(
    tmp_path: Path,
) -> None:
    """SIGKILL of gunicorn's master under `dicom-gateway stack up`: it said "gunicorn exited unexpectedly;
    stopping.", stopped everything, and exited 0, the status of a Ctrl-C, so a service manager restarting it on
    failure (systemd's Restart=on-failure, compose's on-failure) left the gateway down. It exits 1 now, nothing it
    started is left running, and the next `stack up` on the same folder serves what was stored before."""
    from gateway.dicomweb.multipart import encode_multipart
    from gateway.tools.stack import free_port

    var = (tmp_path / "var").resolve()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMGW_")}
    command = [sys.executable, "-m", "gateway.cli", "stack", "up", "--no-seed", "--port", str(port), "--var", str(var)]

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, "DICOMGW_DERIVATIVES": "0"}
        )
        try:  # printed once the stack answers /readyz
            lines = lines_until(process, lambda line: line.startswith("Ctrl-C"), "stack up's last line", 90)
            assert lines[-1] == "Ctrl-C stops everything.", lines
        except BaseException:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=60)
            raise
        return process

    files = make_series(tmp_path / "ct", modality="CT", slices=2, rows=64, columns=64, seed=74, clean=True)
    study, series, sop = uids_of(files[0])
    process = start()
    try:
        api = {"Authorization": f"Bearer {(var / 'api.key').read_text().strip()}"}
        body = encode_multipart(files)
        stored = requests.post(
            f"{url}/dicomweb/studies", data=body, timeout=60,
            headers={"Content-Type": body.content_type, "Accept": "application/dicom+json", **api},
        )  # fmt: skip
        assert stored.status_code == 200, stored.text[:300]
        [master] = [
            pid for pid, argv in processes_in(var).items() if any(arg.endswith(b"/gunicorn") for arg in argv[:2])
            and parent_of(pid) == process.pid
        ]  # fmt: skip
        os.kill(master, signal.SIGKILL)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=60)
    assert process.returncode == 1, (out, err)
    assert err.splitlines() == ["gunicorn exited unexpectedly; stopping."], err
    assert out.splitlines() == ["stopped."], out
    deadline = time.monotonic() + 30
    while left := processes_in(var):  # gunicorn's workers leave when they see their master gone
        assert time.monotonic() < deadline, f"left running: {left}"
        time.sleep(0.2)

    again = start()
    try:
        instance = f"{url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        answer = requests.get(instance, headers={"Accept": "application/dicom", **api}, timeout=30)
        assert answer.status_code == 200 and answer.content == files[0].read_bytes(), answer.status_code
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=60)
    assert again.returncode == 0


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_stow_outliving_its_workers_graceful_time_names_what_it_stored_and_the_retry_stores_the_rest(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """SIGTERM to the gunicorn workers (what the master sends on a reload, and what a worker does to itself at
    ``max_requests``, 20,000 in the image) while a 40-instance STOW is still arriving, longer than gunicorn's
    graceful time (5 s here, 30 s in the image): once that time is over Python takes no new thread work, and the
    next part's ingest raised "cannot schedule new futures after interpreter shutdown", a JSON 500 "unexpected
    server error" naming none of the instances the worker had stored. The answer is now the 202 of an outage: the
    stored instances listed, each of the others 0xA700 saying the process is stopping, ``Retry-After: 5``; the
    same STOW sent again stores everything, and no spool file is left."""
    from gateway.dicomweb.multipart import encode_multipart
    from tests.e2e.harness import start_stack

    files = make_series(tmp_path / "ct", modality="CT", slices=40, seed=77, clean=True)  # 512 KB each
    study = uids_of(files[0])[0]
    moto = request.getfixturevalue("moto_server") if backend == "s3" else None
    running = start_stack(tmp_path / "var", backend, moto, DICOMGW_DERIVATIVES="0")
    try:
        body = encode_multipart(files)
        data = b"".join(body)
        sent = threading.Event()
        outcome: list[Any] = []

        def parts() -> Iterator[bytes]:
            yield from throttled(data[: len(data) // 10], 1.0, pieces=4)
            sent.set()  # a tenth of the body sent: its parts are being stored when the workers are told to stop
            yield from throttled(data[len(data) // 10 :], 16.0)

        def stow() -> None:
            headers = {"Content-Type": body.content_type, "Accept": "application/dicom+json", **running.api_headers}
            outcome.append(requests.post(f"{running.url}/dicomweb/studies", data=parts(), headers=headers, timeout=120))

        upload = threading.Thread(target=stow)
        upload.start()
        assert sent.wait(60)
        master = running.stack.processes["gunicorn"].pid
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit() and parent_of(int(p)) == master]:
            os.kill(pid, signal.SIGTERM)
        upload.join()
        [answer] = outcome
        assert answer.status_code == 202, answer.text[:500]
        assert answer.headers["Retry-After"] == "5"
        stored = answer.json()["00081199"]["Value"]
        failed = answer.json()["00081198"]["Value"]
        assert stored and failed and len(stored) + len(failed) == len(files)
        for item in failed:
            assert item[FAILURE_REASON]["Value"] == [OUT_OF_RESOURCES], item
            assert item["00091001"]["Value"] == [
                "this gateway process is stopping; send the instances it did not store again"
            ], item

        again = running.stow(files)
        assert again.status_code == 200, again.text[:500]
        listed = requests.get(
            f"{running.url}/dicomweb/studies/{study}/instances", headers=running.api_headers, timeout=30
        )
        assert sorted(item["00080018"]["Value"][0] for item in listed.json()) == sorted(uids_of(p)[2] for p in files)
        spool = running.stack.var_dir / "spool"
        assert sorted(p.name for p in spool.iterdir() if p.name.startswith(("part-", "stow-"))) == []
    finally:
        running.stack.stop()
