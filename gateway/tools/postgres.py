"""A throwaway PostgreSQL cluster on a free loopback port, for the tests and the benchmarks.

Runs the OS packages' binaries (the newest ``/usr/lib/postgresql/N/bin``, or ``DICOMGW_TEST_PG_BIN``) in a fresh
folder, as the ``postgres`` OS user when we are root (initdb refuses root). The cluster is for throwaway data: fsync and
synchronous commit are off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.tools.stack import free_port


def os_pg_bin(root: Path = Path("/usr/lib/postgresql")) -> Path:
    """The newest PostgreSQL the OS packages installed (Debian 12's is 15, Ubuntu 24.04's 16: `make test` takes
    either, as `apt-get install postgresql` gives it); 15's folder when none is there (the skip names it)."""
    found = sorted(
        (int(folder.name), folder / "bin")
        for folder in (root.iterdir() if root.is_dir() else ())
        if folder.name.isdigit() and (folder / "bin" / "initdb").exists()
    )
    return found[-1][1] if found else root / "15" / "bin"


PG_BIN = Path(os.environ.get("DICOMGW_TEST_PG_BIN") or os_pg_bin())


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    data: Path | None = None
    argv: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``fast``: a DBA's restart; ``immediate``: a crash, recovered at the next start)."""
        assert self.data is not None
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        self._reap()

    def kill(self) -> None:
        """SIGKILL the postmaster alone, as a crashed host leaves it: its backends notice and exit on their own."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(_postmaster_pid(self.process), signal.SIGKILL)
        self._reap()

    def start(self) -> None:
        """Start the cluster again on the same port and folder (after ``stop`` or ``kill``)."""
        self.process = subprocess.Popen(_as_postgres(self.argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until_up(self.process, self.port)

    def _reap(self) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "postgres").exists()


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: drop to the postgres OS user
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def private_postgres(settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """Start a cluster (extra ``postgres -c`` ``settings`` on top of the throwaway ones), yield it, remove it."""
    base = Path(tempfile.mkdtemp(prefix="dicomgw-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    subprocess.run(
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                      "--no-sync"]),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port = free_port()
    options = {"listen_addresses": "127.0.0.1", "fsync": "off", "synchronous_commit": "off",
               "full_page_writes": "off", **(settings or {})}
    argv = [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sock)]
    for name, value in options.items():
        argv += ["-c", f"{name}={value}"]
    server = PostgresServer("127.0.0.1", port, "postgres", data, argv)
    try:
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _postmaster_pid(process: subprocess.Popen[bytes]) -> int:
    """The postmaster's pid: ``process`` itself, or its child when runuser started it (as root)."""
    if os.geteuid() != 0:
        return process.pid
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    with contextlib.suppress(OSError, ValueError):
        return int(children.read_text().split()[0])
    return process.pid


def _wait_until_up(process: subprocess.Popen[bytes], port: int) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start") from None
            time.sleep(0.1)
