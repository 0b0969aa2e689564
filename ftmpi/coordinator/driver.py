"""Rank 0's round driver: the only part of rank 0 that talks MPI. It owns the :class:`Channel`, the
deadlines, the pings and the global model; everything rank 0 knows about the cluster lives in
:class:`ftmpi.core.cluster.ClusterState`, which it feeds events and whose effects it carries out, each effect
type by one handler (:attr:`Coordinator.HANDLERS`). It owns two parts: replication to the deputy
(:class:`~ftmpi.coordinator.deputy.Replication`) and the start and end of the run
(:class:`~ftmpi.coordinator.lifecycle.Lifecycle`), which share one :class:`~ftmpi.coordinator.context.Context`.

A round: broadcast the model, write the previous round's metrics row, then wait for replies in short polls.
Each poll returns what arrived (messages, ULFM failures); the driver turns it into events, applies them to
the state, and carries out the effects before polling again, so a survivor still training is sent a lost
worker's rows mid-round. Between polls, and wherever rank 0 waits for something else (the alive-communicator
rebuild, the background writer, a handoff file being written in a thread), it pings the workers, so that no
worker gives up on rank 0 while it is busy. At the deadline the silent workers are lost.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from ftmpi import faults as F
from ftmpi import signals
from ftmpi.comm import TAG_CTRL, TAG_REPLY, Channel, Detector
from ftmpi.config import FAULT_POINTS, Config
from ftmpi.coordinator.context import Context, Tally
from ftmpi.coordinator.deputy import Replaced, Replication, restore_staged
from ftmpi.coordinator.files import HandoffWrite, shards_by_reference, write_shards
from ftmpi.coordinator.globalmodel import GlobalModel
from ftmpi.coordinator.lifecycle import Lifecycle
from ftmpi.coordinator.outputs import Outputs
from ftmpi.coordinator.saver import BackgroundWriter
from ftmpi.coordinator.staging import Standby
from ftmpi.core import protocol as P
from ftmpi.core.cluster import (
    Accept,
    Adopt,
    Chosen,
    ClusterState,
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
from ftmpi.core.failover import Change, beat_period, silence_limit, spare_ranks, takeover_state, write_stall_limit
from ftmpi.core.handoff import Schedule, make_policy
from ftmpi.core.kinds import How
from ftmpi.core.quorum import Rules, close_time
from ftmpi.errors import EXIT_NO_WORKERS, EXIT_OK, EXIT_PREEMPTED, Deposed, Diverged, FtmpiError, WriteFailed
from ftmpi.model.models import warmup
from ftmpi.observe.metrics import Progress, truncate_metrics
from ftmpi.observe.timeline import mark
from ftmpi.procs import ExitWatch, hostname, kill_if_same
from ftmpi.signals import stop_requested
from ftmpi.storage.checkpoint import Snapshot
from ftmpi.storage.data import Dataset, load_dataset
from ftmpi.storage.shards import handoff_path, shard_path
from ftmpi.storage.term import Fence, claim, current_term

if TYPE_CHECKING:
    from ftmpi.observe.tb import TBWriter

# an effect's handler: (driver, the effect, the round's accepted replies so far)
Handler = Callable[["Coordinator", Any, dict[int, P.Reply]], None]


class Prefetched(Protocol):
    """The dataset being read in a thread since the process started."""

    def get(self) -> Dataset:
        """The dataset, once read; raises what reading it raised."""


_EXIT_LOOK = 0.001  # seconds between two looks of the exit watch while polling


class Coordinator:
    """Rank 0's driver, or a deputy's that took over (``takeover``: the replica it holds and the change).

    Attributes:
        ctx: What its parts share (the channel, config, state, global model, outputs, writer, ...; the
            same objects as the driver's attributes of those names).
        tally: The run's totals for summary.json (``ctx.tally``).
        replication: Replication to the deputy; the fence against a coordinator that was replaced.
        lifecycle: Join, deal, checkpoints, finish.
        HANDLERS: Effect type -> the method that carries it out.
    """

    def __init__(self, ch: Channel, cfg: Config, run_dir: Path, progress: Progress, t_start: float, data: Dataset,
                 resume: Snapshot | None = None, tb: TBWriter | None = None,
                 takeover: tuple[P.Replica, Change] | None = None, local: Any = None) -> None:
        self.ch, self.cfg, self.run_dir, self.data = ch, cfg, Path(run_dir), data
        self.me = ch.rank
        # executor.standby_coordinator: rank 1 trains nothing and is the deputy (a takeover hands nothing over)
        spare = 1 if cfg.executor.standby_coordinator and takeover is None and ch.size >= 3 else -1
        ex, o = cfg.executor, cfg.optimizer
        # faults that already fired in an earlier launch or before a takeover (never replayed)
        self.fired = {(int(m["rank"]), int(m["round"])) for m in F.read_marks(run_dir).values()} \
            if resume or takeover else set()
        self.writer = BackgroundWriter()  # checkpoints and staged representative rows, behind the rounds
        if resume is not None:
            self.writer.mark_ok("checkpoint")  # the checkpoint it resumed from is valid
        self.standby = Standby(cfg, self.run_dir, self.writer)
        self.gm = GlobalModel(cfg, data)
        policy = make_policy(ex.remap, o.rep_selection, o.n_most_rep, o.rep_weight,
                             self.standby if self.standby.active else None, self.gm.score, data=data,
                             schedule=Schedule(cfg.model.n_iterations, ex.comm_period, cfg.model.batch_size))
        if ex.remap == "representative" and o.rep_selection == "coreset":
            warmup(0, False, "coreset")  # the coreset kernel runs at a loss: compiled (or loaded) now
        launch = time.time() - (time.monotonic() - t_start)
        # this coordinator's term, claimed in the run dir before its first write there (storage.term): one more
        # than any claimed so far, and than the replica's when it takes over
        term = max(current_term(self.run_dir), takeover[0].term if takeover is not None else 0) + 1
        claim(self.run_dir, term, {"rank": self.me, "host": hostname(), "pid": os.getpid(), "time": time.time(),
                                   "takeover": takeover is not None})
        hfile = lambda e: str(handoff_path(self.run_dir, e, term))  # noqa: E731
        self._effects0: list[Effect] = []  # a takeover's first effects: its own rows handed over
        self.local: Any = None  # a deputy that took over and trains its own rows: its worker (ftmpi.worker.loop)
        self._not_kept = ""  # why a deputy that trained did not keep its rows
        self._own: P.Round | None = None  # this round's message to the local worker
        self.takeover = takeover
        # the alive communicator: only when asked (executor.alive_comm), and not after a takeover (see failover)
        self.rebuilds = takeover is None and cfg.executor.alive_comm
        if takeover is None:
            spares = spare_ranks(ch.size, ex.spares)  # hot spares: the highest ranks (executor.spares)
            self.state = ClusterState(len(data.y_train), [r for r in range(ch.size)
                                                          if r not in (self.me, spare) and r not in spares],
                                      policy, cfg.model.seed, launch, hfile, spares)
        else:
            restore_staged(self.standby, takeover[0])
            # a deputy that trained goes on training its rows in this process (the run keeps its workers)
            self.local, self._not_kept = (local, "") if local is None else _keeps_rows(local, takeover[0], self.me)
            self.state, self._effects0 = takeover_state(takeover[0], self.me, policy, cfg.model.seed, launch,
                                                        time.time(), hfile, keep=self.local is not None,
                                                        how=takeover[1].how)
        self.state.term = term
        self.gm.ident = self.state.ident  # one record of whose place each spare holds (replicated with the state)
        self.fence = Fence(self.run_dir, term)
        self.standby.term, self.standby.fence = term, self.fence
        if resume is not None:
            truncate_metrics(self.run_dir / "metrics.csv", resume.round)
        if takeover is not None:  # the rows from the one the lost coordinator had not written yet are redone
            pending = takeover[0].pending
            truncate_metrics(self.run_dir / "metrics.csv", pending["round"] if pending else takeover[0].round)
        self.out = Outputs(self.run_dir, cfg, progress, data.n_classes, resume is not None or takeover is not None,
                           tb)
        self.tally = Tally(t_start, resumed_from=None if resume is None else {"round": resume.round,
                                                                             "epoch": resume.epoch})
        self.ctx = Context(ch, cfg, self.run_dir, data, self.state, self.gm, self.out, self.writer, self.standby,
                           self.tally)
        self.replication = Replication(self.ctx, self, spare)
        self.replication.kept = self.local is not None
        if self.local is not None:  # its coordinator is now this process; its beats are this process's pings
            w = self.local
            w.coord, w.term, w._stash = self.me, term, []
            w.fired |= {(self.me, f.round) for f in cfg.faults if f.rank == self.me}  # fired by the driver
            w.on_beat = lambda: self.ping(self.state.alive)
        self.replication.fence = self.fence
        self.lifecycle = Lifecycle(self.ctx, self, self.replication, resume)
        if takeover is not None:
            self.replication.from_replica(*takeover)
        self.pending_rebuild: list[int] | None = None
        self._spares_told = -1  # the deputy the idle spares were last told of
        self._spare_states: dict[int, dict] = {}  # spare -> the lost worker's newest known state, sent once
        self._spare_files: dict[int, Path] = {}  # spare -> the shard file it reads (its own, or the lost one's)
        self._flight: tuple[int, int, float, int] | None = None  # the round in flight: round, iters, lr, deputy
        self._writes: dict[int, HandoffWrite] = {}  # epoch -> its handoff file being written
        self._silent: set[int] = set()  # ranks whose receives ULFM reports failed: never polled again
        self._next_ping = 0.0
        # the ranks on this host whose process ends are lost at once, not when MPI says so (or never does)
        self._exits = ExitWatch() if cfg.executor.watch_exits else None
        self._ended: list[int] = []  # ranks whose process the watch saw end, not acted on yet
        self._next_exit_look = 0.0
        self._host = hostname()
        self._rebuild_when_known: tuple[list[int], set[int]] | None = None  # members; dead ULFM must know of

    # ------------------------------------------------------------------- what the parts ask of the driver
    def ping(self, ranks: list[int], force: bool = False) -> None:
        """Tell the workers this coordinator is alive, at most once per beat period
        (:func:`~ftmpi.core.failover.beat_period`) unless forced."""
        now = time.monotonic()
        if force or now >= self._next_ping:
            spare = self.replication.spare
            for r in ranks + ([spare] if spare >= 0 else []) + sorted(self.state.spares):  # idle spares too
                if r == self.me:  # a coordinator that trains its own rows
                    continue
                self.ch.send(r, TAG_CTRL, P.Ping(self.state.epoch, self.state.round, self.replication.deputy,
                                                 self.state.term))
            self._next_ping = now + beat_period(self.cfg.executor.timeout)

    def handoffs_pending(self) -> bool:
        """A handoff file is being written (or its messages have not gone out yet)."""
        return bool(self._writes)

    def wait_handoffs(self) -> None:
        """Wait until every handoff file is written and its messages sent, pinging every alive worker."""
        while self._writes:
            self._service(self.state.alive)
            time.sleep(0.005)

    def wait_writer(self) -> None:
        """Wait for the background writer (bounded waits), pinging every alive worker meanwhile; say its
        warnings. Raises WriteFailed when an essential write failed with nothing valid before it."""
        step = min(0.2, max(0.05, self.cfg.executor.timeout / 4))
        try:
            while not self.writer.wait(step):
                self._service(self.state.alive)
                # a stalled disk is a failed write
                self.writer.abandon_stalled(write_stall_limit(self.cfg.executor.timeout))
        finally:
            self._warn_writes()

    def _train_own(self) -> None:
        """A coordinator that trains its own rows (a deputy that took over) trains this round's share now, in
        this process, while the workers train theirs; its reply reaches the collection like theirs (a message
        to itself). Rows handed to it meanwhile are taken first."""
        msg, self._own = self._own, None
        if msg is None or self.local is None:
            return
        self.local._poll_ctrl()
        self.local._round(msg)

    def _let_writes_finish(self) -> None:
        """A coordinator that leaves on an error lets the writes in flight (a checkpoint in the background)
        finish first, within the stall limit and pinging the workers meanwhile, so that a relaunch resumes
        from the newest checkpoint rather than an older one. Their failures no longer matter: it is leaving."""
        step = min(0.2, max(0.05, self.cfg.executor.timeout / 4))
        end = time.monotonic() + write_stall_limit(self.cfg.executor.timeout)
        try:
            while not self.writer.wait(step) and time.monotonic() < end:
                self._service(self.state.alive)
        except Exception:  # a failed or fenced write, or a broken channel: nothing more to keep
            pass

    def apply(self, effects: list[Effect], replies: dict[int, P.Reply]) -> None:
        """Carry out ``effects`` in order, each by the handler of its type (:attr:`HANDLERS`)."""
        for e in effects:
            self.HANDLERS[type(e)](self, e, replies)

    # ----------------------------------------------------------------------- effects: one handler each
    def _on_accept(self, e: Accept, replies: dict[int, P.Reply]) -> None:
        """The reply is aggregated this round."""
        replies[e.rank] = e.reply

    def _on_log(self, e: Log, replies: dict[int, P.Reply]) -> None:
        self.out.log(e, self.state.round)

    def _on_expel(self, e: Expel, replies: dict[int, P.Reply]) -> None:
        if e.rank == self.me:  # its own rows, rejected: it stops training them (they were handed over)
            self.local = None
            return
        self.ch.send(e.rank, TAG_CTRL, P.Exit(e.why))

    def _on_write_handoff(self, e: WriteHandoff, replies: dict[int, P.Reply]) -> None:
        """In a thread: rank 0 goes on polling and pinging meanwhile; its messages wait for it."""
        self._writes[e.epoch] = HandoffWrite(e, self.data, self.fence)

    def _on_send_handoff(self, e: SendHandoff, replies: dict[int, P.Reply]) -> None:
        """At once (a survivor still training takes the rows between two steps), or once the epoch's handoff
        file is written."""
        if e.msg.epoch in self._writes:
            self._writes[e.msg.epoch].sends.append(e)
        else:
            self.ch.send(e.rank, TAG_CTRL, e.msg)

    def _on_stage(self, e: Stage, replies: dict[int, P.Reply]) -> None:
        self._stage(e.ranks)

    def _on_adopt(self, e: Adopt, replies: dict[int, P.Reply]) -> None:
        """A spare takes a lost worker's whole shard: it reads the lost worker's own shard file when that holds
        exactly these rows (the deal's, by reference: nothing to write while the others wait), else its own
        file is written now (rows by reference where it shares this host, else its rows). During the
        collection of a round's replies (``e.in_flight``) the spare is sent that round at once, from the model
        the others started it from, and the round waits for it; else the next round message carries its setup
        and the whole model. Either way the lost worker's optimizer state goes first, where rank 0 holds it."""
        m = self.state.members[e.rank]
        self.fence.check(f"the shard of spare {e.rank}")  # a deposed coordinator writes nothing
        mark("adopt")
        st = self.gm.known_states.get(e.lost)
        # it trains as the lost worker would have (ClusterState.ident), screened against that worker's record,
        # with that worker's standby rows when they were a draw of the rows it takes
        self.gm.screen.inherit(e.rank, e.lost)
        if self.standby.active and not self.state.standby_stale(e.rank):
            self.standby.transfer(e.lost, e.rank)
        if st is not None:  # the lost worker's state as of its last reply (workers send it every round when
            # there are spares: the spare's round is then exactly the lost one's), else of its last checkpoint
            self._spare_states[e.rank] = st
        dealt = self.tally.shard_files.get(e.lost)
        by_ref = shards_by_reference(self.data, [m.host])
        if by_ref and dealt is not None and np.array_equal(dealt[0], e.ids) and np.array_equal(dealt[1], e.weights):
            self._spare_files[e.rank] = shard_path(self.run_dir, e.lost)  # its rows as dealt: the same file
        else:
            weight = np.ones(len(self.data.y_train))
            weight[e.ids] = e.weights
            write_shards(self.run_dir, self.data, {e.rank: e.ids}, weight, by_ref, self.cfg.data.compress_shards)
            self._spare_files[e.rank] = shard_path(self.run_dir, e.rank)
        if e.in_flight and self._flight is not None:  # it trains the round in flight in the lost worker's place,
            rnd, iters, lr, deputy = self._flight  # from the model the others started it from
            self._send_fresh(e.rank, rnd, iters, lr, self.gm.W_bcast.copy(), deputy)
        mark("adopt-sent")

    def _on_rebuild(self, e: Rebuild, replies: dict[int, P.Reply]) -> None:
        """Rebuild the alive communicator at the end of the round, under ULFM, when every rank declared dead is
        one ULFM knows failed (a hung or exited rank it does not know would keep the shrink from completing)."""
        dead = {r for r, m in self.state.members.items() if not m.alive}
        if self.rebuilds and self.ch.detector is Detector.ULFM:
            failed = self.ch.failed_ranks()
            if dead <= failed:
                self.pending_rebuild, self._rebuild_when_known = e.members, None
            elif dead <= failed | self._exits_seen:  # seen ending here first: rebuilt once ULFM knows too
                self._rebuild_when_known = (e.members, dead)

    def _rebuild_once_known(self) -> None:
        """A rebuild put off until ULFM reports the ranks this host saw end (:meth:`_on_rebuild`)."""
        if self._rebuild_when_known is not None and self._rebuild_when_known[1] <= self.ch.failed_ranks():
            self.pending_rebuild, self._rebuild_when_known = self._rebuild_when_known[0], None

    HANDLERS: ClassVar[dict[type, Handler]] = {
        Accept: _on_accept,
        Log: _on_log,
        Expel: _on_expel,
        WriteHandoff: _on_write_handoff,
        SendHandoff: _on_send_handoff,
        Stage: _on_stage,
        Rebuild: _on_rebuild,
        Adopt: _on_adopt,
    }

    # -------------------------------------------------------------------------------- helpers
    def _written(self) -> bool:
        """A handoff file finished writing, or was given up on (its messages can go out)."""
        return any(w.done(write_stall_limit(self.cfg.executor.timeout)) for w in self._writes.values())

    def _service(self, ping: list[int]) -> None:
        """Between two polls: send the handoffs whose file is complete, and ping."""
        for e, w in list(self._writes.items()):
            if w.done(write_stall_limit(self.cfg.executor.timeout)):
                del self._writes[e]
                sends = w.sends
                if w.error is not None:
                    if not isinstance(w.error, OSError | RuntimeError):  # a bug, not the disk
                        raise w.error
                    # a full or failing disk: the rows of that file are dropped (or orphaned), the run goes on
                    why = " ".join(str(w.error).split()) or type(w.error).__name__
                    effects = self.state.handoff_unwritten(e, why)
                    sends = [x for x in effects if isinstance(x, SendHandoff)]
                    self.apply([x for x in effects if not isinstance(x, SendHandoff)], {})
                for s in sends:
                    self.ch.send(s.rank, TAG_CTRL, s.msg)
        self.ping(ping)

    def _warn_writes(self) -> None:
        for line in self.writer.take_warnings() + self.ch.take_notes():
            self.out.progress.warn(line)

    def _stage(self, ranks: list[int]) -> None:
        """Stage the workers' representative rows (``rep_selection: random``; see
        :mod:`ftmpi.coordinator.staging`)."""
        if self.standby.active:
            s = self.state
            chosen = self.standby.stage(ranks, s.epoch, s.ownership, s.weight, self.data)
            self.apply(s.apply([Chosen(r, ids) for r, ids in chosen.items()], time.time()), {})

    # ------------------------------------------------------------------------------------ run
    def run(self) -> int:
        try:
            return self._run()
        except Replaced as exc:
            return self.replication.leave_replaced(exc)
        except Deposed:  # a write found a higher term claimed (the fence): the same as being told
            return self.replication.leave_replaced(Replaced(self.replication.deposed_by_run_dir()))
        except BaseException as exc:
            if isinstance(exc, FtmpiError) or not self.replication.hands_over_crash():
                self._let_writes_finish()
                raise  # a crash hands over once per run: the same bug would go round every worker
            # a crash with a deputy holding a replica: it takes over at once; the others follow it
            for r in self.state.alive:
                self.ch.send(r, TAG_CTRL, P.Abdicate(f"{type(exc).__name__}: {exc}"))
            self.ch.flush(time.monotonic() + 2.0)
            exc.handed_over = self.replication.deputy  # type: ignore[attr-defined]  # no verdict, nobody told to leave
            raise

    def _run(self) -> int:
        if self.takeover is not None:
            return self._run_rounds(takeover=True)
        ex, t0 = self.cfg.executor, time.monotonic()
        self._faults_at(FAULT_POINTS["start"])
        self.lifecycle.join()
        mark("joined")
        t1 = time.monotonic()
        if not self.state.alive:
            sys.stderr.write("ftmpi: rank 0: error: no worker joined within executor.startup_timeout "
                             f"({ex.startup_timeout:g}s)\n")
            return self.lifecycle.finish(EXIT_NO_WORKERS)
        self._faults_at(FAULT_POINTS["deal"])
        self.lifecycle.deal()
        mark("dealt")
        t2 = time.monotonic()
        prog = self.out.progress
        prog.event(f"start-up: join {t1 - t0:.2f}s, shards {t2 - t1:.2f}s ({t2 - self.tally.t_start:.2f}s since "
                   f"launch of rank 0's main)")
        prog.event(f"{len(self.state.alive)} workers, {len(self.data.y_train)} training rows ({self.data.name}), "
                   f"{self.gm.model.n_params} params, detector={self.ch.detector.value}")
        self._stage(self.state.alive)
        return self._run_rounds()

    def _run_rounds(self, takeover: bool = False) -> int:
        prog = self.out.progress
        if takeover:
            self.replication.begin_takeover()
            self.apply(self._effects0, {})  # its own rows handed over
            # stage the workers whose standby file is not known (the others' were restored from the replica)
            self._stage([r for r in self.state.alive if r not in self.standby.staged])
        first = True
        code: int = EXIT_OK
        while not self.gm.done:
            if not self.state.alive:
                code = EXIT_NO_WORKERS
                sys.stderr.write(f"ftmpi: rank {self.me}: error: every worker is lost (round {self.state.round}); "
                                 f"metrics and summary saved in {self.run_dir}\n")
                break
            sig = stop_requested()
            if sig is not None:  # preempted: this round is checkpointed by finish; resume continues from it
                self.tally.preempted = {"signal": sig, "round": self.state.round}
                prog.event(f"{sig}: stopping after round {self.state.round - 1}; checkpointing for a resume")
                code = EXIT_PREEMPTED
                break
            try:
                self._round(first, setup=first and not takeover)
            except (WriteFailed, Diverged) as exc:  # the first checkpoint failed (nothing resumable), or NaN/Inf
                sys.stderr.write(f"ftmpi: rank 0: error: {exc}\n")
                code = exc.exit_code
                break
            first = False
            if self.out.reached is not None and not self.gm.done:  # executor.target_accuracy
                prog.event(self.out.target_note(self.state.round - 1))
                self.tally.target_stop = True
                break
            if self.state.round == 1:
                mark("round-0")
        if code == EXIT_OK and not self.state.alive:  # the last worker was lost in the last round
            code = EXIT_NO_WORKERS
            sys.stderr.write(f"ftmpi: rank {self.me}: error: every worker is lost (round {self.state.round - 1}); "
                             f"metrics and summary saved in {self.run_dir}\n")
        mark("rounds-done")
        self._faults_at(FAULT_POINTS["finish"])
        code = self.lifecycle.finish(code)
        mark("finished")
        return code

    def _broadcast(self, rnd: int, iters: int, first: bool, setup: bool) -> None:
        s = self.state
        payload, full, lr = self.gm.payload(rnd, iters, first)
        plans = self.standby.plans(s.epoch, s.alive, s.ident_of) if self.standby.active else None
        deputy = self.replication.name_deputy()
        if deputy != self._spares_told:  # idle spares get no round message: told at once whom to follow
            for r in sorted(s.spares):
                self.ch.send(r, TAG_CTRL, P.Ping(s.epoch, s.round, deputy, s.term))
                if self._spares_told == -1:  # the first (the deal is written): it reads the shards ahead now,
                    self._wake(s.spares.get(r))  # beside the others' start-up, not in the first training rounds
            self._spares_told = deputy
        for r in s.in_round():  # not a spare that took a shard during the round in flight: it starts with the next
            if r == self.me:  # its own rows, trained in this process once the others have their message
                self._own = P.Round(s.epoch, rnd, s.stragglers.iters_for(r, iters), lr, full, payload, None,
                                    None, None, deputy, s.term)
                continue
            if r in s.adopting:  # a spare that took a lost worker's shard: its first round, the whole model
                self._send_fresh(r, rnd, iters, lr, self.gm.W_bcast.copy() if not full else payload, deputy,
                                 self.standby.news_for(r, plans))
                continue
            how = P.Setup(str(shard_path(self.run_dir, r)), self.data.n_classes,
                          self.gm.model.sizes.tolist()) if setup else None
            # a rebalanced straggler is given fewer iterations (ftmpi.core.quorum; all of them under quorum 1.0)
            self.ch.send(r, TAG_CTRL, P.Round(s.epoch, rnd, s.stragglers.iters_for(r, iters), lr, full, payload, how,
                                              self.standby.news_for(r, plans), self.pending_rebuild, deputy,
                                              s.term))
        self._flight = (rnd, iters, lr, deputy)
        self.replication.round_sent(rnd)

    def _send_fresh(self, r: int, rnd: int, iters: int, lr: float, params: np.ndarray, deputy: int,
                    news: Any = None) -> None:
        """A spare's first round message: the lost worker's optimizer state when known (:class:`P.Restore`
        first), then the round with its setup and the whole model."""
        s = self.state
        if r in self._spare_states:
            st = self._spare_states.pop(r)
            if int(st["round"]) != rnd:  # an older state (a checkpoint's): its optimizer, not zeros, but no
                st = {**st, "residual": np.zeros(0, np.float32)}  # stale error-feedback residual
            self.ch.send(r, TAG_CTRL, P.Restore(int(st["round"]), st, s.term))
        how = P.Setup(str(self._spare_files.get(r, shard_path(self.run_dir, r))), self.data.n_classes,
                      self.gm.model.sizes.tolist(), self.gm.ident.get(r, -1))
        self.ch.send(r, TAG_CTRL, P.Round(s.epoch, rnd, s.stragglers.iters_for(r, iters), lr, True, params, how,
                                          news, self.pending_rebuild, deputy, s.term))
        self._wake(s.members.get(r))

    @staticmethod
    def _wake(m: Any) -> None:
        """A napping spare on this host looks at its messages at once (a signal ends its nap), not at its next
        look (<= 50 ms later)."""
        if m is not None and m.host == hostname():
            kill_if_same(m.pid, m.start_time, signals.WAKE)

    def _collect(self, late: list[P.Reply] | None = None) -> dict[int, P.Reply]:
        """Wait for this round's replies in short polls, applying what arrives as it arrives. A worker is lost
        when MPI reports it failed, or when it has been silent (no reply, no beat) for longer than the silence
        limit since the round went out: a worker that is slow keeps beating and is waited for. Before a worker
        is declared lost by silence, what has arrived meanwhile is read (this rank may itself have been the
        one that stalled).

        Quorum rounds (``executor.quorum`` < 1, :mod:`ftmpi.core.quorum`): the round also closes once a quorum
        replied and the straggler wait passed (:func:`~ftmpi.core.quorum.close_time`); the workers that did not
        reply are not lost, they are waited for in the next round. Replies to earlier rounds that the state
        accepts as late go into ``late`` (folded into this round's aggregate)."""
        ex, s = self.cfg.executor, self.state
        replies: dict[int, P.Reply] = {}
        rules = s.stragglers.rules
        final = self.gm.iters_done + self.gm.next_iters() >= self.cfg.model.n_iterations  # nothing folds after it
        arrived: dict[int, float] = {}  # quorum rounds: rank -> seconds after the round went out its reply came
        limit = silence_limit(ex.timeout)
        tick = beat_period(ex.timeout)
        start = time.monotonic()
        heard: dict[int, float] = {}  # rank -> when a message of this round last came from it
        while True:
            self.replication.check_replaced()
            self._service(s.alive)
            self.replication.replicate_changes()
            waiting = s.waiting_for()
            if not waiting:
                return replies
            now = time.monotonic()
            for r in waiting:  # a spare sent this round mid-way (in a lost worker's place): silent from now on
                heard.setdefault(r, now)
            close = close_time(rules, len(s.alive), arrived.values(), final) if rules.active else None
            if close is not None and now >= start + close:
                return replies
            due = min(heard.get(r, start) for r in waiting) + limit
            # idle spares too: MPI may report one failed (they send nothing else here while idle)
            sources = [r for r in s.alive + sorted(s.spares) + sorted(s.suspects) if r not in self._silent]
            deadline = min(max(due, now), now + tick)
            self._watch_new()
            out = self.ch.poll(sources, TAG_REPLY, deadline if close is None else min(deadline, start + close),
                               until=lambda o: bool(o.messages or o.failed) or self._written() or self._exit_seen())
            ended = self._take_ended(out, sources)
            now = time.monotonic()
            events: list[Heard | Lost | Chosen] = []
            for r, ms in out.messages.items():
                heard[r] = now
                events += [self.ctx.heard(r, m) for m in ms if not isinstance(m, P.Beat)]
            for r in out.failed:
                self._silent.add(r)
                if r in s.alive or r in s.spares:  # acted on at once: the survivors take the rows between two steps
                    events.append(Lost(r, How.ULFM, "", self.ctx.mark(r)))
            for r in ended:
                self._silent.add(r)
                events.append(Lost(r, How.EXITED, "its process ended on this host", self.ctx.mark(r)))
            if events:
                effects = s.apply(events, time.time())
                if rules.active:  # a late reply (an earlier round's) is folded, not this round's
                    old = [e for e in effects if isinstance(e, Accept) and e.reply.round != s.round]
                    if late is not None:
                        late += [e.reply for e in old]
                    effects = [e for e in effects if not any(e is o for o in old)]
                self.apply(effects, replies)
                arrived.update({r: now - start for r in replies if r not in arrived})
            silent = [r for r in s.waiting_for() if now - heard.get(r, now) > limit]  # (a spare that joined just now)
            if silent:
                lost: list[Heard | Lost | Chosen] = [
                    Lost(r, How.TIMEOUT, self._silence(r, now - heard[r]), self.ctx.mark(r))
                    for r in silent]
                self.apply(s.apply(lost, time.time()), replies)

    # ------------------------------------------------------------------------- processes seen ending
    def _watch_new(self) -> None:
        """Watch the process of every alive worker and idle spare on this host not watched yet."""
        if self._exits is None:
            return
        s = self.state
        for r in s.alive + sorted(s.spares):
            if r != self.me and r not in self._exits:
                m = s.members.get(r) or s.spares.get(r)
                same = m is not None and m.host == self._host
                self._exits.watch(r, m.pid if same else 0, m.start_time if same else 0)  # type: ignore[union-attr]

    def _exit_seen(self) -> bool:
        """Whether the watch saw a process end; it looks at most every :data:`_EXIT_LOOK` seconds (a poll
        iterates every 50-250 µs; a killed process takes milliseconds to end anyway)."""
        if self._exits is not None:
            now = time.monotonic()
            if now >= self._next_exit_look:
                self._next_exit_look = now + _EXIT_LOOK
                self._ended += self._exits.ended()
        return bool(self._ended)

    @property
    def _exits_seen(self) -> set[int]:
        return {f.rank for f in self.state.failures if f.how is How.EXITED}

    def _take_ended(self, out: Any, sources: list[int]) -> list[int]:
        """The alive workers and idle spares whose process the watch saw end (not reported failed by MPI in
        the same poll), after one more look for what they sent before they ended (a last reply or an error
        report may have landed after the poll's own look): it goes into ``out`` and is applied first."""
        self._exit_seen()
        s = self.state
        ended = [r for r in dict.fromkeys(self._ended) if r not in out.failed and r not in self._silent
                 and (r in s.alive or r in s.spares)]
        self._ended = []
        if ended:
            last = self.ch.poll([r for r in ended if r in sources], TAG_REPLY, time.monotonic(), until=lambda o: False)
            for r, ms in last.messages.items():
                out.messages.setdefault(r, []).extend(ms)
        return ended

    def _silence(self, r: int, seconds: float) -> str:
        nbytes = self.ch.partial(r, TAG_REPLY)
        said = f"silent for {seconds:.2f}s"
        return said if nbytes is None else f"{said}, timed out mid-message ({nbytes} bytes still arriving)"

    def _faults_at(self, at: int) -> None:
        """Inject this rank's faults due at round ``at`` (or at a named point, config.FAULT_POINTS); a fault that
        already fired (an earlier launch, or before a takeover) is not replayed."""
        for f in F.due(self.cfg.faults, self.me, at):
            if (self.me, at) not in self.fired:
                F.inject(f, self.run_dir)

    def _round(self, first: bool, setup: bool = True) -> None:
        cfg, ex, s = self.cfg, self.cfg.executor, self.state
        rnd = s.round
        self._faults_at(rnd)
        self.replication.check_replaced()  # e.g. it was stopped, replaced, and woke up
        t0 = time.monotonic()
        iters = self.gm.next_iters()
        s.stragglers.rules = Rules.of(ex)  # the quorum keys (a deputy's restored state holds them too)
        s.begin_round(iters)
        self._rebuild_once_known()
        self._broadcast(rnd, iters, first, setup)
        self.replication.replicate()  # the state after the previous round, with its row not written yet
        self.out.write_row(self.lifecycle.evaluate)  # the previous round's row, evaluated while the workers train
        self._train_own()
        rebuild, self.pending_rebuild = self.pending_rebuild, None
        n_failures = len(s.failures)
        late: list[P.Reply] = []  # quorum rounds: replies to earlier rounds, folded into this one
        t_wait = time.monotonic()
        s.collecting = True  # a spare that takes a lost worker's shard now trains this round in its place
        try:
            replies = self._collect(late)
        finally:
            s.collecting = False
        t_wait = time.monotonic() - t_wait
        self.replication.replicate_after_loss()
        if rebuild is not None:  # in a helper thread: each survivor starts the same rebuild after its reply
            self.ch.rebuild_start(rebuild, s.epoch)
        self.tally.alive_comm = self.ch.rebuild_status()
        self._warn_writes()
        fold = s.stragglers.folding(replies, late, rnd, s.alive, ex.send_gradients) if s.stragglers.rules.active \
            else None
        loss, note = self.gm.aggregate(replies, rnd, iters, fold)
        if note:
            self.out.progress.event(note)
        self.apply(s.apply([Lost(r, How.REJECTED, why, self.ctx.mark(r))  # updates rejected reject_limit times
                            for r, why in self.gm.screened.lost.items()], time.time()), {})
        self.apply(s.end_round(time.time()), {})
        slow = F.slowdown(cfg.faults, self.me, rnd)  # injected slowdown:0@N:F: rank 0's own work, F times longer
        if slow > 1:
            time.sleep((slow - 1) * max(0.0, time.monotonic() - t0 - t_wait))
        tr = self.ch.traffic
        self.out.pending = {
            "round": rnd, "epoch": s.epoch, "iters": self.gm.iters_done, "train_loss": loss,
            "bytes_sent": tr.bytes_sent, "bytes_recv": tr.bytes_recv, "alive_workers": len(s.alive),
            "stale_dropped": s.stale, "failures": len(s.failures), "coverage": s.ownership.coverage(),
            "round_time": time.monotonic() - t0, "wall": time.monotonic() - self.tally.t_start, "term": s.term,
            "_event": len(s.failures) > n_failures, **self.gm.screen_row(),
            "late_folded": len(late), "late_dropped": s.stragglers.dropped, "rebalanced": len(s.stragglers.share)}
        self.out.last_loss = loss
        ce = ex.checkpoint_every
        if ce > 0 and s.round % ce == 0 and not self.gm.done:
            self.lifecycle.checkpoint()


def run_coordinator(ch: Channel, cfg: Config, run_dir: Path, progress: Progress, t_start: float,
                    resume: Snapshot | None = None, prefetch: Prefetched | None = None) -> int:
    """Rank 0's life: tensorboard first (a missing package fails at once, exit 2), the data (read in a thread
    since the process started, while the workers' hellos queue), then the rounds."""
    tb: TBWriter | None = None
    if cfg.executor.tensorboard:
        from ftmpi.observe.tb import TBWriter

        tb = TBWriter(Path(run_dir) / "tb")
    data = prefetch.get() if prefetch is not None else load_dataset(cfg.data, cfg.model.seed)
    mark("data")
    return Coordinator(ch, cfg, run_dir, progress, t_start, data, resume, tb).run()


def _keeps_rows(worker: Any, rep: P.Replica, me: int) -> tuple[Any, str]:
    """``(worker, "")`` when the deputy's worker holds exactly the rows and weights the replica says it owns
    (it can go on training them as the coordinator), else ``(None, why)``: its rows are then handed over."""
    st = rep.state or {}
    owner = np.asarray(st.get("owner", np.zeros(0)))
    ids = np.flatnonzero(owner == me)
    sh = worker.shard
    mine = np.asarray(sh.ids, np.int64)
    if len(mine) != len(ids) or not np.array_equal(np.sort(mine), ids):
        return None, f"its rows ({len(mine)}) are not those the replica gives it ({len(ids)})"
    w = st.get("weight")
    if w is not None and sh.w is not None and not np.array_equal(np.asarray(w)[mine], sh.w):
        return None, "its rows' weights are not those of the replica"
    return worker, ""


def take_over(ch: Channel, cfg: Config, run_dir: Path, replica: P.Replica, change: Change, data: Dataset,
              worker: Any = None) -> int:
    """A deputy becomes the coordinator in its own process, from its newest replica (see ftmpi.core.failover);
    ``worker``: its worker, when it trained (it goes on training its rows in this process)."""
    tb: TBWriter | None = None
    if cfg.executor.tensorboard:
        from ftmpi.observe.tb import TBWriter

        tb = TBWriter(Path(run_dir) / "tb")
    progress = Progress(cfg.executor.progress)
    progress.who = f"rank {ch.rank} (coordinator)"
    return Coordinator(ch, cfg, run_dir, progress, time.monotonic(), data, None, tb, (replica, change),
                       worker).run()
