"""A worker's life: say hello, train on its shard round after round, report, leave when told.

State machine (:class:`WState`): JOINING → WAITING ⇄ TRAINING → STOPPED (told to stop) or EXPELLED (declared
dead earlier, told to leave) or LOST (no word from rank 0 within ``executor.timeout``).

Per round the worker applies the broadcast to its replica of the global model, takes ``iters`` local steps
(minibatch SGD/Adam with the ``mu_g`` pull towards the global model), scores every sample of its shard, and
sends back its update (delta or mean gradient, quantized with error feedback when asked), its mean loss,
its shard size and the global ids of its ``n_most_rep`` most representative points.

Rows of a lost worker arrive as a ``handoff`` message naming an HDF5 file. Between two steps of a round the
worker looks for one (a single nonblocking probe), appends the rows and draws the round's remaining
minibatches from the grown shard, so that it trains on them a few milliseconds after rank 0 noticed the
loss rather than a round later; the wall time at which it did is reported in its next reply (``ready``).
"""
from __future__ import annotations

import enum
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import faults as F
from . import kernels as K
from .codec import ErrorFeedback, decode
from .comm import TAG_CTRL, TAG_REPLY, Channel
from .config import Config
from .errors import CoordinatorLost, DataError, Expelled, PeerError
from .models import Model, warmup
from .optim import Optimizer, clip
from .shards import read_shard


class WState(enum.Enum):
    JOINING = "joining"
    WAITING = "waiting"
    TRAINING = "training"
    STOPPED = "stopped"
    EXPELLED = "expelled"
    LOST = "lost"


def rep_count(n_most_rep: float, n: int) -> int:
    """``n_most_rep`` as a count: a fraction in (0, 1) of the shard, else an absolute count."""
    if 0 < n_most_rep < 1:
        return int(round(n_most_rep * n))
    return int(min(n_most_rep, n))


