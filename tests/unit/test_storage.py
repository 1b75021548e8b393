"""Storage backends against real components: a local tmp folder and a real moto S3 server process."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.errors import InvalidPath, NotFound, StorageUnavailable
from gateway.storage import Storage, open_storage
from gateway.storage.local import LocalStorage, nginx_etag
from gateway.storage.s3 import STALL_PAUSE, S3Storage
from tests.fixtures.servers import MotoServer, create_bucket, set_aws_env, start_moto

AWKWARD = ["a+b/c d.dcm", "x/y+z/%41~!.bin", "studies/1.2/series/3.4/instances/5.6.dcm", "unicodé/ü.dcm"]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(f"file://{tmp_path / 'objects'}", create=True)
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/pre/fix")


def test_open_storage_dispatch(tmp_path: Path, s3_bucket: str) -> None:
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    assert isinstance(open_storage(f"s3://{s3_bucket}"), S3Storage)


def test_round_trip_exact_bytes(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    src = write(tmp_path / "src.bin", data)
    stored = storage.put_file("studies/1/a.dcm", src)
    assert stored.key == "studies/1/a.dcm"
    assert stored.size == len(data)
    assert stored.etag.startswith('"') and stored.etag.endswith('"')
    assert storage.head("studies/1/a.dcm") == stored
    assert storage.head("studies/1/missing.dcm") is None
    assert storage.read_range("studies/1/a.dcm", 0, 10) == data[:10]
    assert storage.read_range("studies/1/a.dcm", 12345, 6789) == data[12345 : 12345 + 6789]
    assert storage.read_range("studies/1/a.dcm", len(data) - 5, 100) == data[-5:]
    assert storage.read_range("studies/1/a.dcm", 7, 0) == b""
    out = tmp_path / "out.bin"
    storage.download("studies/1/a.dcm", out)
    assert out.read_bytes() == data
    with pytest.raises(NotFound):
        storage.read_range("studies/1/missing.dcm", 0, 1)
    with pytest.raises(NotFound):
        storage.download("studies/1/missing.dcm", tmp_path / "never.bin")


def test_overwrite_replaces_whole_object(storage: Storage, tmp_path: Path) -> None:
    storage.put_file("k/obj", write(tmp_path / "one", b"first version, long"))
    second = storage.put_file("k/obj", write(tmp_path / "two", b"second"))
    assert second.size == 6
    assert storage.read_range("k/obj", 0, 100) == b"second"
    assert list(storage.list("k/")) == ["k/obj"]


def test_move_and_delete(storage: Storage, tmp_path: Path) -> None:
    data = b"move me" * 1000
    storage.put_file("incoming/x.dcm", write(tmp_path / "src", data))
    moved = storage.move("incoming/x.dcm", "studies/9/x.dcm")
    assert moved.key == "studies/9/x.dcm" and moved.size == len(data)
    assert storage.head("incoming/x.dcm") is None
    assert storage.read_range("studies/9/x.dcm", 0, len(data)) == data
    storage.delete("studies/9/x.dcm")
    assert storage.head("studies/9/x.dcm") is None
    storage.delete("studies/9/x.dcm")  # absent is not an error
    with pytest.raises(NotFound):
        storage.move("incoming/nothing", "studies/9/y.dcm")


def test_local_head_finds_no_object_that_is_not_a_regular_file(tmp_path: Path) -> None:
    """As ``read_range`` and NGINX: a directory or FIFO at a key is no object (a plan checked by ``head`` then
    aborted its transfer)."""
    storage = LocalStorage(f"file://{tmp_path}/root", create=True)
    (tmp_path / "root" / "a").mkdir()
    os.mkfifo(tmp_path / "root" / "b")
    assert storage.head("a") is None
    assert storage.head("b") is None


def test_a_delete_removes_the_folders_it_empties_and_a_write_recreates_them(tmp_path: Path) -> None:
    storage = LocalStorage(f"file://{tmp_path / 'objects'}", create=True)
    src = write(tmp_path / "src", b"pixels")
    storage.put_file("studies/1/series/2/a.dcm", src)
    storage.put_file("studies/1/series/2/b.dcm", src)
    storage.delete("studies/1/series/2/a.dcm")
    assert (storage.root / "studies/1/series/2").is_dir()  # b is still there
    storage.delete("studies/1/series/2/b.dcm")
    assert sorted(os.listdir(storage.root)) == []  # every folder up to the root, never the root itself
    storage.put_file("studies/1/series/2/b.dcm", src)
    storage.move("studies/1/series/2/b.dcm", "quarantine/b.dcm")
    assert sorted(os.listdir(storage.root)) == ["quarantine"]
    assert storage.read_range("quarantine/b.dcm", 0, 6) == b"pixels"


def test_a_write_racing_a_delete_of_its_folder_lands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder a write has just created is pruned by a delete before the write's link: it is created again."""
    storage = LocalStorage(f"file://{tmp_path / 'objects'}", create=True)
    src = write(tmp_path / "src", b"pixels")
    real_link, pruned = os.link, []

    def link_after_a_prune(source: str, target: str) -> None:
        if not pruned:
            pruned.append(target)
            os.rmdir(os.path.dirname(target))  # what a concurrent delete's prune does
        real_link(source, target)

    monkeypatch.setattr(os, "link", link_after_a_prune)
    stored = storage.put_file("studies/1/a.dcm", src)
    assert pruned and stored.size == 6
    assert storage.read_range("studies/1/a.dcm", 0, 6) == b"pixels"


