"""Deadline-bound point-to-point messaging and failure detection.

Every MPI wait in ftmpi goes through :meth:`Channel.poll`: nonblocking requests tested in a loop with a
bounded exponential backoff until a deadline. Nothing here blocks without a deadline.

Traffic is a star of point-to-point messages between rank 0 and each worker on a duplicate of
``COMM_WORLD`` with ``ERRORS_RETURN``. A tree-shaped collective through one hung rank stalls every rank
below it (DESIGN.md, "Traps"), while point-to-point traffic isolates each worker and
needs no communicator rebuild when membership changes. ULFM, where it is in force, is used for what it
does best: a failed peer's pending receive fails within milliseconds with ``ERR_PROC_FAILED``
(``Get_failed`` names the ranks), and the alive communicator of the survivors is rebuilt with ``Shrink``
and confirmed with ``Agree`` in a helper thread that never blocks the rounds (see
:meth:`Channel.rebuild_start`).

Messages are pickled (protocol 5) by us, so the byte counts on the wire are exact, and received with a
matched probe (``Improbe`` then ``Message.Irecv``) into a buffer of the probed size.
"""
from __future__ import annotations

import os
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mpi4py import MPI

from ftmpi import signals
from ftmpi.core.kinds import StrEnum
from ftmpi.errors import PeerFailed, PeerTimeout

TAG_CTRL = 11  # coordinator -> worker: round, handoff, ping, stop, exit
TAG_REPLY = 12  # worker -> coordinator: hello, reply, error, bye
TAG_REPLICA = 13  # coordinator -> deputy: the replica of the coordinator's state (ftmpi.core.failover)
TAG_DEPOSED = 14  # a deputy that took over -> the coordinator it replaced (should that one wake up)
TAG_SUSPECT = 15  # worker -> deputy: the coordinator has been silent past the limit (protocol.Suspect)

