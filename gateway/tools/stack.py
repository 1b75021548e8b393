"""``dicom-gateway stack up``: NGINX (rendered from the production template) + gunicorn on one machine.

Everything lives under one folder (``./var`` by default): keys generated once with mode 0600, the rendered NGINX
configuration, sockets, logs, the local object folder and the SQLite catalog. NGINX runs without root (its own
prefix, pid and temp paths). The e2e tests start the same ``Stack`` on free ports.

Over 400 lines on purpose: one class owns the life of one local stack (values, render, start, health, stop), and
its parts share its paths and processes; split, each piece would pass the whole Stack around.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
import urllib3

from gateway.config import parse_api_keys, read_or_create_secret
from gateway.tools import nginxconf

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# Helpers whose work survives them (the collector's log position is committed with its rows, derivative jobs wait in
# the catalog): one that exits is started again, as compose's restart policy does, instead of stopping the gateway
# with it. NGINX's log keeps every line meanwhile, so the audit trail loses none.
HELPERS = frozenset({"collector", "derive"})
RESTART_PAUSE = 5.0  # seconds at least between two starts of a helper: one that cannot start does not spin


# Settings that hold a path of this machine (a database URL's is handled by ``absolute_sqlite``).
# README, "Private at rest": every file and folder the stack and its processes make (the catalog and its -wal/-shm,
# the logs, the spools, the quarantine, NGINX's caches) is its user's only, 0600 and 0700. NGINX's workers run as
# that user (root keeps them root), so no one else has to read any of it; they were 0644 and 0755 under the umask
# of the shell. Stored objects stay 0644 files (gateway/storage/local.py), in folders only the stack's user opens.
PRIVATE_UMASK = 0o077


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


RELATIVE_PATHS = ("DICOMGW_PHI_POLICY", "DICOMGW_TMP_DIR", "DICOMGW_VIEWER_ROOT")


def absolute_sqlite(url: str) -> str:
    """``sqlite:///rel.db`` (a path relative to the current folder) as ``sqlite:////abs/rel.db``; others unchanged."""
    if not url.startswith("sqlite:///"):
        return url
    path, mark, query = url[len("sqlite:///") :].partition("?")
    if not path or path.startswith("/") or path == ":memory:":
        return url
    return f"sqlite:///{Path(path).absolute()}{mark}{query}"


class StackError(RuntimeError):
    """A start-up problem with a message meant for a person (no traceback)."""


# bytes of a Unix socket's path: sun_path holds 108 on Linux (104 on macOS) with its closing NUL
UNIX_PATH_MAX = (104 if sys.platform == "darwin" else 108) - 1


class StartInterrupted(StackError):
    """``interrupt`` was set (Ctrl-C, SIGTERM) before the stack was ready: it is stopped, nothing to report."""


def check_listen(host: str, port: int) -> None:
    """StackError (one line) unless NGINX can listen on ``host``:``port``: an IPv4 or IPv6 address of this machine
    (or a name resolving to one) and a free port."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError):
        raise StackError(f"cannot listen on {host!r}: not an address or a name that resolves") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise StackError(f"port {port} on {host} is already in use: choose another with --port") from None
            raise StackError(f"cannot listen on {host} port {port}: {error.strerror}") from None


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _dies_with(parent: int) -> Callable[[], None]:
    """For Popen's preexec_fn: the child gets SIGTERM when ``parent`` (the thread that spawned it) ends, on Linux,
    and exits at once if that already happened before the request took effect."""

    def request() -> None:
        if sys.platform == "linux":
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(1)

    return request


def bare_host(host: str) -> str:
    """``[::1]``, as URLs, NGINX and Docker write an IPv6 address, is ``::1`` (it was "not an address")."""
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
    try:
        return inner if ipaddress.ip_address(inner).version == 6 else host
    except ValueError:
        return host


def netloc(host: str, port: int) -> str:
    """``host:port`` as URLs and NGINX's listen write it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_wildcard(host: str) -> bool:
    """``0.0.0.0`` or ``::``: every address of this machine, which no client can open as a URL."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def running(var_dir: Path) -> dict[str, Any] | None:
    """The stack that ``stack up --var var_dir`` runs, as it recorded itself (``pid``, ``url``; empty when an older
    version holds the folder); None when none holds the folder's lock. Makes nothing: a mistyped --var is no stack."""
    try:
        handle = (Path(var_dir) / "run" / "stack.lock").open("r")
    except OSError:  # no such folder or file, or --var is a file: nothing runs there
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a stack runs there
        else:
            return None  # free (closing the file lets it go)
        try:
            record = json.loads(handle.read() or "{}")
        except ValueError:
            record = {}
        pid = record.get("pid") if isinstance(record, dict) else None
        # the lock's holder by the kernel's own list: a file an older version kept holding names no process of its own
        holders = _flock_holders(os.fstat(handle.fileno()))
        if not isinstance(pid, int) or (holders is not None and pid not in holders):
            return {}
        return {"pid": pid, "url": str(record.get("url", ""))}