def test_list_prefix_semantics(storage: Storage, tmp_path: Path) -> None:
    src = write(tmp_path / "src", b"1")
    keys = ["a/b/c.dcm", "a/b/d.dcm", "a/bb/e.dcm", "a/x.dcm", "b/z.dcm"]
    for key in keys:
        storage.put_file(key, src)
    assert sorted(storage.list("a/b/")) == ["a/b/c.dcm", "a/b/d.dcm"]
    assert sorted(storage.list("a/b")) == ["a/b/c.dcm", "a/b/d.dcm", "a/bb/e.dcm"]
    assert sorted(storage.list("")) == sorted(keys)
    assert list(storage.list("nothing/")) == []


def test_list_paginates_s3(s3_bucket: str, tmp_path: Path) -> None:
    storage = S3Storage(f"s3://{s3_bucket}")
    client = storage.client
    for i in range(1005):  # more than one 1000-key page
        client.put_object(Bucket=s3_bucket, Key=f"many/{i:05d}", Body=b"")
    listed = list(storage.list("many/"))
    assert listed == [f"many/{i:05d}" for i in range(1005)]


@pytest.mark.parametrize("key", AWKWARD)
def test_awkward_keys(storage: Storage, tmp_path: Path, key: str) -> None:
    data = hashlib.sha256(key.encode()).digest() * 10
    storage.put_file(key, write(tmp_path / "src", data))
    assert storage.read_range(key, 0, 1000) == data
    assert list(storage.list(key.split("/")[0] + "/")) == [key]
    path = storage.origin_path(key)
    assert path.startswith("/")
    assert "+" not in path.split("?")[0] and " " not in path
    if "+" in key:  # S3's path is encoded twice (NGINX decodes it once, s3.py), the local origin's once
        assert "%2B" in urllib.parse.unquote(path.split("?")[0]) if isinstance(storage, S3Storage) else "%2B" in path


@pytest.mark.parametrize(
    "bad", ["", "/abs/key", "a/../b", "..", "a//b", "a/", "./a", "a\\b", "a/./b", "nul\x00byte"]
)
def test_invalid_keys_rejected(storage: Storage, tmp_path: Path, bad: str) -> None:
    src = write(tmp_path / "src", b"x")
    with pytest.raises(InvalidPath):
        storage.put_file(bad, src)
    with pytest.raises(InvalidPath):
        storage.head(bad)
    with pytest.raises(InvalidPath):
        storage.origin_path(bad)


