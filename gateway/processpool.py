"""Processes that run one function call at a time for the threads of this process, each over a pipe of its own.

The ingest pool (``DICOMGW_INGEST_PROCESSES``, ``gateway.ingest``) was a ``ProcessPoolExecutor``, which hands every
call through two helper threads of the calling process: a feeder that writes it to the processes' shared queue,
and a manager that reads the answer and wakes the caller. In a STOW worker already running a dozen threads,
their wake-ups were a fifth of the worker's GIL time (py-spy, docs/bench.md B4). Here the calling thread takes an
idle process, writes the call to its pipe and waits on the answer itself: one wake-up per call.

A process that dies (killed, out of memory) fails the call it was running with ``PoolBroken`` and is replaced;
the caller decides what to do with the call (ingest runs it in its own process). A process whose caller died
reads the end of its pipe and exits (and the fork server it came from exits with the caller).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("gateway.processpool")

_STOP = None  # what a process reads to exit


class PoolBroken(Exception):
    """The process running the call died before answering."""


def _serve(conn: Connection, initializer: Callable[..., object], initargs: tuple[Any, ...]) -> None:
    try:
        initializer(*initargs)
        _answer_calls(conn)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent stops the pool
        return


def _answer_calls(conn: Connection) -> None:
    while True:
        try:
            call = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if call is _STOP:
            return
        function, args = call
        try:
            answer: tuple[bool, Any] = (True, function(*args))
        except Exception as error:  # noqa: BLE001 - raised again in the caller
            answer = (False, error)
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return
        except Exception as error:  # noqa: BLE001 - an answer that does not pickle: say so, by type only
            conn.send((False, RuntimeError(f"the answer could not be sent ({type(error).__name__})")))


class _Worker:
    def __init__(
        self, context: ForkServerContext | SpawnContext, initializer: Callable[..., object], initargs: tuple[Any, ...]
    ) -> None:
        self.conn, child = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(child, initializer, initargs), daemon=True, name="dicomgw-ingest"
        )
        self.process.start()
        child.close()

    def stop(self, timeout: float) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(_STOP)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.conn.close()


class ProcessPool:
    """``processes`` processes, each started with ``initializer(*initargs)``; ``run(function, *args)`` calls
    ``function(*args)`` in an idle one (waiting for one to be idle) and returns its answer or raises its
    exception. Functions and arguments must pickle (module-level functions)."""

    def __init__(
        self,
        processes: int,
        initializer: Callable[..., object],
        initargs: tuple[Any, ...] = (),
        *,
        preload: tuple[str, ...] = (),
    ) -> None:
        # Not fork: the caller (a gunicorn worker) has threads, and a child forked from it would inherit their
        # locks. Not spawn: each spawned process imported pydicom, numpy and the hooks again (~1 s of CPU each, the
        # cost of every worker's first upload and of every replacement). The fork server, started once per calling
        # process (exec'd: none of the caller's threads or locks), imports the ``preload`` modules once and forks
        # each process from itself.
        forkserver = multiprocessing.get_context("forkserver")
        if preload:
            forkserver.set_forkserver_preload(list(preload))  # before the server starts: the first pool's list counts
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        context: ForkServerContext | SpawnContext = forkserver
        if processes > 0:
            try:
                self._workers.append(_Worker(forkserver, initializer, initargs))
            except (OSError, EOFError) as error:
                # the fork server listens on a socket under TMPDIR: a TMPDIR too deep for a Unix socket's path (108
                # bytes), or none writable (OSError); or it died before it forked (EOFError: killed while importing);
                # spawned processes need no socket and no server
                log.warning(
                    "the fork server could not start a process (%s: %s); ingest processes are spawned",
                    type(error).__name__,
                    error,
                )
                context = multiprocessing.get_context("spawn")
        self._start = lambda: _Worker(context, initializer, initargs)
        self._workers += [self._start() for _ in range(processes - len(self._workers))]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._workers:
            self._idle.put(worker)
        self._closed = False

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [worker.process.pid for worker in self._workers if worker.process.pid is not None]

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        worker = self._idle.get()
        try:
            worker.conn.send((function, args))
            ok, answer = worker.conn.recv()
        except (EOFError, OSError):
            self._replace(worker)
            raise PoolBroken("an ingest process died during the call") from None
        except Exception:
            self._idle.put(worker)  # the call or its answer did not pickle: the process and its pipe are fine
            raise
        except BaseException:
            self._replace(worker)  # interrupted between send and answer: the answer would reach the next caller
            raise
        self._idle.put(worker)
        if ok:
            return answer
        raise answer

    def _replace(self, dead: _Worker) -> None:
        dead.stop(timeout=1)
        with self._lock:
            if self._closed:
                fresh = dead  # stopped: whoever takes it next fails at once, as this caller did, never waits
            else:
                log.warning("an ingest process exited (code %s); starting another", dead.process.exitcode)
                try:
                    fresh = self._start()
                except (OSError, EOFError) as error:
                    # the slot stays, dead: whoever takes it next fails at once (PoolBroken) and tries again; lost,
                    # the last callers would wait for an idle process for ever
                    log.warning("no ingest process could be started (%s: %s)", type(error).__name__, error)
                    fresh = dead
                self._workers[self._workers.index(dead)] = fresh
        self._idle.put(fresh)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every process: each finishes the call it is running, if any."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop(timeout)
