"""The e2e harness: the real stack (NGINX rendered from the production template, gunicorn, storage) on free
loopback ports, and a small client that talks to it the way a portal and a viewer do."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from gateway.tools.stack import Stack, free_port
from tests.fixtures.servers import MotoServer, create_bucket
from tests.requirements import require

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
}


def lines_until(process: subprocess.Popen[str], last: Callable[[str], bool], awaited: str, timeout: float) -> list[str]:
    """The lines ``process`` prints on its stdout (without their newline), up to the first for which ``last`` is
    true, or up to the end of its output. A blocking ``readline()`` waits for a child that hangs silently until
    pytest-timeout's 15 minutes: this fails after ``timeout`` seconds, naming ``awaited`` and what was printed.
    It reads the pipe a byte at a time, so ``communicate()`` afterwards gets exactly the rest."""
    assert process.stdout is not None
    pipe = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    line = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([pipe], [], [], left)[0]:
            so_far = [*lines, line.decode(errors="replace")] if line else lines
            raise AssertionError(f"no {awaited} within {timeout:g} s; the lines printed so far: {so_far}")
        byte = os.read(pipe, 1)
        if byte not in (b"", b"\n"):
            line += byte
            continue
        if byte or line:
            lines.append(line.decode(errors="replace"))
            line.clear()
            if last(lines[-1]):
                return lines
        if not byte:
            return lines


@dataclass
class RunningStack:
    """A started Stack plus the helpers tests need."""

    stack: Stack
    backend: str
    uploaded: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.api_key}"}

    def issue(self, studies: list[str], **body: Any) -> dict[str, Any]:
        payload = {"sub": body.pop("sub", "e2e"), "studies": studies, **body}
        answer = requests.post(f"{self.url}/api/v1/tokens", json=payload, headers=self.api_headers, timeout=30)
        assert answer.status_code == 201, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def root(self, token: str) -> str:
        return f"{self.url}/t/{token}/dicomweb"

    def stow(self, files: list[Path], root: str | None = None, **headers: str) -> requests.Response:
        from gateway.dicomweb.multipart import encode_multipart

        body = encode_multipart(files)
        all_headers = {"Content-Type": body.content_type, "Accept": "application/dicom+json", **headers}
        if root is None:
            root = f"{self.url}/dicomweb"
            all_headers.update(self.api_headers)
        return requests.post(f"{root}/studies", data=body, headers=all_headers, timeout=600)

    def storage(self) -> Any:
        """The stack's storage, opened the way the gateway opens it (same endpoint and credentials)."""
        from gateway.storage import open_storage

        saved = dict(os.environ)
        os.environ.update({k: v for k, v in self.stack.extra_env.items() if k.startswith("AWS_")})
        try:
            return open_storage(self.stack.storage_url)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def settle_access_log(self) -> None:
        """NGINX writes a request's log line after answering it, so a test that looks for (or for the absence of)
        a line first sends a marker request and waits until the marker's line is written: the lines of every
        request answered before it are then there too. Never a fixed sleep, which passes without checking."""
        marker = uuid.uuid4().hex
        requests.get(f"{self.url}/healthz", headers={"User-Agent": f"settle-{marker}"}, timeout=10)  # the log keeps it
        deadline = time.monotonic() + 10
        while not (self.stack.access_log.exists() and marker in self.stack.access_log.read_text(errors="replace")):
            assert time.monotonic() < deadline, "NGINX never logged the marker request"
            time.sleep(0.02)

    def access_log(self) -> list[dict[str, Any]]:
        # strict UTF-8: NGINX's escape=json passes bytes >= 0x80 through raw; the template keeps them out
        lines = self.stack.access_log.read_text(encoding="utf-8").splitlines() if self.stack.access_log.exists() else []
        return [json.loads(line) for line in lines]

    def logs(self) -> str:
        parts = []
        for path in (
            self.stack.error_log,
            self.stack.gunicorn_log,
            self.stack.var_dir / "logs" / "gunicorn.out",
        ):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-40:]
                parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)


def gunicorn_rss_mb(running: RunningStack) -> float:
    """The resident memory of gunicorn's master and workers together, in MB."""
    total = 0
    root = running.stack.processes["gunicorn"].pid
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("Pid", "").strip() == str(root) or fields.get("PPid", "").strip() == str(root):
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total / 1024


def gunicorn_peak_growth_mb(running: RunningStack, action: Callable[[], Any]) -> tuple[float, Any]:
    """How far gunicorn's memory rose above where it was while ``action`` ran (sampled every 20 ms), and what
    ``action`` returned."""
    before = gunicorn_rss_mb(running)
    peak = before
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, gunicorn_rss_mb(running))
            done.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = action()
    finally:
        done.set()
        watcher.join()
    return peak - before, result


@contextlib.contextmanager
def storage_unmounted(running: RunningStack) -> Iterator[None]:
    """The stack's local folder gone, as an unmounted volume (its reads fail; the catalog's are served), then back."""
    root = running.stack.file_root
    assert root is not None
    moved = root.with_name(root.name + ".unmounted")
    shutil.move(root, moved)
    try:
        yield
    finally:
        shutil.move(moved, root)


