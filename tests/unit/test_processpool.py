"""The ingest processes (``gateway.processpool``): real processes (forked by a fork server, or spawned), real kills."""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.processpool import PoolBroken, ProcessPool


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped between the open and the read (ESRCH)
        return False


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class NeedsTwoArguments(Exception):
    def __init__(self, first: str, second: str) -> None:
        super().__init__(first)  # pickled with one argument: unpickling it fails with TypeError


def raise_one_that_does_not_unpickle() -> None:
    raise NeedsTwoArguments("a", "b")


@pytest.fixture
def pool() -> Iterator[ProcessPool]:
    started = ProcessPool(2, operator.truth, (1,))
    yield started
    started.close()


def test_calls_run_in_other_processes_and_answer_or_raise(pool: ProcessPool) -> None:
    assert pool.run(operator.add, 2, 3) == 5
    pids = {pool.run(os.getpid) for _ in range(6)}
    assert os.getpid() not in pids and pids <= set(pool.pids)
    with pytest.raises(ValueError, match="math domain error"):
        pool.run(math.sqrt, -1)
    assert pool.run(operator.add, "a", "b") == "ab"  # a raised call leaves its process serving


def test_an_answer_that_cannot_be_sent_is_an_error_not_a_hang(pool: ProcessPool) -> None:
    with pytest.raises(RuntimeError, match="could not be sent"):
        pool.run(threading.Lock)  # a lock does not pickle
    assert pool.run(operator.mul, 6, 7) == 42


def test_an_error_that_does_not_come_back_whole_leaves_the_process_serving(pool: ProcessPool) -> None:
    with pytest.raises(TypeError):
        pool.run(raise_one_that_does_not_unpickle)
    with pytest.raises(TypeError):
        pool.run(operator.add, threading.Lock(), 1)  # a call that does not pickle is never sent
    assert pool._idle.qsize() == 2  # both processes still take calls
    assert pool.run(operator.add, 1, 2) == 3


def test_threads_share_the_processes(pool: ProcessPool) -> None:
    with ThreadPoolExecutor(8) as threads:
        assert list(threads.map(lambda n: pool.run(operator.mul, n, n), range(40))) == [n * n for n in range(40)]


def test_a_killed_process_fails_its_call_and_is_replaced(pool: ProcessPool) -> None:
    before = set(pool.pids)
    victim = next(iter(before))
    with ThreadPoolExecutor(2) as thread:
        sleeping = [thread.submit(pool.run, time.sleep, 3) for _ in range(2)]  # both processes busy
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        outcomes = []
        for future in sleeping:
            try:
                outcomes.append(future.result(timeout=20))
            except PoolBroken:
                outcomes.append("broken")
    assert "broken" in outcomes
    assert victim not in pool.pids and len(pool.pids) == 2
    assert {pool.run(os.getpid) for _ in range(6)} <= set(pool.pids)


def test_close_stops_every_process() -> None:
    pool = ProcessPool(2, operator.truth, (1,))
    pids = pool.pids
    assert pool.run(operator.add, 1, 1) == 2
    pool.close()
    assert all(gone_within(pid, 10) for pid in pids)