_ULFM_CLASSES = {getattr(MPI, n, None) for n in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")}
_ULFM_CLASSES.discard(None)


class Detector(StrEnum):
    """How failures are detected (``executor.failure_detector``). ``auto`` uses ULFM when in force, and the
    deadline always."""

    AUTO = "auto"
    ULFM = "ulfm"
    TIMEOUT = "timeout"


def ulfm_in_force() -> bool:
    """True when this job runs with ULFM enabled.

    Checked explicitly: the library must be Open MPI >= 5 with distinct ULFM error classes, and the job
    must have been launched with ULFM on (``mpirun --with-ft ulfm`` exports ``OMPI_MCA_mpi_ft_enable=1``).
    Calling ``Shrink``/``Agree`` proves nothing: without ULFM mpi4py maps them to ``Comm_dup``/allreduce.
    """
    vendor, version = MPI.get_vendor()
    if vendor != "Open MPI" or version < (5, 0, 0):
        return False
    if MPI.ERR_PROC_FAILED in (MPI.ERR_UNKNOWN, MPI.ERR_OTHER):
        return False
    flag = os.environ.get("OMPI_MCA_mpi_ft_enable", "").strip().lower()
    return flag in ("1", "true", "yes", "on", "enabled")


def resolve_detector(requested: str) -> Detector:
    """Turn the configured detector into the one in force; ``ulfm`` without ULFM is an error."""
    det = Detector(requested)
    have = ulfm_in_force()
    if det is Detector.ULFM and not have:
        from ftmpi.errors import ConfigError

        raise ConfigError(
            "executor.failure_detector: 'ulfm' needs Open MPI 5 launched with `mpirun --with-ft ulfm` "
            "(use jobs/local.sh), or choose 'auto'/'timeout'"
        )
    if det is Detector.AUTO:
        return Detector.ULFM if have else Detector.TIMEOUT
    return det


def is_ulfm_error(exc: BaseException) -> bool:
    """True when ``exc`` is an MPI error that reports a failed or revoked peer."""
    return isinstance(exc, MPI.Exception) and exc.Get_error_class() in _ULFM_CLASSES


@dataclass
class Traffic:
    """Bytes and messages through this rank, for metrics."""

    bytes_sent: int = 0
    bytes_recv: int = 0
    msgs_sent: int = 0
    msgs_recv: int = 0


@dataclass
class Outcome:
    """What a multi-peer wait ended with: the messages that arrived, and who did not answer and why."""

    messages: dict[int, list[Any]] = field(default_factory=dict)
    failed: dict[int, float] = field(default_factory=dict)  # rank -> time ULFM reported it
    timed_out: dict[int, float] = field(default_factory=dict)  # rank -> time the deadline passed
    partial: dict[int, int] = field(default_factory=dict)  # timed-out rank -> bytes of a message still arriving


@dataclass
class _InFlight:
    """A matched receive still in progress: its request, the buffer it fills, its size and start time."""

    req: Any
    buf: bytearray
    nbytes: int
    started: float


@dataclass
class _Rebuild:
    """One alive-communicator rebuild: what it is for, and how it ended (set by the helper thread)."""

    members: list[int]
    epoch: int
    started: float
    finished: float = 0.0
    done: bool = False
    agreed: bool = False
    error: str | None = None


class Backoff:
    """Sleep between polls: starts at ``first`` seconds, doubles up to ``cap``.

    The cap is a round's latency: a worker waiting for the next round, and rank 0 for the last reply, notice
    it up to ``cap`` late. The default cap (0.25 ms) is where the gain stops: a larger cap lengthens a run at
    the same total CPU, a smaller one shortens it no further (docs/NOTES.md has the measurement).
    """

    def __init__(self, first: float = 5e-5, cap: float = 2.5e-4, sleep: Callable[[float], object] = time.sleep) -> None:
        self.first, self.cap, self.cur, self._sleep = first, cap, first, sleep

    def reset(self) -> None:
        self.cur = self.first

    def sleep(self, limit: float | None = None) -> None:
        """Sleep the current step and double it; a sleep that says it was woken (a signal ended a spare's
        nap: the message it waits for is being sent) starts the steps again from ``first``, so that the
        looks that follow are quick while the message arrives, not one more long nap."""
        d = self.cur if limit is None else max(0.0, min(self.cur, limit))
        woken = self._sleep(d)
        self.cur = self.first if woken else min(self.cap, self.cur * 2)


class Channel:
    """Point-to-point pickled messages on a private duplicate of a communicator, every wait bounded.

    Args:
        comm: the communicator to duplicate (normally ``MPI.COMM_WORLD``).
        detector: the failure detector in force (see :func:`resolve_detector`).
    """

    def __init__(self, comm: MPI.Comm, detector: Detector) -> None:
        self.comm = comm.Dup()
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.detector = detector
        self.coordinator = 0  # the rank that coordinates now (changes when a deputy takes over)
        self.traffic = Traffic()
        # Send buffers stay referenced until their request completes; abandoned ones are never freed
        # early (a request to a dead peer may never complete).
        self._outbox: list[tuple[MPI.Request, bytes, int]] = []
        # Receives matched but not complete (source, tag) -> request and buffer; completed by a later call.
        self._inflight: dict[tuple[int, int], _InFlight] = {}
        self._abandoned: list[_InFlight] = []  # receives from failed senders: kept alive, never freed early
        # Collectives (the ULFM rebuild) run on a communicator of their own: whatever a failed collective
        # does to it (errors, revocation) cannot touch the point-to-point traffic of the rounds.
        self.coll = comm.Dup()
        self.coll.Set_errhandler(MPI.ERRORS_RETURN)
        self.alive_comm: MPI.Comm | None = None  # written by the rebuild helper thread only
        self._rb_lock = threading.Condition()
        self._rb_jobs: deque[_Rebuild] = deque()
        self._rb_last: _Rebuild | None = None
        self._rb_thread: threading.Thread | None = None
        self._notes: list[str] = []
        self._said: set[str] = set()

    # ---------------------------------------------------------------- sending
    def send(self, dest: int, tag: int, obj: Any) -> int:
        """Start sending ``obj`` to ``dest``; returns its size in bytes. Never blocks."""
        buf = pickle.dumps(obj, protocol=5)
        try:
            req = self.comm.Isend([buf, MPI.BYTE], dest, tag)
        except MPI.Exception as exc:  # a peer known to have failed: the caller learns it on receive
            if not is_ulfm_error(exc):
                raise
            return 0
        self._outbox.append((req, buf, dest))
        self.traffic.bytes_sent += len(buf)
        self.traffic.msgs_sent += 1
        self._reap()
        return len(buf)

    def _reap(self) -> None:
        keep = []
        for item in self._outbox:
            try:
                done = item[0].Test()
            except MPI.Exception:
                done = False  # to a failed peer: keep the buffer alive, never free early
            if not done:
                keep.append(item)
        self._outbox = keep

    def flush(self, deadline: float, dests: Iterable[int] | None = None) -> bool:
        """Wait (bounded) until sends to ``dests`` (default all) complete; True if they all did."""
        wanted = None if dests is None else set(dests)
        back = Backoff()
        while True:
            self._reap()
            pending = [d for _, _, d in self._outbox if wanted is None or d in wanted]
            if not pending:
                return True
            if time.monotonic() >= deadline:
                return False
            back.sleep(deadline - time.monotonic())

    # -------------------------------------------------------------- receiving
    def _try_recv(self, source: int, tag: int) -> tuple[bool, Any]:
        """Receive the next message from ``source`` if it is there; never waits. Raises MPI.Exception.

        A matched message may still be streaming in (a large reply over TCP, or a sender stopped mid-send).
        Its request and buffer are then kept in ``_inflight`` and tested again at the next call for the same
        (source, tag), which returns ``(False, None)`` until it has fully arrived: the caller's deadline
        alone bounds how long anyone waits for it, and messages from one source stay in order (nothing
        newer is probed while one is in flight). A sender reported failed (ULFM) makes ``Test`` raise; the
        request and buffer are then kept in ``_abandoned``, never freed early.
        """
        key = (source, tag)
        pending = self._inflight.get(key)
        if pending is None:
            status = MPI.Status()
            msg = self.comm.Improbe(source, tag, status)
            if msg is None:
                return False, None
            n = status.Get_count(MPI.BYTE)
            buf = bytearray(n)
            pending = _InFlight(msg.Irecv([buf, MPI.BYTE]), buf, n, time.monotonic())
            self._inflight[key] = pending
        try:
            done = pending.req.Test()
        except MPI.Exception:
            self._abandoned.append(self._inflight.pop(key))
            raise
        if not done:
            return False, None
        del self._inflight[key]
        self.traffic.bytes_recv += pending.nbytes
        self.traffic.msgs_recv += 1
        return True, pickle.loads(pending.buf)

    def partial(self, source: int, tag: int) -> int | None:
        """Size in bytes of a message from ``source`` matched but not fully received yet, or None."""
        pending = self._inflight.get((source, tag))
        return None if pending is None else pending.nbytes

    def failed_ranks(self) -> set[int]:
        """World ranks ULFM knows to have failed (empty without ULFM)."""
        if self.detector is not Detector.ULFM:
            return set()
        try:
            grp = self.comm.Get_failed()
        except MPI.Exception:
            return set()
        wgrp = self.comm.Get_group()
        try:
            n = grp.Get_size()
            if n == 0:
                return set()
            ranks = MPI.Group.Translate_ranks(grp, list(range(n)), wgrp)
            return {r for r in ranks if r != MPI.UNDEFINED}
        finally:
            grp.Free()
            wgrp.Free()

    def poll(
        self,
        sources: Sequence[int],
        tag: int,
        deadline: float,
        until: Callable[[Outcome], bool],
        on_tick: Callable[[], None] | None = None,
        tick_every: float = 1.0,
        nap: float | None = None,
    ) -> Outcome:
        """The one wait loop. Receive from ``sources`` until ``until(outcome)`` or ``deadline``.

        A source that ULFM reports as failed goes to ``outcome.failed`` (only when the ULFM detector is in
        force; under the timeout detector such errors are ignored and the deadline decides). Sources still
        silent at the deadline go to ``outcome.timed_out``. Several messages per source may arrive. ``nap``:
        the longest sleep between two looks (default :class:`Backoff`'s cap): a rank with nothing to do but
        wait (a hot spare) naps longer and costs next to no CPU.
        """
        out = Outcome()
        live = list(sources)
        back = Backoff() if nap is None else Backoff(cap=nap, sleep=signals.nap)  # a spare: woken by a signal
        next_tick = time.monotonic() + tick_every
        while True:
            got = False
            for src in list(live):
                try:
                    ok, obj = self._try_recv(src, tag)
                except MPI.Exception as exc:
                    if not is_ulfm_error(exc):
                        raise
                    if self.detector is Detector.ULFM:
                        out.failed[src] = time.monotonic()
                        live.remove(src)
                    continue
                if ok:
                    got = True
                    out.messages.setdefault(src, []).append(obj)
            if until(out) or not live:  # done, or every source is known to have failed
                return out
            now = time.monotonic()
            if now >= deadline:
                for src in live:
                    if src not in out.failed:
                        out.timed_out[src] = now
                        nbytes = self.partial(src, tag)
                        if nbytes is not None:  # kept: a later poll may still complete it
                            out.partial[src] = nbytes
                return out
            if on_tick is not None and now >= next_tick:
                on_tick()
                next_tick = now + tick_every
            if got or any((src, tag) in self._inflight for src in live):  # a message matched and streaming in
                back.reset()  # is looked at again at once (a napping spare took two naps for a large one)
                if not got:
                    back.sleep(deadline - now)
            else:
                back.sleep(deadline - now)

    def try_recv(self, source: int, tag: int) -> Any:
        """A message from ``source`` if one is waiting, else None (also when ULFM reports the source failed:
        the next bounded wait will say so). Never blocks."""
        try:
            ok, obj = self._try_recv(source, tag)
        except MPI.Exception as exc:
            if not is_ulfm_error(exc):
                raise
            return None
        return obj if ok else None

    def recv_one(self, source: int, tag: int, timeout: float, phase: str, hint: str = "") -> Any:
        """Receive one message from ``source`` within ``timeout`` seconds, or raise PeerFailed/Timeout."""
        t0 = time.monotonic()
        out = self.poll([source], tag, t0 + timeout, until=lambda o: bool(o.messages))
        if out.messages:
            return out.messages[source][0]
        waited = time.monotonic() - t0
        if out.failed:
            raise PeerFailed([source], phase, waited, hint)
        raise PeerTimeout([source], phase, waited, hint)

    # ------------------------------------------------------ alive communicator
    def _rebuild_off(self) -> str | None:
        """Why the alive communicator cannot be rebuilt here, or None."""
        if self.detector is not Detector.ULFM:
            return "no ULFM"
        provided = MPI.Query_thread()
        if provided < MPI.THREAD_MULTIPLE:
            return (f"MPI provides thread level {provided}, not MPI_THREAD_MULTIPLE ({MPI.THREAD_MULTIPLE}): the "
                    "alive communicator is not rebuilt (its blocking Shrink/Agree need a helper thread); "
                    "point-to-point traffic carries on")
        return None

    def _note(self, text: str) -> None:
        with self._rb_lock:
            if text not in self._said:
                self._said.add(text)
                self._notes.append(text)

    def take_notes(self) -> list[str]:
        """Messages for the user not taken yet, each said once per run (e.g. why no rebuild happens)."""
        with self._rb_lock:
            out, self._notes = self._notes, []
        return out

    def rebuild_start(self, members: Sequence[int], epoch: int) -> bool:
        """Start rebuilding the alive communicator for ``members`` (ULFM only); never blocks.

        Every member calls this with the same arguments, in the same order of epochs, after a membership
        change (the coordinator sends the list in a round message). One helper thread per rank runs the
        rebuilds in that order, each to its end: ``Ack_failed``, ``Shrink`` (drops the failed ranks) and
        ``Agree`` (a fault-tolerant AND over the survivors: does the shrunk communicator hold exactly
        ``members``?). Nobody gives up on a rebuild by deadline, so every rank completes the same sequence
        of collectives on the same communicators and ends with the same answer; a later rebuild waits for
        the previous one on every rank alike. A member that hangs instead of dying keeps the rebuild (and
        the ones queued behind it) pending on every rank: :meth:`rebuild_result` then stays None everywhere,
        and the star traffic, which never needed the alive communicator, carries on.

        The blocking calls run in a helper thread because ``Ishrink`` fails with MPI_ERR_INTERN in Open MPI
        5.0.11 after a SIGKILL (measured); that needs MPI_THREAD_MULTIPLE, checked with ``Query_thread``.

        Returns:
            True when queued; False when rebuilding is off here (no ULFM, or no MPI_THREAD_MULTIPLE: the
            latter is said once through :meth:`take_notes`).
        """
        reason = self._rebuild_off()
        if reason is not None:
            if self.detector is Detector.ULFM:
                self._note(reason)
            return False
        job = _Rebuild(sorted(members), epoch, time.monotonic())
        with self._rb_lock:
            self._rb_jobs.append(job)
            self._rb_last = job
            if self._rb_thread is None:
                self._rb_thread = threading.Thread(target=self._rebuild_loop, name="ftmpi-rebuild", daemon=True)
                self._rb_thread.start()
            self._rb_lock.notify_all()
        return True

    def rebuild_result(self) -> bool | None:
        """Outcome of the latest :meth:`rebuild_start`: None while it runs (or waits for an earlier one),
        True when every survivor agreed on its members, False otherwise (or when none was started)."""
        with self._rb_lock:
            job = self._rb_last
            if job is None:
                return False
            return job.agreed if job.done else None

    def rebuild_status(self) -> dict[str, Any] | None:
        """The latest rebuild as a JSON-able dict (for summary.json's ``alive_comm``), or None if none."""
        with self._rb_lock:
            job = self._rb_last
            if job is None:
                return None
            return {"epoch": job.epoch, "members": job.members,
                    "agreed": job.agreed if job.done else None,
                    "seconds": (job.finished if job.done else time.monotonic()) - job.started,
                    "pending": not job.done, "queued": len(self._rb_jobs), "error": job.error}

    def rebuild_alive(self, members: Sequence[int], epoch: int, timeout: float) -> bool:
        """Start a rebuild (:meth:`rebuild_start`) and wait for it at most ``timeout`` seconds.

        Kept for callers that wait. A rebuild not finished in time is *not* abandoned: it goes on in the
        helper thread, so this rank still takes its part and stays in step with the others; its outcome is
        then read later with :meth:`rebuild_result`. Returns True only when it finished and every survivor
        agreed within ``timeout``.
        """
        if not self.rebuild_start(members, epoch):
            return False
        end = time.monotonic() + timeout
        back = Backoff(1e-4, 1e-2)
        while True:
            result = self.rebuild_result()
            if result is not None:
                return result
            if time.monotonic() >= end:
                return False
            back.sleep(end - time.monotonic())

    def _world_ranks(self, comm: Any) -> list[int]:
        grp, wgrp = comm.Get_group(), self.comm.Get_group()
        try:
            return list(MPI.Group.Translate_ranks(grp, list(range(grp.Get_size())), wgrp))
        finally:
            grp.Free()
            wgrp.Free()

    def _rebuild_loop(self) -> None:
        while True:
            with self._rb_lock:
                while not self._rb_jobs:
                    self._rb_lock.wait()
                job = self._rb_jobs[0]
            self._rebuild_once(job)
            with self._rb_lock:
                self._rb_jobs.popleft()
                job.finished = time.monotonic()
                job.done = True
                self._rb_lock.notify_all()

    def _rebuild_once(self, job: _Rebuild) -> None:
        base = self.alive_comm if self.alive_comm is not None else self.coll
        try:
            base.Ack_failed()
            new_comm = base.Shrink()
        except MPI.Exception as exc:
            job.agreed, job.error = False, exc.Get_error_string()
            return
        # Shrink returned on every survivor alike: the next rebuild starts from this communicator everywhere
        old, self.alive_comm = self.alive_comm, new_comm
        if old is not None:
            try:
                old.Free()
            except MPI.Exception:
                pass
        try:
            new_comm.Set_errhandler(MPI.ERRORS_RETURN)
            same = sorted(self._world_ranks(new_comm)) == job.members
            job.agreed = bool(new_comm.Agree(1 if same else 0))
        except MPI.Exception as exc:  # e.g. another rank failed during Agree: reported to every survivor
            job.agreed, job.error = False, exc.Get_error_string()
