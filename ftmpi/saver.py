"""File writes behind the training: one background thread runs rank 0's writes in the order submitted.

Rank 0 spends most of a round waiting for the workers' replies. A checkpoint (HDF5, CRCs, two fsyncs:
8-12 ms here) or a worker's staged representative rows (see :mod:`ftmpi.coordinator`) written in that time
costs the round loop only the copy of the state it hands over. The durability rules of the writes
themselves are unchanged: each file becomes visible only once complete (written to a temporary name, then
renamed), so a rank 0 that dies mid-write leaves the previous version.

A job that fails is reported by the next :meth:`BackgroundWriter.wait`, which raises its exception in the
caller's thread.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Runs jobs (``fn(*args)``) in one daemon thread, in submission order.

    Attributes:
        seconds: Time spent per kind of job (``submit``'s ``kind``), e.g. ``{"checkpoint": 0.11}``.
        done: Number of finished jobs per kind.
    """

    def __init__(self, name: str = "ftmpi-writer") -> None:
        self.name = name
        self.seconds: dict[str, float] = defaultdict(float)
        self.done: dict[str, int] = defaultdict(int)
        self._jobs: queue.Queue[tuple[str, Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
        self._errors: list[BaseException] = []
        self._thread: threading.Thread | None = None

    def submit(self, kind: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; returns at once. The caller must not change the arguments afterwards."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put((kind, fn, args))

    def wait(self) -> None:
        """Block until every queued job has finished; raise the first error of a job that failed."""
        self._jobs.join()
        if self._errors:
            err = self._errors.pop(0)
            self._errors.clear()
            raise err

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._jobs.unfinished_tasks

    def _loop(self) -> None:
        while True:
            kind, fn, args = self._jobs.get()
            t0 = time.monotonic()
            try:
                fn(*args)
            except BaseException as exc:  # handed to the caller by wait()
                self._errors.append(exc)
            finally:
                self.seconds[kind] += time.monotonic() - t0
                self.done[kind] += 1
                self._jobs.task_done()
