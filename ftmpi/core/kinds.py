"""Named states and kinds of the core, as ``str`` enums: ClusterState's :class:`Phase` and a loss's
:class:`How`.

A member *is* its string: it compares equal to it (``How.ULFM == "ulfm"``), hashes like it, formats and
prints as it, and ``json.dumps`` writes it as the plain string, so summary.json and a checkpoint's failure
log read as before. Pickle, h5py and yaml look at the type instead: what is pickled onto the wire or
stored (:meth:`ClusterState.snapshot <ftmpi.core.cluster.ClusterState.snapshot>`) holds the plain ``str``
(``member.value``), and the receiver turns it back into a member (``How(value)``).
"""
from __future__ import annotations

import enum

__all__ = ["How", "Phase", "StrEnum"]


class StrEnum(str, enum.Enum):
    """A ``str`` enum whose ``str()`` and ``format()`` are its value (``enum.StrEnum`` of Python 3.11, which
    ftmpi does not require): f-strings and log lines read ``ulfm``, never ``How.ULFM``."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class Phase(StrEnum):
    """The phase of :class:`ftmpi.core.cluster.ClusterState`; only the transitions drawn here are allowed
    (any other raises)::

        JOINING ──deal / resume──▶ TRAINING ──finish──▶ DONE
           │                                            ▲
           └──────────────────finish────────────────────┘

    - ``JOINING``: hellos arrive; a loss is only recorded (no rows are dealt yet, none are handed).
    - ``TRAINING``: rows are dealt; a loss opens a new epoch and hands the lost worker's rows over.
    - ``DONE``: the run is over (completed, preempted or failed); nothing changes any more.
    """

    JOINING = "joining"
    TRAINING = "training"
    DONE = "done"

    def can_become(self, other: Phase) -> bool:
        """True when ``self -> other`` is one of the transitions drawn above."""
        return other in _NEXT[self]


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.JOINING: frozenset({Phase.TRAINING, Phase.DONE}),
    Phase.TRAINING: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}


class How(StrEnum):
    """How a loss was noticed: a worker's (``Failure.how``, ``Lost.how``) or the coordinator's
    (``Change.how``, ``CoordinatorLost.how``).

    - ``ULFM``: the MPI library reported the process as failed.
    - ``EXITED``: its process ended, seen by the coordinator on the same host (``executor.watch_exits``),
      before MPI reported it or where MPI never would (an exit without ``MPI_Finalize``).
    - ``TIMEOUT``: it said nothing before its deadline.
    - ``ERROR``: it said it was failing (a worker's ``Error`` report, the coordinator's ``Abdicate``).
    - ``NEVER_JOINED``: a worker that sent no hello before the start-up deadline.
    - ``PROMOTED``: the deputy's worker, gone because it became the coordinator (not a fault).
    - ``REJECTED``: its updates were rejected ``executor.reject_limit`` rounds in a row (not finite, or far
      outside the others': :mod:`ftmpi.core.screen`); it is told why and leaves.
    """

    ULFM = "ulfm"
    EXITED = "exited"
    TIMEOUT = "timeout"
    ERROR = "error"
    NEVER_JOINED = "never-joined"
    PROMOTED = "promoted"
    REJECTED = "rejected"

    @property
    def suspect(self) -> bool:
        """True when the process may still be alive (it was only silent) and may speak again later."""
        return self in (How.TIMEOUT, How.NEVER_JOINED)

