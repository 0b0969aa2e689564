"""Rank 0's global model: its parameters and optimizer, the broadcast payload (full, or the quantized change
with error feedback), the aggregation of the workers' updates, evaluation, and scoring a shard. No MPI.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ftmpi.config import Config
from ftmpi.core import protocol as P
from ftmpi.core.handoff import rep_count, select_representative
from ftmpi.errors import CheckpointError
from ftmpi.model.codec import decode, encode
from ftmpi.model.models import Model
from ftmpi.model.optim import Optimizer, lr_at
from ftmpi.storage.data import Dataset


class GlobalModel:
    """The model rank 0 holds, and the iteration counters of the run."""

    def __init__(self, cfg: Config, data: Dataset) -> None:
        self.cfg, self.data = cfg, data
        o = cfg.optimizer
        self.model = Model.build(cfg.model.type, cfg.model.hidden, data.X_train.shape[1], data.n_classes)
        self.tensors = self.model.tensors()
        self.W = self.model.init(cfg.model.seed)
        self.W_bcast = np.zeros_like(self.W)  # what the workers hold: W - W_bcast is the error feedback
        self.opt = Optimizer(o.name, self.model.n_params, o.learning_rate, o.momentum, o.beta1, o.beta2, o.eps)
        self.iters_done = 0
        self.period = cfg.executor.comm_period
        self.switched_at: int | None = None

    def restore(self, snap: Any) -> None:
        """Parameters, optimizer and counters of a checkpoint (:class:`ftmpi.storage.checkpoint.Snapshot`)."""
        if not np.array_equal(snap.sizes, self.model.sizes):
            raise CheckpointError(f"checkpoint model {snap.sizes.tolist()} does not match the config's "
                                  f"{self.model.sizes.tolist()}")
        self.W = snap.params.astype(np.float32, copy=True)
        if snap.optim.get("name") == self.opt.name:
            self.opt.load_state(snap.optim)
        self.iters_done, self.period, self.switched_at = snap.iters_done, snap.period, snap.switched_at

    def next_iters(self) -> int:
        return min(self.period, self.cfg.model.n_iterations - self.iters_done)

    @property
    def done(self) -> bool:
        return self.iters_done >= self.cfg.model.n_iterations

    def payload(self, rnd: int, iters: int, first: bool) -> tuple[Any, bool, float]:
        """What a round message carries: the parameters (``full``) or their quantized change, and the rate at
        the middle of this round's iterations."""
        ex, o = self.cfg.executor, self.cfg.optimizer
        if first or ex.quantize == 0:
            payload, full = self.W.copy(), True
            self.W_bcast[...] = self.W
        else:
            payload = encode(self.W - self.W_bcast, self.tensors, ex.quantize, ex.stochastic_rounding,
                             self.cfg.model.seed * 31 + rnd)
            self.W_bcast += decode(payload, self.tensors, self.model.n_params)
            full = False
        lr = lr_at(o.learning_rate, o.lr_schedule, self.iters_done + iters // 2, self.cfg.model.n_iterations)
        self.opt.lr = lr
        return payload, full, lr

    def aggregate(self, replies: dict[int, P.Reply], rnd: int, iters: int) -> tuple[float, str | None]:
        """Average the updates (a worker with no rows sends none) into the model; count the iterations; switch
        to every-iteration communication under ``delta_switch``. Returns the weighted loss and a note."""
        ex = self.cfg.executor
        self.iters_done += iters
        ranks = [r for r in sorted(replies) if replies[r].rows > 0]
        if not ranks:
            return float("nan"), None
        if ex.aggregate == "samples":
            w = np.array([replies[r].n for r in ranks], np.float64)
        elif ex.aggregate == "loss":
            w = np.array([max(replies[r].loss, 1e-12) for r in ranks], np.float64)
        else:
            w = np.ones(len(ranks))
        w /= w.sum()
        agg = np.zeros(self.model.n_params, np.float32)
        for wi, r in zip(w, ranks, strict=True):
            agg += np.float32(wi) * decode(replies[r].update, self.tensors, self.model.n_params)
        before = self.W.copy()
        if ex.send_gradients:
            self.opt.step(self.W, agg)
        else:
            self.W += agg
        loss = float(np.dot(w, [replies[r].loss for r in ranks]))
        dmax = float(np.max(np.abs(self.W - before))) if self.W.size else 0.0
        if ex.delta_switch > 0 and self.period > 1 and dmax < ex.delta_switch:
            self.period, self.switched_at = 1, rnd
            return loss, (f"delta_switch: max|dW|={dmax:.3g} < {ex.delta_switch}; communicating every iteration "
                          f"from round {rnd + 1}")
        return loss, None

    def evaluate(self) -> tuple[float, np.ndarray]:
        return self.model.evaluate(self.W, self.data.X_test, self.data.y_test, self.data.n_classes)

    def score(self, rank: int, owned: np.ndarray) -> np.ndarray:
        """A lost worker that never reported its representatives: its shard scored with the global model."""
        o = self.cfg.optimizer
        X, y = self.data.X_train[owned], self.data.y_train[owned]
        loc = select_representative(o.rep_selection, self.model.sample_loss(self.W, X, y), y,
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
        return f

    def checkpoint_fields(self) -> dict[str, Any]:
        """Copies of what a checkpoint holds of the model and the counters."""
        return {"iters_done": self.iters_done, "period": self.period, "switched_at": self.switched_at,
                "params": self.W.copy(), "sizes": self.model.sizes, "optim": {"name": self.opt.name,
                                                                             **self.opt.state()}}
