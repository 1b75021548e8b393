"""S3 storage (AWS or any S3-compatible server through the standard ``AWS_ENDPOINT_URL``).

Reads are served by NGINX from a presigned, path-style GET URL (``origin_path``), so NGINX needs no AWS
credentials and Python never streams object bytes. Presigning costs tens of microseconds to a millisecond of
HMAC work, and it sits on the auth hot path (one per frame request), so presigned paths are cached per key for
half their lifetime: a cached path always has at least half its validity left when NGINX uses it.

Every botocore failure that means "storage cannot be reached or refused" (connection errors, timeouts, 5xx,
access denied, missing bucket) becomes ``StorageUnavailable`` with a short detail, never a stack trace.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from gateway.config import env_int, env_value
from gateway.errors import NotFound, StorageUnavailable
from gateway.storage.base import StoredObject
from gateway.storage.local import check_key

DEFAULT_PRESIGN_TTL = 3600
PROBE_SECONDS = 3  # the readiness probe's connect and read timeout (one attempt)
# Multipart above 64 MB in 16 MB parts: single PUTs stay single (one request, atomic), huge WSIs upload in
# parallel parts; S3 makes a multipart object visible only at CompleteMultipartUpload, so it is atomic too.
TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=4
)
# The same in the calling thread: s3transfer's threads are refused once a gunicorn worker past its graceful stop has
# begun the interpreter's shutdown ("cannot schedule new futures"), while a request it still runs stores a file.
SERIAL = TransferConfig(
    multipart_threshold=TRANSFER.multipart_threshold,
    multipart_chunksize=TRANSFER.multipart_chunksize,
    use_threads=False,
)
# Bound the cache so a long-running process serving millions of keys cannot grow without limit.
_CACHE_MAX = 100_000
_MISSING = ("404", "NoSuchKey", "NotFound")


def _transfer(method: Callable[..., Any], *args: Any) -> None:
    """A managed transfer (``upload_file``, ``download_file``, ``copy``) on s3transfer's threads, or in this thread
    when the interpreter is shutting down: it was a RuntimeError, an upload's "unexpected error" (README,
    "Deployment and operations")."""
    try:
        method(*args, Config=TRANSFER)
    except RuntimeError:
        method(*args, Config=SERIAL)


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Translate botocore failures into the gateway's errors (no stack trace, no key or bucket in the
    detail)."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _MISSING or (status == 404 and code != "NoSuchBucket"):
            raise NotFound("object not found") from None
        raise StorageUnavailable(f"storage {what} failed ({code or status})") from None
    except boto3.exceptions.S3UploadFailedError:
        raise StorageUnavailable(f"storage {what} failed (upload)") from None
    except botocore.exceptions.BotoCoreError as exc:
        # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError,
        # NoCredentials...
        raise StorageUnavailable(f"storage {what} failed ({type(exc).__name__})") from None


# botocore's failures that held a gunicorn thread for a whole timeout. A refused or closed connection fails at
# once and opens nothing: a retry the moment storage is back must go through.
_STALLS = (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)


def _stalled(exc: BaseException) -> bool:
    """Whether ``exc`` is storage not answering within the timeouts. A body larger than the socket buffers sent to
    a frozen S3 times out in ``send()``, which botocore reports as ``ConnectionClosedError`` (urllib3's
    ``ProtocolError('Connection aborted.', TimeoutError)``), not as a read timeout: counted as a closed connection,
    every later upload waited its three attempts again (about 18 s each)."""
    if isinstance(exc, _STALLS):
        return True
    if isinstance(exc, botocore.exceptions.ConnectionClosedError):
        cause = exc.kwargs.get("error")
        return any(isinstance(arg, TimeoutError) for arg in getattr(cause, "args", ()))
    return False
READ_TIMEOUT = 10.0  # seconds: no S3 request of ours waits longer for an answer; the breaker bounds the rest
STALL_PAUSE = 5.0  # seconds every call fails at once after storage stalled (the Retry-After of its 503s)


class _Breaker:
    """Fail fast while storage does not answer. Each call to a hung S3 held a gunicorn thread for its timeouts
    (minutes, with retries): thirty renderings from one token took every thread, and QIDO and /healthz, which need
    no storage, went unanswered. After a stall every call is a 503 at once for ``STALL_PAUSE`` seconds; then one
    call at a time tries storage, and the first that gets an answer (any answer, a 404 too) closes the breaker."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0  # 0: closed
        self._trial = False

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._lock:
            if self._open_until:
                if self._clock() < self._open_until or self._trial:
                    raise StorageUnavailable("storage is not answering, try again shortly")
                self._trial = True
        try:
            yield
        except BaseException as exc:
            if _stalled(exc):
                self.stalled()
            else:
                self.answered()
            raise
        self.answered()

    def stalled(self) -> None:
        with self._lock:
            self._open_until, self._trial = self._clock() + STALL_PAUSE, False

    def answered(self) -> None:
        with self._lock:
            self._open_until, self._trial = 0.0, False


