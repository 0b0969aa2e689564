"""Deterministic fault injection: make rank R fail in a chosen way at the start of round N.

Kinds (:class:`FaultKind`; ``--inject KIND:R@N[:S]`` or the config's ``faults:`` list):

- ``kill``  SIGKILL itself (what an OOM killer or a node loss looks like);
- ``exit``  ``os._exit(1)`` without MPI_Finalize (ULFM does not report this: only a deadline catches it);
- ``raise`` raise an exception (a bug in user code): the rank reports it to rank 0 and leaves;
- ``hang``  SIGSTOP itself: the process exists but never answers again;
- ``pause`` SIGSTOP itself and be resumed after S seconds by a helper process (a zombie that wakes up
  after it was declared dead; it must be told to leave and must change nothing);
- ``slow``  sleep S seconds once, then carry on (must NOT be declared dead when S < timeout);
- ``slowdown`` (``slowdown:R@N:F``) rank R is F times slower from round N on: a worker sleeps (F-1) times the
  duration of each local step after it, rank 0 (F-1) times its own work of each round (:func:`slowdown`); a
  straggler, alive and beating;
- ``nan``   the worker's update of round N becomes NaN (a worker of bad numbers; rank 0 must reject it);
- ``corrupt`` the worker's update of round N is silently corrupted: scaled by S (``corrupt:R@N:S``), or, with
  no S, a high exponent bit of one element flipped (silent data corruption: a faulty core or memory).

``nan`` and ``corrupt`` leave the process alone: the worker goes on, and :func:`tamper` changes what its
reply carries (after the error feedback, so that only that reply is bad).

Before dying, a rank writes ``run_dir/faults/rank-R.json`` with the wall-clock time of the injection, so
that detection latency and recovery time are measured from the real moment of failure.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftmpi.core.kinds import StrEnum

if TYPE_CHECKING:  # not at run time: ftmpi.config may import FaultKind from here
    from ftmpi.config import FaultSpec


class FaultKind(StrEnum):
    """How an injected fault makes its rank fail (see the module docstring for each)."""

    KILL = "kill"
    EXIT = "exit"
    RAISE = "raise"
    HANG = "hang"
    PAUSE = "pause"
    SLOW = "slow"
    NAN = "nan"
    CORRUPT = "corrupt"
    SLOWDOWN = "slowdown"

    @property
    def timed(self) -> bool:
        """True for the kinds that take seconds (``KIND:R@N:S``): ``pause`` and ``slow``."""
        return self in (FaultKind.PAUSE, FaultKind.SLOW)

    @property
    def tampers(self) -> bool:
        """True for the kinds that change a worker's update instead of its process: ``nan``, ``corrupt``."""
        return self in (FaultKind.NAN, FaultKind.CORRUPT)


def due(faults: Iterable[FaultSpec], rank: int, round_: int) -> list[FaultSpec]:
    """The faults scheduled for ``rank`` at ``round_``."""
    return [f for f in faults if f.rank == rank and f.round == round_]


def slowdown(faults: Iterable[FaultSpec], rank: int, round_: int) -> float:
    """How many times slower ``rank`` is in round ``round_`` (``slowdown:R@N:F`` from round N on; the largest F
    due, 1.0 when none): each unit of its work is followed by ``(F - 1)`` times its duration of sleep."""
    return max([f.seconds for f in faults if f.kind == FaultKind.SLOWDOWN and f.rank == rank
                and 0 <= f.round <= round_], default=1.0)


def _mark(run_dir: Path, f: FaultSpec) -> None:
    d = Path(run_dir) / "faults"
    d.mkdir(parents=True, exist_ok=True)
    rec = {"rank": f.rank, "round": f.round, "kind": FaultKind(f.kind).value, "seconds": f.seconds, "time": time.time(),
           "pid": os.getpid()}
    tmp = d / f".rank-{f.rank}.json.tmp"
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, d / f"rank-{f.rank}.json")


def read_marks(run_dir: Path) -> dict[int, dict]:
    """Injection records written by :func:`inject`, by rank."""
    out: dict[int, dict] = {}
    d = Path(run_dir) / "faults"
    if d.is_dir():
        for p in d.glob("rank-*.json"):
            try:
                rec = json.loads(p.read_text())
                out[int(rec["rank"])] = rec
            except (ValueError, KeyError, OSError):
                continue
    return out


def inject(f: FaultSpec, run_dir: Path) -> None:
    """Carry out one fault on this process. Returns only for ``slow`` (and ``pause``, once resumed).

    Raises:
        ValueError: If ``f.kind`` is not a :class:`FaultKind` (before anything is done or written).
    """
    kind = FaultKind(f.kind)
    _mark(run_dir, f)
    pid = os.getpid()
    if kind is FaultKind.KILL:
        os.kill(pid, signal.SIGKILL)
    elif kind is FaultKind.EXIT:
        os._exit(1)
    elif kind is FaultKind.RAISE:
        raise RuntimeError(f"injected fault raise:{f.rank}@{f.round}")
    elif kind is FaultKind.HANG:
        os.kill(pid, signal.SIGSTOP)
        while True:  # resumed by someone after all: still never answer
            time.sleep(3600)
    elif kind is FaultKind.PAUSE:
        import subprocess

        subprocess.Popen(["sh", "-c", f"sleep {f.seconds}; kill -CONT {pid} 2>/dev/null"], start_new_session=True)
        os.kill(pid, signal.SIGSTOP)
    elif kind is FaultKind.SLOW:
        time.sleep(f.seconds)
    # nan, corrupt: only the mark; the reply is changed by tamper(); slowdown: the mark, then slowdown() per step


def tamper(faults: Iterable[FaultSpec], rank: int, round_: int, payload: Any) -> Any:
    """The update payload of worker ``rank``'s reply at ``round_`` (raw float32, or the codec's quantized
    ``(bits, ((packed, lo, hi), ...))``) as the ``nan`` and ``corrupt`` faults due then make it; the payload
    itself when none is due. A raw payload is changed in place (it is the reply's own copy)."""
    for f in due(faults, rank, round_):
        kind = FaultKind(f.kind)
        if kind.tampers:
            payload = _tampered(payload, kind, f.seconds)
    return payload


def _flip(x: np.ndarray) -> None:
    """Flip the top exponent bit (bit 30) of one float32 element of ``x`` in place: the largest below 1 in
    magnitude, which becomes about 2**128 times larger (still finite): silent data corruption."""
    a = np.abs(x)
    cand = np.flatnonzero((a > 0) & (a < 1))
    i = int(cand[np.argmax(a[cand])]) if len(cand) else 0
    x.view(np.int32)[i] ^= np.int32(1 << 30)


def _tampered(payload: Any, kind: FaultKind, scale: float) -> Any:
    if isinstance(payload, np.ndarray):
        if kind is FaultKind.NAN:
            payload[...] = np.nan
        elif scale:
            payload *= np.float32(scale)
        else:
            _flip(payload)
        return payload
    bits, parts = payload
    out = []
    for i, (packed, lo, hi) in enumerate(parts):
        if kind is FaultKind.NAN:
            lo, hi = math.nan, math.nan
        elif scale:
            lo, hi = lo * scale, hi * scale
        elif i == 0:
            h = np.array([hi], np.float32)
            _flip(h)
            hi = float(h[0])
        out.append((packed, lo, hi))
    return (bits, tuple(out))
