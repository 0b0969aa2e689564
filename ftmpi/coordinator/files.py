"""Rank 0's file writes: the workers' shards, one epoch's handoff file, a checkpoint (then pruning). No MPI.

The driver (:mod:`ftmpi.coordinator.driver`) runs the handoff write in a thread of its own (:class:`HandoffWrite`, so
that it never queues behind a checkpoint and rank 0 keeps polling and pinging) and the checkpoint in the
background writer; the shards are written once, before round 0.
"""
from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np

from ftmpi.core.cluster import SendHandoff, WriteHandoff
from ftmpi.procs import hostname
from ftmpi.storage.checkpoint import Snapshot, prune, save
from ftmpi.storage.data import Dataset
from ftmpi.storage.shards import ensure_shard, rows_by_reference, shard_path, write_handoff
from ftmpi.storage.term import Fence


def slow_for_tests(kind: str) -> None:
    """Tests only: ``FTMPI_TEST_SLOW=checkpoint:3,handoff:2`` makes that kind of write sleep that long."""
    for item in os.environ.get("FTMPI_TEST_SLOW", "").split(","):
        name, _, secs = item.partition(":")
        if name == kind and secs:
            time.sleep(float(secs))


def fail_for_tests(kind: str) -> None:
    """Tests only: ``FTMPI_TEST_ENOSPC=handoff`` makes that kind of write fail as on a full disk."""
    if kind in os.environ.get("FTMPI_TEST_ENOSPC", "").split(","):
        raise OSError(errno.ENOSPC, f"No space left on device (FTMPI_TEST_ENOSPC={kind})")


def write_shards(run_dir: Path, data: Dataset, parts: dict[int, np.ndarray], weight: np.ndarray,
                 by_ref: bool, compress: bool = True) -> int:
    """Write each worker's shard file (its rows of the training set and their weights); returns the bytes
    written. Rows are stored in the source's own type (uint8 + scale for images), or, with ``by_ref``, only
    by reference to the prepared copy every worker can read itself (:func:`shards_by_reference`); a file
    that already holds exactly that shard (a resume whose ownership did not change) is not rewritten;
    ``compress`` (``data.compress_shards``): uint8 rows deflate-compressed."""
    return sum(ensure_shard(shard_path(run_dir, r), data.X_train, data.y_train, ids,
                            {"n_classes": data.n_classes, "dataset": data.name, "rank": r}, w=weight[ids],
                            by_ref=by_ref, compress=compress)
               for r, ids in parts.items())


def shards_by_reference(data: Dataset, hosts: list[str]) -> bool:
    """Whether shard and standby files can hold row ids only: every worker is on this host (or
    ``FTMPI_SHARED_DATA=1`` says the prepared copy is on a filesystem they all see)."""
    return rows_by_reference(data.X_train, hosts, hostname())


def write_handoff_file(e: WriteHandoff, data: Dataset, fence: Fence | None = None) -> None:
    """(A thread of its own.) Write one epoch's handoff file; ``fence``: checked first (raises
    :class:`~ftmpi.errors.Deposed`, nothing written, once a higher coordinator term was claimed)."""
    slow_for_tests("handoff")
    fail_for_tests("handoff")
    if fence is not None:
        fence.check(f"write {Path(e.path).name}")
    rows = np.concatenate(list(e.ids.values()))
    write_handoff(e.path, data.X_train[rows], data.y_train[rows], rows, {s: len(v) for s, v in e.ids.items()},
                  {"n_classes": data.n_classes, "dataset": data.name, "epoch": e.epoch,
                   "term": fence.term if fence is not None else 1},
                  np.concatenate(list(e.weights.values())))


def save_and_prune(path: Path, snap: Snapshot, run_dir: Path, keep: int, fence: Fence | None = None) -> None:
    """(Background thread.) Save a checkpoint, then delete all but the newest ``keep``. ``fence``: checked
    right before the save and before the prune; raises :class:`~ftmpi.errors.Deposed` (nothing written or
    deleted) once a higher coordinator term was claimed in the run dir."""
    slow_for_tests("checkpoint")
    if fence is not None:
        fence.check(f"save {path.name}")
    save(path, snap)
    if fence is not None:
        fence.check(f"prune after {path.name}")
    prune(run_dir, keep, newest=path)


class HandoffWrite:
    """A handoff file being written in a thread, and the messages that wait for it."""

    def __init__(self, e: WriteHandoff, data: Dataset, fence: Fence | None = None) -> None:
        self.error: BaseException | None = None
        self.sends: list[SendHandoff] = []  # sent once the file is complete
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(e, data, fence), name=f"ftmpi-handoff-e{e.epoch}",
                                       daemon=True)
        self.thread.start()

    def done(self, limit: float) -> bool:
        """Finished, or given up on: still running after ``limit`` seconds (a stalled filesystem), which then
        counts as a failed write (its thread is left behind; a file it completes later is never named)."""
        if not self.thread.is_alive():
            return True
        waited = time.monotonic() - self.started
        if waited <= limit:
            return False
        if self.error is None:
            self.error = TimeoutError(f"handoff write not done after {waited:.1f}s (a stalled filesystem?)")
        return True

    def _run(self, e: WriteHandoff, data: Dataset, fence: Fence | None) -> None:
        try:
            write_handoff_file(e, data, fence)
        except BaseException as exc:  # raised in the driver's thread
            self.error = exc
