"""Rank 0: membership, the round loop, aggregation, failure handling and handoff, outputs.

State machine (:class:`CState`): JOINING → SHARDING → TRAINING (⇄ RECOVERING after a failure) →
STOPPING → DONE, or NO_WORKERS when every worker is lost.

Rank 0 alone decides membership. A worker is declared dead when ULFM reports it (detector ``ulfm``), when it
misses a round's deadline (always), or when it reports its own crash. Every message carries
(epoch, round); anything else is dropped and counted, and a rank already declared dead that speaks again is
told to leave. The dead worker's rows are handed to the survivors (``executor.remap``) through HDF5 files:
each survivor is sent its slices as soon as the loss is known (a survivor still training takes them between
two steps). With ``rep_selection: random`` rank 0 chooses every worker's representative rows itself and
stages them in a standby file before anything fails, so that handing them over writes nothing, and the
survivors have read their slices ahead (:mod:`ftmpi.staging`); other rows are written into one file per
epoch at the failure. The ownership of every sample id is tracked so coverage
is exact.
"""
from __future__ import annotations

import enum
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import faults as F
from .checkpoint import Snapshot, ckpt_path, prune, save
from .codec import decode, encode
from .comm import TAG_CTRL, TAG_REPLY, Channel, Detector, Outcome
from .config import Config, config_to_dict
from .data import Dataset, load_dataset
from .errors import EXIT_NO_WORKERS, EXIT_OK, EXIT_PREEMPTED, CheckpointError
from .metrics import MetricsCSV, Progress, truncate_metrics, write_json_atomic, write_status
from .models import Model
from .optim import Optimizer, lr_at
from .partition import Ownership, assign_handoff, class_histogram, deal_slices, partition
from .saver import BackgroundWriter
from .shards import ensure_shard, handoff_path, rows_by_reference, shard_path, write_handoff  # [scale]
from .signals import stop_requested
from .staging import Standby
from .worker import rep_count, select_representative


class CState(enum.Enum):
    JOINING = "joining"
    SHARDING = "sharding"
    TRAINING = "training"
    RECOVERING = "recovering"
    STOPPING = "stopping"
    DONE = "done"
    NO_WORKERS = "no-workers"


@dataclass
class Member:
    rank: int
    host: str = "?"
    pid: int = 0
    alive: bool = True
    rep: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class Failure:
    """One worker lost: when, how it was noticed, and what it cost."""

    rank: int
    round: int
    how: str  # ulfm | timeout | error | never-joined
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
    row_weight: float | None = None  # rep_weight shard: how many of the dead shard's rows each handed row stands for


