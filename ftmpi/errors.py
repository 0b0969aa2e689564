"""The small exception taxonomy of ftmpi and the exit codes it maps to.

Every error that can end a run derives from :class:`FtmpiError`; ``cli.main`` is the one place that turns
them into a one-line message and an exit code, so no rank ever prints a traceback storm.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence

from ftmpi.core.kinds import How


class ExitCode(enum.IntEnum):
    """The exit codes of ftmpi's processes (rank 0's is also ``exit_code`` in summary.json). A member is its
    ``int``: ``sys.exit``, ``os._exit``, ``json.dumps`` and ``str()`` see the plain number."""

    OK = 0  #: training completed
    CRASH = 1  #: an unexpected crash
    BAD_INPUT = 2  #: bad input (config, data, checkpoint, command line)
    NO_WORKERS = 3  #: training could not finish: every worker was lost
    COORDINATOR_LOST = 4  #: the coordinator was lost (seen from a worker)
    EXPELLED = 5  #: this rank was declared dead by the coordinator and told to leave
    PREEMPTED = 6  #: SIGTERM/SIGUSR1: the current round was checkpointed and the run can be resumed
    DISK = 7  #: a write the run needs failed (disk full, read-only or failing storage); nothing resumable saved
    DIVERGED = 8  #: the global model would stop being finite (NaN/Inf): stopped; the last finite model is saved
    OVERRAN = 124  #: ``ftmpi launch`` only: the job overran FTMPI_JOB_TIMEOUT and was killed (timeout(1)'s code)

    def __str__(self) -> str:
        return str(int(self))


#: The members under their module-level names.
EXIT_OK = ExitCode.OK
EXIT_CRASH = ExitCode.CRASH
EXIT_BAD_INPUT = ExitCode.BAD_INPUT
EXIT_NO_WORKERS = ExitCode.NO_WORKERS
EXIT_COORDINATOR_LOST = ExitCode.COORDINATOR_LOST
EXIT_EXPELLED = ExitCode.EXPELLED
EXIT_PREEMPTED = ExitCode.PREEMPTED
EXIT_DISK = ExitCode.DISK
EXIT_DIVERGED = ExitCode.DIVERGED


class FtmpiError(Exception):
    """Base of every error ftmpi raises on purpose.

    Args:
        *args: The message, as for :class:`Exception`.
        exit_code: The code the process ends with, when not its class's ``exit_code`` (e.g. rank 0's own code,
            relayed to a worker that leaves with it).
        quiet: True when the message was already said elsewhere (e.g. rank 0's own failure): nothing more is
            printed.
    """

    exit_code: int = ExitCode.CRASH
    quiet: bool = False

    def __init__(self, *args: object, exit_code: int | None = None, quiet: bool = False) -> None:
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code
        if quiet:
            self.quiet = True


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
    """A worker lost contact with rank 0. ``how`` it noticed: :attr:`How.ULFM` (MPI reported rank 0 failed),
    :attr:`How.TIMEOUT` (rank 0 said nothing before the deadline) or :attr:`How.ERROR` (rank 0 said it was
    leaving); made a :class:`~ftmpi.core.kinds.How` here, so a value is accepted too."""

    exit_code = EXIT_COORDINATOR_LOST

    def __init__(self, message: str, how: How | str) -> None:
        super().__init__(message)
        self.how = How(how)


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


class Diverged(FtmpiError):
    """The global model would stop being finite (NaN or Inf after aggregating a round, or most of a round's
    updates not finite): training cannot go on. The model is left as it was before that round (finite), so
    the final checkpoint is the last finite model."""

    exit_code = EXIT_DIVERGED


class Deposed(FtmpiError):
    """This coordinator's term is over: a higher ``term`` was claimed in the run dir (a deputy took over while
    this rank was silent). It writes and prunes nothing more; ``what`` names the write it did not make."""

    exit_code = EXIT_COORDINATOR_LOST

    def __init__(self, term: int, what: str) -> None:
        super().__init__(f"deposed: term {term} was claimed in the run dir; not done: {what}")
        self.term, self.what = int(term), what
