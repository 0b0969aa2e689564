"""A worker's life: say hello, train on its shard round after round, report, leave when told.

It ends when told to stop (exit 0), when told to leave (declared dead earlier: :class:`Expelled`), or when
rank 0 says nothing within ``executor.timeout`` (:class:`CoordinatorLost`). Messages are the dataclasses of
:mod:`ftmpi.core.protocol`.

Per round the worker applies the broadcast to its replica of the global model, takes ``iters`` local steps
(minibatch SGD/Adam with the ``mu_g`` pull towards the global model), scores every sample of its shard, and
sends back its update (delta or mean gradient, quantized with error feedback when asked), its mean loss,
its shard size and the global ids of its ``n_most_rep`` most representative points.

Rows of a lost worker arrive as a :class:`~ftmpi.core.protocol.Handoff` naming HDF5 file slices (and the rows'
weights). A slice that cannot be read is reported in the next reply (rank 0 drops those rows) instead of
ending the worker. Between two steps of a round the
worker looks for one (a single nonblocking probe), appends the rows and draws the round's remaining
minibatches from the grown shard, so that it trains on them a few milliseconds after rank 0 noticed the
loss rather than a round later; the wall time at which it did is reported in its next reply (``ready``).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftmpi import faults as F
from ftmpi import signals
from ftmpi.comm import TAG_CTRL, TAG_REPLICA, TAG_REPLY, TAG_SUSPECT, Channel
from ftmpi.config import FAULT_POINTS, Config
from ftmpi.core import protocol as P
from ftmpi.core.failover import Change, Promoted, ReplicaKeeper, beat_period, majority, silence_limit, spare_ranks
from ftmpi.core.handoff import SCORED, rep_count, select_representative
from ftmpi.core.kinds import How
from ftmpi.errors import EXIT_COORDINATOR_LOST, CoordinatorLost, DataError, Expelled, PeerError, PeerFailed, PeerTimeout
from ftmpi.model.codec import ErrorFeedback, decode
from ftmpi.model.models import Model, build_model, warmup
from ftmpi.model.optim import Optimizer, clip
from ftmpi.model.plugin import is_plugin
from ftmpi.observe.timeline import mark
from ftmpi.procs import hostname, start_time
from ftmpi.storage.checkpoint import shard_key
from ftmpi.storage.shards import Shard, ShardsAhead, read_shard, ready_for_any, shard_path
from ftmpi.storage.term import current_term, verdict_written
from ftmpi.worker.localshard import LocalShard

if TYPE_CHECKING:
    from ftmpi.storage.rundata import DatasetAhead

_SCORE_ROWS = 4096  # rows whose features are converted at once when a worker scores its shard (uint8 rows)
_RING = 3  # rounds whose starting state a worker keeps, so that a new coordinator can redo them exactly
# between two local steps, control messages (rows handed over mid-round) are looked for at most this often:
# an MPI probe costs about what a small local step does (py-spy: ~40 % of a logreg worker's busy time went
# to probing after every step), and 2 ms is nothing next to how late a loss is reported (10-70 ms)
_CTRL_POLL = 0.002
_READY_TRIES = 40  # pings (a quarter of the timeout apart, at most 0.25 s) a spare waits for the deal to get ready


class Worker:
    def __init__(self, ch: Channel, cfg: Config, run_dir: Path, resuming: bool = False) -> None:
        self.ch, self.cfg, self.run_dir = ch, cfg, Path(run_dir)
        self.rank = ch.rank
        self.ident = ch.rank  # whose minibatches and rounding this rank draws: a spare takes the lost worker's
        self.epoch = -1
        self.coord = 0  # the coordinator's rank: 0, or the deputy that took over
        self.deputy = -1  # announced in every round message
        self.keeper = ReplicaKeeper()  # the deputy's newest replica of the coordinator
        self.term = 0  # the highest coordinator term seen: messages of a lower one are dropped
        self._coord_failed = False  # MPI reported the coordinator failed: only its deputy is listened to
        self._suspicions: dict[int, float] = {}  # the deputy: worker -> when it last reported the coordinator
        self._next_suspect_poll = 0.0
        self._next_beat = 0.0  # monotonic time of the next beat to the coordinator while training
        self._next_replica_poll = 0.0  # monotonic time of the next replica probe between two steps
        self._data_ahead: DatasetAhead | None = None  # once this rank is named deputy
        self._last_round = -1  # the newest round the coordinator started
        self._trains = True  # False: a standby coordinator
        # faults that already fired in an earlier launch of this run (a resumed job does not replay them);
        # a fresh run ignores old records (rank 0 is deleting them at this moment)
        self.fired = {(int(m["rank"]), int(m["round"])) for m in F.read_marks(run_dir).values()} if resuming \
            else set()
        self._stash: list[Any] = []  # control messages that arrived mid-round, for after the round
        self._unstamped: list[int] = []  # handoff epochs loaded while idle: stamped when training resumes
        self._ready: dict[int, float] = {}  # handoff epoch -> wall time training on its rows began
        self._handed = 0  # rows taken since the last reply
        # read ahead: the slices of the other workers' standby files this worker would be handed if one of them
        # were lost next, (path, start, stop) -> rows; rank 0 says which (round message "prefetch")
        self._cache: dict[tuple[str, int, int], Any] = {}
        self._plan: list | None = None  # a new plan, read after this round's reply
        self._prefetched: dict[int, int] = {}  # handoff epoch -> rows taken from the read-ahead copies
        self._unreadable: list[tuple[int, str, int, int]] = []  # handed slices that could not be read
        self.shard = LocalShard()  # read by _setup with the first round
        self.n_classes = 0
        self.model = Model(np.array([1, 1], np.int64))
        self.tensors = self.model.tensors()
        self.opt = Optimizer("sgd", 0, 0.0)
        self.replica = np.zeros(0, np.float32)
        self.grad = np.zeros(0, np.float32)
        self.uplink = ErrorFeedback(0, self.tensors, 0, False)
        self.scores: np.ndarray | None = None  # latest per-sample loss of every row of the shard
        # exact resume and takeover: the newest round trained, this worker's state at the start of
        # its last rounds (when a deputy may redo them), and the state a resume restores with the first round
        self._trained = -1
        self._ring: dict[int, dict[str, Any]] = {}
        self._restore: P.Restore | None = None
        # a hot spare (executor.spares) waits, napping, until it is given a lost worker's shard
        self.spare = bool(cfg.executor.spares) and self.rank in spare_ranks(ch.size, cfg.executor.spares)
        self._nap: float | None = None
        self._spare_ready = 0  # pings at which a waiting spare looked for the shard files (see _READY_TRIES)
        self._ahead: ShardsAhead | None = None  # a waiting spare's shards, read ahead
        self._next_ctrl_poll = 0.0  # the next look for control messages between two local steps
        self.ctrl_poll = _CTRL_POLL
        self._early: list[P.Handoff] = []  # rows handed to a spare before its first round (set up with it)
        # a deputy that took over and trains its rows in the coordinator's process: its beats are the
        # coordinator's pings
        self.on_beat: Any = None

    # ------------------------------------------------------------------ waits
    def _wait_ctrl(self, timeout: float, phase: str, then: float | None = None) -> Any:
        """Next control message of the coordinator of the highest term seen (pings extend the deadline;
        ``then``: the deadline after the first ping, if other than ``timeout``), or CoordinatorLost. The
        announced deputy is listened to as well: a message of a higher term from it means it took over, and
        this worker follows it from then on (:meth:`_accept`)."""
        while True:
            if self._stash:
                msg = self._stash.pop(0)
            else:
                self._take_replicas()
                if self._majority_lost():
                    raise CoordinatorLost(f"worker {self.rank}: a majority of the alive workers lost the coordinator "
                                          f"(rank {self.coord}, term {self.term})", How.TIMEOUT)
                try:
                    msg = self._recv_ctrl(timeout, phase)
                except PeerError as exc:
                    raise CoordinatorLost(f"worker {self.rank}: lost the coordinator: {exc}",
                                          How.ULFM if isinstance(exc, PeerFailed) else How.TIMEOUT) from None
                if msg is None:  # a stale message, or the deputy's majority was reached: look again
                    continue
            if isinstance(msg, P.Abdicate):  # it crashed and said so: no deadline to wait for
                raise CoordinatorLost(f"worker {self.rank}: the coordinator (rank {self.coord}) left: {msg.reason}",
                                      How.ERROR)
            if not isinstance(msg, P.Ping):
                return msg
            self._named(msg.deputy)
            if then is not None:  # after the first ping, the usual deadline
                timeout = then

    def _other_deputy(self) -> bool:
        """An announced deputy that is neither this worker nor its coordinator."""
        return self.deputy not in (-1, self.rank, self.coord)

    def _sources(self) -> list[int]:
        """Whom a waiting worker polls: the coordinator, or, once MPI reported it failed, the announced deputy.
        While the coordinator is in view the deputy is only looked at once per beat (:meth:`_peek_deputy`):
        it speaks on this tag only once it has taken over, after a silence of a timeout at least."""
        if not self._coord_failed:
            return [self.coord]
        return [self.deputy] if self._other_deputy() else []

    def _peek_deputy(self) -> None:
        """Look for a message from the announced deputy (a takeover: a higher term); keep it if accepted."""
        if self._other_deputy() and not self._coord_failed:
            raw = self.ch.try_recv(self.deputy, TAG_CTRL)
            taken = None if raw is None else self._accept(self.deputy, raw)
            if taken is not None:
                self._stash.append(taken)

    def _recv_ctrl(self, timeout: float, phase: str) -> Any:
        """One control message within ``timeout`` (PeerFailed / PeerTimeout otherwise), or None when what came
        was dropped (:meth:`_accept`) or the deputy decided to take over; the deputy takes the replicas and
        the suspicions meanwhile (a large replica is only complete once it is received)."""
        t0 = time.monotonic()
        deputy = self.deputy == self.rank
        sources = self._sources()
        hint = f"is the coordinator (rank {self.coord}) alive?"
        if not sources:
            raise PeerFailed([self.coord], phase, 0.0, hint)
        self._peek_deputy()
        if self._stash:
            return self._stash.pop(0)
        if deputy:  # replicas as they come (a large one is only complete once received), suspicions
            tick, every = self._take_replicas, 0.005
        else:  # a deputy that took over, once per beat
            tick, every = self._peek_deputy, beat_period(self.cfg.executor.timeout)
        out = self.ch.poll(sources, TAG_CTRL, t0 + timeout,
                           until=lambda o: bool(o.messages) or bool(self._stash) or (deputy and self._majority_lost()),
                           on_tick=tick, tick_every=every, nap=self._nap)
        if not out.messages and self._stash:
            return self._stash.pop(0)
        if out.messages:
            got = [m for src in sorted(out.messages, key=lambda r: r != self.coord)
                   for m in (self._accept(src, raw) for raw in out.messages[src]) if m is not None]
            self._stash.extend(got[1:])
            return got[0] if got else None
        if deputy and self._majority_lost():
            return None
        if self.coord in out.failed:
            raise PeerFailed([self.coord], phase, time.monotonic() - t0, hint)
        raise PeerTimeout([self.coord], phase, time.monotonic() - t0, hint)

    def _accept(self, src: int, raw: Any) -> Any:
        """A control message as this worker takes it, or None when dropped: one of a term lower than the
        highest seen (a deposed coordinator's), or one from the deputy before it took over. A message of a
        higher term makes its sender the coordinator this worker follows."""
        msg = P.coerce(raw)
        term = P.term_of(msg)
        if term is not None:
            if term < self.term:
                return None
            if term > self.term:
                self.term = term
                if src != self.coord:
                    self._follow(src)
            elif src != self.coord:
                return None
        return msg

    def _follow(self, rank: int) -> None:
        """A coordinator of a higher term spoke: it is this worker's coordinator from now on."""
        old = self.coord
        self.coord = self.ch.coordinator = rank
        self._coord_failed = False
        self._stash.clear()  # what the former coordinator said is decided again by the new one
        self._suspicions.clear()
        if self.deputy == rank:
            self.deputy = -1  # the new coordinator names its own deputy with its first round
        sys.stderr.write(f"ftmpi: rank {self.rank}: following rank {rank} (coordinator term {self.term}) instead "
                         f"of rank {old}\n")

    def _suspect(self, lost: CoordinatorLost, silent: float) -> None:
        """Tell the deputy that the coordinator has been silent past the limit (or failed, per MPI)."""
        self.ch.send(self.deputy, TAG_SUSPECT, P.Suspect(self.rank, self.term, silent, lost.how is How.ULFM))

    def _take_suspicions(self) -> None:
        """The deputy: collect the workers' reports that the coordinator is silent (twice per beat at most: a
        report comes after a silence of a timeout, so this adds at most half a beat to a takeover)."""
        now = time.monotonic()
        if now < self._next_suspect_poll:
            return
        self._next_suspect_poll = now + beat_period(self.cfg.executor.timeout) / 2
        for r in range(self.ch.size):
            if r in (self.rank, self.coord):
                continue
            while (m := self.ch.try_recv(r, TAG_SUSPECT)) is not None:
                if isinstance(m, P.Suspect) and m.term >= self.term:
                    self._suspicions[m.rank] = now

    def _majority_lost(self) -> bool:
        """The deputy only: more than half of the alive workers (itself not counted unless it lost the
        coordinator too, which ends its own wait anyway) reported the coordinator silent within the last
        silence limit, and it holds a complete replica to take over from."""
        if self.deputy != self.rank or not self._suspicions:
            return False
        rep = self.keeper.complete()
        if rep is None or rep.state is None:
            return False
        alive = {int(r) for r, m in rep.state["members"].items() if m["alive"]}
        window = silence_limit(self.cfg.executor.timeout)
        now = time.monotonic()
        recent = {r for r, t in self._suspicions.items() if now - t <= window and r in alive}
        return majority(len(recent), len(alive))

    def _named(self, deputy: int) -> None:
        """The coordinator announced its deputy (round messages, pings). A standby coordinator, named, reads
        the test set and indexes the shards of the run dir ahead, in a thread (a takeover needs them; see
        ftmpi.storage.rundata). A deputy that trains reads them at the takeover instead: in a thread of its own
        process the read takes the interpreter from its training steps, and every round waits for the
        slowest worker (docs/NOTES.md has the measurement)."""
        if self.spare and self._nap is not None and self._spare_ready < _READY_TRIES:
            self._get_ready_as_spare()
        if deputy < 0:
            return
        self.deputy = deputy
        if deputy == self.rank and self._data_ahead is None and not self._trains:
            self._read_run_dir_ahead()

    def _get_ready_as_spare(self) -> None:
        """A waiting spare, at the first ping after every worker's shard file is written (pings come before
        the deal too; at most :data:`_READY_TRIES` looks): every worker's shard held ahead
        (:class:`~ftmpi.storage.shards.ShardsAhead`: taking one is then free), by reference over the training
        rows kept resident, or copied when the files hold their rows and the copies fit in
        ``executor.spare_memory_mb``; else the dataset's pages mapped in and a buffer mapped ahead
        (:func:`~ftmpi.storage.shards.ready_for_any`), so that the others wait ~0.4 ms for its rows after a loss
        (~7 ms from the mapping) instead of ~25."""
        ex = self.cfg.executor
        idle = set(spare_ranks(self.ch.size, ex.spares)) | ({1} if ex.standby_coordinator else set())
        paths = [shard_path(self.run_dir, r) for r in range(1, self.ch.size) if r not in idle]
        self._spare_ready += 1
        if not all(p.is_file() for p in paths) and self._spare_ready < _READY_TRIES:
            return  # not dealt yet (files appear whole: written aside, then renamed)
        self._spare_ready = _READY_TRIES
        self._ahead = ShardsAhead(paths, raw=True, budget=ex.spare_memory_mb << 20)
        if not self._ahead.ready:  # too large to hold
            ready_for_any(paths, _room, raw=True)
        mark("spare-ready")

    def _read_run_dir_ahead(self) -> None:
        from ftmpi.storage.rundata import DatasetAhead, open_run_data  # a deputy's or a standby's only

        run_dir = self.run_dir
        self._data_ahead = DatasetAhead(lambda: open_run_data(run_dir))

    def _take_replicas(self) -> None:
        """The deputy keeps the coordinator's newest replica (complete messages only) and the workers'
        suspicions of the coordinator."""
        if self.deputy != self.rank:
            return
        self._take_suspicions()
        while True:
            rep = self.ch.try_recv(self.coord, TAG_REPLICA)
            if rep is None:
                return
            self.keeper.offer(rep)
            self._last_round = max(self._last_round, rep.round)  # it was sent after that round's broadcast

    def _failover(self, lost: CoordinatorLost) -> Any:
        """The coordinator is lost. The announced deputy takes over (:class:`Promoted`, with its newest replica);
        every other worker waits, bounded, for the deputy's first message and goes on. Without a deputy, or a
        replica, or when the deputy does not take over in time: CoordinatorLost (exit 4; a relaunch resumes)."""
        ex, old, detected = self.cfg.executor, self.coord, time.time()
        self._take_replicas()
        if self.deputy < 0 or self.deputy == old:
            raise lost
        if self.deputy != self.rank:
            # report to the deputy, which decides, and keep serving whichever coordinator has the highest term:
            # the coordinator if it was only slow, the deputy once it took over (a message of a higher term)
            end = time.monotonic() + 2 * ex.timeout + 10.0
            silent = silence_limit(ex.timeout)
            while True:
                if lost.how is How.ULFM:
                    self._coord_failed = True
                self._suspect(lost, silent)
                left = end - time.monotonic()
                try:
                    if left <= 0:
                        raise lost
                    return self._wait_ctrl(min(left, silence_limit(ex.timeout)),
                                           f"waiting for rank {old} or its deputy (rank {self.deputy})")
                except CoordinatorLost as exc:
                    if left <= 0 or (self._coord_failed and self.deputy in (-1, self.coord)):
                        raise CoordinatorLost(f"worker {self.rank}: the deputy (rank {self.deputy}) did not take "
                                              f"over after rank {old} was lost: {exc}", exc.how) from None
                    lost, silent = exc, silent + silence_limit(ex.timeout)
        self._stash.clear()  # what the lost coordinator said after the replica is decided again
        rep = self.keeper.complete()
        if rep is not None and self._data_ahead is None:  # a deputy that trains reads its data now
            self._read_run_dir_ahead()
        if rep is None or self._data_ahead is None:
            raise CoordinatorLost(f"worker {self.rank}: lost the coordinator and, as its deputy, holds no complete "
                                  f"replica yet ({lost})", lost.how)
        why = self._stale(rep)
        if why:  # this deputy was itself the silent one (declared lost meanwhile): it must not take over
            raise Expelled(f"worker {self.rank}: not taking over from rank {old}: {why}")
        change = Change(old, lost.how, self.rank, rep.round,
                        max(0, self._last_round - rep.round + 1), detected, lost_id=tuple(rep.coord[1:]),
                        reason=str(lost), replica_age=max(0.0, detected - rep.sent_at))
        mark = F.read_marks(self.run_dir).get(old)
        if mark is not None and int(mark.get("pid", -1)) == rep.coord[2]:
            change.injected_at, change.kind = float(mark["time"]), str(mark["kind"])
            change.detection_latency = max(0.0, detected - change.injected_at)
        from ftmpi.storage.rundata import takeover_dataset

        try:
            data = takeover_dataset(self._data_ahead, self.run_dir, rep.state["owner"])  # type: ignore[index]
        except DataError as exc:  # the others wait for this rank: they leave now (no verdict: a relaunch resumes)
            lost = CoordinatorLost(f"worker {self.rank}: lost the coordinator (rank {old}) and, as its deputy, cannot "
                                   f"take over: {exc}", lost.how)
            for r in range(self.ch.size):
                if r not in (self.rank, old):
                    self.ch.send(r, TAG_CTRL, P.Exit(str(lost), EXIT_COORDINATOR_LOST, True))
            self.ch.flush(time.monotonic() + 2.0)
            raise lost from None
        raise Promoted(rep, change, data, self if self._trains else None)

    def _faults_at(self, at: int) -> None:
        """Inject this rank's faults due at round ``at`` (or at a named point, config.FAULT_POINTS); each fires
        once (a round redone after a takeover, or a resumed launch, does not replay it)."""
        for f in F.due(self.cfg.faults, self.rank, at):
            if (self.rank, at) not in self.fired:
                self.fired.add((self.rank, at))
                F.inject(f, self.run_dir)

    def _stale(self, rep: P.Replica) -> str:
        """Why this deputy's replica is not the run's newest state (it stalled past the limit, was declared
        lost, and the run went on, or ended, without it), or "" when it may take over: a final verdict in the
        run dir, a term claimed after the replica's, or metrics rows written past the replica's round."""
        run_dir = self.run_dir
        if verdict_written(run_dir, rep.term):
            return "the run is over (summary.json holds its verdict)"
        now = current_term(run_dir)
        if now > rep.term:
            return f"coordinator term {now} was claimed after this replica's term {rep.term}"
        last = _last_row(run_dir / "metrics.csv")
        if last is not None and last > rep.round + 1:
            return f"metrics.csv holds round {last}, this replica is of round {rep.round}"
        return ""

    # --------------------------------------------------------------- the loop
    def run(self) -> int:
        cfg = self.cfg
        # a cold numba cache compiles here, while rank 0 loads the data
        if cfg.executor.standby_coordinator and self.rank == 1 and self.ch.size >= 3:
            return self._standby()
        warmup(cfg.executor.quantize, cfg.model.type == "mlp", cfg.optimizer.rep_selection)
        mark("kernels")
        self._faults_at(FAULT_POINTS["start"])
        pid = os.getpid()
        if self.spare:  # rank 0 may signal it (on this host) as soon as it knows its pid: ready before the hello
            signals.wakeable()
            np.random.default_rng([0, 1]).permutation(8)  # numpy.random's first use costs ~15 ms: a start-up
            # cost (every worker pays it in its first round), not one in the round a spare takes a shard
        self.ch.send(self.coord, TAG_REPLY, P.Hello(self.rank, hostname(), pid, start_time(pid)))
        if self.spare:
            msg = self._wait_as_spare()
        else:
            msg = self._wait_ctrl(cfg.executor.startup_timeout, "start-up (waiting for the shard)")
        while isinstance(msg, P.Restore):  # an exact resume: applied with the first round's setup
            self._restore = msg
            msg = self._wait_ctrl(cfg.executor.startup_timeout, "start-up (waiting for the shard)")
        if isinstance(msg, P.Round) and msg.setup is not None:
            self._faults_at(FAULT_POINTS["deal"])
            self._setup(msg.setup)
            if self._restore is not None and (self._restore.round == msg.round or self.spare):
                self.load_local_state(self._restore.state)  # a spare: the state of the worker it stands in for
            self._restore = None
            mark("shard")
            for h in self._early:  # a spare: rows handed to it before it was set up
                self._take_handoff(h)
                self._unstamped.append(h.epoch)
            self._early = []
        while True:
            if isinstance(msg, P.Stop):
                self._faults_at(FAULT_POINTS["finish"])
                self.ch.send(self.coord, TAG_REPLY, P.Bye(self.rank))
                self.ch.flush(time.monotonic() + min(5.0, cfg.executor.timeout))
                return 0
            if isinstance(msg, P.Exit):
                raise self._told_to_leave(msg)
            if isinstance(msg, P.Round):
                self._round(msg)
            elif isinstance(msg, P.Handoff):  # while idle: load now, stamp when the next round's training starts
                self._take_handoff(msg)
                self._unstamped.append(msg.epoch)
            elif isinstance(msg, P.Collect):  # a checkpoint outside the periodic ones: the state as it stands
                self.ch.send(self.coord, TAG_REPLY, P.State(self.rank, msg.round, self.local_state(msg.round)))
            try:
                msg = self._wait_ctrl(silence_limit(cfg.executor.timeout),
                                      f"waiting for round {getattr(msg, 'round', '?')}")
            except CoordinatorLost as lost:
                msg = self._failover(lost)

    def _wait_as_spare(self) -> Any:
        """A hot spare (``executor.spares``): train nothing and wait, napping between looks (a few wake-ups a
        second), for the round message that gives it a lost worker's shard (its setup and the whole model), or
        for the end of the run. It answers pings as any worker does (they extend its deadline), follows a
        coordinator that took over, and keeps the rows handed to it before its first round for after its
        setup. Returns that round message, or Stop / Exit."""
        cfg = self.cfg
        self._nap = 0.05
        timeout, then = cfg.executor.startup_timeout, silence_limit(cfg.executor.timeout)
        try:
            while True:
                try:
                    msg = self._wait_ctrl(timeout, "hot spare (waiting for a lost worker's shard)", then)
                except CoordinatorLost as lost:
                    msg = self._failover(lost)
                timeout = then
                if isinstance(msg, P.Handoff):
                    self.epoch = max(self.epoch, msg.epoch)
                    self._early.append(msg)
                elif isinstance(msg, P.Restore):  # the lost worker's optimizer state, for the round that follows
                    mark("spare-restore")
                    self._restore = msg
                elif isinstance(msg, (P.Round, P.Stop, P.Exit)):
                    mark("spare-round")
                    return msg
        finally:
            self._nap = None

    def _standby(self) -> int:
        """``executor.standby_coordinator``: train nothing, keep the coordinator's replicas, take over if it is
        lost (:class:`Promoted`); leave when told to stop. It reads its data ahead once the first ping names it
        (after the shards and the test set are written)."""
        cfg = self.cfg
        self.deputy, self._trains = self.rank, False
        self._faults_at(FAULT_POINTS["start"])
        timeout = cfg.executor.startup_timeout  # until the first ping (rank 0 loads the data, deals the rows)
        while True:
            try:
                msg = self._wait_ctrl(timeout, "standby coordinator", silence_limit(cfg.executor.timeout))
            except CoordinatorLost as lost:
                if self.keeper.complete() is None:
                    raise
                self._failover(lost)  # raises Promoted
                raise
            timeout = silence_limit(cfg.executor.timeout)
            if isinstance(msg, P.Stop):
                self.ch.flush(time.monotonic() + min(5.0, cfg.executor.timeout))
                return 0
            if isinstance(msg, P.Exit):
                raise self._told_to_leave(msg)

    def _told_to_leave(self, msg: P.Exit) -> Expelled:
        """What this worker leaves with when told to: :class:`Expelled` (exit 5), or, when rank 0 itself failed
        and said why (``msg.code`` set), rank 0's code, silently if ``msg.quiet``."""
        if msg.code is None:
            return Expelled(f"worker {self.rank}: {msg.reason}")
        return Expelled(f"worker {self.rank}: {msg.reason}", exit_code=msg.code, quiet=msg.quiet)

    def _load_shard(self, path: str) -> Shard:
        """Read this worker's shard file (rows, labels, global ids, weights); a spare's, as read ahead if it
        was (and the file did not change since)."""
        got = self._ahead.take(path) if self._ahead is not None else None  # (the rest let go after its reply)
        # room for handed rows (see LocalShard), read straight into that buffer
        return got if got is not None else read_shard(path, room=_room, raw=True)

    def _setup(self, setup: P.Setup) -> None:
        cfg = self.cfg
        self.shard = LocalShard(self._load_shard(setup.shard))
        self.n_classes = int(setup.n_classes)
        if int(getattr(setup, "ident", -1)) >= 0:
            self.ident = int(setup.ident)
        if is_plugin(cfg.model.type):  # the user's class, constructed as rank 0 did (it checked the contract)
            self.model = build_model(cfg.model.type, (), setup.sizes[0], setup.sizes[-1], cfg.model.options,
                                     check=False)
        else:
            self.model = Model(np.asarray(setup.sizes, dtype=np.int64))
        n = self.model.n_params
        self.tensors = self.model.tensors()
        o = cfg.optimizer
        self.opt = Optimizer(o.name, n, o.learning_rate, o.momentum, o.beta1, o.beta2, o.eps)
        self.replica = np.zeros(n, np.float32)
        self.grad = np.zeros(n, np.float32)
        self.uplink = ErrorFeedback(n, self.tensors, cfg.executor.quantize, cfg.executor.stochastic_rounding)
        self.scores = None

    def local_state(self, rnd: int, key: bool = True) -> dict[str, Any]:
        """Copies of what this worker's next round depends on besides the global model and its rows, as of the
        start of round ``rnd``: the local optimizer (moments, step) and the uplink's error-feedback residual;
        ``key``: with :func:`~ftmpi.storage.checkpoint.shard_key` of its rows (a checkpoint's, not the ring's).
        Its minibatches are drawn from seeds of (seed, rank, round) and need nothing kept."""
        o = self.opt
        return {"round": int(rnd), "step": o.step_count, "m": o.m.copy(), "v": o.v.copy(),
                "residual": self.uplink.residual.copy(), "shard": shard_key(self.shard.ids, self.shard.w) if key else 0}

    def load_local_state(self, st: dict[str, Any]) -> None:
        """Put back a state of :meth:`local_state` (parts of another size, e.g. no residual, are left as they
        are)."""
        o, n = self.opt, self.model.n_params
        if np.size(st["m"]) == o.m.size:
            o.m[...] = st["m"]
        if np.size(st["v"]) == o.v.size:
            o.v[...] = st["v"]
        o.step_count = int(st["step"])
        if np.size(st["residual"]) == n:
            self.uplink.residual = np.array(st["residual"], np.float32)

    def _keep_start(self, rnd: int) -> int:
        """Before training round ``rnd``: a round this worker trained already is redone for a new coordinator
        (a takeover): from the state it started with when the ring holds it (returns 1), else from the state as
        it stands (-1: not exact). Then this round's starting state is kept (when a deputy could redo it)."""
        redo = 0
        if rnd <= self._trained:
            st = self._ring.get(rnd)
            redo = -1 if st is None else 1
            if st is not None:
                self.load_local_state(st)
            self._ring = {r: v for r, v in self._ring.items() if r < rnd}
        ex = self.cfg.executor
        if ex.deputy or ex.standby_coordinator:
            # the oldest slot's arrays are reused (a copy into memory already mapped: ~50 us for 100k parameters)
            old = self._ring.pop(min(self._ring)) if len(self._ring) >= _RING else None
            o = self.opt
            if old is not None and all(old[k].shape == a.shape for k, a in
                                       (("m", o.m), ("v", o.v), ("residual", self.uplink.residual))):
                for k, a in (("m", o.m), ("v", o.v), ("residual", self.uplink.residual)):
                    np.copyto(old[k], a)
                old["round"], old["step"] = rnd, o.step_count
                self._ring[rnd] = old
            else:
                self._ring[rnd] = self.local_state(rnd, key=False)
        return redo

    def _take_handoff(self, msg: P.Handoff) -> int:
        """Append the rows of a handoff to the shard; returns how many. A slice that cannot be read is noted
        for the next reply (rank 0 drops its rows) and the others are still taken."""
        self.epoch = max(self.epoch, msg.epoch)
        added = 0
        for seg in msg.segments:
            try:
                added += self._load_handoff(seg.path, (seg.start, seg.stop), seg.weights, msg.epoch)
            except DataError as exc:
                self._unreadable.append((msg.epoch, seg.path, seg.start, seg.stop))
                sys.stderr.write(f"ftmpi: rank {self.rank}: warning: handed rows not taken: {exc}\n")
        self._handed += added
        return added

    def _poll_ctrl(self, every_step: bool = False) -> bool:
        """Between two steps: take rows handed over meanwhile (True if the shard grew); any other control
        message is kept for after the round. ``every_step``: called after each local step, when it looks for
        messages at most every ``ctrl_poll`` seconds (:data:`_CTRL_POLL`: a probe costs about what a small step
        does)."""
        grew = False
        now = time.monotonic()
        if now >= self._next_replica_poll:  # at most every 20 ms while training: each probe yields the CPU on
            # an oversubscribed node, and a probe per step slows the deputy's rounds
            self._next_replica_poll = now + 0.02
            self._take_replicas()
        if now >= self._next_beat:  # a long round is slow, not silent: say so once per beat period
            self._next_beat = now + beat_period(self.cfg.executor.timeout)
            if self.on_beat is not None:
                self.on_beat()
            else:
                self.ch.send(self.coord, TAG_REPLY, P.Beat(self.rank, self._last_round))
                self._peek_deputy()  # it took over mid-round: follow it after the round
        if every_step:
            if now < self._next_ctrl_poll:
                return False
            self._next_ctrl_poll = now + self.ctrl_poll
        while True:
            raw = self.ch.try_recv(self.coord, TAG_CTRL)
            if raw is None:
                return grew
            msg = self._accept(self.coord, raw)
            if msg is None:
                continue
            if isinstance(msg, P.Handoff):
                if self._take_handoff(msg):
                    grew = True
                self._ready[msg.epoch] = time.time()
            elif isinstance(msg, P.Ping):
                self._named(msg.deputy)
            else:
                self._stash.append(msg)

    def _load_handoff(self, path: str, rows: tuple[int, int], weight: np.ndarray | float | None = None,
                      epoch: int = -1) -> int:
        """Append rows ``start:stop`` of a handoff file to the shard (from the read-ahead copy when there is
        one), weighing ``weight`` (one per row, or one for all; else the file's ``/w``, else 1); returns how
        many."""
        s = self._cache.pop((str(path), int(rows[0]), int(rows[1])), None)
        if s is None:
            s = read_shard(path, rows, raw=True)
        else:
            self._prefetched[epoch] = self._prefetched.get(epoch, 0) + len(s)
        m = self.shard.append(s, weight)
        return m  # the new rows are scored when representative points are next chosen

    def _read_ahead(self, plan: list) -> None:
        """Hold the slices of ``plan`` in memory (reading the ones not held yet) and forget the others. A file
        that cannot be read now (replaced meanwhile) is skipped: a handoff of it is then read from disk."""
        keep = {}
        for path, a, b in plan:
            key = (str(path), int(a), int(b))
            if key in self._cache:
                keep[key] = self._cache[key]
                continue
            try:
                keep[key] = read_shard(path, (a, b), raw=True)
            except DataError:
                continue
        self._cache = keep

    def _batches(self, rnd: int, iters: int, bs: int, salt: tuple[int, ...] = ()) -> list[np.ndarray]:
        """This round's minibatches, seeded by (seed, rank, round) and ``salt`` (the epoch) when the shard grew
        mid-round (:meth:`LocalShard.batches`)."""
        return self.shard.batches([self.cfg.model.seed, self.ident, rnd, *salt], rnd, iters, bs,
                                  self.cfg.model.shuffle)

    def _round(self, msg: P.Round) -> None:
        cfg, ex = self.cfg, self.cfg.executor
        if ex.quorum < 1.0:  # quorum rounds: the rounds sent while this worker was late are caught up
            # on (their models applied, their faults fired, rows handed meanwhile taken) and only the newest trained
            self._poll_ctrl()
            while self._stash and isinstance(self._stash[0], (P.Round, P.Handoff)):
                nxt = self._stash.pop(0)
                if isinstance(nxt, P.Handoff):
                    self._take_handoff(nxt)
                    self._unstamped.append(nxt.epoch)
                    continue
                if nxt.setup is not None or msg.rebuild:  # never skipped
                    self._stash.insert(0, nxt)
                    break
                self._faults_at(msg.round)
                self._named(msg.deputy)
                if msg.full:
                    self.replica[...] = msg.params
                else:
                    self.replica += decode(msg.params, self.tensors, self.model.n_params)
                self._plan = msg.prefetch if msg.prefetch is not None else self._plan
                msg = nxt
            if self._stash and isinstance(self._stash[0], (P.Stop, P.Exit)):
                return  # the run is over, or this worker is told to leave: nothing to train
        self.epoch, rnd = msg.epoch, msg.round
        self._last_round = max(self._last_round, rnd)
        self._named(msg.deputy)
        self._faults_at(rnd)
        t0 = time.monotonic()
        self._next_beat = t0 + beat_period(ex.timeout)
        if msg.full:
            self.replica[...] = msg.params
        else:
            self.replica += decode(msg.params, self.tensors, self.model.n_params)
        now = time.time()
        for e in self._unstamped:  # rows loaded while idle: trained on from now
            self._ready[e] = now
        self._unstamped = []
        if msg.prefetch is not None:
            self._plan = msg.prefetch
        redo = self._keep_start(rnd)
        iters = int(msg.iters)
        self.opt.lr = float(msg.lr)
        mu = cfg.optimizer.mu_g
        losses = []
        # send_gradients: parameter-server semantics, gradients at the global model averaged over the batches;
        # else local steps from the global model (with the mu_g pull towards it)
        local = self.replica if ex.send_gradients else self.replica.copy()
        acc = np.zeros_like(self.grad) if ex.send_gradients else None
        if len(self.shard) == 0:  # nothing to train on (yet): a handoff may have arrived meanwhile
            self._poll_ctrl()
        batches = self._batches(rnd, iters, min(cfg.model.batch_size, len(self.shard)))
        slow = F.slowdown(cfg.faults, self.rank, rnd)  # injected slowdown:R@N:F (a straggler), else 1
        for i in range(len(batches)):
            ts = time.monotonic()
            b = batches[i]
            losses.append(self.model.loss_grad(local, self.shard.rows(b), self.shard.y[b], self.grad))
            if acc is not None:
                acc += self.grad
            else:
                if mu > 0:
                    self.grad += mu * (local - self.replica)
                clip(self.grad, cfg.optimizer.clip_norm, cfg.optimizer.clip_val)
                self.opt.step(local, self.grad)
            if slow > 1:  # each step followed by (F - 1) times its duration
                time.sleep((slow - 1) * (time.monotonic() - ts))
            # after a step: every ctrl_poll seconds, and once at the middle of the round whatever the time (a
            # round of fast steps still looks twice: a first look may only start receiving a message); rows
            # handed over meanwhile: the rest of the round draws from them
            if i + 1 < iters and self._poll_ctrl(every_step=i + 1 != iters // 2):
                batches[i + 1:] = self._batches(rnd, iters - i - 1, min(cfg.model.batch_size, len(self.shard)),
                                                salt=(self.epoch,))
        if acc is not None:
            acc /= max(iters, 1)
            clip(acc, cfg.optimizer.clip_norm, cfg.optimizer.clip_val)
            update = acc
        else:
            update = local - self.replica
        payload, _ = self.uplink.compress(update, seed=cfg.model.seed * 7919 + rnd * 131 + self.ident)
        payload = F.tamper(cfg.faults, self.rank, rnd, payload)  # injected nan/corrupt faults only
        rep = self._representative(local, rnd)
        self._trained = rnd
        # the round before a periodic checkpoint: the state the next round starts from goes with the reply; with
        # hot spares, every round's (a spare then starts from exactly where a lost worker stood)
        ckpt = ex.checkpoint_every > 0 and (rnd + 1) % ex.checkpoint_every == 0
        state = self.local_state(rnd + 1, key=ckpt) if ckpt or ex.spares > 0 else None
        reply = P.Reply(self.epoch, rnd, self.rank, payload, float(np.mean(losses)) if losses else float("nan"),
                        self.shard.mass, len(self.shard), rep, self._handed, self._ready, self._prefetched,
                        self._unreadable, time.monotonic() - t0, state=state, redo=redo)
        self._handed, self._ready, self._prefetched, self._unreadable = 0, {}, {}, []
        self.ch.send(self.coord, TAG_REPLY, reply)
        self._ahead = None  # a spare's other shards read ahead: freed now, not while the others waited for it
        if rnd == 0:
            mark("first-reply")
        self._take_replicas()  # the deputy: once a round, after its reply (the replica went out with the round)
        if self._plan is not None:  # off the critical path: rank 0 is collecting the others' replies
            self._read_ahead(self._plan)
            self._plan = None
        if msg.rebuild:  # ULFM: rank 0 and every survivor rebuild the alive communicator together (a helper
            # thread, started after the reply so that it costs the round nothing; same rebuilds, same order)
            self.ch.rebuild_start(msg.rebuild, self.epoch)

    def _rescore(self, params: np.ndarray, rnd: int) -> None:
        """Refresh the per-sample losses: the whole shard at first, then one rotating slice per round, so
        that every row is re-scored every ``executor.score_every`` rounds at 1/score_every of the cost."""
        n = len(self.shard)
        if self.scores is None:
            self.scores = self._sample_loss(params, 0, n)
            return
        if len(self.scores) < n:  # rows handed over since: score them now
            self.scores = np.concatenate([self.scores, self._sample_loss(params, len(self.scores), n)])
        every = self.cfg.executor.score_every
        lo, hi = (rnd % every) * n // every, (rnd % every + 1) * n // every
        if hi > lo:
            self.scores[lo:hi] = self._sample_loss(params, lo, hi)

    def _sample_loss(self, params: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Per-row losses of rows ``lo:hi``, their features converted a block at a time (not all at once)."""
        out = np.empty(hi - lo, np.float32)
        for a in range(lo, hi, _SCORE_ROWS):
            b = min(hi, a + _SCORE_ROWS)
            out[a - lo:b - lo] = self.model.sample_loss(params, self.shard.rows(slice(a, b)), self.shard.y[a:b])
        return out

    def _representative(self, params: np.ndarray, rnd: int) -> np.ndarray:
        """Global ids of this worker's representative rows under ``loss`` or ``stratified`` (scored on its
        shard); nothing when they would not be used (``remap`` is not ``representative``) or when rank 0
        chooses them itself (``random``, staged before any failure; ``coreset``, at the loss)."""
        o = self.cfg.optimizer
        k = rep_count(o.n_most_rep, len(self.shard))
        if k <= 0 or self.cfg.executor.remap != "representative" or o.rep_selection not in SCORED:
            return np.zeros(0, np.int64)
        self._rescore(params, rnd)
        assert self.scores is not None
        local = select_representative(o.rep_selection, self.scores, self.shard.y, k, self.n_classes,
                                      seed=self.cfg.model.seed * 104729 + rnd * 31 + self.ident)
        return self.shard.ids[local].astype(np.int64)


def _room(n: int) -> int:
    """Rows of room a worker's shard buffer leaves after its ``n`` rows, for handed rows."""
    return max(n // 2, 1024)


def _last_row(path: Path) -> int | None:
    """The round of a metrics.csv's last row (its first field), or None (no file, no row)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        head = line.split(b",", 1)[0].strip()
        if head.isdigit():
            return int(head)
    return None


def run_worker(ch: Channel, cfg: Config, run_dir: Path, resuming: bool = False) -> int:
    return Worker(ch, cfg, run_dir, resuming).run()