# The alarms the suite raises on purpose: a stored object replaced by a directory or a FIFO behind the gateway's back
# (tests/e2e/test_hostile.py), which the local folder's origin server logs at [crit].
PROVOKED_ALARMS = ("is not a regular file",)


def nginx_alarms(running: RunningStack) -> list[str]:
    """The [crit], [alert] and [emerg] lines of the stack's NGINX error log that no test provokes: an operator reads
    each as a fault (the cache loader's "[crit] cache file ... is too small", a minute after every start, was one)."""
    log = running.stack.error_log
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [
        line
        for line in lines
        if any(f"[{level}]" in line for level in ("crit", "alert", "emerg"))
        and not any(provoked in line for provoked in PROVOKED_ALARMS)
    ]


def nginx_start_warnings(running: RunningStack) -> list[str]:
    """What NGINX said at its start ("[warn] could not build optimal variables_hash ..." was said at every one)."""
    out = running.stack.var_dir / "logs" / "nginx.out"
    return [line for line in out.read_text(errors="replace").splitlines() if "[warn]" in line or "[emerg]" in line]


def require_strace() -> None:
    """strace, which the race tests use to pause a process at an exact system call (SIGSTOP), can trace here."""
    probe = subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True, check=False)
    require(probe.returncode == 0, f"strace cannot trace here: {probe.stderr.decode(errors='replace')[:200]}")


def ctrl_c_as_from_a_terminal() -> None:
    """``preexec_fn`` of a process a test sends SIGINT: a suite started in the background (`make test &`, nohup, a
    CI runner) ignores SIGINT, and a Python started with it ignored never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_stack(
    var_dir: Path, backend: str, moto: MotoServer | None, *, tls: bool = False, **env: str
) -> RunningStack:
    extra = {"DICOMGW_CORS_ORIGINS": "https://portal.example", **env}
    storage_url = ""
    if backend == "s3":
        assert moto is not None
        bucket = f"dgw-{var_dir.name.lower().replace('_', '-')}"[:60]
        create_bucket(moto.endpoint, bucket)
        storage_url = f"s3://{bucket}/data"
        extra.update(AWS_TEST_ENV, AWS_ENDPOINT_URL=moto.endpoint)
    stack = Stack(var_dir, port=free_port(), storage_url=storage_url, extra_env=extra, tls=tls)
    stack.start()
    return RunningStack(stack, backend)


@contextlib.contextmanager
def stack_holding(
    var_dir: Path, backend: str, moto: MotoServer | None, files: list[Path], **env: str
) -> Iterator[RunningStack]:
    """A stack with ``files`` stored by one STOW (a test module's data set), stopped afterwards; ``env`` as
    ``start_stack``'s."""
    running = start_stack(var_dir, backend, moto, **env)
    try:
        answer = running.stow(files)
        assert answer.status_code == 200, answer.text
        yield running
    finally:
        running.stack.stop()



def module_stack(
    request: Any, tmp_path_factory: Any, name: str, files: list[Path], **env: str
) -> Iterator[RunningStack]:
    """The body of a test module's ``stack`` fixture parametrized over BACKENDS (``request.param``): a stack holding
    ``files`` on that storage backend (moto's server for S3), in a folder named ``{name}-{backend}``; ``env`` as
    ``start_stack``'s."""
    backend = request.param
    moto: MotoServer | None = request.getfixturevalue("moto_server") if backend == "s3" else None
    with stack_holding(tmp_path_factory.mktemp(f"{name}-{backend}"), backend, moto, files, **env) as running:
        yield running

class LoopbackPageServer:
    """A test web page's own server on loopback, with origin ``http://localhost:P``: an origin other than the
    gateway's (``127.0.0.1``), yet still loopback, so Chromium's local-network-access rules do not interfere."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def folder_page_server(directory: Path) -> Iterator[LoopbackPageServer]:
    """A ``LoopbackPageServer`` of the files under ``directory`` (a test page and its node_modules), without a log
    line per request; closed afterwards."""

    class QuietFiles(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            return

    server = LoopbackPageServer(QuietFiles)
    try:
        yield server
    finally:
        server.close()


def padded_file(source: Path) -> tuple[bytes, int]:
    """``source``'s instance followed by 4 KB of Data Set Trailing Padding (the last element a client sends), and
    where that padding starts: a body cut there still parses as a whole file, as a cut at any element boundary of
    a file without pixel data would."""
    import io

    import pydicom

    ds = pydicom.dcmread(source)
    head = io.BytesIO()
    ds.save_as(head, enforce_file_format=True)
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 4096)
    whole = io.BytesIO()
    ds.save_as(whole, enforce_file_format=True)
    cut = len(head.getvalue())
    assert whole.getvalue()[:cut] == head.getvalue()
    return whole.getvalue(), cut
