"""gunicorn's gthread worker, stopping as soon as it is told to, and its master's exit hook.

gunicorn's ThreadWorker polls its sockets for up to a second at a time and reads its ``alive`` flag between polls,
so a SIGTERM (a graceful stop: `stack up`'s Ctrl-C, a rolling restart, `docker stop`) waited out the rest of that
second before the worker began to stop. gunicorn already has the interpreter write every signal's number to the
worker's pipe (``signal.set_wakeup_fd``); this worker polls that pipe with its sockets, so the poll ends when the
signal comes. What follows is gunicorn's own graceful stop: requests in flight finish within ``graceful_timeout``.

Then the interpreter's last garbage collection walked the whole heap of a process that imported pydicom, numpy,
SQLAlchemy and Flask: 0.3-1 s of CPU per exiting process, for nothing the operating system does not free anyway.
``gc.freeze()`` as the process ends leaves it out; exit handlers (logging's flush) and the closing of what is still
referenced run as before. A worker stopped within 0.02-0.2 s of the SIGTERM where it took 1-1.3 s.
"""

from __future__ import annotations

import gc
import os
import selectors

from gunicorn.workers.gthread import ThreadWorker


class WokenThreadWorker(ThreadWorker):
    def run(self) -> None:
        self.poller.register(self.PIPE[0], selectors.EVENT_READ, self._drain_signals)
        super().run()
        gc.freeze()

    @staticmethod
    def _drain_signals(pipe: int) -> None:
        """The signal's own handler has run (``alive`` is False after a SIGTERM): what is left is the pipe."""
        try:
            while os.read(pipe, 4096):
                pass
        except BlockingIOError:  # the pipe is non-blocking (gunicorn's): drained
            pass


def on_exit(server: object) -> None:
    """gunicorn's hook as its master exits: the same skip of the last collection (it imported the gateway too)."""
    gc.freeze()
