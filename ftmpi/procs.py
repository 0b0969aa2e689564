"""Process identity on Linux: a pid plus its start time names one process, even after the pid is reused.
No MPI.

A worker sends its start time in its hello (:class:`ftmpi.core.protocol.Hello`); rank 0 signals a hung worker
at the end of a run only if the pid still belongs to the process that said hello.
"""
from __future__ import annotations

import os
import signal


def hostname() -> str:
    """This host's name, as ``socket.gethostname()`` gives it (glibc reads it from ``uname``), without importing
    socket: every rank needs the name and most need nothing else of socket."""
    return os.uname().nodename


def start_time(pid: int) -> int:
    """Field 22 of ``/proc/PID/stat`` (start time, clock ticks after boot), or 0 if unknown or gone."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return 0
    # field 2 (comm) may hold spaces and parentheses: the fields after it follow the last ')'
    rest = stat[stat.rfind(")") + 2:].split()
    try:
        return int(rest[19])  # fields 3.. are rest[0..]; field 22 is rest[19]
    except (IndexError, ValueError):
        return 0


def running(pid: int, started: int = 0) -> bool:
    """Whether ``pid`` is a live process (not a zombie) and, when ``started`` is known, still the one that
    started then (a reused pid is not). Without /proc: whether the pid exists."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    rest = stat[stat.rfind(")") + 2:].split()
    if not rest or rest[0] in ("Z", "X"):  # a zombie (killed, not reaped yet) or dead
        return False
    return not started or start_time(pid) == started


def kill_if_same(pid: int, started: int, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` (SIGKILL) to ``pid`` only if it is still the process that started at ``started`` (never
    when unknown); True if signalled."""
    if pid <= 0 or started <= 0 or start_time(pid) != started:
        return False
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True