@contextlib.contextmanager
def script_running(script: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``python -c script`` with its stdout read by the test, killed afterwards whatever the test asserted."""
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd(), env=env
    )
    try:
        assert parent.stdout is not None
        yield parent
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()


def test_the_processes_exit_when_their_parent_is_killed() -> None:
    # a gunicorn worker killed with -9 must not leave processes behind holding uploads in memory
    script = (
        "import operator, os, sys, time\n"
        "from gateway.processpool import ProcessPool\n"
        "pool = ProcessPool(2, operator.truth, (1,))\n"
        "assert pool.run(operator.add, 1, 1) == 2\n"
        "print(' '.join(map(str, pool.pids)), flush=True)\n"
        "time.sleep(60)\n"
    )
    with script_running(script) as parent:
        assert parent.stdout is not None
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2 and all(alive(pid) for pid in children)
        parent.kill()
        parent.wait(10)
        assert all(gone_within(pid, 10) for pid in children)


def test_the_preloaded_modules_are_imported_once_for_every_process_and_each_replacement(tmp_path: Path) -> None:
    """Each spawned process imported pydicom, numpy and the hooks again, ~1 s of CPU each (every gunicorn
    worker's first upload paid it twice, and each replacement again). The fork server imports the preload list once;
    the processes, and the one that replaces a killed process, are forked from it, and it exits with its parent."""
    log = tmp_path / "imports.log"
    (tmp_path / "dgw_preload_marker.py").write_text(
        f"import os\nwith open({str(log)!r}, 'a') as out:\n    out.write(f'{{os.getpid()}}\\n')\n"
    )
    script = (
        "import json, os, signal, time\n"
        "from gateway.processpool import PoolBroken, ProcessPool\n"
        "pool = ProcessPool(2, os.getpid, preload=('dgw_preload_marker',))\n"
        "before = {pool.run(os.getppid) for _ in range(6)}\n"
        "victim = pool.pids[0]\n"
        "os.kill(victim, signal.SIGKILL)\n"
        "time.sleep(0.5)\n"
        "for _ in range(4):\n"
        "    try:\n"
        "        pool.run(os.getpid)\n"
        "    except PoolBroken:\n"
        "        pass\n"
        "after = {pool.run(os.getppid) for _ in range(6)}\n"
        "print(json.dumps({'me': os.getpid(), 'before': sorted(before), 'after': sorted(after),\n"
        "                  'victim': victim, 'pids': pool.pids}), flush=True)\n"
        "time.sleep(60)\n"
    )
    # on PYTHONPATH, as the gateway is installed: the fork server imports with the path it started with; a short
    # TMPDIR, as the server's socket lives there (a deeper one is the spawn fallback's test)
    path = os.pathsep.join([str(tmp_path), os.getcwd(), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "TMPDIR": "/tmp"}
    with script_running(script, env) as parent:
        assert parent.stdout is not None
        seen = json.loads(parent.stdout.readline())
        [server] = seen["before"]
        assert seen["after"] == [server] and server != seen["me"]
        assert seen["victim"] not in seen["pids"] and len(seen["pids"]) == 2
        assert log.read_text() == f"{server}\n"  # imported by the fork server alone, once
        parent.kill()
        parent.wait(10)
        assert all(gone_within(pid, 10) for pid in [server, *seen["pids"]])


@pytest.mark.parametrize("case", ["tmpdir-too-deep", "server-dies-importing"])
def test_a_fork_server_that_cannot_start_a_process_falls_back_to_spawned_ones(tmp_path: Path, case: str) -> None:
    """The fork server listens on a Unix socket under TMPDIR, whose path may hold 108 bytes: under a deeper TMPDIR
    (a CI runner's, a service's own) it cannot start; a server that dies while it imports its preload list (killed,
    out of memory; here a module that raises) forks nothing. Either way every upload would have been refused. The
    processes are then spawned, as before the fork server, and the pool answers; the log says why."""
    env = {**os.environ, "TMPDIR": "/tmp"}
    if case == "tmpdir-too-deep":
        deep = tmp_path / ("d" * 120)
        deep.mkdir()
        env["TMPDIR"] = str(deep)
        why = "OSError: AF_UNIX path too long"
    else:
        (tmp_path / "dgw_dies_importing.py").write_text("raise RuntimeError('no')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.getcwd(), os.environ.get("PYTHONPATH", "")])
        why = "EOFError: unexpected EOF"
    script = (
        "import logging, operator, os\n"
        "logging.basicConfig(format='%(levelname)s %(message)s')\n"
        "from gateway.processpool import ProcessPool\n"
        "pool = ProcessPool(2, operator.truth, (1,), preload=('dgw_dies_importing',))\n"
        "print(pool.run(operator.add, 2, 3), len(set(pool.pids) - {os.getpid()}), flush=True)\n"
        "pool.close()\n"
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, cwd=os.getcwd(), env=env, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, "5 2\n"), done.stderr
    warning = f"WARNING the fork server could not start a process ({why}); ingest processes are spawned\n"
    assert done.stderr.endswith(warning), done.stderr


def test_a_replacement_that_cannot_start_fails_its_calls_at_once_and_the_rest_are_served() -> None:
    """A killed process is replaced from the fork server; when that fails too (the server killed, and its socket's
    folder gone), the slot was lost and the exception left the call: once every slot was lost, callers waited for
    an idle process for ever. The dead slot stays now: each call that takes it fails at once (PoolBroken, which
    ingest meets by analysing the file itself) and tries again; the live process serves the others."""
    script = (
        "import json, os, shutil, signal, time\n"
        "from multiprocessing import util\n"
        "from gateway.processpool import PoolBroken, ProcessPool\n"
        "pool = ProcessPool(2, os.getpid)\n"
        "server = pool.run(os.getppid)\n"
        "victim, survivor = pool.pids\n"
        "os.kill(server, signal.SIGKILL)\n"
        "shutil.rmtree(util.get_temp_dir())\n"
        "os.kill(victim, signal.SIGKILL)\n"
        "time.sleep(0.5)\n"
        "outcomes = []\n"
        "for _ in range(6):\n"
        "    try:\n"
        "        outcomes.append(pool.run(os.getpid))\n"
        "    except PoolBroken:\n"
        "        outcomes.append('broken')\n"
        "print(json.dumps({'survivor': survivor, 'outcomes': outcomes}), flush=True)\n"
        "pool.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=os.getcwd(),
        env={**os.environ, "TMPDIR": "/tmp"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert set(seen["outcomes"]) == {seen["survivor"], "broken"}, seen