def _flock_holders(stat: os.stat_result) -> set[int] | None:
    """PIDs holding a flock on the file of ``stat`` (Linux's /proc/locks); None where the kernel does not say."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    holders = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[-3].rsplit(":", 1)[-1] == str(stat.st_ino):
            holders.add(int(fields[-4]))
    return holders


def stop_running(var_dir: Path, timeout: float = 60.0) -> dict[str, Any] | None:
    """Stop the stack ``stack up --var var_dir`` runs, as Ctrl-C in its terminal does (SIGTERM), and wait until it
    has let the folder go. Returns what it stopped; None when nothing ran there."""
    record = running(var_dir)
    if record is None:
        return None
    if not record:
        raise StackError(
            f"a stack runs with --var {var_dir} but did not record its process (an older version): stop it with "
            "Ctrl-C where it runs"
        )
    try:
        os.kill(record["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended meanwhile
    except PermissionError:
        raise StackError(
            f"the stack with --var {var_dir} (pid {record['pid']}) is another user's: stop it as that user"
        ) from None
    deadline = time.monotonic() + timeout
    while running(var_dir) is not None:
        if time.monotonic() > deadline:
            raise StackError(
                f"the stack with --var {var_dir} (pid {record['pid']}) was sent SIGTERM and has not stopped within "
                f"{timeout:g} s"
            )
        time.sleep(0.2)
    return record


@contextlib.contextmanager
def own_certificate() -> Iterator[None]:
    """Requests to the stack's own self-signed certificate (``verify=False``) without urllib3's warning for each:
    `stack up --tls` printed four InsecureRequestWarnings among its links."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        yield


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    if not cert.exists():
        directory.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=False,
            capture_output=True,
        )
        if made.returncode != 0:
            reason = " ".join(made.stderr.decode(errors="replace").split())[-300:]
            raise StackError(f"openssl could not make the self-signed certificate: {reason}")
        key.chmod(0o600)
    return cert, key