def test_local_layout_etag_and_origin_path(tmp_path: Path) -> None:
    storage = LocalStorage(f"file://{tmp_path / 'root'}", create=True)
    src = write(tmp_path / "src", b"0123456789")
    stored = storage.put_file("a+b/c d~.dcm", src)
    on_disk = tmp_path / "root" / "a+b" / "c d~.dcm"
    assert on_disk.read_bytes() == b"0123456789"
    st = on_disk.stat()
    assert stored.etag == f'"{int(st.st_mtime):x}-a"' == nginx_etag(st.st_mtime, 10)
    assert storage.origin_path("a+b/c d~.dcm") == "/a%2Bb/c%20d%7E.dcm"
    assert storage.origin_path("studies/1.2/x_y-z.dcm") == "/studies/1.2/x_y-z.dcm"
    # no temporary files left behind, and list never reports one
    assert sorted(p.name for p in on_disk.parent.iterdir()) == ["c d~.dcm"]
    (on_disk.parent / ".c d~.dcm.abc.partial").write_bytes(b"torn")
    assert list(storage.list("a+b/")) == ["a+b/c d~.dcm"]


def test_local_put_keeps_old_object_when_write_fails(tmp_path: Path) -> None:
    storage = LocalStorage(f"file://{tmp_path / 'root'}", create=True)
    storage.put_file("k", write(tmp_path / "src", b"old"))
    with pytest.raises(FileNotFoundError):
        storage.put_file("k", tmp_path / "does-not-exist")
    assert storage.read_range("k", 0, 10) == b"old"


