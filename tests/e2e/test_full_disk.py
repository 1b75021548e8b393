"""A full disk through the real stack (local-folder storage): each folder the stack writes to sits on a small tmpfs
of its own, which a test fills with a file and then frees again.

- the storage folder: a series that does not fit is stored as far as it fits (202, every other instance a named
  0xA700), nothing torn is left or shown, and the same upload succeeds once there is room;
- the upload spool (``DICOMGW_TMP_DIR``): the same;
- the catalog's folder: a JSON 503 saying so, nothing shown, the data stored before still read, the retry stored;
- NGINX's own temp and cache folders: reads and uploads answered as usual, only not cached.

Mounting needs root (as in CI's VM): without it every test here skips, saying why (under `make test`, fails).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import requests

from gateway.tools.postgres import PostgresServer
from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.e2e.test_read_path import parse_multipart
from tests.e2e.test_stow import failed, referenced
from tests.requirements import require

OUT_OF_RESOURCES = 0xA700
FRAMES = "multipart/related; type=application/octet-stream"
FRAME_TYPE = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"  # make_series: Explicit VR LE
SLICE = 525_700  # bytes of one 512 x 512 CT slice of make_series, rounded up


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """``folder`` on a tmpfs of ``size`` for the block; unmounted after it (the stack must be stopped first)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
        done, reason = mounted.returncode == 0, mounted.stderr.strip()
    except OSError as error:  # no mount(8) at all
        done, reason = False, str(error)
    require(done, f"cannot mount a tmpfs (the full-disk tests need root): {reason}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


CACHE_VERDICT_SECONDS = 1.2  # FRESH_MS in dgw_cache.js, and a margin


def fill(folder: Path, leave: int = 0) -> Path:
    """A new file taking the free space of ``folder``'s file system but about ``leave`` bytes."""
    filler = folder / f"filler-{len(list(folder.glob('filler-*')))}"
    stat = os.statvfs(folder)
    wanted = stat.f_bavail * stat.f_frsize - leave
    chunk = b"\0" * 65536
    written = 0
    with open(filler, "wb") as out:
        try:
            while written < wanted:
                written += out.write(chunk[: min(len(chunk), wanted - written)])
                out.flush()
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    return filler


def free(folder: Path) -> None:
    for filler in folder.glob("filler-*"):
        filler.unlink()


@contextlib.contextmanager
def running(var_dir: Path, **env: str) -> Iterator[RunningStack]:
    stack = start_stack(var_dir, "file", None, **env)
    try:
        yield stack
    finally:
        stack.stack.stop()


def sent(files: list[Path]) -> dict[str, bytes]:
    return {uids_of(path)[2]: path.read_bytes() for path in files}


def spooled(spool: Path) -> list[str]:
    """Upload spool files (not the derivative worker's own working folders, there only while it works)."""
    return sorted(path.name for path in spool.iterdir() if path.name.startswith(("stow-", "part-", "deid-")))


def listed(stack: RunningStack, study: str) -> requests.Response:
    return requests.get(f"{stack.url}/dicomweb/studies/{study}/instances", headers=stack.api_headers, timeout=30)


def retrieved(stack: RunningStack, path: Path) -> bytes:
    study, series, sop = uids_of(path)
    answer = requests.get(
        f"{stack.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers={**stack.api_headers, "Accept": "application/dicom"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "application/dicom"
    return answer.content


def assert_partly_stored(stack: RunningStack, answer: requests.Response, files: list[Path], detail: str) -> set[str]:
    """A 202 naming what was stored and, with 0xA700 and ``detail``, what was not; QIDO and WADO show exactly the
    stored instances, whole. Returns their SOP Instance UIDs."""
    assert answer.status_code == 202, answer.text
    assert answer.headers["Content-Type"] == "application/dicom+json"
    stored = {item["00081155"]["Value"][0] for item in referenced(answer)}
    failures = failed(answer)
    assert stored and failures
    for item in failures:
        assert item["00081197"]["Value"] == [OUT_OF_RESOURCES]
        assert item["00091001"]["Value"][0].endswith(detail)
    by_sop = {uids_of(path)[2]: path for path in files}
    study = uids_of(files[0])[0]
    assert sorted(row["00080018"]["Value"][0] for row in listed(stack, study).json()) == sorted(stored)
    for sop in stored:
        assert retrieved(stack, by_sop[sop]) == by_sop[sop].read_bytes()
    return stored


def assert_storage_whole(stack: RunningStack, files: list[Path]) -> None:
    """Every object in the storage folder is one of ``files`` byte for byte (or a derivative): no temporary
    file, nothing torn."""
    expected = sent(files)
    root = stack.stack.file_root
    assert root is not None
    for path in root.rglob("*"):
        assert not path.name.endswith(".partial"), path
        if path.suffix == ".dcm" and path.stem in expected:
            assert path.read_bytes() == expected[path.stem], path


def assert_all_stored(stack: RunningStack, answer: requests.Response, files: list[Path]) -> None:
    assert answer.status_code == 200, answer.text
    assert sorted(item["00081155"]["Value"][0] for item in referenced(answer)) == sorted(sent(files))
    study = uids_of(files[0])[0]
    assert sorted(row["00080018"]["Value"][0] for row in listed(stack, study).json()) == sorted(sent(files))
    for path in files:
        assert retrieved(stack, path) == path.read_bytes()


def test_storage_folder_full_stores_what_fits_names_the_rest_and_the_retry_stores_all(tmp_path: Path) -> None:
    """A series larger than the storage folder's free space: the instances that fit are stored whole, each one
    that does not is a failed item naming its instance with 0xA700 (a 202; a 503 with Retry-After when none
    fits), no torn or temporary file is left, and once space is freed the same upload is a 200."""
    files = make_series(tmp_path / "ct", modality="CT", slices=8, seed=91, clean=True)
    var = tmp_path / "var"
    with tmpfs(var / "objects", "8m") as objects, running(var, DICOMGW_DERIVATIVES="0") as stack:
        fill(objects, leave=int(2.5 * SLICE))
        answer = stack.stow(files)
        stored = assert_partly_stored(stack, answer, files, "storage write failed (ENOSPC)")
        named = {item["00081155"]["Value"][0] for item in failed(answer)}
        assert named == set(sent(files)) - stored  # each failed instance is named: the client knows what to resend
        assert_storage_whole(stack, files)
        fill(objects)  # not even one more fits: nothing stored, so the whole request is the 503 to retry
        rest = [path for path in files if uids_of(path)[2] not in stored]
        none = stack.stow(rest)
        assert none.status_code == 503, none.text
        assert none.headers["Content-Type"] == "application/json"
        assert none.headers["Retry-After"] == "5"
        assert none.json() == {"error": "storage_unavailable", "detail": "storage write failed (ENOSPC)"}
        assert_storage_whole(stack, files)
        free(objects)
        assert_all_stored(stack, stack.stow(files), files)
        assert_storage_whole(stack, files)


def test_upload_spool_full_stores_the_parts_read_and_the_retry_stores_all(tmp_path: Path) -> None:
    """The folder STOW bodies are spooled to fills up in the middle of a series: the parts spooled whole are
    stored, the rest of the body is one 0xA700 failed item (a 202 with a Warning), no spool file is left behind,
    and once space is freed the same upload is a 200."""
    files = make_series(tmp_path / "ct", modality="CT", slices=8, seed=92, clean=True)
    var = tmp_path / "var"
    with tmpfs(var / "spool", "8m") as spool, running(var) as stack:
        fill(spool, leave=int(1.5 * SLICE))
        answer = stack.stow(files)
        assert_partly_stored(stack, answer, files, "upload spool write failed (ENOSPC)")
        assert answer.headers["Warning"].endswith('upload spool write failed (ENOSPC)"')
        assert spooled(spool) == []
        assert_storage_whole(stack, files)
        free(spool)
        assert_all_stored(stack, stack.stow(files), files)
        assert spooled(spool) == []


def assert_refused_for_a_full_catalog(stack: RunningStack, files: list[Path]) -> None:
    """A STOW while the catalog's disk is full: the JSON 503 that says so, nothing of it listed or stored."""
    answer = stack.stow(files)
    assert answer.status_code == 503, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Retry-After"] == "5"
    assert answer.json() == {"error": "catalog_unavailable", "detail": "catalog unavailable (disk full)"}
    study = uids_of(files[0])[0]
    assert listed(stack, study).status_code == 404
    root = stack.stack.file_root
    assert root is not None
    assert not (root / "studies" / study).exists()


def test_catalog_folder_full_is_a_503_while_stored_data_is_still_read(tmp_path: Path) -> None:
    """The SQLite catalog's folder full: an upload is a JSON 503 that says the disk is full, nothing of it is
    shown or left in storage, QIDO, metadata and frames of what was stored before still answer, and once space
    is freed the same upload is stored."""
    before = make_series(tmp_path / "before", modality="CT", slices=2, seed=93, clean=True)
    files = make_series(tmp_path / "ct", modality="CT", slices=4, seed=94, clean=True)
    var = tmp_path / "var"
    with (
        tmpfs(tmp_path / "db", "16m") as db,
        running(var, DICOMGW_DATABASE_URL=f"sqlite:///{db}/catalog.db", DICOMGW_DERIVATIVES="0") as stack,
    ):
        assert stack.stow(before).status_code == 200
        fill(db)
        assert_refused_for_a_full_catalog(stack, files)
        assert_storage_whole(stack, before)
        # what was stored before is still served while the catalog cannot be written
        old_study, old_series, _ = uids_of(before[0])
        assert sorted(row["00080018"]["Value"][0] for row in listed(stack, old_study).json()) == sorted(sent(before))
        for path in before:
            _, _, sop = uids_of(path)
            base = f"{stack.url}/dicomweb/studies/{old_study}/series/{old_series}/instances/{sop}"
            metadata = requests.get(f"{base}/metadata", headers=stack.api_headers, timeout=30)
            assert metadata.status_code == 200, metadata.text
            assert metadata.json()[0]["00080018"]["Value"] == [sop]
            frame = requests.get(f"{base}/frames/1", headers={**stack.api_headers, "Accept": FRAMES}, timeout=30)
            assert frame.status_code == 200, frame.text
            assert parse_multipart(frame) == [(FRAME_TYPE, pydicom.dcmread(path).PixelData)]
        free(db)
        assert_all_stored(stack, stack.stow(files), files)


@contextlib.contextmanager
def postgres_database_in(folder: Path, server: PostgresServer) -> Iterator[str]:
    """The URL of a new PostgreSQL database whose own tables and indexes, those the gateway creates, live in
    ``folder`` (its ``default_tablespace``; dropped after). Its system catalogs stay in the cluster's folder: see
    ``test_catalog_on_postgresql_full_is_a_503_saying_so``."""
    import psycopg

    shutil.chown(folder, "postgres", "postgres")  # the server writes its tablespace as its own OS user
    name = f"full_{uuid.uuid4().hex[:12]}"
    admin = f"host={server.host} port={server.port} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE {name} LOCATION '{folder}'")
        conn.execute(f"CREATE DATABASE {name}")
        conn.execute(f"ALTER DATABASE {name} SET default_tablespace = {name}")
    try:
        yield server.url(name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            conn.execute(f"DROP TABLESPACE {name}")


def test_catalog_on_postgresql_full_is_a_503_saying_so(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """PostgreSQL's tables on a full disk (their tablespace; its write-ahead log and system catalogs still have
    room): the upload's first catalog write, its reservation, needs a new page and fails with disk_full, so the
    upload is the same JSON 503 as on SQLite, nothing of it is listed or stored, and the same upload is stored
    once space is freed."""
    import psycopg

    files = make_series(tmp_path / "ct", modality="CT", slices=2, seed=97, clean=True)
    # PostgreSQL runs as its own OS user: its folder cannot be inside pytest's private tmp_path
    folder = Path(tempfile.mkdtemp(prefix="dicomgw-full-"))
    try:
        with (
            tmpfs(folder, "16m") as tables,
            postgres_database_in(tables, postgres_server) as url,
            running(tmp_path / "var", DICOMGW_DATABASE_URL=url) as stack,
        ):
            # Nothing on the full disk may give a page back, or the upload fits in it. A database's system catalogs
            # and its relation cache file (pg_internal.init, 160 KB) live in its own tablespace, and any VACUUM of
            # a catalog (autovacuum's, at a moment a long suite decides) removes that file: the upload then fitted,
            # whole or in part (session 19). So only the gateway's relations are on the tmpfs
            # (postgres_database_in), all empty (alembic_version's row aside), and autovacuum is off for them: an
            # insert finds no room in a page they have, and none is ever given back.
            with psycopg.connect(url, autocommit=True) as conn:
                public = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
                for (table,) in public:
                    conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)")
                # the upload's first catalog write, its reservation, needs a new page
                assert conn.execute("SELECT pg_relation_size('reservations')").fetchone() == (0,)
            fill(tables)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM pg_class")  # what gave the room before: now on the cluster's own disk
            assert_refused_for_a_full_catalog(stack, files)
            free(tables)
            assert_all_stored(stack, stack.stow(files), files)
    finally:
        folder.rmdir()


def test_nginx_temp_and_cache_folders_full_still_serve_reads_and_uploads(tmp_path: Path) -> None:
    """NGINX's temp and cache folders full: a decision or plan it cannot cache ended the request with no answer
    at all (a closed connection, for every DICOMweb request on a new decision). Now each is served uncached: new
    tokens' QIDO, metadata, frames and instances answer with the stored bytes, and an upload is stored."""
    files = make_series(tmp_path / "ct", modality="CT", slices=3, seed=95, clean=True)
    var = tmp_path / "var"
    with (
        tmpfs(var / "nginx" / "tmp", "1m") as temp,
        tmpfs(var / "nginx" / "cache", "1m") as cache,
        running(var) as stack,
    ):
        assert stack.stow(files).status_code == 200
        fill(temp)
        fill(cache)
        # NGINX keeps the cache folder's room verdict a second (nginx/templates/njs/dgw_cache.js.template): a disk
        # that fills at a stroke, as here, is seen at the next verdict; until then a cache write may still fail
        time.sleep(CACHE_VERDICT_SECONDS)
        study, series, _ = uids_of(files[0])
        for attempt in range(2):  # the second time as well: nothing was cached the first
            root = stack.root(stack.issue([study], actions=["read", "write"])["token"])
            qido = requests.get(f"{root}/studies/{study}/instances", timeout=30)
            assert qido.status_code == 200, (attempt, qido.text)
            assert sorted(row["00080018"]["Value"][0] for row in qido.json()) == sorted(sent(files))
            for path in files:
                _, _, sop = uids_of(path)
                base = f"{root}/studies/{study}/series/{series}/instances/{sop}"
                metadata = requests.get(f"{base}/metadata", timeout=30)
                assert metadata.status_code == 200, metadata.text
                assert metadata.json()[0]["00080018"]["Value"] == [sop]
                frame = requests.get(f"{base}/frames/1", headers={"Accept": FRAMES}, timeout=30)
                assert frame.status_code == 200, frame.text
                assert parse_multipart(frame) == [(FRAME_TYPE, pydicom.dcmread(path).PixelData)]
                whole = requests.get(base, headers={"Accept": "application/dicom"}, timeout=30)
                assert whole.status_code == 200, whole.text
                assert hashlib.sha256(whole.content).digest() == hashlib.sha256(path.read_bytes()).digest()
        more = make_series(tmp_path / "more", modality="CT", slices=2, seed=96, clean=True, study_uid=study)
        upload = stack.stow(more, root=root)
        assert upload.status_code == 200, upload.text
        assert len(referenced(upload)) == 2
        # no probe left behind; the mark keeping the probe's verdict for a second says "full"
        assert sorted(path.name for path in cache.iterdir() if path.is_file()) == ["filler-0"]
        assert sorted(path.name for path in (cache / "plan").iterdir() if path.is_file()) == [".room.0000000000"]
        assert (cache / "plan" / ".room.0000000000").read_bytes() == b""


def test_upload_spool_full_is_a_503_for_a_release_and_a_preview_and_the_file_stays_held(tmp_path: Path) -> None:
    """A release or preview of a held file copies it into the upload spool first: with that folder full, both were
    a JSON 500 "unexpected server error", where an upload meeting the same folder is the 503 saying so. Both are
    now that 503 with Retry-After, the file still held and no copy left; once there is room, the release stores
    it."""
    from tests.e2e.test_lifecycle import HOLD_POLICY, held, upload

    policy = tmp_path / "policy.toml"
    policy.write_text(HOLD_POLICY)
    var = tmp_path / "var"
    [path] = make_series(tmp_path / "held", slices=1, rows=1024, columns=1024, seed=7951)  # 2 MB, with PHI
    with tmpfs(var / "spool", "8m") as spool, running(var, DICOMGW_PHI_POLICY=str(policy)) as stack:
        assert upload(stack, [path], "hold").status_code == 409
        [key] = list(held(stack))
        fill(spool, leave=100_000)
        api = f"{stack.url}/api/v1/admin/quarantine/{key}"
        for answer in (
            requests.post(f"{api}/release", headers=stack.api_headers, timeout=60),
            requests.get(f"{api}/preview", headers=stack.api_headers, timeout=60),
        ):
            assert answer.status_code == 503, answer.text
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.headers["Retry-After"] == "5"
            assert answer.json() == {
                "error": "storage_unavailable",
                "detail": "upload spool write failed (ENOSPC)",
            }
        assert list(held(stack)) == [key]
        assert sorted(p.name for p in spool.iterdir()) == ["filler-0"]
        free(spool)
        released = requests.post(f"{api}/release", headers=stack.api_headers, timeout=60)
        assert released.status_code == 200, released.text
        assert held(stack) == {}
        assert retrieved(stack, path) == path.read_bytes()


def test_upload_spool_full_stops_reconcile_repair_in_one_line_and_the_next_repair_registers_the_orphan(
    tmp_path: Path,
) -> None:
    """`reconcile --repair` copies each orphan (an object stored without its catalog row) into the spool to index
    it: with that folder full it is one line and exit 1, the orphan left as it is, never a traceback; once there
    is room the next repair registers it and it is served."""
    import subprocess
    import sys

    var = tmp_path / "var"
    [path] = make_series(tmp_path / "orphan", slices=1, rows=1024, columns=1024, seed=7961, clean=True)
    study, series, sop = uids_of(path)
    with tmpfs(var / "spool", "8m") as spool, running(var) as stack:
        root = stack.stack.file_root
        assert root is not None
        key = root / f"studies/{study}/series/{series}/instances/{sop}.dcm"
        key.parent.mkdir(parents=True)
        shutil.copyfile(path, key)  # stored, then the worker died before its catalog commit
        env = {**os.environ, **stack.stack.gateway_env()}
        command = [sys.executable, "-m", "gateway.cli", "reconcile", "--repair"]
        fill(spool, leave=100_000)
        full = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert full.returncode == 1, full.stdout + full.stderr
        assert full.stderr.splitlines() == ["Error: storage_unavailable: upload spool write failed (ENOSPC)"]
        assert key.read_bytes() == path.read_bytes()
        assert sorted(p.name for p in spool.iterdir()) == ["filler-0"]
        free(spool)
        repaired = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert retrieved(stack, path) == path.read_bytes()
