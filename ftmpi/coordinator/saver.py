"""File writes behind the training: one background thread runs rank 0's writes in the order submitted.

Rank 0 spends most of a round waiting for the workers' replies. A checkpoint (HDF5, CRCs, two fsyncs) or a
worker's staged representative rows (see :mod:`ftmpi.coordinator.staging`) written in that time costs the
round loop only the copy of the state it hands over. Each file becomes visible only once
complete (temp file, then rename), so a rank 0 that dies mid-write leaves the previous version.

Not every write matters alike, so failures follow a per-kind policy:

- *optional* kinds (``stage``: standby files, only a speed-up of a future handoff) never end the run:
  their failures are counted and turned into warnings;
- *essential* kinds (``checkpoint``) are reported as warnings while a valid result of the same kind exists
  (an earlier job succeeded, or :meth:`BackgroundWriter.valid_elsewhere` finds one this writer did not
  write, e.g. the checkpoints of the coordinator a deputy took over from: the run goes on, a later one may
  succeed), and raised by :meth:`BackgroundWriter.wait` as :class:`~ftmpi.errors.WriteFailed` (one line,
  exit code ``EXIT_DISK``) when none exists: nothing resumable exists, and the user must know.

A job that does not finish (a filesystem that stalls) is given up on after a deadline
(:meth:`BackgroundWriter.abandon_stalled`: the coordinator's timeout plus twice the longest job of its kind so
far) and counted as a failed write of its kind; its thread is left behind and a new one serves the queue.

Every failure is kept (per kind: count, first and last message). How the coordinator uses it::

    writer = BackgroundWriter(essential={"checkpoint"})
    writer.mark_ok("checkpoint")                 # resumed: the checkpoint it resumed from is valid
    writer.valid_elsewhere("checkpoint", lambda: valid_checkpoint_in(run_dir))  # asked at a failure
    writer.submit("checkpoint", save_fn, path, snap)
    while not writer.wait(timeout=0.2):          # bounded: keep pinging workers meanwhile
        ping()
    for line in writer.take_warnings():          # say each failure once (progress.event)
        progress.event(line)
    summary["write_errors"] = writer.error_summary()
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ftmpi.errors import Deposed, WriteFailed

__all__ = ["BackgroundWriter", "ErrorLog"]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass
class ErrorLog:
    """The failures of one kind of job: how many, and the first and last message."""

    count: int = 0
    first: str = ""
    last: str = ""

    def add(self, message: str) -> None:
        self.count += 1
        self.first = self.first or message
        self.last = message

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first": self.first, "last": self.last}


class BackgroundWriter:
    """Runs jobs (``fn(*args)``) in one daemon thread, in submission order, with a per-kind error policy.

    Args:
        name: Name of the thread.
        essential: Kinds whose failure matters (default ``{"checkpoint"}``); every other kind is optional.

    Attributes:
        seconds: Time spent per kind of job (``submit``'s ``kind``), e.g. ``{"checkpoint": 0.11}``.
        done: Number of finished jobs per kind (failed ones included).
        errors: Failures per kind (:class:`ErrorLog`).
    """

    def __init__(self, name: str = "ftmpi-writer", essential: Iterable[str] = ("checkpoint",)) -> None:
        self.name = name
        self.essential = set(essential)
        self.seconds: dict[str, float] = defaultdict(float)
        self.done: dict[str, int] = defaultdict(int)
        self.errors: dict[str, ErrorLog] = {}
        self._ok: set[str] = set()  # kinds with at least one successful job (or a valid one before this run)
        self._elsewhere: dict[str, Callable[[], bool]] = {}  # kind -> whether a valid one exists, not ours
        self._jobs: deque[tuple[str, Callable[..., Any], tuple[Any, ...]]] = deque()
        self._unfinished = 0
        self._cond = threading.Condition()
        self._warnings: list[str] = []
        self._fatal: WriteFailed | None = None
        self._deposed: Deposed | None = None  # a job found this coordinator's term over: it wrote nothing
        self._thread: threading.Thread | None = None
        self._gen = 0  # the thread generation: a thread abandoned on a stalled write keeps an older one
        self._running: tuple[str, float] | None = None  # (kind, start) of the job in progress
        self.longest: dict[str, float] = defaultdict(float)  # the longest completed job of each kind

    def mark_ok(self, kind: str) -> None:
        """Record that a valid result of ``kind`` exists already (e.g. the checkpoint a run resumed from)."""
        with self._cond:
            self._ok.add(kind)

    def valid_elsewhere(self, kind: str, check: Callable[[], bool]) -> None:
        """``check()`` says whether a valid result of ``kind`` exists that this writer did not write (e.g. the
        checkpoints an earlier coordinator of the run left in the run dir). It is asked, in the writer's
        thread, when a job of that kind fails and none of this writer's succeeded: True makes the failure a
        warning (as after :meth:`mark_ok`); False, or an exception, leaves it fatal."""
        with self._cond:
            self._elsewhere[kind] = check

    def submit(self, kind: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; returns at once. The caller must not change the arguments afterwards."""
        with self._cond:
            if self._thread is None:
                self._start()
            self._jobs.append((kind, fn, args))
            self._unfinished += 1
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every queued job has finished, at most ``timeout`` seconds (None: no limit).

        Returns:
            True when nothing is pending any more, False when the timeout passed first (call again).

        Raises:
            Deposed: A job found that a higher coordinator term was claimed (it wrote nothing); raised again on
                every call, since no later write may be made.
            WriteFailed: An essential job failed and no job of its kind ever succeeded; raised once.
        """
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._unfinished:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            idle = self._unfinished == 0
            fatal, self._fatal = self._fatal, None
            deposed = self._deposed
        if deposed is not None:
            raise deposed
        if fatal is not None:
            raise fatal
        return idle

    def abandon_stalled(self, base: float) -> bool:
        """A job that has run longer than ``base`` plus twice the longest completed job of its kind is
        stalled (a filesystem that does not answer): record it as failed (a warning, or fatal if nothing of
        its kind is valid, as for any failed write), leave its thread behind and serve the jobs queued after
        it with a new one. Returns True when it did."""
        with self._cond:
            if self._running is None:
                return False
            kind, t0 = self._running
            waited = time.monotonic() - t0
            if waited <= base + 2 * self.longest[kind]:
                return False
            self._failed(kind, TimeoutError(f"not done after {waited:.1f}s (a stalled filesystem?)"))
            self.done[kind] += 1
            self._unfinished -= 1
            self._running, self._thread = None, None
            self._gen += 1
            if self._jobs:
                self._start()
            self._cond.notify_all()
            return True

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._loop, args=(self._gen,), name=self.name, daemon=True)
        self._thread.start()

    def take_warnings(self) -> list[str]:
        """One line per failure not reported yet (optional kinds, and essential ones that were survivable)."""
        with self._cond:
            out, self._warnings = self._warnings, []
        return out

    def error_summary(self) -> dict[str, dict[str, Any]]:
        """``{kind: {"count", "first", "last"}}`` for every kind that failed at least once (for summary.json)."""
        with self._cond:
            return {k: v.as_dict() for k, v in sorted(self.errors.items())}

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return self._unfinished

    def _failed(self, kind: str, exc: BaseException) -> None:
        msg = _one_line(exc)
        log = self.errors.setdefault(kind, ErrorLog())
        log.add(msg)
        if kind not in self.essential:
            self._warnings.append(f"warning: {kind} write failed ({msg}); training goes on without it "
                                  f"({log.count} {kind} failure(s) so far)")
        elif kind in self._ok:
            self._warnings.append(f"warning: {kind} write failed ({msg}); the previous {kind} is still valid "
                                  "and the run goes on")
        elif self._fatal is None:
            self._fatal = WriteFailed(f"{kind} write failed and no earlier {kind} is valid: {msg}")

    def _found_elsewhere(self, kind: str) -> bool:
        """(Writer thread, without the lock: the check may read files.) A valid ``kind`` exists, not ours."""
        with self._cond:
            check = None if kind in self._ok or kind not in self.essential else self._elsewhere.get(kind)
        if check is None:
            return False
        try:
            return bool(check())
        except Exception:  # cannot tell: nothing valid is known
            return False

    def _loop(self, gen: int) -> None:
        while True:
            with self._cond:
                while not self._jobs and gen == self._gen:
                    self._cond.wait()
                if gen != self._gen:  # abandoned on a stalled write: a newer thread serves the queue
                    return
                kind, fn, args = self._jobs.popleft()
                t0 = time.monotonic()
                self._running = (kind, t0)
            try:
                fn(*args)
                ok, err = True, None
            except BaseException as exc:  # handed to the caller by wait()/take_warnings()
                ok, err = False, exc
            elsewhere = not ok and not isinstance(err, Deposed) and self._found_elsewhere(kind)
            with self._cond:
                if gen != self._gen:  # it came back after it was given up on: already counted as failed
                    return
                self._running = None
                self.longest[kind] = max(self.longest[kind], time.monotonic() - t0)
                if ok:
                    self._ok.add(kind)
                elif isinstance(err, Deposed):  # not a write error: this coordinator must stop writing
                    self._deposed = err
                else:
                    assert err is not None
                    if elsewhere:
                        self._ok.add(kind)
                    self._failed(kind, err)
                self.seconds[kind] += time.monotonic() - t0
                self.done[kind] += 1
                self._unfinished -= 1
                self._cond.notify_all()