def expand_weights(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices, row ``i`` repeated ``floor(w[i])`` times plus once more with probability ``w[i] % 1``: a
    list whose uniform draws pick each row in proportion to its weight (exactly, in expectation)."""
    whole = np.floor(w)
    counts = whole.astype(np.int64) + (rng.random(len(w)) < (w - whole))
    return np.repeat(np.arange(len(w), dtype=np.int64), counts)


def select_representative(kind: str, scores: np.ndarray, y: np.ndarray, k: int, n_classes: int,
                          seed: int) -> np.ndarray:
    """Local row indices of the ``k`` most representative points under the selection rule ``kind``."""
    if kind == "random":
        return K.select_random(len(scores), k, seed)
    if kind == "stratified":
        return K.select_stratified(scores, y, k, n_classes)
    return K.select_loss(scores, k)


class Worker:
    def __init__(self, ch: Channel, cfg: Config, run_dir: Path, resuming: bool = False) -> None:
        self.ch, self.cfg, self.run_dir = ch, cfg, Path(run_dir)
        self.rank = ch.rank
        self.state = WState.JOINING
        self.epoch = -1
        # faults that already fired in an earlier launch of this run (a resumed job does not replay them);
        # a fresh run ignores old records (rank 0 is deleting them at this moment)
        self.fired = {(int(m["rank"]), int(m["round"])) for m in F.read_marks(run_dir).values()} if resuming \
            else set()
        self._stash: list[dict] = []  # control messages that arrived mid-round, for after the round
        self._unstamped: list[int] = []  # handoff epochs loaded while idle: stamped when training resumes
        self._ready: dict[int, float] = {}  # handoff epoch -> wall time training on its rows began
        self._handed = 0  # rows taken since the last reply
        # read ahead: the slices of the other workers' standby files this worker would be handed if one of them
        # were lost next, (path, start, stop) -> rows; rank 0 says which (round message "prefetch")
        self._cache: dict[tuple[str, int, int], Any] = {}
        self._plan: list | None = None  # a new plan, read after this round's reply
        self._prefetched: dict[int, int] = {}  # handoff epoch -> rows taken from the read-ahead copies

    # ------------------------------------------------------------------ waits
    def _wait_ctrl(self, timeout: float, phase: str) -> dict:
        """Next control message from rank 0 (pings extend the deadline), or CoordinatorLost."""
        if self._stash:
            return self._stash.pop(0)
        while True:
            try:
                msg = self.ch.recv_one(0, TAG_CTRL, timeout, phase, "is rank 0 alive?")
            except PeerError as exc:
                raise CoordinatorLost(f"worker {self.rank}: lost the coordinator: {exc}") from None
            if msg.get("t") != "ping":
                return msg

    # --------------------------------------------------------------- the loop
    def run(self) -> int:
        cfg = self.cfg
        # a cold numba cache compiles here, while rank 0 loads the data
        warmup(cfg.executor.quantize, cfg.model.type == "mlp", cfg.optimizer.rep_selection)
        self.ch.send(0, TAG_REPLY, {"t": "hello", "rank": self.rank, "host": socket.gethostname(),
                                    "pid": os.getpid()})
        msg = self._wait_ctrl(cfg.executor.startup_timeout, "start-up (waiting for the shard)")
        if msg["t"] == "round":
            self._setup(msg["setup"])
        while True:
            t = msg["t"]
            if t == "stop":
                self.state = WState.STOPPED
                self.ch.send(0, TAG_REPLY, {"t": "bye", "rank": self.rank})
                self.ch.flush(time.monotonic() + min(5.0, cfg.executor.timeout))
                return 0
            if t == "exit":
                self.state = WState.EXPELLED
                exc = Expelled(f"worker {self.rank}: {msg.get('reason', 'told to leave by rank 0')}")
                if "code" in msg:  # rank 0 itself failed and said why: leave with its code, silently
                    exc.exit_code, exc.quiet = int(msg["code"]), bool(msg.get("quiet"))
                raise exc
            if t == "round":
                self._round(msg)
            elif t == "handoff":  # while idle: load now, stamp when the next round's training starts
                self._take_handoff(msg)
                self._unstamped.append(int(msg["epoch"]))
            self.state = WState.WAITING
            msg = self._wait_ctrl(cfg.executor.timeout, f"waiting for round {msg.get('round', '?')}")

    def _setup(self, setup: dict) -> None:
        cfg = self.cfg
        # room for handed rows (a third of a shard per survivor under remap: full, 4 workers) without
        # copying the whole shard when they arrive; [scale] the rows are read straight into that buffer
        shard = read_shard(setup["shard"], room=lambda n: max(n // 2, 1024))
        n = len(shard.ids)
        self._xbuf = shard.buf if shard.buf is not None else shard.X
        self.X, self.y, self.ids = self._xbuf[:n], shard.y, shard.ids
        self.w = shard.w  # row weights (None: all 1); handed representative rows may weigh more
        self.n_classes = int(setup["n_classes"])
        self.model = Model(np.asarray(setup["sizes"], dtype=np.int64))
        n = self.model.n_params
        self.tensors = self.model.tensors()
        o = cfg.optimizer
        self.opt = Optimizer(o.name, n, o.learning_rate, o.momentum, o.beta1, o.beta2, o.eps)
        self.replica = np.zeros(n, np.float32)
        self.grad = np.zeros(n, np.float32)
        self.uplink = ErrorFeedback(n, self.tensors, cfg.executor.quantize, cfg.executor.stochastic_rounding)
        self.scores: np.ndarray | None = None  # latest per-sample loss of every row of the shard

    def _take_handoff(self, msg: dict) -> int:
        """Append the rows of a ``handoff`` message to the shard; returns how many."""
        self.epoch = max(self.epoch, int(msg["epoch"]))
        e = int(msg["epoch"])
        added = sum(self._load_handoff(seg[0], (seg[1], seg[2]), seg[3] if len(seg) > 3 else None, e)
                    for seg in msg["segments"])
        self._handed += added
        return added

    def _poll_ctrl(self) -> bool:
        """Between two steps: take rows handed over meanwhile (True if the shard grew); any other control
        message is kept for after the round."""
        grew = False
        while True:
            msg = self.ch.try_recv(0, TAG_CTRL)
            if msg is None:
                return grew
            if msg.get("t") == "handoff":
                if self._take_handoff(msg):
                    grew = True
                self._ready[int(msg["epoch"])] = time.time()
            elif msg.get("t") != "ping":
                self._stash.append(msg)

    def _load_handoff(self, path: str, rows: tuple[int, int], weight: float | None = None, epoch: int = -1) -> int:
        """Append rows ``start:stop`` of a handoff file to the shard (from the read-ahead copy when there is
        one), each weighing ``weight`` (else the file's ``/w``, else 1); returns how many."""
        s = self._cache.pop((str(path), int(rows[0]), int(rows[1])), None)
        if s is None:
            s = read_shard(path, rows)
        else:
            self._prefetched[epoch] = self._prefetched.get(epoch, 0) + len(s)
        n, m = len(self.y), len(s.ids)
        if n + m > len(self._xbuf):  # out of room: grow geometrically (one copy)
            grown = np.empty((max(n + m, 2 * len(self._xbuf)), self._xbuf.shape[1]), np.float32)
            grown[:n] = self.X
            self._xbuf = grown
        self._xbuf[n:n + m] = s.X
        self.X = self._xbuf[:n + m]
        self.y = np.concatenate([self.y, s.y])
        self.ids = np.concatenate([self.ids, s.ids])
        w = np.full(m, weight) if weight is not None else s.w
        if w is not None and np.any(w != 1.0):
            self.w = np.concatenate([np.ones(n) if self.w is None else self.w, w])
        elif self.w is not None:
            self.w = np.concatenate([self.w, np.ones(m)])
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
                keep[key] = read_shard(path, (a, b))
            except DataError:
                continue
        self._cache = keep

    def _batches(self, rnd: int, iters: int, bs: int, salt: tuple[int, ...] = ()) -> list[np.ndarray]:
        """This round's minibatches: consecutive slices of a permutation seeded by (seed, rank, round), so
        that a resumed run draws exactly what it would have drawn; ``salt`` (the epoch) when the shard grew
        mid-round. Rows that weigh ``w`` enter the permutation ``w`` times (the fraction by a seeded coin), so
        a pass over it draws each row as often as the rows it stands for would have been drawn."""
        rng = np.random.default_rng([self.cfg.model.seed, self.rank, rnd, *salt])
        base = expand_weights(self.w, rng) if self.w is not None else np.arange(len(self.y))
        n = len(base)
        need = iters * bs
        if self.cfg.model.shuffle:
            order = np.concatenate([base[rng.permutation(n)] for _ in range(-(-need // n))])
        else:
            start = (rnd * need) % n
            order = np.roll(base, -start)
            order = np.tile(order, -(-need // n))
        return [np.sort(order[i * bs:(i + 1) * bs]) for i in range(iters)]

    @property
    def mass(self) -> float:
        """How many training rows this shard stands for (its row count when every weight is 1)."""
        return float(len(self.y)) if self.w is None else float(self.w.sum())

    def _round(self, msg: dict) -> None:
        cfg, ex = self.cfg, self.cfg.executor
        self.state = WState.TRAINING
        self.epoch, rnd = msg["epoch"], msg["round"]
        for f in F.due(cfg.faults, self.rank, rnd):
            if (self.rank, rnd) not in self.fired:
                F.inject(f, self.run_dir)
        t0 = time.monotonic()
        if msg.get("full"):
            self.replica[...] = msg["params"]
        else:
            self.replica += decode(msg["params"], self.tensors, self.model.n_params)
        now = time.time()
        for e in self._unstamped:  # rows loaded while idle: trained on from now
            self._ready[e] = now
        self._unstamped = []
        if "prefetch" in msg:
            self._plan = msg["prefetch"]
        iters = int(msg["iters"])
        self.opt.lr = float(msg.get("lr", cfg.optimizer.learning_rate))
        mu = cfg.optimizer.mu_g
        losses = []
        # send_gradients: parameter-server semantics, gradients at the global model averaged over the batches;
        # else local steps from the global model (with the mu_g pull towards it)
        local = self.replica if ex.send_gradients else self.replica.copy()
        acc = np.zeros_like(self.grad) if ex.send_gradients else None
        batches = self._batches(rnd, iters, min(cfg.model.batch_size, len(self.y)))
        for i in range(iters):
            b = batches[i]
            losses.append(self.model.loss_grad(local, self.X[b], self.y[b], self.grad))
            if acc is not None:
                acc += self.grad
            else:
                if mu > 0:
                    self.grad += mu * (local - self.replica)
                clip(self.grad, cfg.optimizer.clip_norm, cfg.optimizer.clip_val)
                self.opt.step(local, self.grad)
            if i + 1 < iters and self._poll_ctrl():  # rows handed over: the rest of the round draws from them
                batches[i + 1:] = self._batches(rnd, iters - i - 1, min(cfg.model.batch_size, len(self.y)),
                                                salt=(self.epoch,))
        if acc is not None:
            acc /= max(iters, 1)
            clip(acc, cfg.optimizer.clip_norm, cfg.optimizer.clip_val)
            update = acc
        else:
            update = local - self.replica
        payload, _ = self.uplink.compress(update, seed=cfg.model.seed * 7919 + rnd * 131 + self.rank)
        rep = self._representative(local, rnd)
        reply: dict[str, Any] = {
            "t": "reply", "epoch": self.epoch, "round": rnd, "rank": self.rank, "update": payload,
            "loss": float(np.mean(losses)) if losses else float("nan"), "n": self.mass, "rows": int(len(self.y)),
            "rep": rep,
            "handed_in": self._handed, "ready": self._ready, "prefetched": self._prefetched,
            "t_compute": time.monotonic() - t0,
        }
        self._handed, self._ready, self._prefetched = 0, {}, {}
        self.ch.send(0, TAG_REPLY, reply)
        if self._plan is not None:  # off the critical path: rank 0 is collecting the others' replies
            self._read_ahead(self._plan)
            self._plan = None
        if msg.get("rebuild"):  # ULFM: rank 0 and every survivor rebuild the alive communicator together,
            # after the reply so that it costs the round nothing
            self.ch.rebuild_alive(msg["rebuild"], self.epoch, min(2.0, ex.timeout / 2))

    def _rescore(self, params: np.ndarray, rnd: int) -> None:
        """Refresh the per-sample losses: the whole shard at first, then one rotating slice per round, so
        that every row is re-scored every ``executor.score_every`` rounds at 1/score_every of the cost."""
        n = len(self.y)
        if self.scores is None:
            self.scores = self.model.sample_loss(params, self.X, self.y)
            return
        if len(self.scores) < n:  # rows handed over since: score them now
            fresh = self.model.sample_loss(params, self.X[len(self.scores):], self.y[len(self.scores):])
            self.scores = np.concatenate([self.scores, fresh])
        every = self.cfg.executor.score_every
        lo, hi = (rnd % every) * n // every, (rnd % every + 1) * n // every
        if hi > lo:
            self.scores[lo:hi] = self.model.sample_loss(params, self.X[lo:hi], self.y[lo:hi])

    def _representative(self, params: np.ndarray, rnd: int) -> np.ndarray:
        """Global ids of this worker's representative rows under ``loss`` or ``stratified`` (scored on its
        shard); nothing when they would not be used (``remap`` is not ``representative``) or when rank 0
        chooses them itself (``random``, staged before any failure)."""
        o = self.cfg.optimizer
        k = rep_count(o.n_most_rep, len(self.y))
        if k <= 0 or self.cfg.executor.remap != "representative" or o.rep_selection == "random":
            return np.zeros(0, np.int64)
        self._rescore(params, rnd)
        assert self.scores is not None
        local = select_representative(o.rep_selection, self.scores, self.y, k, self.n_classes,
                                      seed=self.cfg.model.seed * 104729 + rnd * 31 + self.rank)
        return self.ids[local].astype(np.int64)

def run_worker(ch: Channel, cfg: Config, run_dir: Path, resuming: bool = False) -> int:
    return Worker(ch, cfg, run_dir, resuming).run()
