"""Rank 0's global model: its parameters and optimizer, the broadcast payload (full, or the quantized change
with error feedback), the aggregation of the workers' updates, evaluation, and scoring a shard. No MPI.
"""
from __future__ import annotations

import json
import math
import os
from collections import deque
from typing import Any

import numpy as np

from ftmpi.config import SCORED, Config
from ftmpi.core import protocol as P
from ftmpi.core.handoff import rep_count, select_representative
from ftmpi.core.quorum import Folding
from ftmpi.core.screen import HISTORY, Outcome, Screen, measure
from ftmpi.errors import CheckpointError, Diverged
from ftmpi.model.codec import decode, encode
from ftmpi.model.models import build_model, model_key
from ftmpi.model.optim import Optimizer, lr_at
from ftmpi.storage.data import Dataset
from ftmpi.storage.userdata import check_labels

_SCORE_ROWS = 8192  # rows of a lost worker's shard read and scored at a time


class GlobalModel:
    """The model rank 0 holds, and the iteration counters of the run."""

    def __init__(self, cfg: Config, data: Dataset) -> None:
        self.cfg, self.data = cfg, data
        o = cfg.optimizer
        # a plug-in model is imported, constructed and contract-checked here, before any worker trains
        self.model = build_model(cfg.model.type, cfg.model.hidden, data.X_train.shape[1], data.n_classes,
                                 cfg.model.options, scored=o.rep_selection in SCORED, seed=cfg.model.seed)
        self.tensors = self.model.tensors()
        self.W = self.model.init(cfg.model.seed)
        self.W_bcast = np.zeros_like(self.W)  # what the workers hold: W - W_bcast is the error feedback
        self.opt = Optimizer(o.name, self.model.n_params, o.learning_rate, o.momentum, o.beta1, o.beta2, o.eps)
        self.iters_done = 0
        self.period = cfg.executor.comm_period
        self.switched_at: int | None = None
        self.screen = Screen(cfg.executor.screen_factor, cfg.executor.reject_limit, cfg.executor.screen)
        self.screened: Outcome | None = None  # the last round's screening
        # exact resume and takeover: W_bcast as of the start of the round in flight (what a replica
        # carries: a new coordinator redoes that round), whether W_bcast came from a checkpoint or a replica
        # (then the first round message sends what the workers would hold instead of W), the workers' states
        # sent with the last round's replies (rank -> state, for the checkpoint), and the replies of rounds
        # redone for a new coordinator (rank -> 1 exact, -1 not)
        self._bcast_start = self.W_bcast
        self.bcast_known = False
        self.worker_states: dict[int, dict[str, Any]] = {}
        self.known_states: dict[int, dict[str, Any]] = {}  # each worker's newest state seen (a spare's start)
        # a spare's rank -> the lost worker it stands in for: updates are summed in the order of the workers
        # whose data they train (float sums depend on order: a spare's round is then the lost worker's, exactly)
        self.ident: dict[int, int] = {}
        self.redone: dict[int, int] = {}

    def restore(self, snap: Any) -> None:
        """Parameters, optimizer and counters of a checkpoint (:class:`ftmpi.storage.checkpoint.Snapshot`)."""
        if not np.array_equal(snap.sizes, self.model.sizes):
            raise CheckpointError(f"checkpoint model {snap.sizes.tolist()} does not match the config's "
                                  f"{self.model.sizes.tolist()}")
        was, now = getattr(snap, "model", ""), model_key(self.model)
        if was != now:
            raise CheckpointError(f"the checkpoint holds model {was or 'built-in ' + str(snap.sizes.tolist())}, the "
                                  f"config says {now or self.cfg.model.type}; resume with the run's own model")
        if np.size(snap.params) != self.model.n_params:
            raise CheckpointError(f"the checkpoint holds {np.size(snap.params)} parameters, the model "
                                  f"{self.cfg.model.type} has {self.model.n_params}")
        self.W = snap.params.astype(np.float32, copy=True)
        if snap.optim.get("name") == self.opt.name:
            self.opt.load_state(snap.optim)
        self.iters_done, self.period, self.switched_at = snap.iters_done, snap.period, snap.switched_at
        bcast = getattr(snap, "bcast", None)
        if bcast is not None and self.cfg.executor.quantize and np.size(bcast) == self.model.n_params:
            self.W_bcast = np.array(bcast, np.float32)
            self.bcast_known = True
        screen = getattr(snap, "screen", None) or {}
        for r, h in screen.get("history", {}).items():
            self.screen.history[int(r)] = deque((float(x) for x in h), maxlen=HISTORY)
        self.screen.streak.update({int(r): int(n) for r, n in screen.get("streak", {}).items()})
        check_labels(getattr(snap, "labels", None), self.data.labels, "data.path")

    def next_iters(self) -> int:
        return min(self.period, self.cfg.model.n_iterations - self.iters_done)

    @property
    def done(self) -> bool:
        return self.iters_done >= self.cfg.model.n_iterations

    def payload(self, rnd: int, iters: int, first: bool) -> tuple[Any, bool, float]:
        """What a round message carries: the parameters (``full``) or their quantized change, and the rate at
        the middle of this round's iterations."""
        ex, o = self.cfg.executor, self.cfg.optimizer
        if ex.quantize == 0 or (first and not self.bcast_known):
            payload, full = self.W.copy(), True
            self.W_bcast[...] = self.W
        else:
            self._bcast_start = self.W_bcast.copy()
            payload = encode(self.W - self.W_bcast, self.tensors, ex.quantize, ex.stochastic_rounding,
                             self.cfg.model.seed * 31 + rnd)
            self.W_bcast += decode(payload, self.tensors, self.model.n_params)
            full = False
            if first:  # resumed or taken over: the workers hold nothing yet; send what they would hold now
                payload, full = self.W_bcast.copy(), True
        lr = lr_at(o.learning_rate, o.lr_schedule, self.iters_done + iters // 2, self.cfg.model.n_iterations)
        self.opt.lr = lr
        return payload, full, lr

    def aggregate(self, replies: dict[int, P.Reply], rnd: int, iters: int,
                  fold: Folding | None = None) -> tuple[float, str | None]:
        """Screen the round's updates (:mod:`ftmpi.core.screen`: one not finite, or far larger than the
        others' and its own recent ones, is left out), average the accepted ones (a worker with no rows sends
        none) into the model; count the iterations; switch to every-iteration communication under
        ``delta_switch``. Returns the loss weighted over the accepted replies and a note (rejections, the
        switch) or None; :attr:`screened` holds the round's screening (its ``lost``: the workers the driver is
        to treat as failed).

        ``fold`` (a quorum round, :mod:`ftmpi.core.quorum`): a worker's update is its fresh one times its work
        normalization plus its late ones times their factors (one update per worker, screened as one); each
        weighs its basis (mass, 1 or loss) over the basis of every alive worker, those with no fresh reply
        (``fold.absent``, their newest) included: a round without a worker moves the model by the others' shares
        only, and that worker's share comes with its late reply. Without ``fold``, as before.

        Raises:
            Diverged: Most of the round's updates are not finite, or the model would not be after this round;
                the parameters, the optimizer and the counters are left as they were before it (finite).
        """
        ex = self.cfg.executor
        self.worker_states = {r: m.state for r, m in replies.items() if getattr(m, "state", None) is not None}
        self.known_states.update(self.worker_states)
        self.redone.update({r: m.redo for r, m in replies.items() if getattr(m, "redo", 0)})
        ranks = [r for r in sorted(replies) if replies[r].rows > 0]
        updates = {r: decode(replies[r].update, self.tensors, self.model.n_params) for r in ranks}
        src, absent = replies, 0.0  # the reply whose basis a worker's update weighs; the absent workers' basis
        if fold is not None:
            src = dict(replies)
            for r, c in fold.scale.items():
                if r in updates:
                    updates[r] *= np.float32(c)
            for r, late in fold.late.items():
                for reply, c in late:
                    if reply.rows > 0:
                        u = np.float32(c) * decode(reply.update, self.tensors, self.model.n_params)
                        updates[r] = updates[r] + u if r in updates else u
                        src.setdefault(r, reply)
            ranks = sorted(updates)
            basis = {"samples": lambda b: b[0], "loss": lambda b: max(b[1], 1e-12)}.get(ex.aggregate, lambda b: 1.0)
            absent = sum(basis(b) for r, b in fold.absent.items() if r not in updates)
        norms = {r: measure(u) for r, u in updates.items()}
        screened = self.screened = self.screen.round(rnd, norms)
        _trace(rnd, norms, screened)
        lr = self.cfg.optimizer.learning_rate
        if screened.diverged:
            bad = sum(1 for n in norms.values() if not math.isfinite(n))
            raise Diverged(f"round {rnd}: {bad} of the {len(norms)} workers' updates are not finite (NaN/Inf): "
                           f"the model diverged (optimizer.learning_rate={lr:g} too high?); stopped, the last "
                           f"finite model (before round {rnd}) is kept")
        ranks = sorted(screened.accepted, key=lambda r: (self.ident.get(r, r), r))
        self.iters_done += iters
        said = "; ".join(f"round {rnd}: worker {r}'s update rejected, left out of the aggregate: {why}"
                         for r, why in screened.rejected.items()) or None
        if not ranks:
            return float("nan"), said
        if ex.aggregate == "samples":
            w = np.array([src[r].n for r in ranks], np.float64)
        elif ex.aggregate == "loss":
            w = np.array([max(src[r].loss, 1e-12) for r in ranks], np.float64)
        else:
            w = np.ones(len(ranks))
        w /= w.sum() if fold is None else w.sum() + absent
        agg = np.zeros(self.model.n_params, np.float32)
        for wi, r in zip(w, ranks, strict=True):
            agg += np.float32(wi) * updates[r]
        before = self.W.copy()
        opt_before = self.opt.state() if ex.send_gradients else None
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught just below, and said once
            if ex.send_gradients:
                self.opt.step(self.W, agg)
            else:
                self.W += agg
        if not np.isfinite(self.W).all():  # last line of defence (e.g. screening off): never keep NaN params
            self.W = before
            if opt_before is not None:
                self.opt.load_state(opt_before)
            self.iters_done -= iters
            raise Diverged(f"round {rnd}: the global model would hold NaN/Inf after aggregating {len(ranks)} "
                           f"update(s) (optimizer.learning_rate={lr:g} too high?); stopped, the last finite model "
                           f"(before round {rnd}) is kept")
        loss = float(np.dot(w, [src[r].loss for r in ranks]) / (1.0 if fold is None else w.sum()))
        dmax = float(np.max(np.abs(self.W - before))) if self.W.size else 0.0
        if ex.delta_switch > 0 and self.period > 1 and dmax < ex.delta_switch:
            self.period, self.switched_at = 1, rnd
            switch = (f"delta_switch: max|dW|={dmax:.3g} < {ex.delta_switch}; communicating every iteration "
                      f"from round {rnd + 1}")
            return loss, switch if said is None else f"{said}; {switch}"
        return loss, said

    def screen_row(self) -> dict[str, Any]:
        """The round's screening for its metrics row: updates rejected, and the largest accepted norm over its
        reference (how close honest updates came to ``executor.screen_factor``; empty when none had one)."""
        s = self.screened
        if s is None:
            return {"rejected": 0, "norm_ratio": ""}
        ratio = s.max_ratio
        return {"rejected": len(s.rejected), "norm_ratio": ratio if math.isfinite(ratio) else ""}

    def evaluate(self) -> tuple[float, np.ndarray]:
        return self.model.evaluate(self.W, self.data.X_test, self.data.y_test, self.data.n_classes)

    def score(self, rank: int, owned: np.ndarray) -> np.ndarray:
        """A lost worker that never reported its representatives: its shard scored with the global model, its
        rows read a block at a time (rank 0 never holds a whole shard's features)."""
        o = self.cfg.optimizer
        y = self.data.y_train[owned]
        loss = np.empty(len(owned), np.float32)
        for a in range(0, len(owned), _SCORE_ROWS):
            part = owned[a:a + _SCORE_ROWS]
            loss[a:a + len(part)] = self.model.sample_loss(self.W, self.data.X_train[part], y[a:a + len(part)])
        loc = select_representative(o.rep_selection, loss, y,
                                    rep_count(o.n_most_rep, len(owned)), self.data.n_classes,
                                    self.cfg.model.seed + rank)
        return owned[loc]

    def replica_fields(self) -> dict[str, Any]:
        """What the deputy needs of the model each round: as a checkpoint, but the optimizer's state only when
        rank 0 steps it (``send_gradients``); under model averaging it never changes from its initial state,
        which a deputy's own fresh optimizer already has (``restore`` skips an optimizer without a name)."""
        f = self.checkpoint_fields()
        if not self.cfg.executor.send_gradients:
            f["optim"] = {}
        if f["bcast"] is not None:  # sent after the round's broadcast: the round redone starts from before it
            f["bcast"] = self._bcast_start.copy()
        return f

    def checkpoint_fields(self) -> dict[str, Any]:
        """Copies of what a checkpoint holds of the model and the counters."""
        s = self.screen
        return {"iters_done": self.iters_done, "period": self.period, "switched_at": self.switched_at,
                "params": self.W.copy(), "sizes": self.model.sizes, "model": model_key(self.model),
                "optim": {"name": self.opt.name, **self.opt.state()}, "labels": self.data.labels,
                "bcast": self.W_bcast.copy() if self.cfg.executor.quantize else None,
                "screen": {"history": {str(r): list(h) for r, h in s.history.items()},
                           "streak": {str(r): n for r, n in s.streak.items()}} if s.history or s.streak else None}


def _trace(rnd: int, norms: dict[int, float], screened: Outcome) -> None:
    """Measurements only (``benchmarks/bench_screen.py``): with ``FTMPI_SCREEN_TRACE=FILE``, append the round's
    update norms and verdicts to FILE as one JSON line. Nothing when unset; a failed write is ignored."""
    path = os.environ.get("FTMPI_SCREEN_TRACE")
    if not path:
        return
    num = lambda x: x if math.isfinite(x) else str(x)  # noqa: E731
    line = {"round": rnd, "norms": {str(r): num(n) for r, n in norms.items()},
            "rejected": {str(r): why for r, why in screened.rejected.items()}}
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
    except OSError:
        pass
