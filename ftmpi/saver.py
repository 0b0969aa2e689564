"""Checkpoints written behind the training: one background thread, one checkpoint in flight at a time.

Rank 0 spends most of a round waiting for the workers' replies; a checkpoint (HDF5 write, CRCs, two fsyncs:
8-9 ms here) written in that time costs the round loop only the copy of the state into a
:class:`~ftmpi.checkpoint.Snapshot`. The durability rules of :func:`~ftmpi.checkpoint.save` are unchanged:
a checkpoint becomes visible only once complete, so a rank 0 that dies mid-write leaves the previous one.

A write that fails is reported by the next :meth:`CheckpointWriter.submit` or :meth:`CheckpointWriter.wait`,
which raise its exception in the caller's thread.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from .checkpoint import Snapshot, prune, save

__all__ = ["CheckpointWriter"]


class CheckpointWriter:
    """Saves snapshots in a background thread, in order, one at a time.

    Args:
        run_dir: The run folder (checkpoints go to ``run_dir/ckpt``; pruning keeps the newest ``keep``).
        keep: How many checkpoints to keep.

    Attributes:
        write_seconds: Total time the background thread spent writing and pruning.
        written: Paths written so far, oldest first.
    """

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        self.run_dir, self.keep = Path(run_dir), keep
        self.write_seconds = 0.0
        self.written: list[Path] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, path: str | Path, snap: Snapshot) -> None:
        """Start writing ``snap`` (whose arrays the caller must not change afterwards) to ``path``, after the
        previous write has finished; raises that write's error, if it failed."""
        self.wait()
        self._thread = threading.Thread(target=self._work, args=(Path(path), snap), name="ftmpi-checkpoint",
                                        daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until no write is in flight; raise the error of a write that failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _work(self, path: Path, snap: Snapshot) -> None:
        t0 = time.monotonic()
        try:
            save(path, snap)
            prune(self.run_dir, self.keep)
            self.written.append(path)
        except BaseException as exc:  # handed to the main thread by wait()
            self._error = exc
        finally:
            self.write_seconds += time.monotonic() - t0
