"""The coordinator's side of failover, as a mixin of :class:`ftmpi.coordinator.driver.Coordinator`: the replica sent
to the deputy every round, and, in a deputy that took over, building the driver's state from its replica,
starting (the lost coordinator ended if it hangs on this host) and ending. The decisions without MPI are in
:mod:`ftmpi.core.failover`.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ftmpi.comm import TAG_DEPOSED, TAG_REPLICA, Detector
from ftmpi.core import protocol as P
from ftmpi.core.failover import Change, choose_deputy, state_key
from ftmpi.errors import EXIT_COORDINATOR_LOST
from ftmpi.observe.metrics import write_json_atomic
from ftmpi.procs import hostname, kill_if_same


class Replaced(Exception):  # noqa: N818 (control flow, not an error)
    """This coordinator hung, was replaced by a deputy, and woke up (:meth:`Replication._check_replaced`)."""

    def __init__(self, msg: P.Deposed) -> None:
        super().__init__(f"replaced by rank {msg.rank} at round {msg.round}")
        self.msg = msg


class Replication:
    """Mixed into the Coordinator (whose attributes it uses: ch, state, gm, out, ...)."""

    ch: Any
    state: Any
    gm: Any
    out: Any
    sender: Any
    changes: list[dict[str, Any]]
    change: Change | None
    deputy: int
    standby: Any
    cfg: Any
    run_dir: Path
    _replicated_key: tuple | None = None
    _unflushed = False  # a replica of a changed state went out this round
    _next_fence_check = 0.0
    identity: tuple[int, str, int, int]

    def _from_replica(self, rep: P.Replica, change: Change) -> None:
        """Take over: model, counters and outputs as the lost coordinator had them after round ``rep.round - 1``;
        metrics.csv was cut back (in ``__init__``) to the rows before the one it had not written yet."""
        o = rep.outputs
        self.gm.restore(SimpleNamespace(**rep.model))
        self.out.pending = dict(rep.pending) if rep.pending else None
        self.out.last_acc, self.out.last_loss = o["last_acc"], o["last_loss"]
        self.out.last_per_class = np.asarray(o["last_per_class"], np.float64)
        self.bytes_before, self.wall_before, self.ckpt_seconds = o["bytes_total"], o["wall_before"], o["ckpt_seconds"]
        # the run's wall clock goes on from the replica's
        self.t_start = time.monotonic() - (o["wall_launch"] + max(0.0, time.time() - rep.sent_at))
        self.histogram = None if o["histogram"] is None else np.asarray(o["histogram"])
        self.initial_shards, self.resumed_from, self.alive_comm = o["initial_shards"], o["resumed_from"], None
        self.shard_bytes, self.test_set_bytes = o.get("shard_bytes", 0), o.get("test_set_bytes", 0)
        self.changes = list(o["changes"])
        self.dealt = True
        self.change = change
        self.ch.coordinator = self.me

    def _restore_staged(self, rep: P.Replica) -> None:
        """Before the takeover's handoff is planned: the standby files the lost coordinator had written."""
        if self.standby.active:
            assert rep.state is not None
            self.standby.staged = {int(r): (np.asarray(ids), np.asarray(hits), Path(p))
                                   for r, (ids, hits, p) in rep.state.get("staged", {}).items() if Path(p).exists()}

    def _outputs_state(self) -> dict[str, Any]:
        tr = self.ch.traffic
        return {"bytes_total": self.bytes_before + tr.bytes_sent + tr.bytes_recv, "wall_before": self.wall_before,
                "wall_launch": time.monotonic() - self.t_start, "ckpt_seconds": self.ckpt_seconds,
                "last_acc": self.out.last_acc, "last_loss": self.out.last_loss,
                "last_per_class": np.asarray(self.out.last_per_class).tolist(),
                "histogram": None if self.histogram is None else self.histogram.tolist(),
                "initial_shards": self.initial_shards, "resumed_from": self.resumed_from,
                "shard_bytes": self.shard_bytes, "test_set_bytes": self.test_set_bytes,  # type: ignore[attr-defined]
                "changes": self._all_changes()}

    def _all_changes(self) -> list[dict[str, Any]]:
        return self.changes + ([asdict(self.change)] if self.change is not None else [])

    def _replicate(self) -> None:
        """Off the critical path (after the broadcast): the deputy's replica of the end of the last round. Not
        while a handoff file is being written: the state would say that survivors own rows whose message has
        not gone out yet (the deputy keeps its older replica; :meth:`_replicate_changes` follows the write)."""
        if self.deputy < 0 or self._writes:  # type: ignore[attr-defined]
            return
        t0 = time.monotonic()
        # standby files already written: a new coordinator hands rows from them, as rank 0 would
        staged = {r: (ids, hits, str(path)) for r, (ids, hits, path) in dict(self.standby.staged).items()} \
            if self.standby.active else None
        self._replicated_key = state_key(self.state)
        rep = self.sender.build(self.deputy, self.state, self.gm.replica_fields(), self.out.pending,
                                self._outputs_state(), self.identity, time.time(), staged)
        n = self.ch.send(self.deputy, TAG_REPLICA, rep)
        # counted apart: bytes_total stays the training traffic (comparable with and without a deputy)
        self.ch.traffic.bytes_sent -= n
        self.ch.traffic.msgs_sent -= 1
        self.replica_bytes += n
        self.replica_seconds += time.monotonic() - t0

    def _choose_deputy(self) -> int:
        s = self.state
        return choose_deputy(s.alive, {r: s.members[r].host for r in s.alive}, self.identity[1])

    def _replicate_changes(self) -> None:
        """Mid-round, once a loss was handled and every handoff message went out: the deputy gets the new state
        at once (with the model of the last round, which is what a takeover redoes this round from), so that
        rank 0 lost next does not undo the handoff; a lost deputy is replaced and announced with the pings."""
        if self._writes or (not self.cfg.executor.deputy and self.spare < 0):  # type: ignore[attr-defined]
            return
        if state_key(self.state) == self._replicated_key:
            return
        if self.deputy not in self.state.alive and self.deputy != self.spare:  # type: ignore[attr-defined]
            self.deputy = self._choose_deputy() if self.cfg.executor.deputy else -1
            self._ping(self.state.alive, force=True)  # type: ignore[attr-defined]
        self._replicate()
        self._unflushed = True

    def _replicate_after_loss(self) -> None:
        """End of a round in which a loss was handled while its handoff file is still being written: wait for
        it (pinging) so that the deputy, or a new one, has the new state before the next round (rank 0 lost
        then takes over with the loss known; the write is needed before the survivors train on it anyway)."""
        if state_key(self.state) != self._replicated_key:
            if self._writes:  # type: ignore[attr-defined]
                self._wait_busy(lambda: bool(self._writes))  # type: ignore[attr-defined]
            self._replicate_changes()
        if self._unflushed and self.deputy >= 0:
            # delivered before the next round: a large message needs the sender's progress to arrive
            self.ch.flush(time.monotonic() + min(1.0, self.cfg.executor.timeout / 2), [self.deputy])
        self._unflushed = False

    def _check_replaced(self) -> None:
        """Raise :class:`Replaced` if a deputy took over from this coordinator meanwhile (it hung, say stopped,
        and woke up): then it must not write a row, a checkpoint or a verdict."""
        now = time.monotonic()
        if now < self._next_fence_check:
            return
        self._next_fence_check = now + 0.1
        msg = self._deposed()
        if msg is not None:
            raise Replaced(msg)

    def _deposed(self) -> P.Deposed | None:
        # one source at a time: under ULFM a wildcard receive fails while any failure is unacknowledged
        for r in range(self.ch.size):
            if r != self.ch.rank:
                msg = self.ch.try_recv(r, TAG_DEPOSED)
                if msg is not None:
                    return msg
        return None

    def _leave_replaced(self, exc: Replaced) -> int:
        """Write nothing; hand the verdict to the new coordinator. Under ULFM leave now; without it a rank that
        leaves ends the whole job, so wait until the new coordinator says the run is over (or ends us)."""
        self.ch.coordinator = exc.msg.rank
        self.out.progress.warn(f"warning: this coordinator (rank {self.ch.rank}) hung and was {exc}; it writes "
                               "nothing more and leaves")
        if self.ch.detector is not Detector.ULFM:
            while True:
                msg = self._deposed()
                if msg is not None and msg.final:
                    break
                time.sleep(0.05)
        return EXIT_COORDINATOR_LOST

    def _begin_takeover(self) -> None:
        """The first steps of a deputy that took over: say so, end a hung predecessor on this host (ULFM: the
        job survives it; without ULFM only at the end, since a rank that dies then ends the whole job), hand
        its own rows over, stage."""
        assert self.change is not None
        self.out.progress.warn(f"warning: {self.change.line()}")
        try:  # this process's "running" marker (cli.py records a crash only over its own)
            write_json_atomic(self.run_dir / "summary.json", {"status": "running", "name": self.cfg.name,
                                                              "pid": os.getpid(), "coordinator": self.ch.rank})
        except OSError:
            pass
        host, pid, started = self.change.lost_id
        if self.ch.detector is Detector.ULFM and host == hostname():
            self.change.killed = kill_if_same(int(pid), int(started))
        if not self.change.killed:  # should it wake up (stopped, or on another host): it must write nothing
            self.ch.send(self.change.lost, TAG_DEPOSED, P.Deposed(self.ch.rank, self.change.round))
        self._apply(self._effects0, {})  # type: ignore[attr-defined]
        # stage the workers whose standby file is not known (the others' were restored from the replica)
        self._stage([r for r in self.state.alive if r not in self.standby.staged])  # type: ignore[attr-defined]

    def _end_lost_coordinators(self) -> None:
        """A lost coordinator that hangs (stopped, spinning) on this host keeps mpirun alive: SIGKILL it, only
        if its pid still has the start time it reported. One that woke up waits for leave to go."""
        me = hostname()
        for c in self._all_changes():
            if not c["killed"]:
                self.ch.send(int(c["lost"]), TAG_DEPOSED, P.Deposed(self.ch.rank, self.state.round, True))
        self.ch.flush(time.monotonic() + 0.5)
        for c in self._all_changes():
            host, pid, started = c["lost_id"]
            if host == me and not c["killed"]:
                kill_if_same(int(pid), int(started))