def test_local_missing_dir_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "root"
    storage = LocalStorage(f"file://{root}", create=True)
    storage.check()
    root.rmdir()
    with pytest.raises(StorageUnavailable):
        storage.check()
    with pytest.raises(StorageUnavailable):
        storage.put_file("k", write(tmp_path / "src", b"x"))
    # a worker started now (gunicorn replacing one) opens the storage without creating it: still an outage
    with pytest.raises(StorageUnavailable):
        open_storage(f"file://{root}").check()
    assert not root.exists()
    root.write_bytes(b"a file where the folder should be")
    with pytest.raises(StorageUnavailable):
        storage.check()


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write to. As root, permission bits do not stop writes: use the immutable flag."""
    root = tmp_path / "ro"
    root.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(root)], capture_output=True).returncode != 0:
            pytest.skip("running as root and chattr +i is not available: cannot make a folder unwritable")
        yield root
        subprocess.run(["chattr", "-i", str(root)], check=True)
    else:
        root.chmod(0o555)
        yield root
        root.chmod(0o755)


def test_local_unwritable_dir_unavailable(unwritable_dir: Path, tmp_path: Path) -> None:
    storage = LocalStorage(f"file://{unwritable_dir}")
    with pytest.raises(StorageUnavailable) as info:
        storage.check()
    assert "not writable" in info.value.detail
    with pytest.raises(StorageUnavailable):
        storage.put_file("a/b.dcm", write(tmp_path / "src", b"x"))
    assert list(unwritable_dir.iterdir()) == []


def test_s3_origin_path_presigned_fetch(s3_bucket: str, moto_server: MotoServer, tmp_path: Path) -> None:
    storage = S3Storage(f"s3://{s3_bucket}/pre")
    for key in AWKWARD:
        data = os.urandom(5000)
        storage.put_file(key, write(tmp_path / "src", data))
        path = storage.origin_path(key)
        assert path.startswith(f"/{s3_bucket}/pre/")
        assert "X-Amz-Signature=" in path and "X-Amz-Expires=3600" in path
        # encoded twice: NGINX decodes the path once (X-Accel-Redirect, SSI) and sends S3 what is left
        once, query = path.split("?")
        once = urllib.parse.unquote(once)
        assert urllib.parse.unquote(once) == f"/{s3_bucket}/pre/{key}"
        sent = f"{moto_server.endpoint}{once}?{query}"
        answer = requests.get(sent, timeout=10)
        assert answer.status_code == 200 and answer.content == data
        ranged = requests.get(sent, headers={"Range": "bytes=100-199"}, timeout=10)
        assert ranged.status_code == 206 and ranged.content == data[100:200]
    # (moto does not verify signatures, so a tampered URL cannot be tested here; the e2e suite covers NGINX)
    assert storage.origin == moto_server.endpoint


def test_s3_presign_cache(s3_bucket: str) -> None:
    now = [1_000_000.0]
    storage = S3Storage(f"s3://{s3_bucket}", presign_ttl=600, clock=lambda: now[0])
    first = storage.origin_path("a/b.dcm")
    assert "X-Amz-Expires=600" in first
    assert storage.origin_path("a/b.dcm") is first  # cached
    now[0] += 299
    assert storage.origin_path("a/b.dcm") is first  # still within half the lifetime
    now[0] += 2
    assert storage.origin_path("a/b.dcm") is not first  # re-signed after half the lifetime
    # a cache hit costs microseconds, not a signature
    storage.origin_path("hot/key")
    start = time.perf_counter()
    for _ in range(10_000):
        storage.origin_path("hot/key")
    per_hit = (time.perf_counter() - start) / 10_000
    start = time.perf_counter()
    for i in range(200):
        storage.origin_path(f"cold/{i}")
    per_miss = (time.perf_counter() - start) / 200
    print(f"\norigin_path: cache hit {per_hit * 1e6:.2f} us, miss (presign) {per_miss * 1e6:.1f} us")


def test_s3_large_file_goes_multipart(s3_bucket: str, tmp_path: Path) -> None:
    size = 80 * 1024 * 1024
    src = tmp_path / "big.bin"
    block = os.urandom(1024 * 1024)
    with open(src, "wb") as handle:
        for i in range(80):
            handle.write(block[i:] + block[:i])
    storage = S3Storage(f"s3://{s3_bucket}")
    stored = storage.put_file("big/wsi.dcm", src)
    assert stored.size == size
    # a multipart ETag is "<md5 of part md5s>-<parts>": 80 MB in 16 MB parts = 5 parts
    assert re.fullmatch(r'"[0-9a-f]{32}-5"', stored.etag)
    assert storage.read_range("big/wsi.dcm", 50 * 1024 * 1024 + 7, 64) == (block[50:] + block[:50])[7:71]
    out = tmp_path / "back.bin"
    storage.download("big/wsi.dcm", out)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_s3_outage_is_storage_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = start_moto()
    try:
        set_aws_env(monkeypatch, server.endpoint)
        create_bucket(server.endpoint, "outage")
        storage = S3Storage("s3://outage")
        storage.check()
        storage.put_file("k", write(tmp_path / "src", b"before"))
    finally:
        server.stop()
    src = write(tmp_path / "src2", b"after")
    for call in (
        storage.check,
        lambda: storage.put_file("k2", src),
        lambda: storage.head("k"),
        lambda: storage.read_range("k", 0, 3),
        lambda: storage.delete("k"),
        lambda: list(storage.list("")),
        lambda: storage.move("k", "k3"),
    ):
        with pytest.raises(StorageUnavailable) as info:
            call()
        assert "Traceback" not in info.value.detail


def test_s3_missing_bucket_unavailable(s3_bucket: str, tmp_path: Path) -> None:
    storage = S3Storage("s3://no-such-bucket-here")
    with pytest.raises(StorageUnavailable):
        storage.check()
    with pytest.raises(StorageUnavailable):
        storage.put_file("k", write(tmp_path / "src", b"x"))


def test_s3_endpoint_and_region_from_env(s3_bucket: str, moto_server: MotoServer) -> None:
    storage = S3Storage(f"s3://{s3_bucket}")
    assert storage.endpoint_url == moto_server.endpoint
    assert storage.region == "us-east-1"
    assert storage.client.meta.config.s3["addressing_style"] == "path"


def test_s3_region_from_env(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    storage = S3Storage(f"s3://{s3_bucket}")
    assert storage.region == "eu-west-3"
    assert "%2Feu-west-3%2Fs3%2Faws4_request" in storage.origin_path("k")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert S3Storage(f"s3://{s3_bucket}").region == "us-east-1"


def test_readiness_probe_on_a_full_disk_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a full disk the probe file is created and its write fails: each /readyz left an empty ``.readyz-*``
    file (one inode per load-balancer probe, never swept). The write fails as ENOSPC does; the folder stays
    empty, and the answer is the 503's StorageUnavailable."""
    import builtins
    import errno

    from gateway.storage import local

    storage = LocalStorage(f"file://{tmp_path / 'objects'}", create=True)

    class FullDisk:
        def __init__(self, path: Path) -> None:
            self.handle = builtins.open(path, "wb")  # created, as on a full disk (an inode is still free)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "open", lambda path, mode: FullDisk(path), raising=False)
    for _ in range(3):
        with pytest.raises(StorageUnavailable, match="ENOSPC"):
            storage.check()
    assert list((tmp_path / "objects").iterdir()) == []
    monkeypatch.undo()
    storage.check()  # space again: ready, and still nothing left behind
    assert list((tmp_path / "objects").iterdir()) == []


