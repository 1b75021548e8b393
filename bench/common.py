"""Shared helpers for the benchmarks: synthetic data (cached), the real stack, a static NGINX baseline, wrk,
a keep-alive latency client, gunicorn RSS sampling, percentiles and the PASS/MISS report.

Every benchmark measures the gateway and its baseline in ONE run on the same machine (machines are shared and
noisy), interleaving the two where it can, and prints the absolute figures next to the ratio.

Where things live: synthetic inputs are generated once into ``DICOMGW_BENCH_DATA`` (default
``var/bench/data``; a marker file makes a half-written set regenerate) and reused by later runs; each stack and
static server runs in a fresh folder under ``var/bench/run`` that is deleted afterwards (``DICOMGW_BENCH_KEEP=1``
keeps it for looking at logs).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import requests

from gateway.tools.stack import NGINX, Stack, StackError, free_port

if TYPE_CHECKING:
    from gateway.tools.synth import Offsets

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
VAR = REPO / "var" / "bench"
DATA = Path(os.environ.get("DICOMGW_BENCH_DATA", str(VAR / "data")))
WRK = shutil.which("wrk") or "/usr/bin/wrk"
KEEP = os.environ.get("DICOMGW_BENCH_KEEP", "") == "1"


class BenchSkip(Exception):
    """A benchmark (or part of one) cannot run here; the message says why and how to fix it."""


# ---------------------------------------------------------------------------------------------------------------
# Report


@dataclass
class Check:
    """One target: ``ok`` None means not measured (``value`` is then NaN and ``detail`` says why)."""

    name: str
    value: float
    target: str
    ok: bool | None
    detail: str = ""

    @property
    def verdict(self) -> str:
        return "N/A" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Report:
    bench: str
    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    def say(self, text: str) -> None:
        """Record and print one line of absolute figures as they come (a long run shows progress)."""
        self.lines.append(text)
        print(f"  {text}", flush=True)

    def check(self, name: str, value: float, target: str, ok: bool | None, detail: str = "") -> Check:
        result = Check(name, value, target, ok, detail)
        self.checks.append(result)
        shown = "not measured" if ok is None else f"{value:.3g}"
        print(f"{self.bench} {result.verdict} {name} = {shown} (target {target}){' - ' + detail if detail else ''}",
              flush=True)
        return result


def header(bench: str, title: str) -> Report:
    print(f"\n== {bench}: {title}", flush=True)
    return Report(bench, title)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mb(n: float) -> float:
    return n / 1e6


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data, generated once per parameter set


def _cached(name: str, make: Callable[[Path], object]) -> Path:
    folder = DATA / name
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        started = time.perf_counter()
        make(folder)
        marker.write_text(f"{time.perf_counter() - started:.1f}s\n")
    return folder


def ct_series(seed: int = 7, slices: int = 200, clean: bool = True) -> list[Path]:
    """A 512x512 CT series, instance 1 first: clean, or with the realistic fake PHI ``synth`` writes by default."""
    from gateway.tools.synth import make_series

    folder = _cached(f"ct-{seed}-{slices}{'' if clean else '-phi'}", lambda out: make_series(
        out, modality="CT", slices=slices, seed=seed, clean=clean))
    return sorted(folder.glob("*.dcm"))


def wsi(seed: int = 7, frames: int = 32_000, tile: int = 256, offsets: Offsets = "bot") -> Path:
    """A clean JPEG whole-slide image, with a Basic Offset Table unless ``offsets`` says otherwise."""
    from gateway.tools.synth import make_wsi

    suffix = "" if offsets == "bot" else f"-{offsets}"
    folder = _cached(f"wsi-{seed}-{frames}-{tile}{suffix}", lambda out: make_wsi(
        out, frames=frames, tile=tile, offsets=offsets, seed=seed, clean=True))
    return folder / f"wsi-{seed}.dcm"


def uids(path: Path) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs of a Part 10 file."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


@contextlib.contextmanager
def run_dir(name: str) -> Iterator[Path]:
    VAR.mkdir(parents=True, exist_ok=True)
    (VAR / "run").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=VAR / "run"))
    try:
        yield folder
    finally:
        if KEEP:
            print(f"  (kept {folder})")
        else:
            shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# The gateway stack


@dataclass
class BenchStack:
    stack: Stack

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.api_key}"}

    def stow(self, files: Sequence[Path], headers: Mapping[str, str] | None = None) -> tuple[float, int, Any]:
        """One streaming multipart STOW-RS POST of ``files`` with the API key: (seconds, body bytes, response).
        Raises AssertionError unless every instance was stored (200)."""
        from gateway.dicomweb.multipart import encode_multipart

        body = encode_multipart(list(files))
        all_headers = {"Content-Type": body.content_type, "Accept": "application/dicom+json",
                       **self.api_headers, **(headers or {})}
        started = time.perf_counter()
        answer = requests.post(f"{self.url}/dicomweb/studies", data=body, headers=all_headers, timeout=900)
        seconds = time.perf_counter() - started
        if answer.status_code != 200:
            raise AssertionError(f"STOW answered {answer.status_code}: {answer.text[:400]}")
        return seconds, len(body), answer

    def token(self, studies: list[str], ttl: int = 3600) -> str:
        answer = requests.post(f"{self.url}/api/v1/tokens", json={"sub": "bench", "studies": studies, "ttl": ttl},
                               headers=self.api_headers, timeout=30)
        if answer.status_code != 201:
            raise AssertionError(f"token issue answered {answer.status_code}: {answer.text[:300]}")
        return str(answer.json()["token"])

    def root_path(self, token: str) -> str:
        """The DICOMweb root as a path (``/t/{token}/dicomweb``), for clients that talk to host:port."""
        return f"/t/{token}/dicomweb"

    def gunicorn_pids(self) -> list[int]:
        """gunicorn's master, its workers and everything they started (the ingest pool's fork server and
        processes, multiprocessing's resource tracker)."""
        master = self.stack.processes["gunicorn"].pid
        return [master, *descendants_of(master)]

    def nginx_pids(self) -> list[int]:
        master = self.stack.processes["nginx"].pid
        return [master, *children_of(master)]

    def rss_probe(self, *, largest: bool = False) -> Callable[[], int]:
        """A probe for ``RssSampler``: the sum (or, with ``largest``, the largest) of the resident set sizes of the
        gunicorn processes running now (ingest pool processes included; shared pages counted in each), bytes.
        The processes are found once, here: finding them scans /proc, ~5 ms of the benchmark's CPU, which at
        the sampler's 20 ms took a fifth of a core from the gateway under measurement on a 2-core machine; a
        sample then reads only their status files. Make a new probe when the process set may have changed
        (a pool started by a warm-up)."""
        pids = self.gunicorn_pids()
        if largest:
            return lambda: max((rss_of(pid) for pid in pids), default=0)
        return lambda: sum(rss_of(pid) for pid in pids)

    def error_log_count(self, text: str) -> int:
        """How many lines of NGINX's error log contain ``text``."""
        path = self.stack.error_log
        if not path.exists():
            return 0
        return sum(1 for line in path.read_text(errors="replace").splitlines() if text in line)

    def collector_pids(self) -> list[int]:
        """The access audit collector (``dicom-gateway audit collect --follow``), which loads NGINX's log."""
        return [self.stack.processes["collector"].pid]

    def audit_settled(self, timeout: float = 60.0) -> None:
        """Wait until the audit collector has loaded every line NGINX wrote so far (its position in the catalog is
        the access log's size): what a run leaves it to do must not fall into the next run's window."""
        import socket

        from gateway.catalog import Catalog

        log = self.stack.access_log
        source = f"{socket.gethostname()}:{log.resolve()}"
        catalog = Catalog(self.stack.database_url)
        try:
            deadline = time.monotonic() + timeout
            while True:
                stored = catalog.access_position(source)
                if stored is not None and stored[1] >= log.stat().st_size:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"the audit collector did not catch up within {timeout:.0f} s")
                time.sleep(0.1)
        finally:
            catalog.engine.dispose()

    def log_offset(self) -> int:
        """The access log's current size: pass it to ``access_log(since=...)`` to read only what follows."""
        path = self.stack.access_log
        return path.stat().st_size if path.exists() else 0

    def access_log(self, since: int = 0) -> list[dict[str, Any]]:
        """The JSON access log entries (from byte offset ``since``)."""
        path = self.stack.access_log
        if not path.exists():
            return []
        with path.open("rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


@contextlib.contextmanager
def running_stack(var_dir: Path, extra_env: Mapping[str, str] | None = None,
                  database_url: str = "", *, derive_worker: bool = False) -> Iterator[BenchStack]:
    """The production stack (NGINX from the template + gunicorn, local storage, SQLite) on a free port. The
    derivative worker runs only when asked (B7): elsewhere it would take CPU from what is measured, while ingest
    still queues its jobs as in production."""
    if not Path(NGINX).exists():
        raise BenchSkip("nginx is not installed: apt-get install nginx")
    stack = Stack(var_dir, port=free_port(), database_url=database_url, extra_env=dict(extra_env or {}),
                  derive_worker=derive_worker)
    try:
        stack.start(timeout=60)
    except StackError as error:
        raise BenchSkip(f"the stack did not start: {error}") from None
    try:
        yield BenchStack(stack)
    finally:
        stack.stop()


def process_tree() -> dict[int, list[int]]:
    """Each process's children, from one scan of /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: the fields start after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def children_of(pid: int) -> list[int]:
    return process_tree().get(pid, [])


def descendants_of(pid: int, tree: dict[int, list[int]] | None = None) -> list[int]:
    """Every process below ``pid``: a gunicorn worker's ingest processes are its fork server's children
    (``gateway.processpool``), not its own."""
    tree = process_tree() if tree is None else tree
    found, todo = [], list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += tree.get(child, [])
    return found


def rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time consumed so far by these processes (not their reaped children), seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / ticks


class RssSampler:
    """Samples a process group's summed RSS every ``interval`` seconds on a thread (use as a context manager)."""

    def __init__(self, measure: Callable[[], int], interval: float = 0.02) -> None:
        self.measure = measure
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.measure())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.measure())

    @property
    def peak(self) -> int:
        return max(self.samples) if self.samples else 0


