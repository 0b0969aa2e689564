"""Process identity on Linux: a pid plus its start time names one process, even after the pid is reused.
No MPI.

A worker sends its start time in its hello (:class:`ftmpi.core.protocol.Hello`); rank 0 signals a hung worker
at the end of a run only if the pid still belongs to the process that said hello.
"""
from __future__ import annotations

import os
import select
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


class ExitWatch:
    """Processes of this host whose end is seen the moment it happens: a pidfd (Linux 5.3+) becomes readable
    when its process exits or is killed, whatever MPI says. The coordinator watches the ranks on its own
    host, so that a worker killed there is lost at once instead of when the MPI runtime reports it (10-25 ms
    under ULFM, measured) and one that exits without a word (``os._exit``, an exception after
    ``MPI_Finalize``: ULFM never reports those) is not waited for until its deadline. A stopped or hung
    process is not ended: the deadlines still decide those.

    Each watched process is named by a key (its rank); :meth:`ended` reports a key once.
    """

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}
        self._keys: dict[int, int] = {}  # fd -> key
        self._poll = select.poll()  # not select.select: an MPI process may hold fds above FD_SETSIZE
        self._seen: set[int] = set()  # keys watched once (a failed open is not retried every poll)

    def __contains__(self, key: int) -> bool:
        return key in self._seen

    def watch(self, key: int, pid: int, started: int) -> bool:
        """Watch process ``pid`` under ``key`` if it is still the one that started at ``started`` (checked
        after the pidfd is open, so a reused pid is never watched); False if it cannot be (not Linux, no
        such process, another process by now: then nothing is said of it here)."""
        self._seen.add(key)
        if pid <= 0 or started <= 0 or not hasattr(os, "pidfd_open"):
            return False
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        if start_time(pid) != started:
            os.close(fd)
            return False
        self.forget(key)
        self._fds[key], self._keys[fd] = fd, key
        self._poll.register(fd, select.POLLIN)
        return True

    def ended(self) -> list[int]:
        """The keys whose process ended since the last call (at most once each), without waiting."""
        if not self._fds:
            return []
        done = [self._keys[fd] for fd, _ in self._poll.poll(0) if fd in self._keys]
        for k in done:
            self.forget(k)
        return done

    def forget(self, key: int) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            self._poll.unregister(fd)
            del self._keys[fd]
            os.close(fd)

    def close(self) -> None:
        for k in list(self._fds):
            self.forget(k)
