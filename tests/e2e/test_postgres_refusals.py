"""The PostgreSQL catalog reachable but refusing, through the real stack (``stack up`` on a database of the test
server): a host that became a replica (read-only), its connections full, the gateway's password changed. Each is an
outage of the catalog: the JSON 503 ``catalog_unavailable`` with ``Retry-After: 5`` saying which, never a 500 or a
per-instance refusal, and the gateway serves again by itself once the database takes it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import requests
from sqlalchemy.engine import make_url

from gateway.tools.postgres import PostgresServer
from gateway.tools.stack import Stack, free_port
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack
from tests.e2e.test_stow import referenced


@contextlib.contextmanager
def stack_on(var: Path, url: str, gunicorn_workers: int = 2) -> Iterator[RunningStack]:
    stack = Stack(var, port=free_port(), database_url=url, gunicorn_workers=gunicorn_workers, derive_worker=False)
    stack.start()
    running = RunningStack(stack, "file")
    try:
        yield running
    finally:
        running.stack.stop()


def admin(server: PostgresServer) -> psycopg.Connection:
    return psycopg.connect(f"host={server.host} port={server.port} user=postgres dbname=postgres", autocommit=True)


def drop_connections(server: PostgresServer, database: str) -> None:
    """End the gateway's sessions, as a failover does: its next ones open on the database as it is now."""
    with admin(server) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))


def assert_catalog_503(answer: requests.Response, detail: str) -> None:
    assert answer.status_code == 503, (answer.status_code, answer.text[:500])
    assert answer.headers["Content-Type"] == "application/json", answer.headers
    assert answer.headers["Retry-After"] == "5", answer.headers
    assert answer.json() == {"error": "catalog_unavailable", "detail": detail}


