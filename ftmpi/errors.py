"""The small exception taxonomy of ftmpi and the exit codes it maps to.

Every error that can end a run derives from :class:`FtmpiError`; ``cli.main`` is the one place that turns
them into a one-line message and an exit code, so no rank ever prints a traceback storm.
"""
from __future__ import annotations

from collections.abc import Sequence

#: Exit codes: 0 success, 1 an unexpected crash, 2 bad input (config/data/checkpoint),
#: 3 training could not finish (every worker lost), 4 the coordinator was lost (seen from a worker),
#: 5 this rank was declared dead by the coordinator and told to leave, 6 preempted (SIGTERM/SIGUSR1: the
#: current round was checkpointed and the run can be resumed), 7 a write the run needs failed (disk full,
#: read-only or failing storage) and nothing resumable was saved.
EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 2
EXIT_NO_WORKERS = 3
EXIT_COORDINATOR_LOST = 4
EXIT_EXPELLED = 5
EXIT_PREEMPTED = 6
EXIT_DISK = 7


class FtmpiError(Exception):
    """Base of every error ftmpi raises on purpose."""

    exit_code = EXIT_CRASH
    quiet = False  # True: the message was already said elsewhere (e.g. rank 0's own failure)


class ConfigError(FtmpiError):
    """A configuration file or override is wrong; the message names the file and key."""

    exit_code = EXIT_BAD_INPUT


class DataError(FtmpiError):
    """A dataset file is missing, corrupt or of the wrong shape; the message names the file."""

    exit_code = EXIT_BAD_INPUT


class CheckpointError(FtmpiError):
    """A checkpoint file is missing, corrupt, truncated or of another format version."""

    exit_code = EXIT_BAD_INPUT


class PeerError(FtmpiError):
    """A peer did not answer. ``ranks`` are the world ranks concerned, ``phase`` what we waited for."""

    def __init__(self, ranks: Sequence[int], phase: str, waited: float, hint: str = "") -> None:
        self.ranks = tuple(sorted(ranks))
        self.phase = phase
        self.waited = waited
        msg = f"{self.kind} rank(s) {list(self.ranks)} during {phase} after {waited:.2f}s"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)

    kind = "no answer from"


class PeerFailed(PeerError):
    """The MPI library (ULFM) reported the peers as failed."""

    kind = "MPI reported failure of"


class PeerTimeout(PeerError):
    """The peers did not answer before the deadline."""

    kind = "deadline passed waiting for"


class CoordinatorLost(FtmpiError):
    """A worker lost contact with rank 0."""

    exit_code = EXIT_COORDINATOR_LOST


class Expelled(FtmpiError):
    """The coordinator declared this worker dead (it was too late) and told it to leave."""

    exit_code = EXIT_EXPELLED


class NoWorkersLeft(FtmpiError):
    """Every worker is dead; the coordinator saved what it had."""

    exit_code = EXIT_NO_WORKERS


class WriteFailed(FtmpiError):
    """A write the run depends on failed (e.g. the first checkpoint, on a full disk) and no earlier valid
    result of that kind exists. Failures that leave a valid earlier file are warnings, not this error."""

    exit_code = EXIT_DISK
