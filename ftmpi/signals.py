"""Stop requests from outside: SIGTERM and SIGUSR1 (SLURM's warning before a time limit, ``scancel``,
``scontrol requeue``, preemption). No MPI.

A handler only records the request; the round loop asks :func:`stop_requested` at each round boundary,
rank 0 then checkpoints the round it just finished and ends the run as ``preempted`` (exit code 6), and the
workers leave when rank 0 tells them to (a worker that got the signal keeps answering until then, so that
the last round is not lost). A second signal of the same kind is not swallowed: the default action runs.
"""
from __future__ import annotations

import signal
import time

_STOP: dict[str, float] = {}
_HANDLED = (signal.SIGTERM, signal.SIGUSR1)


def _handler(signum: int, frame: object) -> None:  # noqa: ARG001
    name = signal.Signals(signum).name
    if name in _STOP:  # asked twice: do what the signal would have done
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
        return
    _STOP[name] = time.time()


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
