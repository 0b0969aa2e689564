"""What the parts of a coordinator share.

The round driver (:class:`ftmpi.coordinator.driver.Coordinator`) owns two parts besides itself: replication
to the deputy (:class:`ftmpi.coordinator.deputy.Replication`) and the start and end of the run
(:class:`ftmpi.coordinator.lifecycle.Lifecycle`). It builds one :class:`Context` and hands it to both:

- :class:`Context`: the collaborators every part works with (channel, config, run dir, data, cluster state,
  global model, outputs, background writer, standby files); fixed for the coordinator's life.
- :class:`Tally`: the run's totals and facts that summary.json reports, most of which the deputy's replica
  carries on to the next coordinator; the parts update it in place.
- :class:`Driver`: the few things the parts ask of the driver (carry out effects, ping, wait for writes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ftmpi import faults as F
from ftmpi.comm import Channel
from ftmpi.config import Config
from ftmpi.coordinator.globalmodel import GlobalModel
from ftmpi.coordinator.outputs import Outputs
from ftmpi.coordinator.saver import BackgroundWriter
from ftmpi.coordinator.staging import Standby
from ftmpi.core import protocol as P
from ftmpi.core.cluster import ClusterState, Effect, Heard
from ftmpi.storage.data import Dataset

__all__ = ["Context", "Driver", "Tally"]


@dataclass
class Tally:
    """The run's totals and facts, for summary.json. A deputy that takes over goes on from the lost
    coordinator's (:meth:`ftmpi.coordinator.deputy.Replication.outputs_state`), except for the last three.

    ``t_start`` is the ``time.monotonic()`` the run's wall clock counts from (a takeover moves it back so
    that the wall clock goes on from the lost coordinator's); ``bytes_before`` and ``wall_before`` are what
    earlier launches of the run used (a resume); ``histogram`` and ``initial_shards`` describe the deal.
    """

    t_start: float
    bytes_before: int = 0
    wall_before: float = 0.0
    ckpt_seconds: float = 0.0  # rank 0's time taking checkpoints (the writes themselves run behind)
    histogram: np.ndarray | None = None  # rows per class per worker at the deal
    initial_shards: dict[int, int] | None = None  # rank -> rows dealt
    shard_bytes: int = 0  # bytes of shard files written at this launch (0: a resume that reused them)
    test_set_bytes: int = 0  # bytes of the test set written into the run dir at this launch (0: kept, not needed)
    resumed_from: dict[str, int] | None = None  # {round, epoch} of the checkpoint this run resumed from
    dealt: bool = False  # the rows were dealt (a run can end before: no worker joined)
    # not replicated: facts of this process's rounds only
    alive_comm: dict[str, Any] | None = None  # the latest alive-communicator rebuild (Channel.rebuild_status)
    preempted: dict[str, Any] | None = None  # {signal, round} when a stop signal ended the run
    target_stop: bool = False  # the rounds ended at executor.target_accuracy
    # rank -> (ids, weights) of the shard file this process wrote for it at the deal (a spare that takes
    # exactly those rows reads that file: nothing to write while the others wait)
    shard_files: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """The collaborators every part of a coordinator works with (the same objects the driver holds)."""

    ch: Channel
    cfg: Config
    run_dir: Path
    data: Dataset
    state: ClusterState
    gm: GlobalModel
    out: Outputs
    writer: BackgroundWriter
    standby: Standby
    tally: Tally

    def mark(self, rank: int) -> dict[str, Any] | None:
        """Worker ``rank``'s fault-injection record in the run dir, or None."""
        return F.read_marks(self.run_dir).get(rank)

    def heard(self, src: int, msg: Any) -> Heard:
        """The event for a message from ``src``; an error report carries the sender's fault mark, if any."""
        msg = P.coerce(msg)
        return Heard(src, msg, self.mark(src) if isinstance(msg, P.Error) else None)


class Driver(Protocol):
    """What the parts ask of the round driver."""

    local: Any  # a coordinator that trains its own rows (a deputy that took over): its worker, else None

    def apply(self, effects: list[Effect], replies: dict[int, P.Reply]) -> None:
        """Carry out ``effects`` in order (an accepted reply goes into ``replies``)."""

    def ping(self, ranks: list[int], force: bool = False) -> None:
        """Tell ``ranks`` (and the standby coordinator) that the coordinator is alive, at most every
        ``timeout/4`` unless ``force``."""

    def handoffs_pending(self) -> bool:
        """Whether a handoff file is being written (its messages have not all gone out)."""

    def wait_handoffs(self) -> None:
        """Return once every handoff file is written and its messages sent, pinging meanwhile."""

    def wait_writer(self) -> None:
        """Return once the background writer is idle, pinging meanwhile; raises
        :class:`~ftmpi.errors.WriteFailed` when an essential write failed with nothing valid before it."""
