"""`stack down` and `stack status` read who holds a --var folder from its lock (gateway.tools.stack.running): a
holder that ignores SIGTERM, or one that recorded no process (an older version), is one line, never a signal to a
process the kernel does not name as the holder. The real stack's `down` is tests/e2e/test_stack_cli.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.tools.stack import StackError, running, stop_running

HOLDER = """
import fcntl, json, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stack stuck in its stop
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
os.ftruncate(handle.fileno(), 0)
handle.write(sys.argv[2].replace("PID", str(os.getpid())))
handle.flush()
print("held", flush=True)
time.sleep(120)
"""


def _hold(var: Path, record: str) -> subprocess.Popen[str]:
    (var / "run").mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(var / "run" / "stack.lock"), record], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_a_stack_that_does_not_stop_in_time_is_one_line(tmp_path: Path) -> None:
    holder = _hold(tmp_path, '{"pid": PID, "url": "http://127.0.0.1:1"}\n')
    try:
        assert running(tmp_path) == {"pid": holder.pid, "url": "http://127.0.0.1:1"}
        started = time.monotonic()
        with pytest.raises(StackError) as raised:
            stop_running(tmp_path, timeout=1)
        assert time.monotonic() - started < 10
        assert str(raised.value) == (
            f"the stack with --var {tmp_path} (pid {holder.pid}) was sent SIGTERM and has not stopped within 1 s"
        )
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.communicate()
    assert running(tmp_path) is None and stop_running(tmp_path) is None  # the kernel let the lock go with it


def test_a_holder_that_names_another_process_is_never_signalled(tmp_path: Path) -> None:
    """An older version kept the lock without writing to it, over a record a stopped stack had left: that pid
    (here this test's own) is not the lock's holder and gets no signal."""
    for record in ("", f'{{"pid": {os.getpid()}, "url": "http://127.0.0.1:1"}}\n'):
        holder = _hold(tmp_path, record)
        try:
            assert running(tmp_path) == {}
            with pytest.raises(StackError) as raised:
                stop_running(tmp_path, timeout=1)
            assert str(raised.value) == (
                f"a stack runs with --var {tmp_path} but did not record its process (an older version): stop it "
                "with Ctrl-C where it runs"
            )
        finally:
            holder.kill()
            holder.communicate()
