"""Softmax regression (a model with no hidden layer): loss, gradient and per-sample loss in numpy alone.

The numba kernels of :mod:`ftmpi.kernels.model` fuse the row loops of any model; for one layer they buy
nothing measurable over numpy with the same BLAS, while importing numba and loading the first kernel from
its cache costs every process CPU time on cores that the ranks of a job share while they start. So a
softmax regression never loads numba; :func:`ftmpi.kernels.loss_grad` and :func:`ftmpi.kernels.sample_loss`
dispatch here when ``sizes`` has two entries. Same contract as the numba versions (shapes and dtypes
checked, ValueError on a label outside ``[0, k)``); float32 arithmetic, sums of rows in float64.
"""

from __future__ import annotations

import numpy as np

from .layout import CHUNK_ROWS, _check_batch, _check_out, _layers


def _labels_ok(y: np.ndarray, k: int) -> None:
    if y.size and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ValueError("label out of range [0, n_classes)")


def _logits(W: np.ndarray, b: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``X @ W + b``, shifted so that every row's maximum is 0 (float32)."""
    z = X @ W
    z += b
    z -= z.max(axis=1, keepdims=True)
    return z


def loss_grad(params: np.ndarray, sizes: np.ndarray, X: np.ndarray, y: np.ndarray,
              grad_out: np.ndarray) -> float:
    """Mean cross-entropy of a batch and its gradient (see :func:`ftmpi.kernels.model.loss_grad`)."""
    params, sizes, X, y = _check_batch(params, sizes, X, y)
    _check_out(grad_out, params.shape, np.float32, "grad_out")
    if len(sizes) != 2:
        raise ValueError(f"softmax regression has sizes [d, k], got {list(sizes)}")
    if X.shape[0] == 0:
        grad_out[:] = 0.0
        return 0.0
    _labels_ok(y, sizes[1])
    (W, b), = _layers(params, sizes)
    (gW, gb), = _layers(grad_out, sizes)
    n = X.shape[0]
    rows = np.arange(n)
    z = _logits(W, b, X)
    e = np.exp(z)
    s = e.sum(axis=1)
    loss = float(np.sum(np.log(s) - z[rows, y], dtype=np.float64) / n)
    e /= s[:, None]
    e[rows, y] -= 1.0  # (softmax - onehot): an exact zero where p == 1
    e *= np.float32(1.0 / n)
    gW[...] = (e.T @ X).T  # e.T @ X, then transposed: faster than X.T @ e for a narrow e (model.py)
    gb[...] = e.sum(axis=0, dtype=np.float64)
    return loss


def sample_loss(params: np.ndarray, sizes: np.ndarray, X: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """Per-sample cross-entropy into ``out``, in chunks of ``CHUNK_ROWS`` rows."""
    params, sizes, X, y = _check_batch(params, sizes, X, y)
    _check_out(out, (X.shape[0],), np.float32, "out")
    if len(sizes) != 2:
        raise ValueError(f"softmax regression has sizes [d, k], got {list(sizes)}")
    _labels_ok(y, sizes[1])
    (W, b), = _layers(params, sizes)
    for start in range(0, X.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        z = _logits(W, b, X[rows])
        out[rows] = np.log(np.exp(z).sum(axis=1)) - z[np.arange(z.shape[0]), y[rows]]
