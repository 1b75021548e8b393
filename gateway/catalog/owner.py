"""Who holds an upload reservation, and whether that process is certainly gone.

An upload reservation (``AdminRecords.reserve``) records its owner: a host identity, the pid, and the process's
start time. A newcomer may take a reservation over at once when the owner ran on this host and that process no
longer exists (or the pid now belongs to a process started at another time: pid reuse); a reservation owned on
another host is taken over only once its lease, which the owner refreshes while it uploads, has run out.

The host identity is hostname + kernel boot id + pid namespace: two containers with the same hostname on one
kernel, or one host after a reboot, never compare their pids. Without ``/proc`` (not Linux) the identity is
empty and only the lease applies.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Owner:
    host: str  # "" when unknown: the owner's liveness can then never be judged from here
    pid: int
    started: int  # start time in clock ticks since boot (/proc/<pid>/stat field 22); 0 when unknown


@functools.cache
def host_identity() -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{socket.gethostname()}|{boot_id}|{pid_ns}"[:255]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid`` from /proc, None when it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])  # field 3 (state) and field 22 (starttime) of proc(5)
    except (IndexError, ValueError):
        return None


_ME: dict[int, Owner] = {}  # pid -> this process as an owner: a start time never changes (read /proc once)


def this_process() -> Owner:
    pid = os.getpid()  # read per call: gunicorn forks its workers after the app may have been imported
    me = _ME.get(pid)
    if me is None:
        stat = _stat(pid)
        me = Owner(host_identity(), pid, stat[1] if stat else 0)
        if stat is not None:
            _ME[pid] = me
    return me


def is_gone(owner: Owner) -> bool:
    """True only when certain that ``owner`` has exited: it ran on this host (same identity) and its pid is free,
    a zombie (killed, not yet reaped), or a process started at another time. Unknown means alive."""
    if not owner.host or owner.host != host_identity() or owner.pid <= 0:
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, another user's
    stat = _stat(owner.pid)
    if stat is None:
        return False
    state, started = stat
    return state in ("Z", "X") or (owner.started != 0 and started != owner.started)
