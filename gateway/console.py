"""The ``dicom-gateway`` command's entry point (pyproject's ``[project.scripts]``).

Loading the commands takes about half a second (pydicom, SQLAlchemy, Flask). A Ctrl-C in that time was a Python
traceback and a SIGTERM an exit by the signal, where one a moment later is `stack up`'s `stopped.` or another
command's own ending. Until the commands are loaded, a signal is only noted (``interrupted``): `stack up` takes it
as its stop, as it takes any signal before it is ready; any other command ends as it would have before doing
anything, in silence, with the shell's status for the signal (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import gc
import signal
import sys
import threading
from types import FrameType

interrupted = threading.Event()
_signals: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    _signals.append(signum)
    interrupted.set()


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _note)
    from gateway.cli import main as command

    if sys.argv[1:3] != ["stack", "up"]:  # `stack up` keeps noting signals until it handles them (gateway.cli)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if _signals:  # checked once the handlers are back: a signal between the two is theirs
            sys.exit(128 + _signals[0])
    try:
        command()
    finally:
        gc.freeze()  # no last collection of the whole heap at exit (0.3 s: gateway/gunicorn_worker.py says why)
