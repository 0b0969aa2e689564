"""Stop requests from outside: SIGTERM and SIGUSR1 (SLURM's warning before a time limit, ``scancel``,
``scontrol requeue``, preemption). No MPI.

A handler only records the request; the round loop asks :func:`stop_requested` at each round boundary,
rank 0 then checkpoints the round it just finished and ends the run as ``preempted`` (exit code 6), and the
workers leave when rank 0 tells them to (a worker that got the signal keeps answering until then, so that
the last round is not lost). Under SLURM one request often arrives several times within milliseconds
(``scancel --full --signal=USR1`` signals every process, and mpirun forwards SIGUSR1 to the ranks as well),
and by two routes as two kinds (``scontrol requeue`` SIGTERMs every process while the launcher passes the
same request on as SIGUSR1): a stop signal of either kind within :data:`REPEAT_WINDOW` seconds of the first
is the same request. A second signal after that, of either kind, is not swallowed: that signal's default
action runs (the process ends).
"""
from __future__ import annotations

import os
import select
import signal
import time

_STOP: dict[str, float] = {}
_HANDLED = (signal.SIGTERM, signal.SIGUSR1)
REPEAT_WINDOW = 10.0


def _handler(signum: int, frame: object) -> None:  # noqa: ARG001
    name = signal.Signals(signum).name
    now = time.monotonic()
    if _STOP:
        if now - min(_STOP.values()) < REPEAT_WINDOW:  # the first request, delivered again or by another route
            _STOP.setdefault(name, now)
            return
        signal.signal(signum, signal.SIG_DFL)  # asked again, later: do what the signal would have done
        signal.raise_signal(signum)
        return
    _STOP[name] = now


def install() -> None:
    """Record SIGTERM and SIGUSR1 instead of dying at once (main thread only)."""
    for s in _HANDLED:
        signal.signal(s, _handler)


def stop_requested() -> str | None:
    """The name of the first stop signal received (``"SIGTERM"``, ``"SIGUSR1"``), or None."""
    return min(_STOP, key=_STOP.__getitem__) if _STOP else None


def clear() -> None:
    """Forget received requests (tests)."""
    _STOP.clear()


# ------------------------------------------------------------------------------- waking a napping spare
WAKE = signal.SIGUSR2  # rank 0 sends it to a hot spare on its own host right after the spare's first round
_wake_fd: int | None = None


def wakeable() -> None:
    """Let a signal end this process's naps (:func:`nap`) at once (main thread only; a hot spare, before its
    hello, so that rank 0 never signals it before it is ready): SIGUSR2 gets a handler that does nothing,
    and every signal with a Python handler (the stop signals too) writes a byte to a pipe that naps wait on.
    A pipe and ``select``, not ``sigtimedwait``: the signal may be delivered to any of the threads MPI started
    (a mask set now would not cover them), and Python's handler writes the byte whichever thread got it."""
    global _wake_fd
    if _wake_fd is not None:
        return
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    signal.signal(WAKE, lambda signum, frame: None)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    _wake_fd = r


def nap(seconds: float) -> bool:
    """Sleep ``seconds``, or less if a signal arrives meanwhile in a :func:`wakeable` process (else a plain
    sleep). True when a signal ended the nap early."""
    if _wake_fd is None:
        time.sleep(seconds)
        return False
    ready, _, _ = select.select([_wake_fd], [], [], max(0.0, seconds))
    if not ready:
        return False
    try:
        while os.read(_wake_fd, 64):
            pass
    except BlockingIOError:
        pass
    return True
