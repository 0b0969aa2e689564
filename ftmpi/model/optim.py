"""SGD (with momentum) and Adam on a flat parameter vector, plus gradient clipping.

State is plain arrays and a step counter so that a checkpoint can store and restore it exactly.
"""
from __future__ import annotations

import math

import numpy as np


def lr_at(base: float, schedule: str, done: int, total: int) -> float:
    """Learning rate after ``done`` of ``total`` iterations: constant, cosine or linear decay to zero."""
    frac = min(max(done / max(total, 1), 0.0), 1.0)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return base * (1.0 - frac)
    return base


def clip(grad: np.ndarray, clip_norm: float, clip_val: float) -> None:
    """Clip in place: elementwise to ``[-clip_val, clip_val]``, then the global norm to ``clip_norm``."""
    if clip_val > 0:
        np.clip(grad, -clip_val, clip_val, out=grad)
    if clip_norm > 0:
        norm = float(np.linalg.norm(grad))
        if norm > clip_norm:
            grad *= clip_norm / norm


class Optimizer:
    """One optimizer for a flat float32 vector. ``name`` is ``sgd`` or ``adam``."""

    def __init__(self, name: str, n: int, lr: float, momentum: float = 0.0, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.name, self.lr, self.momentum = name, lr, momentum
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.step_count = 0
        self.m = np.zeros(n, np.float32)
        self.v = np.zeros(n, np.float32) if name == "adam" else np.zeros(0, np.float32)

    def step(self, params: np.ndarray, grad: np.ndarray) -> None:
        """One update of ``params`` in place."""
        self.step_count += 1
        if self.name == "adam":
            b1, b2 = self.beta1, self.beta2
            self.m *= b1
            self.m += (1 - b1) * grad
            self.v *= b2
            self.v += (1 - b2) * grad * grad
            t = self.step_count
            a = self.lr * np.sqrt(1 - b2**t) / (1 - b1**t)
            params -= (a * self.m / (np.sqrt(self.v) + self.eps)).astype(np.float32)
        elif self.momentum > 0:
            self.m *= self.momentum
            self.m += grad
            params -= self.lr * self.m
        else:
            params -= self.lr * grad

    def state(self) -> dict[str, np.ndarray | int]:
        return {"m": self.m.copy(), "v": self.v.copy(), "step": self.step_count}

    def load_state(self, state: dict) -> None:
        self.m[...] = state["m"]
        if self.v.size:
            self.v[...] = state["v"]
        self.step_count = int(state["step"])