class S3Storage:
    """``s3://bucket/prefix``. Region from the AWS environment/config (default ``us-east-1``); with
    ``AWS_ENDPOINT_URL`` set, path-style addressing (what MinIO, moto and most S3-compatible servers need).

    ``presign_ttl`` (seconds) defaults to ``DICOMGW_S3_PRESIGN_TTL`` or one hour. ``clock`` is injectable so
    tests can move time instead of sleeping; ``read_timeout`` so they can meet a hung endpoint in less than 10 s.
    """

    def __init__(
        self,
        url: str,
        *,
        presign_ttl: int | None = None,
        clock: Callable[[], float] = time.time,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError("S3Storage needs s3://bucket[/prefix]")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if self.prefix:
            check_key(self.prefix)
        if presign_ttl is None:
            presign_ttl = env_int("S3_PRESIGN_TTL")
        if presign_ttl < 2:
            raise ValueError("presign_ttl must be at least 2 seconds")
        self.presign_ttl = presign_ttl
        self._clock = clock
        self.endpoint_url = env_value("AWS_ENDPOINT_URL") or None
        session = boto3.session.Session()
        self.region = session.region_name or "us-east-1"
        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            # Presigned URLs are path-style (the NGINX origin is the endpoint host, one for every bucket).
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=read_timeout,
            max_pool_connections=32,
        )
        self.client: Any = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        # /readyz's probe: one short attempt. Through the client above an S3 that accepts connections but never
        # answers (a hung endpoint) held readiness 3 x 60 s, longer than any load balancer waits for it.
        probe = Config(connect_timeout=PROBE_SECONDS, read_timeout=PROBE_SECONDS, retries={"max_attempts": 1})
        self._probe: Any = session.client("s3", endpoint_url=self.endpoint_url, config=config.merge(probe))
        # The origin NGINX must proxy to (scheme://host[:port]); the presigned signature covers this host.
        self.origin = self.client.meta.endpoint_url.rstrip("/")
        self._presigned: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._breaker = _Breaker(clock)

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """One call to S3: refused at once while the breaker is open, its failures as the gateway's errors."""
        with _mapped(what), self._breaker.call():
            yield

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unkey(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def check(self) -> None:
        """/readyz's probe: one short attempt, whatever the breaker says; its outcome opens or closes it."""
        try:
            with _mapped("check"):
                try:
                    self._probe.head_bucket(Bucket=self.bucket)
                except _STALLS:
                    self._breaker.stalled()
                    raise
                self._breaker.answered()
        except NotFound:
            raise StorageUnavailable("storage bucket not found") from None

    def put_file(self, key: str, path: Path) -> StoredObject:
        full = self._key(key)
        if not Path(path).is_file():
            raise FileNotFoundError(path)  # a caller bug, not an outage
        with self._call("write"):
            _transfer(self.client.upload_file, str(path), self.bucket, full)
        found = self.head(key)
        if found is None:  # read-after-write is strong on S3; an absent object means the write was lost
            raise StorageUnavailable("storage write was not visible after upload")
        return found

    def head(self, key: str) -> StoredObject | None:
        full = self._key(key)
        try:
            with self._call("head"):
                answer = self.client.head_object(Bucket=self.bucket, Key=full)
        except NotFound:
            return None
        return StoredObject(key=key, size=int(answer["ContentLength"]), etag=str(answer["ETag"]))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError("negative range")
        full = self._key(key)
        if length == 0:
            if self.head(key) is None:
                raise NotFound("object not found")
            return b""
        with self._call("read"):
            try:
                answer = self.client.get_object(
                    Bucket=self.bucket, Key=full, Range=f"bytes={start}-{start + length - 1}"
                )
            except botocore.exceptions.ClientError as exc:
                # a range starting at or past the end: same answer as reading past EOF of a local file
                if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""
                raise
            body = answer["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def download(self, key: str, path: Path) -> None:
        full = self._key(key)
        with self._call("download"):
            _transfer(self.client.download_file, self.bucket, full, str(path))

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._lock:
            self._presigned.pop(key, None)
        with self._call("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def move(self, src: str, dst: str) -> StoredObject:
        """Managed copy (multipart copy above 5 GB) then delete: a crash in between leaves both, never
        neither."""
        source, target = self._key(src), self._key(dst)
        with self._call("move"):
            _transfer(self.client.copy, {"Bucket": self.bucket, "Key": source}, self.bucket, target)
        moved = self.head(dst)
        if moved is None:
            raise StorageUnavailable("storage copy was not visible")
        self.delete(src)
        return moved

    def list(self, prefix: str) -> Iterator[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self.client.get_paginator("list_objects_v2")
        with self._call("list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", ()):
                    yield self._unkey(item["Key"])

    def origin_path(self, key: str) -> str:
        """Path + query of a presigned GET (``/bucket/prefix/key?X-Amz-...``), its path percent-encoded twice.

        Cached per key for half the TTL. A cache hit is one dict lookup and one clock read."""
        now = self._clock()
        hit = self._presigned.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        url = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=self.presign_ttl
        )
        parts = urllib.parse.urlsplit(url)
        # NGINX decodes an X-Accel-Redirect or SSI path once, then proxies the decoded path as it is: encoded twice,
        # S3 gets the path as signed (a prefix with a space, a "%" or "é" was sent raw: a 400, 403 or wrong key)
        path = f"{parts.path.replace('%', '%25')}?{parts.query}"
        with self._lock:
            if len(self._presigned) >= _CACHE_MAX:
                self._presigned = {k: v for k, v in self._presigned.items() if v[1] > now}
                if len(self._presigned) >= _CACHE_MAX:
                    self._presigned.clear()
            self._presigned[key] = (path, now + self.presign_ttl / 2)
        return path
