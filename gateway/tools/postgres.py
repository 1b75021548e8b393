"""A throwaway PostgreSQL cluster on a free loopback port, for the tests and the benchmarks.

Runs Debian's binaries (``/usr/lib/postgresql/15/bin``, or ``DICOMGW_TEST_PG_BIN``) in a fresh folder, as the
``postgres`` OS user when we are root (initdb refuses root). The cluster is for throwaway data: fsync and
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
from dataclasses import dataclass
from pathlib import Path

from gateway.tools.stack import free_port

PG_BIN = Path(os.environ.get("DICOMGW_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "postgres").exists()


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: drop to the postgres OS user
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def private_postgres(settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """Start a cluster (extra ``postgres -c`` ``settings`` on top of the throwaway ones), yield it, remove it."""
    import psycopg

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
    process = subprocess.Popen(_as_postgres(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start") from None
                time.sleep(0.1)
        yield PostgresServer("127.0.0.1", port, "postgres")
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        shutil.rmtree(base, ignore_errors=True)
