"""What :class:`ftmpi.core.cluster.ClusterState` consumes (events) and returns (effects): plain dataclasses. No MPI,
no I/O. The round driver turns what MPI delivers into events and carries out the effects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ftmpi.core import protocol as P
from ftmpi.core.kinds import How

# ---------------------------------------------------------------------------------------------- events


@dataclass
class Heard:
    """A message from world rank ``src`` (a :mod:`ftmpi.core.protocol` dataclass); ``mark``: with an error report,
    the worker's fault-injection record if one exists (see :class:`Lost`)."""

    src: int
    msg: Any
    mark: dict[str, Any] | None = None


@dataclass
class Lost:
    """Worker ``rank`` is gone, noticed ``how`` (a :class:`~ftmpi.core.kinds.How`, or its value: it is made a
    member on construction; an unknown value raises ValueError). ``mark``: its fault-injection record if one
    exists (attributed only when written by this very process, see :meth:`ClusterState._lose`)."""

    rank: int
    how: How
    reason: str = ""
    mark: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.how = How(self.how)


@dataclass
class Chosen:
    """Rank 0 chose (and is staging) ``ids`` as worker ``rank``'s representative rows."""

    rank: int
    ids: np.ndarray


# --------------------------------------------------------------------------------------------- effects
@dataclass
class Accept:
    """Aggregate this reply into the global model."""

    rank: int
    reply: P.Reply


@dataclass
class WriteHandoff:
    """Write this epoch's handoff file (``path``): receiver -> its ids (sorted) and their weights, in order."""

    epoch: int
    path: str
    ids: dict[int, np.ndarray]
    weights: dict[int, np.ndarray]


@dataclass
class SendHandoff:
    """Send ``rank`` its segments (after ``WriteHandoff`` of the same epoch, if any, is on disk)."""

    rank: int
    msg: P.Handoff


@dataclass
class Stage:
    """Stage these workers' representative rows (their shards changed)."""

    ranks: list[int]


@dataclass
class Rebuild:
    """Membership changed: rebuild the alive communicator with ``members`` (rank 0 first) if the transport
    can."""

    members: list[int]


@dataclass
class Expel:
    rank: int
    why: str


@dataclass
class Log:
    """A line for the progress stream; ``tb``: also a tensorboard text event of this ``kind``."""

    text: str
    tb: str | None = None
    kind: str = "event"


@dataclass
class Adopt:
    """Spare ``rank`` takes lost worker ``lost``'s whole shard, ``ids`` with their ``weights`` (its shard file,
    or the lost worker's when it holds exactly these rows, is named by its first round message, which carries
    the setup and the full model). ``in_flight``: the loss came while the round's replies were being
    collected, and the spare trains that round in the lost worker's place (sent at once, waited for); else it
    starts with the next round."""

    rank: int
    lost: int
    ids: np.ndarray
    weights: np.ndarray
    in_flight: bool = False


Effect = Accept | WriteHandoff | SendHandoff | Stage | Rebuild | Expel | Log | Adopt