# ---------------------------------------------------------------------------------------------------------------
# The static baseline: a second NGINX, rendered here (never from nginx/templates), same worker count and the
# same main settings (sendfile, tcp_nopush, keepalive) as the stack's nginx/nginx.conf, serving a folder.

_STATIC_CONF = """\
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    # The gateway's NGINX logs every request; so does the baseline (same cost, a plain format).
    access_log {prefix}/access.log;
    server {{
        listen 127.0.0.1:{port};
        server_tokens off;
        root {root};
        location / {{
            default_type application/octet-stream;
        }}
    }}
}}
"""


def nginx_workers() -> str:
    """The stack's main nginx.conf setting (``auto`` there), so the baseline runs with the same workers."""
    for line in (REPO / "nginx" / "nginx.conf").read_text().splitlines():
        parts = line.strip().rstrip(";").split()
        if len(parts) == 2 and parts[0] == "worker_processes":
            return parts[1]
    return "auto"


@contextlib.contextmanager
def static_server(root: Path, prefix: Path) -> Iterator[str]:
    """NGINX serving ``root`` on a free loopback port; yields its base URL."""
    port = free_port()
    for sub in ("tmp",):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "static.conf"
    conf.write_text(_STATIC_CONF.format(workers=nginx_workers(), prefix=prefix, port=port, root=root.resolve()))
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    log = (prefix / "nginx.out").open("ab")
    process = subprocess.Popen([NGINX, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log"),
                                "-g", directives], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise BenchSkip(f"static NGINX exited: {(prefix / 'error.log').read_text(errors='replace')[-400:]}")
            with contextlib.suppress(requests.RequestException):
                requests.get(url + "/", timeout=1)
                break
            if time.monotonic() > deadline:
                raise BenchSkip("static NGINX did not start")
            time.sleep(0.05)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


# ---------------------------------------------------------------------------------------------------------------
# wrk


@dataclass
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    errors: int  # connect + read + write + timeouts + HTTP status >= 400
    p50_ms: float
    p99_ms: float
    wraps: int
    raw: dict[str, Any]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return mb(self.bytes) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        text = (f"{self.rps:,.0f} req/s, {self.mb_per_s:,.1f} MB/s, p50 {self.p50_ms:.2f} ms, "
                f"p99 {self.p99_ms:.2f} ms, {self.requests:,} requests in {self.seconds:.1f} s")
        if self.errors:
            text += f", {self.errors} ERRORS"
        return text


def require_wrk() -> None:
    if not Path(WRK).exists():
        raise BenchSkip("wrk is not installed: apt-get install wrk (Debian/Ubuntu package 'wrk')")


def run_wrk(base_url: str, paths: Sequence[str], *, headers: Mapping[str, str] | None = None,
            duration: float = 10.0, connections: int = 32, threads: int = 2, timeout: float = 30.0) -> WrkResult:
    """wrk over ``paths`` round-robin (distinct URLs; see bench/paths.lua). Headers go through wrk's -H."""
    require_wrk()
    threads = min(threads, connections)
    with tempfile.NamedTemporaryFile("w", suffix=".paths", dir=VAR, delete=False) as handle:
        handle.write("\n".join(paths) + "\n")
        paths_file = handle.name
    try:
        argv = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
                "--timeout", f"{int(timeout)}s", "-s", str(BENCH_DIR / "paths.lua")]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        argv += [base_url, "--", paths_file, str(threads)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout + 30)
    finally:
        os.unlink(paths_file)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-400:]} {done.stdout[-400:]}")
    raw = json.loads(line[len("WRKJSON "):])
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return WrkResult(raw["requests"], raw["duration_us"] / 1e6, raw["bytes"], errors, raw["p50_us"] / 1000,
                     raw["p99_us"] / 1000, raw["wraps"], raw)


# ---------------------------------------------------------------------------------------------------------------
# A keep-alive client for latency percentiles


class Client:
    """One keep-alive HTTP/1.1 connection; ``get`` returns (status, body, seconds to the last body byte)."""

    def __init__(self, base_url: str) -> None:
        parsed = urlparse(base_url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes, float]:
        for attempt in (0, 1):
            started = time.perf_counter()
            try:
                self.conn.request("GET", path, headers=dict(headers or {}))
                response = self.conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # the server closed an idle keep-alive connection: reconnect once, time the retry only
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise
                continue
            return response.status, body, time.perf_counter() - started
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------------------------------------------
# Running one benchmark as a program


def main(run: Callable[[], Report]) -> None:
    """``python -m bench.bN_...``: run it, exit 0 when every measured target passes, 1 on a miss, 2 on skip."""
    try:
        report = run()
    except BenchSkip as skip:
        print(f"SKIPPED: {skip}")
        sys.exit(2)
    sys.exit(1 if any(c.ok is False for c in report.checks) else 0)


def timed(report: Report, started: float) -> Report:
    report.seconds = time.perf_counter() - started
    print(f"  ({report.bench} took {report.seconds:.0f} s)", flush=True)
    return report