class Coordinator:
    def __init__(self, ch: Channel, cfg: Config, run_dir: Path, progress: Progress, t_start: float,
                 resume: Snapshot | None = None, prefetch: Any = None) -> None:
        self.ch, self.cfg, self.run_dir, self.progress = ch, cfg, Path(run_dir), progress
        self.resume = resume
        self.prefetch = prefetch  # the dataset, being read in a thread since the process started
        self.fired = {(int(m["rank"]), int(m["round"])) for m in F.read_marks(run_dir).values()} if resume \
            else set()
        self.t_start = t_start
        self.state = CState.JOINING
        self.members = {r: Member(r) for r in range(1, ch.size)}
        self.failures: list[Failure] = []
        self.epoch = 0
        self.round = 0
        self.iters_done = 0
        self.period = cfg.executor.comm_period
        self.switched_at: int | None = None
        self.stale = 0
        self.rows_handed = 0
        self.suspects: set[int] = set()  # declared dead by deadline: may still wake up
        self._awaiting_recovery: list[Failure] = []
        # handoff bookkeeping: epoch -> survivors handed rows in it, and epoch -> {rank: wall time at which
        # that survivor was training on them} (reported in its replies)
        self._receivers: dict[int, set[int]] = {}
        self._ready: dict[int, dict[int, float]] = {}
        self._prefetched: dict[int, int] = {}  # epoch -> handed rows the survivors had read ahead
        self.tb: Any = None
        self.bytes_before = 0
        self.wall_before = 0.0
        self.ckpt_seconds = 0.0
        self.writer = BackgroundWriter()  # checkpoints and staged representative rows, behind the rounds
        # remap representative + rep_selection random: rank 0 chooses each worker's representative rows and
        # stages them in a file of their own before anything fails, and tells the others what to read ahead
        self.standby = Standby(cfg, self.run_dir, self.writer)
        self._restage: set[int] = set()
        self.last_loss = float("nan")
        self.last_acc = float("nan")
        self._pending_row: dict[str, Any] | None = None
        self.pending_rebuild: list[int] | None = None
        self.alive_comm: dict[str, Any] | None = None
        self.last_per_class = np.zeros(0)
        self.preempted: dict[str, Any] | None = None  # {signal, round} when a stop signal ended the run

    # --------------------------------------------------------------- helpers
    @property
    def alive(self) -> list[int]:
        return [r for r, m in self.members.items() if m.alive]

    def _now_wall(self) -> float:
        return time.time()

    def _declare_dead(self, rank: int, how: str, reason: str = "") -> Failure:
        m = self.members[rank]
        m.alive = False
        f = Failure(rank=rank, round=self.round, how=how, detected_at=self._now_wall(), reason=reason)
        mark = F.read_marks(self.run_dir).get(rank)
        if mark is not None:
            f.injected_at, f.kind = float(mark["time"]), str(mark["kind"])
            f.detection_latency = max(0.0, f.detected_at - f.injected_at)
        if how == "timeout" or how == "never-joined":
            self.suspects.add(rank)
        self.failures.append(f)
        if self.tb is not None:
            self.tb.event(self.round, f"worker {rank} lost ({how}{', ' + f.kind if f.kind else ''})")
        self.progress.event(f"worker {rank} declared dead at round {self.round} ({how}"
                            + (f", {f.detection_latency:.2f}s after the {f.kind}" if f.kind else "")
                            + (f": {reason}" if reason else "") + f"); {len(self.alive)} workers left")
        return f

    def _expel(self, rank: int, why: str) -> None:
        self.stale += 1
        self.ch.send(rank, TAG_CTRL, {"t": "exit", "reason": why})

    # ------------------------------------------------------------------ join
    def _join(self) -> None:
        ex = self.cfg.executor
        ranks = list(self.members)
        # startup_timeout, not timeout: a worker says hello once its kernels are loaded (or compiled, on a
        # cold numba cache: seconds) so that round 0 is as quick as any other.
        out = self.ch.poll(ranks, TAG_REPLY, time.monotonic() + ex.startup_timeout,
                           until=lambda o: all(r in o.messages or r in o.failed for r in ranks))
        for r in ranks:
            hello = next((m for m in out.messages.get(r, []) if m.get("t") == "hello"), None)
            if hello is None:
                how = "ulfm" if r in out.failed else "never-joined"
                self._declare_dead(r, how, "no hello within executor.startup_timeout")
            else:
                self.members[r].host, self.members[r].pid = hello["host"], int(hello["pid"])

    # ------------------------------------------------------------------ data
    def _shard(self) -> None:
        cfg = self.cfg
        self.state = CState.SHARDING
        d = self.data
        alive = self.alive
        if self.resume is None:
            self.ownership = Ownership(len(d.y_train))
            parts = partition(d.y_train, len(alive), cfg.data.partition, cfg.model.seed, alpha=cfg.data.alpha,
                              classes_per_worker=cfg.data.classes_per_worker, power=cfg.data.power)
            for r, ids in zip(alive, parts, strict=True):
                self.ownership.assign(r, ids)
        else:
            self._rebalance(alive)
        # how many training rows each row stands for: 1, except representative rows handed over under
        # rep_weight: shard (they carry the weight of the dead shard they stand for)
        w = self.resume.weight if self.resume is not None else None
        self.weight = np.ones(len(d.y_train)) if w is None else np.asarray(w, np.float64).copy()
        parts = [self.ownership.owned(r) for r in alive]
        self.histogram = class_histogram(d.y_train, parts, d.n_classes)
        # [scale] rows in the source's type (uint8), by reference where every rank sees the prepared copy,
        # and no write when the file already holds this very shard (a resume with unchanged ownership)
        by_ref = rows_by_reference(d.X_train, [self.members[r].host for r in alive], socket.gethostname())
        self.shard_bytes = sum(ensure_shard(shard_path(self.run_dir, r), d.X_train, d.y_train, ids,
                                            {"n_classes": d.n_classes, "dataset": d.name, "rank": r},
                                            w=self.weight[ids], by_ref=by_ref)
                               for r, ids in zip(alive, parts, strict=True))
        self.initial_shards = {r: int(len(ids)) for r, ids in zip(alive, parts, strict=True)}
        self.model = Model.build(cfg.model.type, cfg.model.hidden, d.X_train.shape[1], d.n_classes)
        self.tensors = self.model.tensors()

    def _rebalance(self, alive: list[int]) -> None:
        """Resume: rows of ranks that are not in this job are spread evenly over its workers and a rank present
        in both keeps its rows (so a skewed partition stays skewed); if ranks joined that owned nothing,
        every owned row is spread evenly again. Dropped rows stay dropped."""
        snap = self.resume
        assert snap is not None
        if len(snap.owner) != len(self.data.y_train):
            raise CheckpointError(f"checkpoint holds ownership of {len(snap.owner)} samples but the dataset "
                                  f"{self.data.name} has {len(self.data.y_train)} training rows")
        self.ownership = Ownership.from_arrays(snap.owner, np.flatnonzero(snap.dropped))
        newcomers = [r for r in alive if r not in self.ownership.ranks()]
        # new ranks joined: spread every owned row evenly again; else only the rows of ranks now absent
        orphans = [self.ownership.release(r) for r in self.ownership.ranks() if newcomers or r not in alive]
        ids = np.sort(np.concatenate(orphans)) if orphans else np.zeros(0, np.int64)
        if len(ids):
            for r, part in assign_handoff(ids, alive, self.cfg.model.seed + snap.epoch + 1).items():
                self.ownership.assign(r, part)
        for r in alive:
            rep = snap.representative.get(r)
            if rep is not None:
                self.members[r].rep = np.asarray(rep, np.int64)
        self.progress.event(f"resumed at round {snap.round} (epoch {snap.epoch}): {len(ids)} rows spread over "
                            f"{alive}; coverage {self.ownership.coverage():.4f}")

    def _restore(self) -> None:
        """Load the snapshot's model, optimizer and counters (the workers get the model in round 0)."""
        snap = self.resume
        assert snap is not None
        if not np.array_equal(snap.sizes, self.model.sizes):
            raise CheckpointError(f"checkpoint model {snap.sizes.tolist()} does not match the config's "
                                  f"{self.model.sizes.tolist()}")
        self.W = snap.params.astype(np.float32, copy=True)
        if snap.optim.get("name") == self.opt.name:
            self.opt.load_state(snap.optim)
        self.round, self.epoch, self.iters_done = snap.round, snap.epoch + 1, snap.iters_done
        self.period, self.switched_at = snap.period, snap.switched_at
        self.stale, self.rows_handed = snap.stale_dropped, snap.rows_handed
        self.failures = [Failure(**f) for f in snap.failures]
        self.bytes_before = snap.bytes_total
        self.wall_before = snap.wall_seconds

    def _checkpoint(self, wait: bool = False) -> None:
        """Take a consistent snapshot (after the round's row is written) and have it saved in the background
        (old ones pruned); ``wait``: until it is on disk. ``ckpt_seconds`` counts the time the round loop
        stood still for it."""
        self._write_row()
        tr = self.ch.traffic
        t0 = time.monotonic()
        snap = Snapshot(  # copies of everything the next rounds change in place (W); the rest is rebuilt
            round=self.round, epoch=self.epoch, iters_done=self.iters_done, period=self.period,
            switched_at=self.switched_at, params=self.W.copy(), sizes=self.model.sizes,
            optim={"name": self.opt.name, **self.opt.state()}, members=self.alive,
            dead=[r for r, m in self.members.items() if not m.alive], owner=self.ownership.owner_array(),
            dropped=self._dropped_mask(), representative={r: self.members[r].rep for r in self.alive},
            rng={"seed": self.cfg.model.seed}, config=config_to_dict(self.cfg), test_acc=self.last_acc,
            per_class_acc=np.asarray(self.last_per_class, np.float64), train_loss=self.last_loss,
            failures=[asdict(f) for f in self.failures], stale_dropped=self.stale, rows_handed=self.rows_handed,
            wall_seconds=self.wall_before + time.monotonic() - self.t_start,
            bytes_total=self.bytes_before + tr.bytes_sent + tr.bytes_recv, dataset=self.data.name,
            n_classes=self.data.n_classes, created=time.time(),
            weight=self.weight.copy() if np.any(self.weight != 1.0) else None)
        self.writer.wait()  # one checkpoint in flight at a time; a write that failed is raised here
        self.writer.submit("checkpoint", _save_and_prune, ckpt_path(self.run_dir, self.round), snap, self.run_dir,
                           self.cfg.executor.keep)
        if wait:
            self.writer.wait()
        self.ckpt_seconds += time.monotonic() - t0

    def _dropped_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.data.y_train), bool)
        mask[self.ownership.dropped()] = True
        return mask

    # ----------------------------------------------------------------- rounds
    def _broadcast(self, rnd: int, iters: int, first: bool) -> None:
        ex = self.cfg.executor
        if first or ex.quantize == 0:
            payload, full = self.W.copy(), True
            self.W_bcast[...] = self.W
        else:  # quantized change of the global model; the gap W - W_bcast is the error feedback
            payload = encode(self.W - self.W_bcast, self.tensors, ex.quantize, ex.stochastic_rounding,
                             self.cfg.model.seed * 31 + rnd)
            self.W_bcast += decode(payload, self.tensors, self.model.n_params)
            full = False
        o = self.cfg.optimizer
        # the rate at the middle of this round's iterations
        lr = lr_at(o.learning_rate, o.lr_schedule, self.iters_done + iters // 2, self.cfg.model.n_iterations)
        self.opt.lr = lr
        plans = self.standby.plans(self.epoch, self.alive) if self.standby.active else None
        for r in self.alive:
            msg: dict[str, Any] = {"t": "round", "epoch": self.epoch, "round": rnd, "iters": iters,
                                   "lr": lr, "full": full, "params": payload}
            plan = self.standby.news_for(r, plans)
            if plan is not None:  # read after the reply
                msg["prefetch"] = plan
            if self.pending_rebuild is not None:
                msg["rebuild"] = self.pending_rebuild
            if first:
                msg["setup"] = {"shard": str(shard_path(self.run_dir, r)), "n_classes": self.data.n_classes,
                                "sizes": self.model.sizes.tolist()}
            self.ch.send(r, TAG_CTRL, msg)

    def _collect(self, rnd: int) -> tuple[dict[int, dict], Outcome, dict[int, str]]:
        ex = self.cfg.executor
        alive = self.alive
        replied: dict[int, dict] = {}
        errors: dict[int, str] = {}
        epoch0 = self.epoch

        def sort(out: Outcome) -> bool:
            for src, msgs in out.messages.items():
                while msgs:
                    m = msgs.pop(0)
                    kind = m.get("t")
                    if src not in alive:  # a rank already declared dead speaks: a zombie
                        self._expel(src, "declared dead earlier; its messages are ignored")
                    elif kind == "error":
                        errors[src] = str(m.get("error", "crashed"))
                    elif kind == "reply" and m.get("round") == rnd and m.get("epoch", -1) >= epoch0:
                        # epoch0: the round began in it; a loss handled during the round moved rank 0 on
                        replied[src] = m
                    else:
                        self.stale += 1
            # a loss that ULFM reports, or a worker's own error report, is acted on at once: the survivors
            # are still training this round and take the handed rows between two of their steps
            lost = [r for r in alive if (r in out.failed or r in errors) and r not in replied
                    and self.members[r].alive]
            if lost:
                how = {r: "error" if r in errors else "ulfm" for r in lost}
                fs = [self._declare_dead(r, how[r], errors.get(r, "")) for r in lost]
                self._handle_failures(lost, fs)
            return all(r in replied or r in errors or r in out.failed for r in alive)

        def ping() -> None:
            for r in replied:
                self.ch.send(r, TAG_CTRL, {"t": "ping", "epoch": self.epoch, "round": rnd})

        sources = alive + sorted(self.suspects)
        out = self.ch.poll(sources, TAG_REPLY, time.monotonic() + ex.timeout, until=sort, on_tick=ping,
                           tick_every=max(0.05, ex.timeout / 4))
        for s in self.suspects:
            out.timed_out.pop(s, None)
            out.failed.pop(s, None)
        return replied, out, errors

    def _aggregate(self, replies: dict[int, dict]) -> tuple[float, float]:
        ex = self.cfg.executor
        ranks = sorted(replies)
        if ex.aggregate == "samples":
            w = np.array([replies[r]["n"] for r in ranks], np.float64)
        elif ex.aggregate == "loss":
            w = np.array([max(replies[r]["loss"], 1e-12) for r in ranks], np.float64)
        else:
            w = np.ones(len(ranks))
        w /= w.sum()
        agg = np.zeros(self.model.n_params, np.float32)
        for wi, r in zip(w, ranks, strict=True):
            agg += np.float32(wi) * decode(replies[r]["update"], self.tensors, self.model.n_params)
        before = self.W.copy()
        if ex.send_gradients:
            self.opt.step(self.W, agg)
        else:
            self.W += agg
        loss = float(np.dot(w, [replies[r]["loss"] for r in ranks]))
        return loss, float(np.max(np.abs(self.W - before))) if self.W.size else 0.0

    # ---------------------------------------------------------------- failure
    def _handle_failures(self, dead: list[int], failures: list[Failure]) -> None:
        cfg, d = self.cfg, self.data
        t0 = time.monotonic()
        self.state = CState.RECOVERING
        self.epoch += 1
        survivors = self.alive
        # The survivors wait for the file and the messages; the ownership bookkeeping comes after them.
        owned_by = {r: self.ownership.owned(r) for r in dead}
        give_by: dict[int, np.ndarray] = {}
        for r, f in zip(dead, failures, strict=True):
            owned = owned_by[r]
            if cfg.executor.remap == "full":
                give = owned
            elif cfg.executor.remap == "representative":
                give = self._representative_of(r, owned)
            else:
                give = np.zeros(0, np.int64)
            give_by[r] = give if survivors else give[:0]  # nobody left to take them: all dropped
            f.rows_handed, f.rows_dropped = int(len(give_by[r])), int(len(owned) - len(give_by[r]))
            if len(give_by[r]) and cfg.executor.remap == "representative" and cfg.optimizer.rep_weight == "shard":
                # the handed rows stand for the whole dead shard: each weighs |shard| / |handed| (the weights
                # of a uniform random choice make the survivors' objective an unbiased estimate of the lost one)
                f.row_weight = float(self.weight[owned].sum()) / len(give_by[r])
                self.weight[give_by[r]] = f.row_weight
        # Rows staged before the failure go out as slices of their standby file; the others are written now,
        # into one file for the epoch. Each survivor gets one message with all its slices.
        segments: dict[int, list[tuple[str, int, int, float | None]]] = {}
        taken: dict[int, list[np.ndarray]] = {}
        unstaged = []
        for r in dead:
            give, staged = give_by[r], self.standby.get(r)
            if len(give) and staged is not None and staged[0] is give:
                for s, a, b in deal_slices(len(give), survivors, self.standby.deal_seed(self.epoch, r)):
                    if b > a:
                        # one weight for the whole slice (the standby file was written before it was known)
                        segments.setdefault(s, []).append((str(staged[1]), a, b, float(self.weight[give[0]])))
                        taken.setdefault(s, []).append(give[a:b])
            elif len(give):
                unstaged.append(give)
        ids = np.sort(np.concatenate(unstaged)) if unstaged else np.zeros(0, np.int64)
        if len(ids):
            parts = {s: np.sort(part) for s, part in assign_handoff(ids, survivors, cfg.model.seed + self.epoch).items()
                     if len(part)}
            rows = np.concatenate(list(parts.values()))
            p = handoff_path(self.run_dir, self.epoch)
            write_handoff(p, d.X_train[rows], d.y_train[rows], rows, {s: len(part) for s, part in parts.items()},
                          {"n_classes": d.n_classes, "dataset": d.name, "epoch": self.epoch}, self.weight[rows])
            start = 0
            for s, part in parts.items():  # weights, if any, are in the file (/w)
                segments.setdefault(s, []).append((str(p), start, start + len(part), None))
                taken.setdefault(s, []).append(part)
                start += len(part)
        for s in sorted(segments):  # at once, not with the next round: a survivor still training takes the
            # rows between two of its steps
            self.ch.send(s, TAG_CTRL, {"t": "handoff", "epoch": self.epoch, "segments": segments[s]})
        for r in dead:
            self.ownership.release(r)
            rest = np.setdiff1d(owned_by[r], give_by[r], assume_unique=True)
            if len(rest):
                self.ownership.drop(rest)
        for s, parts_of_s in taken.items():
            self.ownership.assign(s, np.concatenate(parts_of_s))
            self.standby.unstage(s)
        n_handed = sum(len(g) for g in give_by.values())
        self.rows_handed += n_handed
        receivers = set(segments)
        self._restage |= receivers  # their choice changed with their shard: staged again once they train on it
        self._receivers[self.epoch] = receivers
        dt = time.monotonic() - t0
        for f in failures:
            f.epoch = self.epoch
            # rank 0's part; when rows were handed, replaced by detection -> the last receiver training on them
            f.handoff_time = dt
        if self.tb is not None:
            self.tb.event(self.round, f"epoch {self.epoch}: {n_handed} rows of {dead} handed to {survivors}",
                          kind="remap")
        if n_handed:
            weights = [f"{f.row_weight:.1f}" for f in failures if f.row_weight is not None]
            self.progress.event(f"epoch {self.epoch}: handed {n_handed} rows of worker(s) {dead} to "
                                f"{survivors} (remap={cfg.executor.remap}, {n_handed - len(ids)} of them staged before "
                                f"the failure"
                                + (f", each weighing {'/'.join(weights)} rows" if weights else "")
                                + f"; coverage {self.ownership.coverage():.4f})")
        self._awaiting_recovery += failures
        # ULFM: rebuild the survivors' communicator when every rank declared dead so far is one that ULFM
        # knows failed (a hung or exited rank it does not know would keep Ishrink from completing).
        if self.ch.detector is Detector.ULFM and survivors:
            all_dead = {r for r, m in self.members.items() if not m.alive}
            if all_dead <= self.ch.failed_ranks():
                self.pending_rebuild = [0] + survivors

    def _recovered(self) -> None:
        """At the end of a round every survivor answered: a loss is recovered from once every survivor that
        was handed its rows (and is still alive) has reported training on them.

        ``handoff_time`` is then the time from detection until the last of them was training on the rows;
        ``recovery_time`` the time from the fault (or, without an injection record, its detection) until
        this round's end, when the global model holds the survivors' work on the new rows.
        """
        now = self._now_wall()
        alive = set(self.alive)
        waiting = []
        for f in self._awaiting_recovery:
            want = self._receivers.get(f.epoch, set()) & alive if f.epoch is not None else set()
            got = self._ready.get(f.epoch, {}) if f.epoch is not None else {}
            if not want <= set(got):
                waiting.append(f)
                continue
            base = f.injected_at if f.injected_at is not None else f.detected_at
            f.recovery_time = now - base
            f.recovered_round = self.round
            if want:
                f.handoff_time = max(0.0, max(got[r] for r in want) - f.detected_at)
                f.rows_prefetched = self._prefetched.get(f.epoch, 0) if f.epoch is not None else 0
        self._awaiting_recovery = waiting
        if not waiting:
            self.state = CState.TRAINING
            # not earlier: the writes would compete with the survivors' loading for the cores
            self._stage(sorted(self._restage & alive))
            self._restage.clear()

    def _stage(self, ranks: list[int]) -> None:
        """Stage the workers' representative rows (``rep_selection: random``; see :mod:`ftmpi.staging`)."""
        if self.standby.active:
            for r, ids in self.standby.stage(ranks, self.epoch, self.ownership, self.data).items():
                self.members[r].rep = ids

    def _representative_of(self, rank: int, owned: np.ndarray) -> np.ndarray:
        """The dead worker's representative ids: rank 0's own random choice (``rep_selection: random``), the
        worker's latest report, or (if it never reported) the top rows of its shard scored by rank 0 with the
        current global model."""
        if self.standby.active:
            staged = self.standby.get(rank)
            return staged[0] if staged is not None else self.standby.choice(rank, self.ownership)
        rep = self.members[rank].rep
        rep = rep[np.isin(rep, owned)] if len(rep) else rep
        if len(rep) == 0 and len(owned):
            o = self.cfg.optimizer
            k = rep_count(o.n_most_rep, len(owned))
            X, y = self.data.X_train[owned], self.data.y_train[owned]
            scores = self.model.sample_loss(self.W, X, y)
            loc = select_representative(o.rep_selection, scores, y, k, self.data.n_classes,
                                        self.cfg.model.seed + rank)
            rep = owned[loc]
        return np.asarray(rep, np.int64)

    # ------------------------------------------------------------------- run
    def run(self) -> int:
        cfg, ex = self.cfg, self.cfg.executor
        t0 = time.monotonic()
        if ex.tensorboard:  # first, so that a missing package fails at once with exit code 2
            from .tb import TBWriter

            self.tb = TBWriter(self.run_dir / "tb")
        # the workers' hellos queue meanwhile
        self.data: Dataset = (self.prefetch.get() if self.prefetch is not None
                              else load_dataset(cfg.data, cfg.model.seed))
        t1 = time.monotonic()
        self._join()
        t2 = time.monotonic()
        if not self.alive:
            sys.stderr.write("ftmpi: rank 0: error: no worker joined within executor.startup_timeout "
                             f"({ex.startup_timeout:g}s)\n")
            self._finish(EXIT_NO_WORKERS)
            return EXIT_NO_WORKERS
        self._shard()
        t3 = time.monotonic()
        self.progress.event(f"start-up: data {t1 - t0:.2f}s, join {t2 - t1:.2f}s, shards {t3 - t2:.2f}s "
                            f"({t3 - self.t_start:.2f}s since launch of rank 0's main)")
        o = cfg.optimizer
        self.W = self.model.init(cfg.model.seed)
        self.W_bcast = np.zeros_like(self.W)
        self.opt = Optimizer(o.name, self.model.n_params, o.learning_rate, o.momentum, o.beta1, o.beta2, o.eps)
        n_cls = self.data.n_classes
        if self.resume is not None:
            self._restore()
            truncate_metrics(self.run_dir / "metrics.csv", self.resume.round)
        self.metrics = MetricsCSV(self.run_dir / "metrics.csv", [f"acc_class{c}" for c in range(n_cls)],
                                  append=self.resume is not None)
        self.progress.event(f"{len(self.alive)} workers, {len(self.data.y_train)} training rows "
                            f"({self.data.name}), {self.model.n_params} params, detector={self.ch.detector.value}")
        self.state = CState.TRAINING
        self._stage(self.alive)
        first = True
        code = EXIT_OK
        while self.iters_done < cfg.model.n_iterations:
            if not self.alive:
                self.state = CState.NO_WORKERS
                code = EXIT_NO_WORKERS
                sys.stderr.write(f"ftmpi: rank 0: error: every worker is lost (round {self.round}); metrics "
                                 f"and summary saved in {self.run_dir}\n")
                break
            sig = stop_requested()
            if sig is not None:  # preempted: this round is checkpointed by _finish; resume continues from it
                self.preempted = {"signal": sig, "round": self.round}
                self.progress.event(f"{sig}: stopping after round {self.round - 1}; checkpointing for a resume")
                code = EXIT_PREEMPTED
                break
            code = self._round(first)
            first = False
        self.state = CState.STOPPING if code == EXIT_OK else self.state
        self._finish(code)
        return code

    def _round(self, first: bool) -> int:
        cfg, ex = self.cfg, self.cfg.executor
        rnd = self.round
        for f in F.due(cfg.faults, 0, rnd):
            if (0, rnd) not in self.fired:  # a resumed job does not replay a fault that already fired
                F.inject(f, self.run_dir)
        t0 = time.monotonic()
        iters = min(self.period, cfg.model.n_iterations - self.iters_done)
        self._broadcast(rnd, iters, first)
        self._write_row()  # the previous round's row, evaluated while the workers train
        rebuild, self.pending_rebuild = self.pending_rebuild, None
        replies, out, errors = self._collect(rnd)
        if rebuild is not None:  # off the critical path: each survivor joins right after its reply
            t_rb = time.monotonic()
            ok = self.ch.rebuild_alive(rebuild, self.epoch, min(2.0, ex.timeout / 2))
            self.alive_comm = {"epoch": self.epoch, "members": rebuild, "agreed": ok,
                               "seconds": time.monotonic() - t_rb}
            if not ok:
                self.progress.event(f"epoch {self.epoch}: the alive communicator was not rebuilt in time; "
                                    "carrying on with point-to-point traffic")
        newly: list[tuple[int, Failure]] = []  # lost at the deadline (ULFM losses were handled in _collect)
        for r in sorted(set(out.failed) | set(out.timed_out) | set(errors)):
            if r in replies or not self.members[r].alive:
                continue
            how = "error" if r in errors else ("ulfm" if r in out.failed else "timeout")
            newly.append((r, self._declare_dead(r, how, errors.get(r, ""))))
        for r, m in replies.items():
            if not self.standby.active:
                self.members[r].rep = np.asarray(m["rep"], np.int64)
            for e, wall in (m.get("ready") or {}).items():
                self._ready.setdefault(int(e), {})[r] = float(wall)
            for e, n in (m.get("prefetched") or {}).items():
                self._prefetched[int(e)] = self._prefetched.get(int(e), 0) + int(n)
        loss, dmax = self._aggregate(replies) if replies else (float("nan"), 0.0)
        self.iters_done += iters
        if newly:
            self._handle_failures([r for r, _ in newly], [f for _, f in newly])
        elif self._awaiting_recovery and replies and len(replies) == len(self.alive):
            self._recovered()
        if ex.delta_switch > 0 and self.period > 1 and replies and dmax < ex.delta_switch:
            self.period = 1
            self.switched_at = rnd
            self.progress.event(f"delta_switch: max|dW|={dmax:.3g} < {ex.delta_switch}; communicating "
                                f"every iteration from round {rnd + 1}")
        tr = self.ch.traffic
        self._pending_row = {
            "round": rnd, "epoch": self.epoch, "iters": self.iters_done, "train_loss": loss,
            "bytes_sent": tr.bytes_sent, "bytes_recv": tr.bytes_recv, "alive_workers": len(self.alive),
            "stale_dropped": self.stale, "failures": len(self.failures), "coverage": self.ownership.coverage(),
            "round_time": time.monotonic() - t0, "wall": time.monotonic() - self.t_start, "_event": bool(newly)}
        self.last_loss = loss
        self.round += 1
        ce = ex.checkpoint_every
        if ce > 0 and self.round % ce == 0 and self.iters_done < cfg.model.n_iterations:
            self._checkpoint()
        return EXIT_OK

    def _write_row(self, last: bool = False) -> None:
        """Evaluate the global model (as of the end of the pending round) and write that round's row."""
        row = self._pending_row
        if row is None:
            return
        self._pending_row = None
        rnd = row["round"]
        if rnd % self.cfg.executor.eval_every == 0 or last:
            self.last_acc, self.last_per_class = self.model.evaluate(self.W, self.data.X_test,
                                                                     self.data.y_test, self.data.n_classes)
        event = row.pop("_event")
        row["test_acc"] = self.last_acc
        row.update({f"acc_class{c}": float(v) for c, v in enumerate(self.last_per_class)})
        self.metrics.row(row)
        if self.tb is not None:
            from .tb import row_scalars

            self.tb.scalars(rnd, row_scalars(row))
        self.progress.update(rnd, f"loss {row['train_loss']:.4f} acc {self.last_acc:.4f} workers "
                             f"{row['alive_workers']} epoch {row['epoch']} failures {row['failures']} "
                             f"{(row['bytes_sent'] + row['bytes_recv']) / 1e6:.1f} MB", force=event or last)

    # ----------------------------------------------------------------- finish
    def _finish(self, code: int) -> None:
        """Write every output first, then stop the workers: without ULFM, prterun kills the whole job as soon
        as any rank leaves without MPI_Finalize, and rank 0 must have said everything by then."""
        ex = self.cfg.executor
        self._write_row(last=True)
        if hasattr(self, "W") and not np.isfinite(self.last_acc):  # e.g. resumed a run that had finished
            self.last_acc, self.last_per_class = self.model.evaluate(self.W, self.data.X_test,
                                                                     self.data.y_test, self.data.n_classes)
        if hasattr(self, "W"):
            self._checkpoint(wait=True)
        if hasattr(self, "metrics"):
            self.metrics.close()
        if self.tb is not None:
            self.tb.close()
        self.progress.close()
        self.summary = self._summary(code)
        write_json_atomic(self.run_dir / "summary.json", self.summary)
        write_status(code)
        alive = self.alive
        for r in alive:
            self.ch.send(r, TAG_CTRL, {"t": "stop", "epoch": self.epoch, "round": self.round})
        if alive:
            self.ch.poll(alive, TAG_REPLY, time.monotonic() + min(ex.timeout, 10.0),
                         until=lambda o: all(any(m.get("t") == "bye" for m in o.messages.get(r, []))
                                             or r in o.failed for r in alive))
        self.ch.flush(time.monotonic() + 1.0)
        self._reap_hung()

    def _reap_hung(self) -> None:
        """SIGKILL ranks declared dead by deadline that still exist on this host: a stopped or hung
        process keeps mpirun from ever returning (measured), and ULFM then reports it as failed."""
        me = socket.gethostname()
        for r in sorted(self.suspects):
            m = self.members[r]
            if m.pid and m.host == me:
                try:
                    os.kill(m.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _summary(self, code: int) -> dict[str, Any]:
        cfg, tr = self.cfg, self.ch.traffic
        status = {EXIT_OK: "completed", EXIT_NO_WORKERS: "no-workers", EXIT_PREEMPTED: "preempted"}.get(code, "failed")
        rec = [f for f in self.failures if f.recovery_time is not None]
        return {
            "status": status, "exit_code": code, "name": cfg.name, "scenario": cfg.executor.scenario,
            "final_test_acc": self.last_acc,
            "per_class_acc": [float(v) for v in self.last_per_class],
            "wall_seconds": self.wall_before + time.monotonic() - self.t_start, "rounds": self.round,
            "iterations": self.iters_done, "bytes_sent": tr.bytes_sent, "bytes_recv": tr.bytes_recv,
            "bytes_total": self.bytes_before + tr.bytes_sent + tr.bytes_recv, "ranks": self.ch.size,
            "workers": self.ch.size - 1,
            "resumed_from": None if self.resume is None else {"round": self.resume.round,
                                                              "epoch": self.resume.epoch},
            "checkpoint_seconds": self.ckpt_seconds, "checkpoint_write_seconds": self.writer.seconds["checkpoint"],
            "staging": {"files": self.writer.done["stage"], "seconds": self.writer.seconds["stage"]},
            "alive_comm": self.alive_comm, "preempted": self.preempted,
            "alive_workers": len(self.alive), "detector": self.ch.detector.value,
            "comm_period": cfg.executor.comm_period, "switched_to_every_iteration_at": self.switched_at,
            "quantize": cfg.executor.quantize, "remap": cfg.executor.remap, "partition": cfg.data.partition,
            "rep_selection": cfg.optimizer.rep_selection, "rep_weight": cfg.optimizer.rep_weight,
            "dataset": self.data.name if hasattr(self, "data") else cfg.data.dataset,
            "failures": [asdict(f) for f in self.failures],
            "max_recovery_time": max((f.recovery_time for f in rec if f.recovery_time is not None), default=None),
            "coverage": self.ownership.coverage() if hasattr(self, "ownership") else None,
            "points_handed": self.rows_handed, "stale_dropped": self.stale,
            "class_histogram": self.histogram.tolist() if hasattr(self, "histogram") else None,
            "initial_shards": getattr(self, "initial_shards", None),
        }


def _save_and_prune(path: Path, snap: Snapshot, run_dir: Path, keep: int) -> None:
    """(Background thread.) Save a checkpoint, then delete all but the newest ``keep``."""
    save(path, snap)
    prune(run_dir, keep)


def run_coordinator(ch: Channel, cfg: Config, run_dir: Path, progress: Progress, t_start: float,
                    resume: Snapshot | None = None, prefetch: Any = None) -> int:
    return Coordinator(ch, cfg, run_dir, progress, t_start, resume, prefetch).run()