def test_a_missing_storage_folder_is_an_outage_not_a_missing_object(tmp_path: Path) -> None:
    """The folder unmounted or moved away: reads said "object not found" (a JSON 404 for a rendered image, an
    instance a client then treats as gone, and ``head`` None for every object) where the store is out (503, retry).
    So did a delete (done: nothing there) and a listing (empty): a DELETE, a retention run or `reconcile --repair`
    finished its deletion with every object left, which the next `reconcile --repair` registered again."""
    storage = LocalStorage(f"file://{tmp_path / 'objects'}", create=True)
    storage.put_file("a/b.dcm", write(tmp_path / "b.dcm", b"DICM"))
    with pytest.raises(NotFound):
        storage.read_range("a/missing.dcm", 0, 4)
    assert storage.head("a/missing.dcm") is None
    storage.delete("a/missing.dcm")  # gone already: done
    assert list(storage.list("a/")) == ["a/b.dcm"] and list(storage.list("c/")) == []
    (tmp_path / "objects").rename(tmp_path / "away")
    for read in (lambda: storage.read_range("a/b.dcm", 0, 4), lambda: storage.head("a/b.dcm")):
        with pytest.raises(StorageUnavailable, match="storage folder is missing"):
            read()
    # a deletion went on (its objects "gone", then the record finished) and reconcile listed no object to repair
    for call in (lambda: storage.delete("a/b.dcm"), lambda: list(storage.list("a/")), lambda: list(storage.list(""))):
        with pytest.raises(StorageUnavailable, match="storage folder is missing"):
            call()
    (tmp_path / "away").rename(tmp_path / "objects")
    assert storage.read_range("a/b.dcm", 0, 4) == b"DICM"


class HungS3:
    """An S3 endpoint on a real socket that accepts connections and never answers (a hung server) until told to
    answer, with a 404 to every request then. Counts the connections it is sent."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        self.answering = False
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            if not self.answering:
                self.held.append(conn)  # open, read, never answered
                continue
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def test_s3_calls_fail_at_once_while_storage_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call to an S3 that does not answer held a gunicorn thread for its timeouts and retries (minutes): a few
    renderings took every thread. After a call timed out, calls are a 503 at once for STALL_PAUSE seconds without
    touching the endpoint; then one call tries it again, and an answer (a 404 here) lets every call through."""
    hung = HungS3()
    set_aws_env(monkeypatch, hung.endpoint)
    now = [1_000_000.0]
    storage = S3Storage("s3://bucket", clock=lambda: now[0], read_timeout=0.3)
    try:
        with pytest.raises(StorageUnavailable) as caught:
            storage.read_range("a.dcm", 0, 10)
        assert caught.value.detail == "storage read failed (ReadTimeoutError)"
        tried = hung.connections
        assert tried >= 1
        for call in (lambda: storage.read_range("a.dcm", 0, 10), lambda: storage.head("a.dcm")):
            with pytest.raises(StorageUnavailable) as caught:
                call()
            assert caught.value.detail == "storage is not answering, try again shortly"
        assert hung.connections == tried  # refused without a connection
        now[0] += STALL_PAUSE
        hung.answering = True
        assert storage.head("a.dcm") is None  # the one call that tries again: answered
        assert storage.head("b.dcm") is None  # closed again: every call goes through
    finally:
        hung.close()


def test_s3_refused_connections_never_hold_back_the_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection fails at once and holds no thread: it opens no breaker, so the retry the moment
    storage is back goes through (README: a 503 with Retry-After, and the retry is safe)."""
    closed = socket.create_server(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there now: every connection is refused
    set_aws_env(monkeypatch, endpoint)
    storage = S3Storage("s3://bucket")
    for _ in range(2):
        with pytest.raises(StorageUnavailable) as caught:
            storage.head("a.dcm")
        assert caught.value.detail == "storage head failed (EndpointConnectionError)"