@dataclass
class Stack:
    var_dir: Path
    port: int = 8080
    host: str = "127.0.0.1"
    storage_url: str = ""
    database_url: str = ""
    tls: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    gunicorn_workers: int = 2
    gunicorn_threads: int = 8
    # gthread woken by the signal that stops it (gateway/gunicorn_worker.py); bench/stop_times.py runs "gthread" too
    gunicorn_worker_class: str = "gateway.gunicorn_worker.WokenThreadWorker"
    derive_worker: bool = True  # the derivative worker (gateway.derive), unless DICOMGW_DERIVATIVES=0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], dict[str, str], float]] = field(default_factory=dict)  # argv, env, start
    log_marks: dict[Path, int] = field(default_factory=dict)
    lock: Any = field(default=None, repr=False)  # the open var/run/stack.lock while this stack holds it
    # set by `stack up` on Ctrl-C or SIGTERM: a start still waiting stops there (it waited up to its timeout for a
    # readiness nobody wanted any more, then printed the links of a stack it stopped, after seeding it)
    interrupt: threading.Event | None = field(default=None, repr=False)
    # `stack up`: its processes end with it however it ends. Killed (kill -9, the OOM killer), it left NGINX and
    # gunicorn running in their own sessions, and the next `stack up` was "port ... is already in use".
    die_with_parent: bool = False

    def __post_init__(self) -> None:
        # One value per setting, used by gunicorn, NGINX and seeding alike: a flag (constructor argument) wins,
        # then the environment (``extra_env``), then the default under ``var/`` (keys generated there once).
        self.var_dir = self.var_dir.resolve()
        try:
            with private_files():
                self.var_dir.mkdir(parents=True, exist_ok=True)
            (self.var_dir / f".write-probe-{os.getpid()}").touch()
            (self.var_dir / f".write-probe-{os.getpid()}").unlink()
        except OSError as error:
            # a read-only mount, another user's folder: it was Python's bare "[Errno 30] Read-only file system:
            # '/srv/dgw'" (or "Permission denied" once the keys were generated), naming neither the flag nor a fix
            raise StackError(
                f"--var {self.var_dir}: cannot write there ({error.strerror}): choose a folder this user can write"
            ) from None
        self.host = bare_host(self.host)
        env = self.extra_env
        # without the blanks around them, as the gateway reads them (NGINX would serve a folder named "objects ")
        self.storage_url = (
            self.storage_url.strip()
            or env.get("DICOMGW_STORAGE_URL", "").strip()
            or f"file://{self.var_dir / 'objects'}"
        )
        self.database_url = absolute_sqlite(
            self.database_url.strip()
            or env.get("DICOMGW_DATABASE_URL", "").strip()
            or f"sqlite:///{self.var_dir / 'catalog.db'}"
        )
        # gunicorn and the helpers run in var/: a relative path means the folder the operator typed it in (they
        # found another file there, or none: `sqlite:///catalog.db` was migrated here, then refused in var/)
        given = {name: env.get(name, "").strip() for name in RELATIVE_PATHS}
        self.extra_env = {**env, **{name: str(Path(path).absolute()) for name, path in given.items() if path}}
        env = self.extra_env
        self.signing_keys = self._keys("DICOMGW_SIGNING_KEYS", "signing.key")
        self.api_keys = self._keys("DICOMGW_API_KEYS", "api.key")
        self.deid_key = env.get("DICOMGW_DEID_KEY", "") or read_or_create_secret(self.var_dir / "deid.key")

    def _keys(self, variable: str, file_name: str) -> tuple[str, ...]:
        given = tuple(key.strip() for key in self.extra_env.get(variable, "").split(",") if key.strip())
        return given or (read_or_create_secret(self.var_dir / file_name),)

    @property
    def signing_key(self) -> str:
        """The key new tokens are signed with (the newest, as in the gateway)."""
        return self.signing_keys[-1]

    @property
    def api_key(self) -> str:
        """The API key seeding and tests use (the first, as ``stack seed`` does; without its label)."""
        return parse_api_keys(self.api_keys[0])[0].secret

    def keys_from_environment(self, variable: str) -> bool:
        return bool(self.extra_env.get(variable, "").strip(", "))

    # -- paths ---------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Where this machine reaches the stack: a wildcard listen address is reached on its loopback."""
        host = self.host
        if self.tls:
            host = "localhost"  # the name the self-signed certificate carries
        elif is_wildcard(host):
            host = "::1" if ":" in host else "127.0.0.1"
        return f"{'https' if self.tls else 'http'}://{netloc(host, self.port)}"

    @property
    def viewer_root(self) -> Path:
        """The built viewer NGINX serves under /viewer/ (``make viewer`` builds it; without it /viewer/ is a 404)."""
        return Path(self.extra_env.get("DICOMGW_VIEWER_ROOT") or nginxconf.REPO_ROOT / "viewer" / "dist")

    @property
    def nginx_dir(self) -> Path:
        return self.var_dir / "nginx"

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def access_log(self) -> Path:
        return self.nginx_dir / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        return self.nginx_dir / "logs" / "error.log"

    @property
    def gunicorn_log(self) -> Path:
        return self.var_dir / "logs" / "gunicorn.log"

    # -- configuration ---------------------------------------------------------------------------------------------
    def gateway_env(self) -> dict[str, str]:
        # On a wildcard address other machines reach the stack too (a phone trying the viewer on the LAN), each by
        # its own name for it: RetrieveURLs and viewer links then follow the Host the client used.
        public = {} if is_wildcard(self.host) else {"DICOMGW_PUBLIC_URL": self.url}
        env = {
            **public,
            "DICOMGW_TLS": "1" if self.tls else "0",
            "DICOMGW_TMP_DIR": str(self.var_dir / "spool"),
            "PROMETHEUS_MULTIPROC_DIR": str(self.run_dir / "metrics"),
        }
        env.update(self.extra_env)
        # What NGINX and seeding also use: the resolved values, never a second source.
        env.update(
            DICOMGW_SIGNING_KEYS=",".join(self.signing_keys),
            DICOMGW_API_KEYS=",".join(self.api_keys),
            DICOMGW_DEID_KEY=self.deid_key,
            DICOMGW_STORAGE_URL=self.storage_url,
            DICOMGW_DATABASE_URL=self.database_url,
        )
        return env

    @property
    def file_root(self) -> Path | None:
        """The folder of a ``file://`` storage, as the gateway resolves it (NGINX serves reads from it)."""
        if not self.storage_url.startswith("file://"):
            return None
        from gateway.storage.local import LocalStorage

        return LocalStorage(self.storage_url).root

    # The settings only NGINX reads, checked before anything starts: NGINX took DICOMGW_MAX_UPLOADS=0 as no limit at
    # all, and wrote whatever DICOMGW_FRAME_ANCESTORS held into the viewer's CSP header (a list separated by commas,
    # which browsers ignore, so no portal could frame the viewer; a `"`, which ended the header and began a directive).
    @property
    def max_uploads(self) -> int:
        return self._whole_number("DICOMGW_MAX_UPLOADS", 1, max(1, self.gunicorn_threads // 2))

    @property
    def auth_cache_seconds(self) -> int:
        # NGINX writes it after a number in `proxy_cache_valid`: `+2` or `1_0`, which Python's int() reads, was not
        return self._whole_number("DICOMGW_AUTH_CACHE_SECONDS", 0, 2)

    def _whole_number(self, name: str, least: int, default: int) -> int:
        given = self.extra_env.get(name, "").strip()
        if not given:
            return default
        if not re.fullmatch(r"[0-9]{1,6}", given) or int(given) < least:
            raise StackError(f"{name}: expected a whole number from {least} to 999999, got '{given}'")
        return int(given)

    @property
    def frame_ancestors(self) -> str:
        given = self.extra_env.get("DICOMGW_FRAME_ANCESTORS", "")
        try:
            return nginxconf.frame_ancestors(given) if given.strip() else "'self'"
        except ValueError as error:
            raise StackError(f"DICOMGW_FRAME_ANCESTORS: {error}") from None

    def nginx_values(self) -> dict[str, str]:
        run = self.run_dir
        # "::" means every address, IPv4 included, as it does for most servers (NGINX alone listens IPv6-only)
        dual_stack = is_wildcard(self.host) and ":" in self.host
        listen_options = (["ssl", "http2"] if self.tls else []) + (["ipv6only=off"] if dual_stack else [])
        values = {
            "DICOMGW_LISTEN": netloc(self.host, self.port),
            "DICOMGW_LISTEN_OPTIONS": " ".join(listen_options),
            "DICOMGW_TLS_CONF": "conf.d/snippets/dgw-tls-on.conf"
            if self.tls
            else "conf.d/snippets/dgw-tls-off.conf",
            "DICOMGW_TLS_CERT": str(self.var_dir / "tls" / "tls.crt"),
            "DICOMGW_TLS_KEY": str(self.var_dir / "tls" / "tls.key"),
            "DICOMGW_GATEWAY_UPSTREAM": f"unix:{run / 'gunicorn.sock'}",
            "DICOMGW_FILE_ORIGIN_LISTEN": f"unix:{run / 'storage.sock'}",
            "DICOMGW_FILE_ROOT": str(self.file_root or self.var_dir / "objects"),
            "DICOMGW_VIEWER_ROOT": str(self.viewer_root),
            "DICOMGW_CACHE_DIR": str(self.nginx_dir / "cache"),
            "DICOMGW_ACCESS_LOG": str(self.access_log),
            "DICOMGW_MAX_BODY": "8g",
            # half of one worker's threads (every upload may land on the same worker): the rest stay free for
            # decisions and queries
            "DICOMGW_MAX_UPLOADS": str(self.max_uploads),
            "DICOMGW_AUTH_CACHE_SECONDS": str(self.auth_cache_seconds),
            "DICOMGW_FRAME_ANCESTORS": self.frame_ancestors,
            "DICOMGW_CORS_ORIGIN_REGEX": nginxconf.cors_regex(
                tuple(
                    o.strip() for o in self.extra_env.get("DICOMGW_CORS_ORIGINS", "").split(",") if o.strip()
                )
            ),
        }
        if self.storage_url.startswith("s3://"):
            endpoint = self.extra_env.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL", "")
            if not endpoint:
                region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
                endpoint = f"https://s3.{region}.amazonaws.com"
            parsed = urlparse(endpoint)
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            values.update(
                DICOMGW_STORAGE_UPSTREAM=f"{parsed.hostname}:{port}",
                DICOMGW_STORAGE_HOST=parsed.netloc,
                DICOMGW_STORAGE_SCHEME=parsed.scheme,
            )
        else:
            values.update(
                DICOMGW_STORAGE_UPSTREAM=f"unix:{run / 'storage.sock'}",
                DICOMGW_STORAGE_HOST="storage",
                DICOMGW_STORAGE_SCHEME="http",
            )
        return values

    def render(self) -> Path:
        with private_files():
            for sub in ("logs", "tmp", "cache"):
                (self.nginx_dir / sub).mkdir(parents=True, exist_ok=True)
            for sub in ("run", "logs", "spool"):
                (self.var_dir / sub).mkdir(parents=True, exist_ok=True)
            if self.tls:
                self_signed_certificate(self.var_dir / "tls")
            return nginxconf.render(self.nginx_dir / "conf", self.nginx_values())

    # -- processes ---------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        if not Path(NGINX).exists():
            raise StackError(
                "nginx is not installed: install the Debian package 'nginx' (apt-get install nginx)"
            )
        with private_files():
            self._take_lock()
        try:
            check_listen(self.host, self.port)
            self._check_socket_paths()
            self.max_uploads, self.auth_cache_seconds, self.frame_ancestors  # noqa: B018 - checked before anything starts
            with private_files():  # the SQLite catalog is made here, by its migration
                self.prepare()
            self._check_interrupt()
        except BaseException:
            self._release_lock()
            raise
        try:
            self._start_processes(timeout)
        except BaseException:
            self.stop()  # never leave half a stack running (an OSError spawning NGINX, Ctrl-C while waiting)
            raise

    def _take_lock(self) -> None:
        """One stack per --var folder. A second one (another port, another terminal) unlinked the first's gunicorn
        socket and metrics and, once stopped, left the first answering 503. flock, not a pid file: the kernel drops
        it with the process that held it, so a stack killed any way never blocks the next start."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = (self.run_dir / "stack.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StackError(
                f"another stack is running with --var {self.var_dir}: stop it first (dicom-gateway stack down "
                f"--var {self.var_dir}), or choose another --var"
            ) from None
        # who holds it, for `stack down` and `stack status` (written under the lock: never another stack's)
        os.ftruncate(handle.fileno(), 0)
        handle.write(json.dumps({"pid": os.getpid(), "url": self.url}) + "\n")
        handle.flush()
        self.lock = handle

    def _check_socket_paths(self) -> None:
        """A --var too deep for its sockets was "gunicorn exited at start-up: ... Can't connect to .../gunicorn.sock",
        which reads as a gunicorn or network fault: say what it is before anything starts."""
        for name in ("gunicorn.sock", "storage.sock"):
            path = self.run_dir / name
            if len(bytes(path)) > UNIX_PATH_MAX:
                raise StackError(
                    f"--var {self.var_dir} is too deep: the stack's socket {path} would be {len(bytes(path))} bytes, "
                    f"and a Unix socket's path holds at most {UNIX_PATH_MAX}: choose a shorter --var"
                )

    def _release_lock(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def _start_processes(self, timeout: float) -> None:
        main_conf = self.render()
        for stale in ("gunicorn.sock", "storage.sock"):
            (self.run_dir / stale).unlink(missing_ok=True)
        env = {**os.environ, **self.gateway_env()}
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self._spawn(
            "gunicorn",
            [
                str(gunicorn),
                "gateway.wsgi:application",
                "--config",  # imports the gateway's modules in the master, before it forks the workers
                "python:gateway.gunicorn_master",
                "--bind",
                f"unix:{self.run_dir / 'gunicorn.sock'}",
                "--worker-class",
                self.gunicorn_worker_class,
                "--workers",
                str(self.gunicorn_workers),
                "--threads",
                str(self.gunicorn_threads),
                "--keep-alive",
                "75",
                "--timeout",
                "300",
                "--graceful-timeout",
                "5",
                "--log-level",
                "warning",
                "--error-logfile",
                str(self.gunicorn_log),
                "--logger-class",
                "gateway.logmask.GunicornLogger",  # no credential in any log line (gateway/logmask.py)
                "--umask",
                "0o077",
                # NGINX bounds requests (8 KB request lines, 32 KB for a QIDO search; 32 KB header lines, 128 KB of
                # headers) and answers JSON; gunicorn must never refuse what NGINX let through with its own plain
                # page (same values in docker/gunicorn.conf.py; gunicorn's request line is 8190 bytes or unbounded).
                # Over HTTP/2 NGINX bounds only the whole header list (128 KB of names and values) and a field as
                # HPACK encodes it: one line may take all of it (a browser's cookie crumbs, joined into one Cookie
                # line), so a line may be 128 KB + ": " + CRLF.
                "--limit-request-line",
                "0",
                "--limit-request-fields",
                "32768",
                "--limit-request-field_size",
                "131076",
            ],
            env,
        )
        self._wait_for_socket(self.run_dir / "gunicorn.sock", "gunicorn", timeout)
        if self.derive_worker and env.get("DICOMGW_DERIVATIVES", "1").lower() not in ("0", "false", "no", "off"):
            self._spawn("derive", [sys.executable, "-m", "gateway.derive"], env)
        directives = "daemon off;"
        if os.geteuid() == 0:
            # Started as root (CI containers): keep workers as root so they can use the sockets under var/.
            directives += " user root;"
        self._spawn(
            "nginx",
            [
                NGINX,
                "-p",
                str(self.nginx_dir) + "/",
                "-c",
                str(main_conf),
                "-e",
                str(self.error_log),
                "-g",
                directives,
            ],
            env,
        )
        # The access audit collector (gateway/accesslog.py): NGINX's log into the catalog, every few seconds.
        self._spawn(
            "collector",
            [str(Path(sys.executable).with_name("dicom-gateway")), "audit", "collect", "--follow"],
            {**env, "DICOMGW_ACCESS_LOG": str(self.access_log)},
        )
        self._wait_ready(timeout)

    def prepare(self) -> None:
        """Validate the gateway's settings and migrate the catalog once, before gunicorn starts its workers."""
        from gateway.startup import StartupError, prepare

        (self.var_dir / "spool").mkdir(exist_ok=True)  # the default DICOMGW_TMP_DIR, which start-up checks
        shutil.rmtree(self.run_dir / "metrics", ignore_errors=True)  # counters start at zero with the stack
        (self.run_dir / "metrics").mkdir(parents=True)  # PROMETHEUS_MULTIPROC_DIR, which start-up checks too
        try:
            prepare({**os.environ, **self.gateway_env()})  # exactly what gunicorn gets
        except StartupError as error:
            raise StackError(str(error)) from None

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        for path in self._logs_of(name):
            self.log_marks[path] = path.stat().st_size if path.exists() else 0
        self.commands[name] = (argv, dict(env), time.monotonic())
        out = os.open(self.var_dir / "logs" / f"{name}.out", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(out, "ab") as log:  # the child keeps its own copy
            self.processes[name] = subprocess.Popen(
                argv,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(self.var_dir),
                umask=PRIVATE_UMASK,  # what it makes (catalog, logs, spools, quarantine, caches) is the user's only
                preexec_fn=_dies_with(os.getpid()) if self.die_with_parent else None,  # noqa: PLW1509 - no threads spawn
            )

    def _check_interrupt(self) -> None:
        if self.interrupt is not None and self.interrupt.is_set():
            raise StartInterrupted("stopped while starting")  # start() stops what was started

    def _wait_for_socket(self, path: Path, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                return
            self._check_interrupt()
            if self.processes[name].poll() is not None:
                self.stop()
                raise StackError(
                    f"{name} exited at start-up: {self.last_error(name)} (logs: {self.var_dir / 'logs'})"
                )
            time.sleep(0.05)
        self.stop()
        raise StackError(f"{name} did not start within {timeout:.0f} s; see {self.var_dir / 'logs'}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    self.stop()
                    raise StackError(
                        f"{name} exited at start-up: {self.last_error(name)} (logs: {self.var_dir / 'logs'})"
                    )
            with contextlib.suppress(requests.RequestException), own_certificate():
                answer = requests.get(self.url + "/readyz", timeout=2, verify=False)  # noqa: S501 - own cert
                if answer.status_code == 200:
                    return
                last = answer.text
            self._check_interrupt()  # after the readiness check: a stack that is ready has started
            time.sleep(0.1)
        self.stop()
        last = " ".join(last.split())[:300]
        # storage's own probe says why when /readyz blamed it or never answered (its probe of a down endpoint
        # can outlast the request's 2 s)
        storage = self._storage_problem() if "storage_unavailable" in last or not last else ""
        why = storage or last or "/readyz did not answer"
        logs = self.var_dir / "logs"
        raise StackError(f"the stack did not become ready within {timeout:.0f} s: {why} (logs: {logs})")

    def _storage_problem(self) -> str:
        """What keeps storage from answering, as its own probe says it, and what to do: /readyz says only
        ``storage_unavailable``, the same for a bucket that does not exist and an S3 endpoint that is down."""
        from gateway.errors import StorageUnavailable
        from gateway.storage import open_storage

        where = self.storage_url
        if where.startswith("s3://"):
            endpoint = self.extra_env.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
            where = f"{where} at {endpoint}"
        try:
            open_storage(self.storage_url).check()
        except StorageUnavailable as error:
            if "bucket not found" in error.detail:
                return f"storage {where}: the bucket does not exist: create it, or fix --storage (DICOMGW_STORAGE_URL)"
            return (
                f"storage {where}: {error.detail}: check that it runs and that --storage (DICOMGW_STORAGE_URL), "
                "AWS_ENDPOINT_URL and the credentials are right"
            )
        except Exception:  # noqa: BLE001 - a hint only: the readiness answer is said instead
            return ""
        return ""

    def last_error(self, name: str) -> str:
        """One line saying why a process stopped: the gateway's own one-line message when there is one (its
        workers print ``dicom-gateway: ...``), else the last line the process or its log wrote."""
        lines: list[str] = []
        for path in self._logs_of(name):
            if path.exists():
                with path.open("rb") as log:
                    log.seek(self.log_marks.get(path, 0))  # only what this start wrote (logs are appended to)
                    text = log.read().decode(errors="replace")
                lines += [line.strip() for line in text.splitlines() if line.strip()]
        ours = [line for line in lines if line.startswith("dicom-gateway: ")]
        return (ours or lines or ["no output"])[-1][:500]

    def _logs_of(self, name: str) -> tuple[Path, Path]:
        return self.var_dir / "logs" / f"{name}.out", self.gunicorn_log if name == "gunicorn" else self.error_log

    def tail(self, name: str, lines: int = 20) -> str:
        out = self.var_dir / "logs" / f"{name}.out"
        texts = []
        for path in (out, self.gunicorn_log if name == "gunicorn" else self.error_log):
            if path.exists():
                texts.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def supervise(self) -> tuple[list[str], list[str]]:
        """One look at the processes (``stack up`` looks every second): a helper that exited is started again,
        at most once per RESTART_PAUSE. Returns the helpers started again and the other processes that exited
        (NGINX, gunicorn: the gateway cannot serve without them)."""
        restarted, dead = [], []
        for name, process in list(self.processes.items()):
            if process.poll() is None:
                continue
            if name not in HELPERS:
                dead.append(name)
                continue
            argv, env, started = self.commands[name]
            if time.monotonic() - started >= RESTART_PAUSE:
                self._spawn(name, argv, env)
                restarted.append(name)
        return restarted, dead

    def kill(self, name: str) -> None:
        """Stop one process now (tests use it to prove NGINX fails closed)."""
        process = self.processes.pop(name, None)
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        """Stop every process this stack started: TERM, then KILL after a grace period. No orphans."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
        self._release_lock()

    @contextlib.contextmanager
    def running(self) -> Iterator[Stack]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
