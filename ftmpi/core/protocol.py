"""Every message between rank 0 and a worker, as a dataclass. No MPI, no I/O.

Rank 0 sends on ``TAG_CTRL``: :class:`Round`, :class:`Handoff`, :class:`Ping`, :class:`Stop`, :class:`Exit`,
:class:`Restore`, :class:`Collect`.
A worker sends on ``TAG_REPLY``: :class:`Hello`, :class:`Reply`, :class:`Error`, :class:`Bye`, :class:`State`.
The wire format is pickle (:class:`ftmpi.comm.Channel`). Each message pickles as its class and the tuple of
its fields (:class:`Wire`), not as a dict of field names, so a typed message costs no more bytes or time
than a plain dict of its fields would (docs/ARCHITECTURE.md has the measurement).

Every message that belongs to a round carries its membership ``epoch`` and ``round``; rank 0 drops any
other (counted as stale). Every control message of a coordinator carries its ``term`` (1 for the first
coordinator of a run dir, one more at each takeover or relaunch): a worker follows the highest term it has
seen and drops a message of a lower one, so a deposed coordinator that wakes up cannot steer anyone.
:func:`coerce` also accepts the two plain-dict messages that ``job.py`` sends
when a rank fails outside the loops (``{"t": "exit", ...}`` and ``{"t": "error", ...}``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Abdicate", "Beat", "Bye", "Collect", "Deposed", "Error", "Exit", "Handoff", "Hello", "Ping", "Replica",
           "Reply", "Restore", "Round", "Segment", "Setup", "State", "Stop", "Suspect", "coerce", "term_of"]


class Wire:
    """Pickle as ``(class, field values in order)``: no field names on the wire."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.__class__, tuple(self.__dict__.values()))


# ------------------------------------------------------------------------------------- rank 0 -> worker
@dataclass
class Setup(Wire):
    """What a worker needs once, with its first round: its shard file, the classes and the layer widths."""

    shard: str
    n_classes: int
    sizes: list[int]
    ident: int = -1  # a spare: the lost worker it stands in for (its minibatches and rounding seeded as that
    #                  worker's were, so that it trains what the lost worker would have); -1: its own rank


@dataclass
class Round(Wire):
    """Train ``iters`` local steps from the global model (``params``: the model itself when ``full``, else
    its quantized change since the last round)."""

    epoch: int
    round: int
    iters: int
    lr: float
    full: bool
    params: Any  # np.ndarray when full, else an encoded payload (ftmpi.model.codec)
    setup: Setup | None = None
    prefetch: list[tuple[str, int, int]] | None = None  # standby slices to read ahead after the reply
    rebuild: list[int] | None = None  # ULFM: rebuild the alive communicator with these ranks after the reply
    deputy: int = -1  # the worker that receives the replicas and takes over if the coordinator is lost
    term: int = 1  # the sender's coordinator term


@dataclass
class Segment(Wire):
    """Rows ``start:stop`` of an HDF5 file handed to one survivor. ``weights``: one per row (how many
    training rows each stands for), or None: the file's ``/w``, else 1."""

    path: str
    start: int
    stop: int
    weights: np.ndarray | None = None

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class Handoff(Wire):
    """Rows of lost workers for this survivor, opened by membership ``epoch``."""

    epoch: int
    segments: list[Segment]
    term: int = 1


@dataclass
class Ping(Wire):
    """The coordinator is alive (a worker waiting for the next round extends its deadline); ``deputy``: the
    current deputy (it changes mid-round when the deputy is lost)."""

    epoch: int
    round: int
    deputy: int = -1
    term: int = 1


@dataclass
class Stop(Wire):
    """The run is over: say bye and leave with exit code 0."""

    epoch: int
    round: int
    term: int = 1


@dataclass
class Exit(Wire):
    """Leave now. ``code`` set: rank 0 itself failed and said why (leave with its code, ``quiet``ly). The code
    travels as a plain ``int`` (an :class:`~ftmpi.errors.ExitCode` is converted on construction)."""

    reason: str
    code: int | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.code is not None:
            self.code = int(self.code)


@dataclass
class Restore(Wire):
    """An exact resume: the worker's own state as of the start of round ``round`` (its local
    optimizer, its error-feedback residual: :meth:`ftmpi.worker.loop.Worker.local_state`), from the checkpoint.
    Sent before the first round message; the worker applies it with that round's setup."""

    round: int
    state: dict[str, Any]
    term: int = 1


@dataclass
class Collect(Wire):
    """Send your state now (:class:`State`): rank 0 is about to take a checkpoint of round ``round`` outside
    the periodic ones (a stop signal)."""

    round: int
    term: int = 1


@dataclass
class Abdicate(Wire):
    """The coordinator is leaving (it crashed): the deputy takes over at once, without waiting for a deadline."""

    reason: str