def test_a_read_only_catalog_is_a_503_for_writes_and_reads_go_on(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    """The catalog's host a replica (an RDS failover seen from the old primary's address, or
    ``ALTER DATABASE ... SET default_transaction_read_only = on``): a STOW was a 409 with each instance a 0x0110
    "the catalog refused this instance's upload reservation (ReadOnlySqlTransaction 25006)" (no Retry-After: a
    client gives up), a study DELETE and a token revoke were the 500 "unexpected server error" with a traceback in
    gunicorn.log. Now each is the JSON 503 "catalog unavailable (read-only)" with Retry-After: 5, nothing of the
    upload stored; QIDO, metadata and frames are served throughout; once the database takes writes again, the same
    requests succeed with nothing restarted."""
    database = str(make_url(postgres_url).database)
    stored = make_series(tmp_path / "stored", modality="CT", slices=2, seed=311, clean=True)
    fresh = make_series(tmp_path / "fresh", modality="CT", slices=2, seed=312, clean=True)
    study, series, sop = uids_of(stored[0])
    with stack_on(tmp_path / "var", postgres_url) as stack:
        assert stack.stow(stored).status_code == 200
        jti = stack.issue([study])["jti"]
        with admin(postgres_server) as conn:
            conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        drop_connections(postgres_server, database)

        upload = stack.stow(fresh)
        assert_catalog_503(upload, "catalog unavailable (read-only)")
        delete = requests.delete(f"{stack.url}/dicomweb/studies/{study}", headers=stack.api_headers, timeout=30)
        assert_catalog_503(delete, "catalog unavailable (read-only)")
        revoke = requests.post(f"{stack.url}/api/v1/tokens/{jti}/revoke", headers=stack.api_headers, timeout=30)
        assert_catalog_503(revoke, "catalog unavailable (read-only)")

        fresh_study = uids_of(fresh[0])[0]
        qido = requests.get(f"{stack.url}/dicomweb/studies", headers=stack.api_headers, timeout=30)
        assert qido.status_code == 200, qido.text
        assert [row["0020000D"]["Value"] for row in qido.json()] == [[study]]  # nothing of the refused upload
        base = f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        frame = requests.get(f"{base}/frames/1", headers={**stack.api_headers, "Accept": "multipart/related; "
                             "type=application/octet-stream; transfer-syntax=*"}, timeout=30)
        assert frame.status_code == 200, frame.text
        assert "Traceback" not in stack.logs()

        with admin(postgres_server) as conn:
            conn.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        drop_connections(postgres_server, database)
        again = stack.stow(fresh)
        assert again.status_code == 200, (again.text, stack.logs())
        assert len(referenced(again)) == 2
        listed = requests.get(f"{stack.url}/dicomweb/studies/{fresh_study}/instances", headers=stack.api_headers,
                              timeout=30)
        assert sorted(row["00080018"]["Value"][0] for row in listed.json()) == sorted(uids_of(p)[2] for p in fresh)
        revoke = requests.post(f"{stack.url}/api/v1/tokens/{jti}/revoke", headers=stack.api_headers, timeout=30)
        assert revoke.status_code == 204, revoke.text


def test_a_database_dropped_then_made_again_empty_is_a_503_until_db_upgrade(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    """The catalog's database dropped, then made again empty (a restore under way, a mistaken re-create): while it
    was gone every request was the 503 "catalog unavailable (OperationalError)", but once it was there without
    tables `GET /dicomweb/studies` was the 500 "unexpected server error" (UndefinedTable in gunicorn.log) and a STOW
    a 409 of 0x0110 items "the catalog refused this instance's upload reservation (UndefinedTable 42P01)". Now each
    is the JSON 503 saying to run `dicom-gateway db upgrade`, with Retry-After: 5; after it, the same STOW is stored
    and listed, with nothing restarted."""
    database = str(make_url(postgres_url).database)
    files = make_series(tmp_path / "ct", modality="CT", slices=2, seed=313, clean=True)
    study = uids_of(files[0])[0]
    missing = "catalog unavailable (its tables are missing: run `dicom-gateway db upgrade`)"
    # one worker, ready once the stack is: a worker still booting when the tables go exits, and so does the one
    # gunicorn starts after it, which stops gunicorn (gateway.wsgi: a catalog behind is no outage, it says so)
    with stack_on(tmp_path / "var", postgres_url, gunicorn_workers=1) as stack:
        with admin(postgres_server) as conn:
            conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        qido = requests.get(f"{stack.url}/dicomweb/studies", headers=stack.api_headers, timeout=30)
        assert_catalog_503(qido, "catalog unavailable (OperationalError)")
        with admin(postgres_server) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')

        qido = requests.get(f"{stack.url}/dicomweb/studies", headers=stack.api_headers, timeout=30)
        assert_catalog_503(qido, missing)
        assert_catalog_503(stack.stow(files), missing)
        ready = requests.get(f"{stack.url}/readyz", timeout=10)
        assert (ready.status_code, ready.json()["checks"]["catalog"]) == (503, "catalog_unavailable")
        assert "Traceback" not in stack.logs()

        upgrade = subprocess.run(
            [str(Path(sys.executable).parent / "dicom-gateway"), "db", "upgrade"],
            env={**os.environ, **stack.stack.gateway_env()}, capture_output=True, text=True, timeout=120,
        )
        assert upgrade.returncode == 0, upgrade.stderr
        again = stack.stow(files)
        assert again.status_code == 200, (again.text, stack.logs())
        listed = requests.get(f"{stack.url}/dicomweb/studies/{study}/instances", headers=stack.api_headers, timeout=30)
        assert sorted(row["00080018"]["Value"][0] for row in listed.json()) == sorted(uids_of(p)[2] for p in files)


def frozen(pid: int) -> list[int]:
    """The postmaster ``pid`` and its children (every backend), to stop and continue together."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def test_a_frozen_database_is_a_503_in_bounded_time_and_frees_the_threads(tmp_path: Path) -> None:
    """PostgreSQL frozen (its postmaster and backends SIGSTOPped: its host's kernel still acknowledges every packet,
    as with a hung disk, so no libpq bound trips): with the gateway's pool warm, `GET /dicomweb/studies` and a STOW
    waited as long as it stayed frozen (two minutes here, when the client gave up), each holding a gunicorn thread.
    Now every catalog wait ends after `STATEMENT_WAIT` seconds: the JSON 503 `catalog_unavailable` with
    Retry-After: 5 (the pool's check of its connection, then a connect that times out), and the first request once
    it continues is served, with nothing restarted."""
    from gateway.catalog.engine import PG_NETWORK_BOUNDS, STATEMENT_WAIT
    from gateway.dicomweb.multipart import encode_multipart
    from gateway.tools.postgres import _postmaster_pid
    from tests.e2e.test_process_faults import stack_on_private_postgres

    files = make_series(tmp_path / "ct", modality="CT", slices=2, seed=314, clean=True)
    study = uids_of(files[0])[0]
    # a wait for the pool's check of a pooled connection, then a connect for each catalog step (a STOW has two)
    bound = STATEMENT_WAIT + 2 * PG_NETWORK_BOUNDS["connect_timeout"] + 5
    with stack_on_private_postgres(tmp_path / "var", "frozen") as (server, running):
        stack = RunningStack(running, "file")
        assert stack.stow(files).status_code == 200
        qido = f"{stack.url}/dicomweb/studies"
        with ThreadPoolExecutor(16) as pool:  # every worker thread holds a pooled connection
            assert {a.status_code for a in pool.map(lambda _: requests.get(qido, headers=stack.api_headers,
                                                                            timeout=30), range(32))} == {200}
        pids = frozen(_postmaster_pid(server.process))
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            def timed(send: Callable[[], requests.Response]) -> tuple[requests.Response, float]:
                started = time.monotonic()
                answer = send()
                return answer, time.monotonic() - started

            more = make_series(tmp_path / "more", modality="CT", slices=2, seed=315, clean=True)
            body = encode_multipart(more)
            with ThreadPoolExecutor(5) as pool:
                answers = list(pool.map(timed, [
                    *[lambda: requests.get(qido, headers=stack.api_headers, timeout=bound + 30)] * 4,
                    lambda: requests.post(f"{qido}", data=body, timeout=bound + 30, headers={
                        **stack.api_headers, "Content-Type": body.content_type, "Accept": "application/dicom+json"}),
                ]))
            for answer, took in sorted(answers, key=lambda pair: pair[1]):
                assert answer.status_code == 503, (answer.status_code, answer.text[:300])
                assert answer.headers["Content-Type"] == "application/json", answer.headers
                assert answer.headers["Retry-After"] == "5", answer.headers
                assert answer.json()["error"] == "catalog_unavailable", answer.text
                assert took < bound, took
            assert requests.get(f"{stack.url}/healthz", timeout=5).status_code == 200
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        listed = requests.get(qido, headers=stack.api_headers, timeout=30)
        assert listed.status_code == 200, listed.text
        assert [row["0020000D"]["Value"] for row in listed.json()] == [[study]]
        assert "Traceback" not in stack.logs()


def test_db_upgrade_on_a_read_only_database_is_one_line_and_migrates_nothing(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    """`dicom-gateway db upgrade` against a database that is a replica (read-only) printed a 108-line traceback
    ending in `sqlalchemy.exc.InternalError: (psycopg.errors.ReadOnlySqlTransaction) cannot execute CREATE TABLE in
    a read-only transaction`. Now it is one line naming the outage, exit 1, no table made, and the password of
    DICOMGW_DATABASE_URL in no output; once the database takes writes, the same command migrates it."""
    database = str(make_url(postgres_url).database)
    password = "pw-" + os.urandom(8).hex()  # trust authentication takes any: it must only never be printed
    url = postgres_url.replace("postgres@", f"postgres:{password}@", 1)
    env = {
        **os.environ,
        "DICOMGW_SIGNING_KEYS": "s" * 40,
        "DICOMGW_API_KEYS": "k1",
        "DICOMGW_STORAGE_URL": (tmp_path / "objects").as_uri(),
        "DICOMGW_DATABASE_URL": url,
    }
    upgrade = [str(Path(sys.executable).parent / "dicom-gateway"), "db", "upgrade"]
    with admin(postgres_server) as conn:
        conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    done = subprocess.run(upgrade, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", "Error: DICOMGW_DATABASE_URL: cannot migrate the catalog: catalog unavailable (read-only)\n"
    )
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
    with admin(postgres_server) as conn:
        conn.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
    done = subprocess.run(upgrade, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr
