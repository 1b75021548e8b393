"""Parts of a running stack killed and started again (session 17): the catalog's PostgreSQL killed in the middle of
a STOW, then restarted; the access audit collector killed under `dicom-gateway stack up`.

While a part is down, every answer is a JSON error within seconds (503 with Retry-After for our side's outage);
once it is back, the same requests succeed at once, without restarting anything else.
"""

from __future__ import annotations

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

STOW_FAILED = "00081198"
FAILURE_REASON = "00081197"
OUT_OF_RESOURCES = 0xA700


def throttled(body: bytes, seconds: float, pieces: int = 40) -> Iterator[bytes]:
    """The body in ``pieces`` chunks over ``seconds``: the upload is still going when the catalog is killed."""
    step = len(body) // pieces + 1
    for start in range(0, len(body), step):
        yield body[start : start + step]
        time.sleep(seconds / pieces)


def kill_postmaster_while_a_reservation_is_held(server: Any, database: str, stop: threading.Event) -> dict[str, Any]:
    """Poll the catalog's reservation rows; once an upload holds one, freeze its gunicorn worker (SIGSTOP), check
    the row is still there and written, SIGKILL the postmaster, and let the worker go on: its catalog dies in the
    middle of storing an instance. Aimed, not timed (as in test_faults.py). Returns the reservation (empty when the
    upload ended first)."""
    import psycopg

    dsn = f"host={server.host} port={server.port} user=postgres dbname={database}"
    with psycopg.connect(dsn, autocommit=True) as db:
        while not stop.is_set():
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


def json_503(answer: requests.Response, took: float) -> None:
    assert answer.status_code == 503, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"] == "application/json", answer.headers
    assert answer.headers["Retry-After"] == "5", answer.headers
    assert answer.json()["error"] in ("gateway_unavailable", "catalog_unavailable"), answer.text
    assert took < 6, took


@pytest.mark.postgres
def test_postgres_killed_mid_stow_then_restarted(tmp_path: Path) -> None:
    """SIGKILL of the catalog's postmaster while a 20-instance STOW holds an instance's reservation: the upload is
    answered (each instance stored, or failed with 0xA700), reads are JSON 503s with Retry-After during the outage,
    and once PostgreSQL is back (no gunicorn restart) the first QIDO, metadata and uncached frame are 200 and the
    same STOW, sent again at once, stores every instance. Before, the dead upload's reservation outlived the
    outage: its worker could not release it while the catalog was down and lived on, so the retry got "another
    upload of this instance is in progress" (0xA700) for the rest of the one-minute lease."""
    import psycopg
    import pydicom

    from gateway.dicomweb.multipart import encode_multipart
    from gateway.tools.postgres import private_postgres
    from gateway.tools.stack import Stack, free_port

    before = make_series(tmp_path / "before", modality="CT", slices=3, seed=71, clean=True)
    files = make_series(tmp_path / "ct", modality="CT", slices=20, seed=72, clean=True)
    old_study, old_series, _ = uids_of(before[0])
    study = uids_of(files[0])[0]
    # a crash loses no acknowledged commit, as in production (the throwaway cluster turns that off for speed)
    with private_postgres({"synchronous_commit": "on"}) as server:
        admin = f"host={server.host} port={server.port} user=postgres dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE faults")
        stack = Stack(tmp_path / "var", port=free_port(), database_url=server.url("faults"), derive_worker=False)
        stack.start()
        try:
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
            stop = threading.Event()
            upload.start()
            try:
                killed = kill_postmaster_while_a_reservation_is_held(server, "faults", stop)
            finally:
                stop.set()
                upload.join(60)
            assert killed, "the upload ended before any reservation was seen"
            assert answers, "the upload was never answered"
            answer = answers[0]
            # what was stored is acknowledged; the rest failed for the outage, never a 5xx page or a hang
            assert answer.status_code in (202, 503), (answer.status_code, answer.text[:300])
            if answer.status_code == 202:
                failed = answer.json()[STOW_FAILED]["Value"]
                assert failed and {item[FAILURE_REASON]["Value"][0] for item in failed} == {OUT_OF_RESOURCES}
            else:
                json_503(answer, 0)

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
            listed = requests.get(
                f"{root}/studies/{study}/instances", headers={"Accept": "application/dicom+json"}, timeout=30
            )
            assert listed.status_code == 200 and len(listed.json()) == 20, listed.text[:300]
            for path in files:
                _, series, sop = uids_of(path)
                url = f"{root}/studies/{study}/series/{series}/instances/{sop}"
                got = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
                assert got.status_code == 200 and path.read_bytes() in got.content
            # nothing stored without its catalog row, no reservation left behind
            env = {**os.environ, **stack.gateway_env()}
            report = subprocess.run(
                [str(Path(sys.executable).with_name("dicom-gateway")), "reconcile", "--dry-run"],
                env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert report.returncode == 0, report.stdout + report.stderr
        finally:
            stack.stop()