@dataclass
class Deposed(Wire):
    """To a coordinator that was replaced (it hung and may wake up): rank ``rank`` coordinates since round
    ``round``; write nothing more. ``final``: the run is over, leave now."""

    rank: int
    round: int
    final: bool = False
    term: int = 0  # the term of the coordinator that took over (0: not said)


@dataclass
class Replica(Wire):
    """What the deputy needs to become the coordinator (tag ``TAG_REPLICA``), as of the end of round
    ``round - 1``: the exact global model and optimizer (``model``: ``GlobalModel.checkpoint_fields``), the
    ``ClusterState`` snapshot (None when unchanged since the one sent with ``state_key``), the metrics row
    not written yet (``pending``), the outputs' counters (``outputs``) and the coordinator's identity
    (``coord``: rank, host, pid, start time) so that a hung one can be ended."""

    round: int
    epoch: int
    model: dict[str, Any]
    state: dict[str, Any] | None
    state_key: tuple
    pending: dict[str, Any] | None
    outputs: dict[str, Any]
    coord: tuple[int, str, int, int]
    sent_at: float = 0.0
    term: int = 1  # the term of the coordinator that sent it; a takeover claims the next one


# ------------------------------------------------------------------------------------- worker -> rank 0
@dataclass
class Hello(Wire):
    """A worker is ready. ``start_time``: its process start time (``/proc/PID/stat`` field 22, clock ticks
    since boot; 0 where unknown), so that rank 0 never signals a later process that reused the pid."""

    rank: int
    host: str
    pid: int
    start_time: int = 0


@dataclass
class Reply(Wire):
    """A worker's round result."""

    epoch: int
    round: int
    rank: int
    update: Any  # np.ndarray or an encoded payload (ftmpi.model.codec)
    loss: float
    n: float  # the shard's mass: how many training rows its rows stand for
    rows: int
    rep: np.ndarray  # global ids of its representative rows (scored rules), else empty
    handed_in: int = 0
    ready: dict[int, float] = field(default_factory=dict)  # handoff epoch -> wall time training on it began
    prefetched: dict[int, int] = field(default_factory=dict)  # handoff epoch -> rows served from read-ahead
    unreadable: list[tuple[int, str, int, int]] = field(default_factory=list)  # (epoch, path, start, stop)
    t_compute: float = 0.0
    # exact resume and takeover
    state: dict[str, Any] | None = None  # the worker's state as of the next round's start, before a checkpoint
    redo: int = 0  # a round redone for a new coordinator: 1 from the state it started with, -1 without it


@dataclass
class State(Wire):
    """A worker's answer to :class:`Collect`: its state as of the start of round ``round``."""

    rank: int
    round: int
    state: dict[str, Any]


@dataclass
class Error(Wire):
    """A worker crashed (an exception): who, where and why. It leaves after sending this."""

    rank: int
    host: str
    error: str


@dataclass
class Bye(Wire):
    """A worker acknowledges :class:`Stop`."""

    rank: int


@dataclass
class Beat(Wire):
    """A worker is alive mid-round (sent between two local steps, at most once per beat period): a round
    longer than the timeout is slow, not silent."""

    rank: int
    round: int


# ------------------------------------------------------------------------------------- worker -> deputy
@dataclass
class Suspect(Wire):
    """A worker heard nothing from the coordinator of ``term`` for ``silent`` seconds (longer than the silence
    limit; ``failed``: MPI reported it failed). Sent to the deputy on ``TAG_SUSPECT``, which decides: it takes
    over when it lost the coordinator itself or when a majority of the alive workers suspect it."""

    rank: int
    term: int
    silent: float
    failed: bool = False


Message = (Round | Handoff | Ping | Stop | Exit | Abdicate | Deposed | Replica | Hello | Reply | Error | Bye | Beat
           | Suspect | Restore | Collect | State)


def coerce(obj: Any) -> Any:
    """The message as a dataclass: typed messages pass through; the plain dicts of ``cli.py`` (``exit`` and
    ``error``) are converted; anything else is returned as is (the receiver counts it as stale)."""
    if isinstance(obj, dict):
        t = obj.get("t")
        if t == "exit":
            code = obj.get("code")
            return Exit(str(obj.get("reason", "told to leave by rank 0")), None if code is None else int(code),
                        bool(obj.get("quiet", False)))
        if t == "error":
            return Error(int(obj.get("rank", -1)), str(obj.get("host", "?")), str(obj.get("error", "crashed")))
    return obj


def term_of(msg: Any) -> int | None:
    """The coordinator term a control message was sent under, or None for a message that carries none."""
    t = getattr(msg, "term", None)
    return t if isinstance(t, int) else None
