"""Rank 0's knowledge of the cluster, as one object with no MPI, no I/O and no clock of its own.

:class:`ClusterState` holds the members and suspects, the membership epoch and the round, who owns each
training row and how many rows each stands for, each worker's representative ids, the failure log and the
recovery bookkeeping. The round driver (:mod:`ftmpi.coordinator.driver`) feeds it events (:class:`Heard` a
message, :class:`Lost` a worker, :class:`Chosen` representatives) with the wall time, and carries out the
effects it returns (:class:`SendHandoff`, :class:`WriteHandoff`, :class:`Stage`, :class:`Rebuild`,
:class:`Expel`, :class:`Accept`, :class:`Log`). :meth:`ClusterState.snapshot` / :meth:`ClusterState.restore`
give the whole of it as plain numpy arrays and small dicts (a checkpoint, or a deputy of rank 0).

Phases, checked (:class:`~ftmpi.core.kinds.Phase` draws the transitions): ``joining`` (hellos; a loss is
only recorded) → ``training`` (rows dealt; a loss hands rows over) → ``done``.

Ownership invariant: every row is owned by exactly one alive worker, dropped, or orphaned (neither: the
rows of the last worker of a run that lost every worker, kept so that a resume re-assigns them).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ftmpi.core import protocol as P
from ftmpi.core.events import (
    Accept,
    Adopt,
    Chosen,
    Effect,
    Expel,
    Heard,
    Log,
    Lost,
    Rebuild,
    SendHandoff,
    Stage,
    WriteHandoff,
)
from ftmpi.core.handoff import Policy, Scored
from ftmpi.core.kinds import How, Phase
from ftmpi.core.partition import Ownership, assign_handoff
from ftmpi.core.quorum import Stragglers

__all__ = ["Accept", "Adopt", "Chosen", "ClusterState", "Effect", "Expel", "Failure", "Heard", "How", "Log", "Lost",
           "Member", "Phase", "Rebuild", "SendHandoff", "Stage", "WriteHandoff"]


@dataclass
class Member:
    rank: int
    host: str = "?"
    pid: int = 0
    start_time: int = 0  # process start time (clock ticks since boot), from its hello
    alive: bool = True
    rep: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class Failure:
    """One worker lost: when, how it was noticed, and what it cost. ``how`` is made a :class:`How` on
    construction (a snapshot or a checkpoint holds its value); :meth:`record` gives the plain dict."""

    rank: int
    round: int
    how: How
    detected_at: float  # wall clock (time.time())
    injected_at: float | None = None  # wall clock of the injected fault, when one was injected
    kind: str | None = None  # injected fault kind
    detection_latency: float | None = None
    recovery_time: float | None = None
    handoff_time: float | None = None
    rows_handed: int = 0
    rows_dropped: int = 0
    reason: str = ""
    epoch: int | None = None  # the membership epoch this loss opened (its handoff files carry it)
    recovered_round: int | None = None  # the round whose replies first held every receiver's work on the rows
    rows_prefetched: int = 0  # of the rows handed, those the survivors had read ahead (in memory at the loss)
    row_weight: float | None = None  # rep_weight shard: M/k, the weight of one draw of the dead shard's rows
    rows_orphaned: int = 0  # rows kept unowned because no worker was left (a resume re-assigns them)
    spare: int | None = None  # the hot spare that took the whole shard (then nothing was handed to survivors)
    rows_to_spare: int = 0

    def __post_init__(self) -> None:
        self.how = How(self.how)

    def record(self) -> dict[str, Any]:
        """The fields as a dict of plain values (``how`` its string), as summary.json, checkpoints and the
        replica hold them; ``Failure(**record)`` gives this object back."""
        return {**asdict(self), "how": self.how.value}


class ClusterState:
    """See the module docstring.

    Args:
        n_rows: Training rows (ids ``0 .. n_rows-1``).
        workers: World ranks of the workers of this job.
        policy: The handoff policy (:mod:`ftmpi.core.handoff`).
        seed: The run's seed (deals are seeded from it and the epoch).
        launch_time: Wall time this launch began: a fault mark older than it is never attributed.
        handoff_file: Epoch -> the path of that epoch's handoff file (a name, nothing is opened).
        spares: World ranks of the hot spares (``executor.spares``): members that train nothing until a worker
            is lost; the first idle one that said hello then takes the lost worker's whole shard
            (:class:`Adopt`), and the survivors are handed nothing. A worker that never joins is stood in for
            at the deal. Without a spare left, losses are handed over as before.
    """

    def __init__(self, n_rows: int, workers: list[int], policy: Policy, seed: int = 0, launch_time: float = 0.0,
                 handoff_file: Callable[[int], str] = lambda e: f"handoff-e{e:04d}.h5",
                 spares: list[int] | tuple[int, ...] = ()) -> None:
        self.policy, self.seed, self.launch_time, self.handoff_file = policy, seed, launch_time, handoff_file
        self.phase = Phase.JOINING
        self.coordinator = 0  # the coordinator's rank (a deputy that took over: its own)
        self.term = 1  # the coordinator's term: grows by one at each takeover and relaunch (storage.term)
        self.members = {r: Member(r) for r in workers}
        self.suspects: set[int] = set()  # declared dead by deadline: may still wake up
        self.epoch = 0
        self.round = 0
        self.ownership = Ownership(n_rows)
        self.weight = np.ones(n_rows)
        self.failures: list[Failure] = []
        self.stale = 0
        self.rows_handed = 0
        self.rows_unreadable = 0  # handed rows a survivor could not read (dropped)
        self.rows_unwritten = 0  # rows whose handoff file could not be written (dropped)
        self._awaiting: list[Failure] = []
        self._receivers: dict[int, set[int]] = {}  # epoch -> survivors handed rows in it
        self._ready: dict[int, dict[int, float]] = {}  # epoch -> {rank: wall time it trained on them}
        self._prefetched: dict[int, int] = {}  # epoch -> handed rows the survivors had read ahead
        self._sent: dict[int, dict[int, list[tuple[str, int, int, np.ndarray]]]] = {}  # epoch -> rank -> parts
        self._restage: set[int] = set()
        self._round_epoch = 0  # the epoch the current round began in
        self._replied: set[int] = set()
        # quorum rounds (executor.quorum < 1, ftmpi.core.quorum): the workers' pace, late replies, rebalancing
        self.stragglers = Stragglers()
        self.spares: dict[int, Member] = {r: Member(r) for r in spares}  # idle hot spares
        self.spare_log: list[dict[str, Any]] = []  # one record per spare that took a shard, or was lost idle
        self.adopting: dict[int, int] = {}  # spare -> the epoch it took a shard in, until its first reply
        # set by the driver while it collects the round's replies: a spare that takes a shard then trains the
        # round in flight in the lost worker's place (not kept in snapshots: a restored state is between rounds)
        self.collecting = False
        self._starts: dict[int, int] = {}  # spare -> the first round it trains (the one after it took the shard)
        # spare -> the worker whose place it holds (the first of a chain): it draws that worker's minibatches, its
        # update is aggregated in that worker's place, and its standby rows are dealt as that worker's would be
        self.ident: dict[int, int] = {}
        self._joined_spares: set[int] = set()  # idle spares that said hello (only those can take a shard)
        self._now = 0.0

    # ------------------------------------------------------------------------------------------ views
    @property
    def alive(self) -> list[int]:
        return [r for r, m in self.members.items() if m.alive]

    def representative(self, rank: int) -> np.ndarray:
        return self.members[rank].rep

    def ident_of(self, rank: int) -> int:
        """The worker whose place ``rank`` holds: itself, or for a spare that took a shard, the lost worker
        (see :attr:`ident`)."""
        return self.ident.get(rank, rank)

    def orphaned(self) -> np.ndarray:
        """Rows neither owned nor dropped (kept for a resume when every worker was lost)."""
        return self.ownership.unaccounted()

    def standby_stale(self, rank: int) -> bool:
        """Whether the worker's rows changed since its representative rows were last staged (it was handed
        rows, or lost handed rows it could not read, and no :class:`Stage` effect for it followed): a standby
        file staged before the change is no draw of the rows it holds now, and is not handed over."""
        return rank in self._restage

    def _to(self, phase: Phase) -> None:
        if not self.phase.can_become(phase):
            raise RuntimeError(f"cluster state: {self.phase} -> {phase} is not a transition")
        self.phase = phase

    # ------------------------------------------------------------------------------------------- start
    def deal(self, parts: dict[int, np.ndarray]) -> None:
        """A fresh run: each alive worker's rows (joining → training)."""
        for r, ids in parts.items():
            self.ownership.assign(r, ids)
        self._to(Phase.TRAINING)

    def resume(self, snap: dict[str, Any]) -> int:
        """A resumed run: ownership, weights, counters and failure log from :meth:`snapshot` (or a checkpoint
        in that shape); rows of ranks that are not in this job, and orphaned rows, are spread evenly over its
        workers and a rank in both keeps its rows (a skewed partition stays skewed); if ranks joined that
        owned nothing, every owned row is spread again. Dropped rows stay dropped. Returns how many rows
        moved (joining → training)."""
        own = Ownership.from_arrays(snap["owner"], np.flatnonzero(snap["dropped"]))
        if own.n_total != self.ownership.n_total:
            raise ValueError(f"checkpoint holds ownership of {own.n_total} samples but the dataset has "
                             f"{self.ownership.n_total} training rows")
        self.ownership = own
        w = snap.get("weight")
        self.weight = np.ones(own.n_total) if w is None else np.asarray(w, np.float64).copy()
        self.epoch, self.round = int(snap["epoch"]) + 1, int(snap["round"])
        self.stale, self.rows_handed = int(snap.get("stale", 0)), int(snap.get("rows_handed", 0))
        self.failures = [Failure(**f) for f in snap.get("failures", [])]
        alive = self.alive
        newcomers = [r for r in alive if r not in own.ranks()]
        for r in own.ranks():
            if newcomers or r not in alive:
                own.release(r)
        ids = own.unaccounted()
        if len(ids) and alive:
            for r, part in assign_handoff(ids, alive, self.seed + int(snap["epoch"]) + 1).items():
                own.assign(r, part)
        for r, rep in snap.get("representative", {}).items():
            if int(r) in self.members and self.members[int(r)].alive:
                self.members[int(r)].rep = np.asarray(rep, np.int64)
        self._to(Phase.TRAINING)
        return int(len(ids))

    def finish(self) -> None:
        self._to(Phase.DONE)

    # ------------------------------------------------------------------------------------------ rounds
    def begin_round(self, iters: int = 0) -> None:
        """Round ``self.round`` goes out with ``iters`` local iterations (a rebalanced worker is given fewer:
        ``stragglers.iters_for``)."""
        self._round_epoch = self.epoch
        self._replied = set()
        if self.stragglers.rules.active:
            self.stragglers.begin(self.round, self.epoch, iters)

    def in_round(self) -> list[int]:
        """Alive workers this round is sent to: all but a spare that took a shard after the round's replies were
        collected (it starts with the next round); one that took it while they were is sent the round then."""
        return [r for r in self.alive if self._starts.get(r, 0) <= self.round]

    def waiting_for(self) -> list[int]:
        """Alive workers of this round that have not replied in it."""
        return [r for r in self.in_round() if r not in self._replied]

    def end_round(self, now: float) -> list[Effect]:
        """The round's replies are in (or its deadline passed, and :class:`Lost` was applied): note recoveries,
        restage the shards that changed once no loss awaits recovery, and move to the next round."""
        out: list[Effect] = []
        if self.stragglers.rules.active:  # a quorum round: who was late, who is rebalanced (logged)
            out += [Log(t, tb=t, kind="straggler") for t in self.stragglers.close(self.round, self.in_round(),
                                                                                   self._replied)]
        if self._awaiting and self.alive and not self.waiting_for():
            self._recovered(now)
            if not self._awaiting and self._restage:
                # not earlier: the writes would compete with the survivors' loading for the cores
                out.append(Stage(sorted(self._restage & set(self.alive))))
                self._restage.clear()
        self.round += 1
        return out

    def apply(self, events: list[Heard | Lost | Chosen], now: float) -> list[Effect]:
        """Consume events in order; every loss among them (announced, or found in an error report, even one
        that came with the worker's reply) is handled together, in one new epoch."""
        out: list[Effect] = []
        lost: list[Lost] = []
        self._now = now
        for ev in events:
            if isinstance(ev, Lost):
                lost.append(ev)
            elif isinstance(ev, Chosen):
                self.members[ev.rank].rep = np.asarray(ev.ids, np.int64)
            else:
                out += self._heard(ev, P.coerce(ev.msg), lost)
        if lost:
            out += self._lose(lost, now)
        return out

    def _heard(self, ev: Heard, msg: Any, lost: list[Lost]) -> list[Effect]:
        src = ev.src
        if src in self.spares:  # an idle spare only says hello (its beats and suspicions go to the driver)
            if isinstance(msg, P.Hello):
                sp = self.spares[src]
                sp.host, sp.pid, sp.start_time = msg.host, int(msg.pid), int(msg.start_time)
                self._joined_spares.add(src)
            elif isinstance(msg, P.Error):
                lost.append(Lost(src, How.ERROR, msg.error, ev.mark))
            return []
        m = self.members.get(src)
        if m is None or not m.alive:  # a rank declared dead speaks: a zombie; it is told to leave
            self.stale += 1
            return [Expel(src, "declared dead earlier; its messages are ignored")]
        if isinstance(msg, P.Hello):
            if self.phase is not Phase.JOINING:
                self.stale += 1
                return []
            m.host, m.pid, m.start_time = msg.host, int(msg.pid), int(msg.start_time)
            return []
        if isinstance(msg, P.Error):
            lost.append(Lost(src, How.ERROR, msg.error, ev.mark))
            return []
        if isinstance(msg, P.Reply) and msg.round == self.round and msg.epoch >= self._round_epoch \
                and src not in self._replied and self._starts.get(src, 0) <= self.round:
            # >= the round's epoch: a loss handled during the round moved rank 0 on
            self._replied.add(src)
            if self.stragglers.rules.active:
                self.stragglers.heard(src, msg.round, msg.t_compute, msg.n, msg.loss)
            return self._accepted(src, m, msg)
        if isinstance(msg, P.Reply) and self.stragglers.rules.active and msg.round < self.round:
            # a late reply of a quorum round: folded into this round (bounded staleness), else dropped and counted
            if self.stragglers.can_fold(src, msg.round, msg.epoch, self.round):
                self.stragglers.heard(src, msg.round, msg.t_compute, msg.n, msg.loss)
                return self._accepted(src, m, msg)
            self.stragglers.heard(src, msg.round, msg.t_compute)  # its pace still counts
            self.stragglers.dropped += 1
            return []
        self.stale += 1
        return []

    def _accepted(self, src: int, m: Member, msg: P.Reply) -> list[Effect]:
        """A reply is aggregated (this round's, or a late one folded into it; the driver tells them apart by
        ``round``): its representative ids, handoff readiness and unreadable slices are taken."""
        if isinstance(self.policy, Scored):
            m.rep = np.asarray(msg.rep, np.int64)
        if src in self.adopting:  # a spare's first reply: it trained on the shard it took
            self._ready.setdefault(self.adopting.pop(src), {})[src] = self._now
        for e, wall in msg.ready.items():
            self._ready.setdefault(int(e), {})[src] = float(wall)
        for e, n in msg.prefetched.items():
            self._prefetched[int(e)] = self._prefetched.get(int(e), 0) + int(n)
        return [Accept(src, msg)] + self._unreadable(src, msg.unreadable)

    def _unreadable(self, src: int, reports: list[tuple[int, str, int, int]]) -> list[Effect]:
        """A survivor could not read rows handed to it: they are dropped, with a warning (handing them to
        another survivor would most likely fail the same way, e.g. a folder not shared by every host)."""
        out: list[Effect] = []
        for epoch, path, a, b in reports:
            for p, a0, b0, ids in self._sent.get(int(epoch), {}).get(src, []):
                if (p, a0, b0) == (str(path), int(a), int(b)):
                    gone = self.ownership.release_ids(src, ids)
                    if len(gone):
                        self.ownership.drop(gone)
                        self._restage.add(src)  # its rows changed: its standby file is no longer a draw of them
                        self.rows_unreadable += len(gone)
                        out.append(Log(f"warning: worker {src} could not read rows {a}:{b} of {path} (epoch "
                                       f"{epoch}); {len(gone)} handed rows dropped; coverage "
                                       f"{self.ownership.coverage():.4f}"))
        return out

    def handoff_unwritten(self, epoch: int, why: str) -> list[Effect]:
        """The handoff file of ``epoch`` could not be written (e.g. a full disk): the rows it was to carry are
        dropped (orphaned when nobody is left to hold them), with a warning, and the run goes on. Returns the
        handoffs still to send: each receiver's segments that lie in other files (standby rows)."""
        path = self.handoff_file(epoch)
        out: list[Effect] = []
        n = 0
        for src, parts in sorted(self._sent.get(epoch, {}).items()):
            keep = []
            for p, a, b, ids in parts:
                if p != path:
                    keep.append((p, a, b, ids))
                    continue
                gone = self.ownership.release_ids(src, ids)
                if len(gone) and self.members[src].alive:
                    self.ownership.drop(gone)
                    self._restage.add(src)
                n += len(gone)
            self._sent[epoch][src] = keep
            if keep:
                w = self.weight
                out.append(SendHandoff(src, P.Handoff(epoch, [P.Segment(p, a, b, w[ids].copy())
                                                              for p, a, b, ids in keep], self.term)))
            else:
                self._receivers.get(epoch, set()).discard(src)
        self.rows_unwritten += n
        out.append(Log(f"warning: the handoff file of epoch {epoch} could not be written ({why}); its {n} rows "
                       f"are dropped and training goes on; coverage {self.ownership.coverage():.4f}",
                       tb=f"epoch {epoch}: handoff file not written, {n} rows dropped"))
        return out

    # -------------------------------------------------------------------------------------------- loss
    def _attribute(self, f: Failure, m: Member, mark: dict[str, Any] | None) -> None:
        """Take the injection time from a fault mark only if this very process wrote it during this launch
        (an older mark, e.g. from before a resume, belongs to another loss)."""
        if mark is None or float(mark.get("time", 0.0)) < self.launch_time:
            return
        if m.pid and int(mark.get("pid", -1)) != m.pid:
            return
        f.injected_at, f.kind = float(mark["time"]), str(mark["kind"])
        f.detection_latency = max(0.0, f.detected_at - f.injected_at)

    def _lose(self, events: list[Lost], now: float) -> list[Effect]:
        out: list[Effect] = []
        dead: list[int] = []
        failures: list[Failure] = []
        for ev in events:
            if ev.rank in self.spares:
                out += self._lose_spare(ev)
                continue
            m = self.members.get(ev.rank)
            if m is None or not m.alive or ev.rank in dead:
                continue
            m.alive = False
            f = Failure(rank=ev.rank, round=self.round, how=ev.how, detected_at=now, reason=ev.reason)
            self._attribute(f, m, ev.mark)
            if ev.how.suspect:
                self.suspects.add(ev.rank)
            self.failures.append(f)
            dead.append(ev.rank)
            failures.append(f)
            out.append(Log(f"worker {ev.rank} declared dead at round {self.round} ({ev.how}"
                           + (f", {f.detection_latency:.2f}s after the {f.kind}" if f.kind else "")
                           + (f": {ev.reason}" if ev.reason else "") + f"); {len(self.alive)} workers left",
                           tb=f"worker {ev.rank} lost ({ev.how}{', ' + f.kind if f.kind else ''})"))
            if ev.how is How.REJECTED:  # alive, but treated as failed: told why, it leaves (ftmpi.core.screen)
                out.append(Expel(ev.rank, f"treated as failed at round {self.round}: {ev.reason}"))
            elif ev.how.suspect:  # silent past the limit, maybe only stopped: told now, so that when it wakes up
                # the first thing it reads after what was already sent is why it must leave (a deputy among
                # them must not take over from its stale replica)
                out.append(Expel(ev.rank, f"declared dead at round {self.round} ({ev.how}"
                                          + (f": {ev.reason}" if ev.reason else "") + "); its messages are ignored"))
        if dead and self.phase is Phase.JOINING:  # not dealt yet: a spare stands in, its rows dealt to it
            for r in dead:
                sp = self._idle_spare()
                if sp is not None:
                    self.members[sp] = self.spares.pop(sp)
                    self.spare_log.append({"spare": sp, "took": r, "round": self.round, "epoch": self.epoch,
                                           "rows": 0, "at_deal": True})
                    out.append(Log(f"spare {sp} stands in for worker {r} (lost before the deal)",
                                   tb=f"spare {sp} stands in for worker {r}", kind="spare"))
        if not dead or self.phase is not Phase.TRAINING:
            return out
        return out + self._handoff(dead, failures)

    def _idle_spare(self) -> int | None:
        """The lowest idle spare that said hello, or None."""
        ready = sorted(r for r in self.spares if r in self._joined_spares)
        return ready[0] if ready else None

    def _lose_spare(self, ev: Lost) -> list[Effect]:
        """An idle spare is gone: nothing of the training changes; it is logged (and told to leave, if it may
        only be stopped)."""
        self.spares.pop(ev.rank)
        self._joined_spares.discard(ev.rank)
        self.spare_log.append({"spare": ev.rank, "lost": True, "round": self.round, "how": ev.how.value,
                               "reason": ev.reason})
        out: list[Effect] = [Log(f"spare {ev.rank} lost at round {self.round} ({ev.how}"
                                 + (f": {ev.reason}" if ev.reason else "") + f"); {len(self.spares)} spare(s) left",
                                 tb=f"spare {ev.rank} lost ({ev.how})", kind="spare")]
        if ev.how.suspect:
            self.suspects.add(ev.rank)
            out.append(Expel(ev.rank, f"declared dead at round {self.round} ({ev.how}); its messages are ignored"))
        return out

    def _adopt(self, dead: list[int], failures: list[Failure]) -> dict[int, int]:
        """Pair lost workers with idle spares (in order); each spare takes its worker's whole shard, rows and
        weights unchanged. Returns lost rank -> spare."""
        pairs: dict[int, int] = {}
        for r, f in zip(dead, failures, strict=True):
            sp = self._idle_spare()
            if sp is None:
                break
            ids = self.ownership.release(r)
            self.ownership.assign(sp, ids)
            m = self.spares.pop(sp)
            m.alive = True
            self.members[sp] = m
            self.adopting[sp] = self.epoch
            self.ident[sp] = self.ident_of(r)
            self._starts[sp] = self.round if self.collecting else self.round + 1
            f.epoch, f.spare, f.rows_to_spare = self.epoch, sp, int(len(ids))
            self.spare_log.append({"spare": sp, "took": r, "round": self.round, "epoch": self.epoch,
                                   "rows": int(len(ids))})
            pairs[r] = sp
        return pairs

    def _handoff(self, dead: list[int], failures: list[Failure]) -> list[Effect]:
        self.epoch += 1
        out: list[Effect] = []
        adopted = self._adopt(dead, failures)
        for r, sp in adopted.items():
            ids = self.ownership.owned(sp)
            now = self._starts[sp] == self.round
            out.append(Adopt(sp, r, ids, self.weight[ids].copy(), now))
            out.append(Log(f"epoch {self.epoch}: spare {sp} takes worker {r}'s whole shard ({len(ids)} rows) "
                           + (f"and trains round {self.round} in its place" if now else f"from round {self.round + 1}")
                           + f"; nothing handed to the others; {len(self.spares)} spare(s) left",
                           tb=f"epoch {self.epoch}: spare {sp} takes worker {r}'s shard", kind="spare"))
        self._receivers[self.epoch] = set(adopted.values())
        for r, sp in adopted.items():
            if r in self._restage:  # the lost worker's standby rows were stale already: staged once it trains
                self._restage.add(sp)
            else:  # the same rows and weights: the lost worker's standby rows are a draw of the spare's too
                self.members[sp].rep = self.members[r].rep.copy()
        self._awaiting += [f for r, f in zip(dead, failures, strict=True) if r in adopted]
        failures = [f for r, f in zip(dead, failures, strict=True) if r not in adopted]
        dead = [r for r in dead if r not in adopted]
        if not dead:
            if self.alive:
                out.append(Rebuild(sorted({self.coordinator, *self.alive})))
            return out
        survivors = self.alive
        plan = self.policy.plan(dead, survivors, self)
        owned_by = {r: self.ownership.owned(r) for r in dead}
        for r, f in zip(dead, failures, strict=True):
            c = plan.chosen[r]
            f.epoch, f.row_weight = self.epoch, c.scale
            f.rows_handed, f.rows_dropped = int(len(c.ids)), int(len(owned_by[r]) - len(c.ids))
            self.ownership.release(r)
            rest = np.setdiff1d(owned_by[r], c.ids, assume_unique=True)
            if len(rest) and survivors:  # with nobody left the rows stay orphaned, for a resume
                self.ownership.drop(rest)
            if not survivors:
                f.rows_dropped, f.rows_orphaned = 0, int(len(rest))
        path = self.handoff_file(self.epoch)
        if plan.fresh:
            out.append(WriteHandoff(self.epoch, path, dict(plan.fresh),
                                    {s: next(p.weights for p in plan.parts[s] if p.path is None) for s in plan.fresh}))
        sent = self._sent.setdefault(self.epoch, {})
        for s in sorted(plan.parts):
            segs = []
            for p in plan.parts[s]:
                seg = P.Segment(p.path if p.path is not None else path, p.start, p.stop, p.weights)
                segs.append(seg)
                sent.setdefault(s, []).append((seg.path, p.start, p.stop, p.ids))
                self.ownership.assign(s, p.ids)
                self.weight[p.ids] = p.weights
            out.append(SendHandoff(s, P.Handoff(self.epoch, segs, self.term)))
        n_handed = sum(len(c.ids) for c in plan.chosen.values())
        self.rows_handed += n_handed
        receivers = set(plan.parts)
        self._restage |= receivers  # their choice changed with their shard: staged again once they train on it
        self._receivers[self.epoch] = receivers | self._receivers.get(self.epoch, set())
        self._awaiting += failures
        n_fresh = sum(len(v) for v in plan.fresh.values())
        # what the handed rows weigh now, after the rep_weight rule (f.row_weight is the draw's M/k)
        means = [f"{float(self.weight[plan.chosen[r].ids].mean()):.1f}" for r in dead if len(plan.chosen[r].ids)]
        out.append(Log(f"epoch {self.epoch}: handed {n_handed} rows of worker(s) {dead} to {survivors} "
                       f"({self.policy.name} rows, {n_handed - n_fresh} of them staged before the failure"
                       + (f", weighing {'/'.join(means)} rows each on average" if means else "")
                       + f"; coverage {self.ownership.coverage():.4f})" if n_handed else
                       f"epoch {self.epoch}: nothing handed ({len(self.orphaned())} rows orphaned, coverage "
                       f"{self.ownership.coverage():.4f})",
                       tb=f"epoch {self.epoch}: {n_handed} rows of {dead} handed to {survivors}", kind="remap"))
        if survivors:
            out.append(Rebuild(sorted({self.coordinator, *survivors})))
        return out

    def _recovered(self, now: float) -> None:
        """Every survivor answered this round: a loss is recovered from once every survivor that was handed
        its rows (and is still alive) has reported training on them. ``handoff_time``: detection → the last of
        them training on the rows; ``recovery_time``: the fault (or its detection) → this round's end."""
        alive = set(self.alive)
        waiting = []
        for f in self._awaiting:
            want = self._receivers.get(f.epoch, set()) & alive if f.epoch is not None else set()
            got = self._ready.get(f.epoch, {}) if f.epoch is not None else {}
            if not want <= set(got):
                waiting.append(f)
                continue
            base = f.injected_at if f.injected_at is not None else f.detected_at
            f.recovery_time = now - base
            f.recovered_round = self.round
            f.handoff_time = max(0.0, max(got[r] for r in want) - f.detected_at) if want else 0.0
            f.rows_prefetched = self._prefetched.get(f.epoch, 0) if want and f.epoch is not None else 0
        self._awaiting = waiting

    # ---------------------------------------------------------------------------------------- snapshot
    def snapshot(self) -> dict[str, Any]:
        """Everything this object knows, as numpy arrays and small dicts of plain values (copies; enum members
        as their strings, so the snapshot pickles and stores as plain data)."""
        return {
            "phase": self.phase.value, "coordinator": self.coordinator, "term": self.term, "epoch": self.epoch,
            "round": self.round,
            "owner": self.ownership.owner_array(), "dropped": self.dropped_mask(), "weight": self.weight.copy(),
            "members": {r: {"host": m.host, "pid": m.pid, "start_time": m.start_time, "alive": m.alive}
                        for r, m in self.members.items()},
            "representative": {r: m.rep.copy() for r, m in self.members.items() if m.alive},
            "suspects": sorted(self.suspects), "failures": [f.record() for f in self.failures],
            "awaiting": [self.failures.index(f) for f in self._awaiting], "stale": self.stale,
            "rows_handed": self.rows_handed, "rows_unreadable": self.rows_unreadable,
            "rows_unwritten": self.rows_unwritten,
            "receivers": {e: sorted(v) for e, v in self._receivers.items()},
            "ready": {e: dict(v) for e, v in self._ready.items()}, "prefetched": dict(self._prefetched),
            "restage": sorted(self._restage),
            # what each survivor was handed, as file slices (epoch, rank, file, start, stop), and their row ids
            # in the same order (stop - start of them each): unreadable reports and unwritten files act on them
            "sent": [(e, r, p, a, b) for e, r, p, a, b, _ in self._sent_parts()],
            "sent_ids": np.concatenate([ids for *_, ids in self._sent_parts()] + [np.zeros(0, np.int64)]),
            "stragglers": self.stragglers.snapshot(),
            "spares": {r: {"host": m.host, "pid": m.pid, "start_time": m.start_time,
                           "joined": r in self._joined_spares} for r, m in self.spares.items()},
            "spare_log": [dict(d) for d in self.spare_log], "adopting": dict(self.adopting),
            "starts": dict(self._starts), "ident": dict(self.ident),
        }

    def _sent_parts(self) -> list[tuple[int, int, str, int, int, np.ndarray]]:
        return [(e, r, p, a, b, ids) for e, by in sorted(self._sent.items()) for r, parts in sorted(by.items())
                for p, a, b, ids in parts]

    @classmethod
    def restore(cls, snap: dict[str, Any], policy: Policy, seed: int = 0, launch_time: float = 0.0,
                handoff_file: Callable[[int], str] = lambda e: f"handoff-e{e:04d}.h5") -> ClusterState:
        """The object :meth:`snapshot` described (a deputy taking over, or a test)."""
        s = cls(len(snap["owner"]), [int(r) for r in snap["members"]], policy, seed, launch_time, handoff_file)
        s.ownership = Ownership.from_arrays(snap["owner"], np.flatnonzero(snap["dropped"]))
        w = snap.get("weight")  # None: every row weighs 1 (a replica leaves the ones out)
        s.weight = np.ones(len(snap["owner"])) if w is None else np.asarray(w, np.float64).copy()
        s.phase, s.epoch, s.round = Phase(snap["phase"]), int(snap["epoch"]), int(snap["round"])
        s.coordinator = int(snap.get("coordinator", 0))
        s.term = int(snap.get("term", 1))
        for r, d in snap["members"].items():
            s.members[int(r)] = Member(int(r), d["host"], int(d["pid"]), int(d["start_time"]), bool(d["alive"]),
                                       np.asarray(snap["representative"].get(r, np.zeros(0)), np.int64))
        s.suspects = set(snap["suspects"])
        s.failures = [Failure(**f) for f in snap["failures"]]
        s._awaiting = [s.failures[i] for i in snap["awaiting"]]
        s.stale, s.rows_handed, s.rows_unreadable = snap["stale"], snap["rows_handed"], snap["rows_unreadable"]
        s.rows_unwritten = int(snap.get("rows_unwritten", 0))
        s._receivers = {int(e): set(v) for e, v in snap["receivers"].items()}
        s._ready = {int(e): dict(v) for e, v in snap["ready"].items()}
        s._prefetched = dict(snap["prefetched"])
        s._restage = set(snap["restage"])
        s.stragglers = Stragglers.restore(snap.get("stragglers"))
        for r, d in snap.get("spares", {}).items():
            s.spares[int(r)] = Member(int(r), d["host"], int(d["pid"]), int(d["start_time"]))
            if d.get("joined"):
                s._joined_spares.add(int(r))
        s.spare_log = [dict(d) for d in snap.get("spare_log", [])]
        s.adopting = {int(r): int(e) for r, e in snap.get("adopting", {}).items()}
        s._starts = {int(r): int(e) for r, e in snap.get("starts", {}).items()}
        s.ident = {int(r): int(i) for r, i in snap.get("ident", {}).items()}
        ids, at = np.asarray(snap.get("sent_ids", np.zeros(0)), np.int64), 0
        for e, r, p, a, b in snap.get("sent", []):
            s._sent.setdefault(int(e), {}).setdefault(int(r), []).append((str(p), int(a), int(b),
                                                                           ids[at:at + b - a].copy()))
            at += int(b) - int(a)
        return s

    def dropped_mask(self) -> np.ndarray:
        mask = np.zeros(self.ownership.n_total, bool)
        mask[self.ownership.dropped()] = True
        return mask
