"""An acknowledged upload survives a power cut: before the STOW answer leaves gunicorn, every stored object is on
disk (its bytes fsynced, renamed into place, its directory fsynced) and so is the catalog commit that makes it
visible (SQLite's write-ahead log fsynced after the rows were written).

Watched, not assumed: strace follows the gunicorn workers (and the ingest processes they start) through a real
STOW of a 12-instance series into the local-folder storage and SQLite, and the test reads the order in which the
system calls completed. It guards the group commit (uploads share a catalog transaction, `docs/design.md` §5)
and every later change to the ingest path. PostgreSQL flushes its commits in the server (``synchronous_commit``
on, checked in tests/unit/test_catalog.py), where strace on gunicorn cannot see them."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.tools.synth import make_series
from tests.e2e.conftest import uids_of
from tests.e2e.harness import RunningStack, start_stack
from tests.requirements import require

SLICES = 12
RESUMED = re.compile(r"^(?P<pid>\d+)\s+\S+\s+<\.\.\. \w+ resumed>(?P<rest>.*)$")


def completed_calls(text: str) -> list[str]:
    """The traced calls in the order they completed, each on one line: a call another thread interrupted
    (``<unfinished ...>``) is joined with its ``<... resumed>`` line and placed there."""
    pending: dict[str, str] = {}
    calls: list[str] = []
    for line in text.splitlines():
        pid = line.split(maxsplit=1)[0] if line else ""
        if line.endswith("<unfinished ...>"):
            pending[pid] = line.removesuffix("<unfinished ...>")
        elif (resumed := RESUMED.match(line)) is not None:
            calls.append(pending.pop(pid, line) + resumed.group("rest"))
        else:
            calls.append(line)
    return calls


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(line) for line in out.split()]


@pytest.fixture
def traced_stack(tmp_path: Path) -> Iterator[tuple[RunningStack, Path, subprocess.Popen[bytes]]]:
    probe = subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True, check=False)
    require(probe.returncode == 0, f"strace cannot trace here: {probe.stderr.decode(errors='replace')[:200]}")
    running = start_stack(tmp_path / "var", "file", None)
    trace = tmp_path / "trace.txt"
    strace: subprocess.Popen[bytes] | None = None
    try:
        workers = children_of(running.stack.processes["gunicorn"].pid)
        assert workers, "gunicorn has no workers"
        attach = [arg for pid in workers for arg in ("-p", str(pid))]
        strace = subprocess.Popen(
            ["strace", "-f", "-qq", "-tt", "-y", "-s", "48", "-o", str(trace),
             "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,write,pwrite64,sendto,sendmsg,writev", *attach],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # strace prints nothing when it has attached; give it the time to (each worker is idle)
        yield running, trace, strace
    finally:
        if strace is not None and strace.poll() is None:
            strace.send_signal(signal.SIGINT)
            strace.wait(30)
        running.stack.stop()


def test_the_answer_leaves_only_after_objects_and_catalog_are_on_disk(
    traced_stack: tuple[RunningStack, Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    running, trace, strace = traced_stack
    files = make_series(tmp_path / "ct", modality="CT", slices=SLICES, seed=71, clean=True)
    answer = running.stow(files)
    assert answer.status_code == 200, answer.text
    strace.send_signal(signal.SIGINT)  # detach: the trace file is complete once strace exits
    strace.wait(30)
    lines = completed_calls(trace.read_text())
    root = running.stack.var_dir
    sops = [uids_of(path)[2] for path in files]

    def first(predicate: object, what: str) -> int:
        for number, line in enumerate(lines):
            if callable(predicate) and predicate(line):
                return number
        raise AssertionError(f"not in the trace: {what}")

    # the STOW answer: gunicorn's first write of a 200 status line to the client's socket
    answered = first(lambda line: "HTTP/1.1 200" in line, "the 200 answer")
    wal = f"{root}/catalog.db-wal>"
    wal_writes = [n for n, line in enumerate(lines) if wal in line and re.search(r"\b(pwrite64|write)\(", line)]
    wal_syncs = [n for n, line in enumerate(lines) if wal in line and re.search(r"\bf(data)?sync\(", line)]
    assert wal_syncs, "the catalog's write-ahead log was never flushed"
    for sop in sops:
        final = re.compile(rf'rename(?:at2?)?\(.*"(?P<dir>[^"]+)/{re.escape(sop)}\.dcm"')
        renamed = first(lambda line, f=final: f.search(line) and " = 0" in line, f"the rename of {sop}")
        target_dir = final.search(lines[renamed]).group("dir")  # type: ignore[union-attr]
        synced = [n for n, line in enumerate(lines) if re.search(r"\bfsync\(", line) and f".{sop}.dcm." in line]
        assert synced and synced[0] < renamed, f"{sop}: its bytes were not fsynced before the rename"
        dir_fsync = re.compile(rf"\bfsync\(\d+<{re.escape(target_dir)}>")
        dir_synced = [n for n, line in enumerate(lines) if n > renamed and dir_fsync.search(line)]
        assert dir_synced and dir_synced[0] < answered, f"{sop}: its directory was not fsynced before the answer"
        # the catalog commit that made it visible: a log write after the object was in place, flushed before
        # the answer (the registration writes its row only once the object is stored)
        commit_writes = [n for n in wal_writes if n > dir_synced[0]]
        assert commit_writes, f"{sop}: no catalog write after its object was stored"
        flushed = [n for n in wal_syncs if n > commit_writes[0]]
        assert flushed and flushed[0] < answered, f"{sop}: the catalog commit was not flushed before the answer"
