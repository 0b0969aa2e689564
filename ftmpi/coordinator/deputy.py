"""The coordinator's side of failover (a part the driver owns, :class:`Replication`): the replica sent to the
deputy every round, the fence that stops a coordinator that was replaced, and, in a deputy that took over,
the driver's counters built from its replica, the first steps (the lost coordinator ended if it hangs on this
host) and the last. The decisions without MPI are in :mod:`ftmpi.core.failover`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ftmpi.comm import TAG_DEPOSED, TAG_REPLICA, Detector
from ftmpi.coordinator.context import Context, Driver
from ftmpi.coordinator.staging import Standby
from ftmpi.core import protocol as P
from ftmpi.core.failover import Change, ReplicaSender, choose_deputy, silence_limit, state_key
from ftmpi.core.kinds import How
from ftmpi.errors import EXIT_COORDINATOR_LOST
from ftmpi.observe.metrics import write_json_atomic
from ftmpi.procs import hostname, kill_if_same, start_time
from ftmpi.storage.term import Fence, current_term, holder, verdict_written


class Replaced(Exception):  # noqa: N818 (control flow, not an error)
    """This coordinator hung, was replaced by a deputy, and woke up (:meth:`Replication.check_replaced`)."""

    def __init__(self, msg: P.Deposed) -> None:
        super().__init__(f"replaced by rank {msg.rank} at round {msg.round}")
        self.msg = msg


def restore_staged(standby: Standby, rep: P.Replica) -> None:
    """Before a takeover's handoff is planned: the standby files the lost coordinator had written (those
    still on disk)."""
    if standby.active:
        assert rep.state is not None
        standby.staged = {int(r): (np.asarray(ids), np.asarray(hits), Path(p))
                          for r, (ids, hits, p) in rep.state.get("staged", {}).items() if Path(p).exists()}


class Replication:
    """Who holds the coordinator's replica, what it is sent and when, and a takeover's first and last steps.

    Args:
        ctx: What the coordinator's parts share.
        driver: The round driver (pings; handoff files being written).
        spare: The standby coordinator's rank (``executor.standby_coordinator``: it trains nothing and is
            the deputy while it lives), or -1.

    Attributes:
        deputy: The rank this round's replica goes to, -1 for none.
        spare: As given; -1 once the standby coordinator is lost.
        sender: Builds the replicas (``sender.sent``: how many).
        replica_bytes: Bytes of replicas sent (not counted in the training traffic).
        replica_seconds: The coordinator's time building and sending them.
        changes: The earlier coordinator changes of this run (from the replica a takeover started from).
        change: The change this process took over in, or None.
        identity: (rank, host, pid, process start time) of this coordinator.
    """

    def __init__(self, ctx: Context, driver: Driver, spare: int) -> None:
        self.ctx, self.driver, self.spare = ctx, driver, spare
        self.deputy = -1
        self.sender = ReplicaSender()
        self.replica_bytes = 0
        self.replica_seconds = 0.0
        self.changes: list[dict[str, Any]] = []
        self.change: Change | None = None
        pid = os.getpid()
        self.identity: tuple[int, str, int, int] = (ctx.ch.rank, hostname(), pid, start_time(pid))
        self._replicated_key: tuple | None = None  # the state last replicated (ftmpi.core.failover.state_key)
        self._unflushed = False  # a replica of a changed state went out this round
        self._next_fence_check = 0.0
        self.fence: Fence | None = None  # this coordinator's term in the run dir (set by the driver)
        self._trained_before = False  # this process took over as a deputy that trained
        self.kept = False  # ... and goes on training its rows in this process (else they were handed over)

    # ------------------------------------------------------------------------------------- takeover
    def from_replica(self, rep: P.Replica, change: Change) -> None:
        """Take over: model, counters and outputs as the lost coordinator had them after round ``rep.round - 1``
        (metrics.csv was cut back beforehand to the rows before the one it had not written yet)."""
        ctx, t = self.ctx, self.ctx.tally
        o = rep.outputs
        ctx.gm.restore(SimpleNamespace(**rep.model))
        ctx.out.pending = dict(rep.pending) if rep.pending else None
        ctx.out.last_acc, ctx.out.last_loss = o["last_acc"], o["last_loss"]
        ctx.out.last_per_class = np.asarray(o["last_per_class"], np.float64)
        t.bytes_before, t.wall_before, t.ckpt_seconds = o["bytes_total"], o["wall_before"], o["ckpt_seconds"]
        # the run's wall clock goes on from the replica's
        t.t_start = time.monotonic() - (o["wall_launch"] + max(0.0, time.time() - rep.sent_at))
        t.histogram = None if o["histogram"] is None else np.asarray(o["histogram"])
        t.initial_shards, t.resumed_from, t.alive_comm = o["initial_shards"], o["resumed_from"], None
        t.shard_bytes, t.test_set_bytes = o.get("shard_bytes", 0), o.get("test_set_bytes", 0)
        self.changes = list(o["changes"])
        members = (rep.state or {}).get("members", {})
        me = members.get(ctx.ch.rank, members.get(str(ctx.ch.rank)))
        self._trained_before = bool(me and me.get("alive"))
        t.dealt = True
        self.change = change
        ctx.ch.coordinator = ctx.ch.rank

    def begin_takeover(self) -> None:
        """The first steps of a deputy that took over: say so, leave a "running" summary.json, and end a hung
        predecessor on this host (ULFM: the job survives it; without ULFM only at the end, since a rank that
        dies then ends the whole job), or tell it it was replaced should it wake up."""
        assert self.change is not None
        ch, run_dir = self.ctx.ch, self.ctx.run_dir
        self.ctx.out.progress.warn(f"warning: {self.change.line()}")
        try:  # this process's "running" marker (a crash is recorded only over its own)
            write_json_atomic(run_dir / "summary.json", {"status": "running", "name": self.ctx.cfg.name,
                                                         "pid": os.getpid(), "coordinator": ch.rank})
        except OSError:
            pass
        host, pid, started = self.change.lost_id
        if ch.detector is Detector.ULFM and host == hostname():
            self.change.killed = kill_if_same(int(pid), int(started))
        if not self.change.killed:  # should it wake up (stopped, or on another host): it must write nothing
            ch.send(self.change.lost, TAG_DEPOSED, P.Deposed(ch.rank, self.change.round, False,
                                                             self.ctx.state.term))

    def round_sent(self, rnd: int) -> None:
        """The round message of ``rnd`` went out: the first one after a takeover completes the change."""
        if self.change is not None and self.change.first_round_at is None:
            self.change.started(time.time())
            self.ctx.out.progress.warn(f"coordinator: rank {self.ctx.ch.rank} sent its first round message "
                                       f"(round {rnd}), {self.change.takeover_time:.2f}s after the "
                                       f"{'fault' if self.change.injected_at is not None else 'detection'}")

    def all_changes(self) -> list[dict[str, Any]]:
        """Every coordinator change of the run, this process's last (as summary.json lists them), each with
        whether the rounds it redid gave what they would have given the first time (``exact``, ``why``)."""
        return self.changes + ([self.change.record() | self.exactness()] if self.change is not None else [])

    def exactness(self) -> dict[str, Any]:
        """Whether this process's takeover changed nothing: the training workers are the same (the
        deputy did not train: a standby coordinator) and every worker that redid a round it had trained
        restored the state it had started that round with (``GlobalModel.redone``), with no worker lost in the
        rounds redone."""
        assert self.change is not None
        gm, s = self.ctx.gm, self.ctx.state
        why = []
        if self._trained_before and not self.kept:
            why.append(f"the deputy (rank {self.ctx.ch.rank}) was a training worker: it stopped training and its "
                       "rows were handed over, as a lost worker's (executor.standby_coordinator keeps the training "
                       "workers as they were)")
        bad = sorted(r for r, v in gm.redone.items() if v < 0)
        if bad:
            why.append(f"worker(s) {bad} redid a round without the state they had started it with")
        lost = sorted(f.rank for f in s.failures if f.rank != self.ctx.ch.rank and
                      self.change.round <= f.round < self.change.round + max(1, self.change.rounds_redone))
        if lost:
            why.append(f"worker(s) {lost} lost in the rounds redone")
        return {"exact": not why, "why": "; ".join(why)}

    def hands_over_crash(self) -> bool:
        """Whether a crash of this coordinator goes to its deputy: one holds a replica, and no change of this
        run was a crash already (the same bug would go round every worker)."""
        return self.sender.sent > 0 and self.deputy >= 0 and not any(c["how"] == How.ERROR
                                                                      for c in self.all_changes())

    # ------------------------------------------------------------------------------------ replicas
    def name_deputy(self) -> int:
        """This round's deputy: the standby coordinator while it lives (its loss is said once), else, with
        ``executor.deputy``, the lowest alive worker on another host (:func:`choose_deputy`), else none."""
        if self.spare >= 0 and self.spare in self.ctx.ch.failed_ranks():
            self.ctx.out.progress.warn(f"warning: the standby coordinator (rank {self.spare}) is lost; the lowest "
                                       "alive worker is the deputy from now on")
            self.spare = -1
        self.deputy = self.spare if self.spare >= 0 else self._choose_deputy() if self.ctx.cfg.executor.deputy \
            else -1
        return self.deputy

    def _choose_deputy(self) -> int:
        s = self.ctx.state
        others = [r for r in s.alive if r != s.coordinator]  # not a coordinator that trains its own rows
        return choose_deputy(others, {r: s.members[r].host for r in others}, self.identity[1])

    def outputs_state(self) -> dict[str, Any]:
        """The counters and outputs a takeover goes on from (the replica's ``outputs``)."""
        tr, t, out = self.ctx.ch.traffic, self.ctx.tally, self.ctx.out
        return {"bytes_total": t.bytes_before + tr.bytes_sent + tr.bytes_recv, "wall_before": t.wall_before,
                "wall_launch": time.monotonic() - t.t_start, "ckpt_seconds": t.ckpt_seconds,
                "last_acc": out.last_acc, "last_loss": out.last_loss,
                "last_per_class": np.asarray(out.last_per_class).tolist(),
                "histogram": None if t.histogram is None else t.histogram.tolist(),
                "initial_shards": t.initial_shards, "resumed_from": t.resumed_from,
                "shard_bytes": t.shard_bytes, "test_set_bytes": t.test_set_bytes,
                "changes": self.all_changes()}

    def replicate(self) -> None:
        """Off the critical path (after the broadcast): the deputy's replica of the end of the last round. Not
        while a handoff file is being written: the state would say that survivors own rows whose message has
        not gone out yet (the deputy keeps its older replica; :meth:`replicate_changes` follows the write)."""
        if self.deputy < 0 or self.driver.handoffs_pending():
            return
        ctx = self.ctx
        t0 = time.monotonic()
        # standby files already written: a new coordinator hands rows from them, as rank 0 would
        staged = {r: (ids, hits, str(path)) for r, (ids, hits, path) in dict(ctx.standby.staged).items()} \
            if ctx.standby.active else None
        self._replicated_key = state_key(ctx.state)
        rep = self.sender.build(self.deputy, ctx.state, ctx.gm.replica_fields(), ctx.out.pending,
                                self.outputs_state(), self.identity, time.time(), staged)
        n = ctx.ch.send(self.deputy, TAG_REPLICA, rep)
        # counted apart: bytes_total stays the training traffic (comparable with and without a deputy)
        ctx.ch.traffic.bytes_sent -= n
        ctx.ch.traffic.msgs_sent -= 1
        self.replica_bytes += n
        self.replica_seconds += time.monotonic() - t0

    def replicate_changes(self) -> None:
        """Mid-round, once a loss was handled and every handoff message went out: the deputy gets the new state
        at once (with the model of the last round, which is what a takeover redoes this round from), so that
        rank 0 lost next does not undo the handoff; a lost deputy is replaced and announced with the pings."""
        ctx = self.ctx
        if self.driver.handoffs_pending() or (not ctx.cfg.executor.deputy and self.spare < 0):
            return
        if state_key(ctx.state) == self._replicated_key:
            return
        if self.deputy not in ctx.state.alive and self.deputy != self.spare:
            self.deputy = self._choose_deputy() if ctx.cfg.executor.deputy else -1
            self.driver.ping(ctx.state.alive, force=True)
        self.replicate()
        self._unflushed = True

    def replicate_after_loss(self) -> None:
        """End of a round in which a loss was handled while its handoff file is still being written: wait for
        it (pinging) so that the deputy, or a new one, has the new state before the next round (rank 0 lost
        then takes over with the loss known; the write is needed before the survivors train on it anyway)."""
        if state_key(self.ctx.state) != self._replicated_key:
            if self.driver.handoffs_pending():
                self.driver.wait_handoffs()
            self.replicate_changes()
        if self._unflushed and self.deputy >= 0:
            # delivered before the next round: a large message needs the sender's progress to arrive
            self.ctx.ch.flush(time.monotonic() + min(1.0, self.ctx.cfg.executor.timeout / 2), [self.deputy])
        self._unflushed = False

    # ---------------------------------------------------------------------------------------- fence
    def check_replaced(self, now: bool = False) -> None:
        """Raise :class:`Replaced` if a deputy took over from this coordinator meanwhile (it was silent, say
        stopped or slow, and woke up): its successor's ``Deposed`` message arrived, or a higher term was
        claimed in the run dir. Then it must not write a row, a checkpoint or a verdict. Looks at most every
        0.1 s, unless ``now`` (before a checkpoint)."""
        t = time.monotonic()
        if not now and t < self._next_fence_check:
            return
        self._next_fence_check = t + 0.1
        msg = self._deposed()
        if msg is None and self.fence is not None and not self.fence.still_holds():
            msg = self.deposed_by_run_dir()
        if msg is not None:
            raise Replaced(msg)

    def deposed_by_run_dir(self) -> P.Deposed:
        """The ``Deposed`` notice the run dir's newest term stands for (its claim names the new coordinator)."""
        run_dir = self.ctx.run_dir
        term = current_term(run_dir)
        return P.Deposed(int(holder(run_dir, term).get("rank", -1)), self.ctx.state.round, False, term)

    def _deposed(self) -> P.Deposed | None:
        ch = self.ctx.ch
        # one source at a time: under ULFM a wildcard receive fails while any failure is unacknowledged
        for r in range(ch.size):
            if r != ch.rank:
                msg = ch.try_recv(r, TAG_DEPOSED)
                if msg is not None:
                    return msg
        return None

    def leave_replaced(self, exc: Replaced) -> int:
        """Write nothing; hand the verdict to the new coordinator. Under ULFM leave now; without it a rank that
        leaves ends the whole job, so wait until the new coordinator says the run is over (or ends us)."""
        ch = self.ctx.ch
        ch.coordinator = exc.msg.rank
        self.ctx.out.progress.warn(f"warning: this coordinator (rank {ch.rank}) hung and was {exc}; it writes "
                                   "nothing more and leaves")
        if ch.detector is not Detector.ULFM:
            # bounded by the successor's verdict: once the run dir holds it (summary.json of its term or a
            # later one, no longer "running"), the successor's goodbye is waited for one silence limit at most
            grace = silence_limit(self.ctx.cfg.executor.timeout)
            seen: float | None = None
            look = 0.0
            while True:
                msg = self._deposed()
                if msg is not None and msg.final:
                    break
                now = time.monotonic()
                if seen is None and now >= look:
                    look = now + 0.5
                    if verdict_written(self.ctx.run_dir, max(exc.msg.term, 1)):
                        seen = now
                elif seen is not None and now - seen > grace:
                    break
                time.sleep(0.05)
        return EXIT_COORDINATOR_LOST

    def end_lost_coordinators(self) -> None:
        """A lost coordinator that hangs (stopped, spinning) on this host keeps mpirun alive: SIGKILL it, only
        if its pid still has the start time it reported. One that woke up waits for leave to go."""
        ch = self.ctx.ch
        me = hostname()
        for c in self.all_changes():
            if not c["killed"]:
                ch.send(int(c["lost"]), TAG_DEPOSED, P.Deposed(ch.rank, self.ctx.state.round, True,
                                                               self.ctx.state.term))
        ch.flush(time.monotonic() + 0.5)
        for c in self.all_changes():
            host, pid, started = c["lost_id"]
            if host == me and not c["killed"]:
                kill_if_same(int(pid), int(started))
