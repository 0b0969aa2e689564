"""Softmax-regression / ReLU-MLP loss, gradient and prediction on one flat float32 parameter vector.

Layout: a model is ``sizes = [d, h1, ..., k]``. For each layer ``l`` the flat vector holds ``W_l``
of shape ``(sizes[l], sizes[l+1])`` row-major, then ``b_l`` of length ``sizes[l+1]``. Hidden layers
use ReLU, the output layer a softmax with mean cross-entropy loss. Gradients share the layout.

Matrix products go to numpy's ``@`` (its bundled BLAS; single-threaded when OPENBLAS_NUM_THREADS=1);
everything between them is fused into ``@njit(cache=True)`` row loops (bias + ReLU, log-softmax +
loss + logit gradient, column sums, ReLU masks). The layout and ``predict`` (numpy only) are in
:mod:`ftmpi.kernels.layout`. The products stay out of numba: ``np.dot`` inside numba calls scipy's
OpenBLAS, which is slower than numpy's on the weight-gradient products of a shard.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import layout as _layout
from .layout import (  # noqa: F401  (re-exported: this module's names include the layout and predict)
    CHUNK_ROWS,
    _check_batch,
    _check_out,
    _check_sizes,
    _layers,
    _slices,
    init_params,
    layer_slices,
    n_params,
    predict,
)


# --------------------------------------------------------------------------------------------- kernels
@njit(cache=True)
def _bias_relu(z, b):
    """In place: ``z = max(z + b, 0)`` (one hidden layer's activation)."""
    for i in range(z.shape[0]):
        row = z[i]
        for j in range(row.shape[0]):
            row[j] = max(row[j] + b[j], np.float32(0.0))


@njit(cache=True)
def _row_nll(z, b, i, label):
    """Add the bias to row ``i`` of the logits; return its cross-entropy, max and sum of exps."""
    k = z.shape[1]
    if label < 0 or label >= k:
        raise ValueError("label out of range [0, n_classes)")
    row = z[i]
    for j in range(k):
        row[j] += b[j]
    m = row.max()
    s = 0.0
    for j in range(k):
        s += math.exp(row[j] - m)
    return math.log(s) + m - row[label], m, s


@njit(cache=True)
def _xent_grad(z, b, y):
    """Mean cross-entropy of logits ``z + b``; ``z`` is overwritten with d(mean loss)/dz."""
    n = z.shape[0]
    total = 0.0
    for i in range(n):  # (softmax - onehot) / n, formed so that p == 1 gives an exact zero
        nll, m, s = _row_nll(z, b, i, y[i])
        total += nll
        z_label = z[i, y[i]]
        for j in range(z.shape[1]):
            z[i, j] = math.exp(z[i, j] - m) / s / n
        z[i, y[i]] = (math.exp(z_label - m) / s - 1.0) / n
    return total / n


@njit(cache=True)
def _xent(z, b, y, out):
    """Per-row cross-entropy of logits ``z + b`` into ``out`` (``z`` gets the bias added)."""
    for i in range(z.shape[0]):
        out[i] = _row_nll(z, b, i, y[i])[0]


@njit(cache=True)
def _col_sum(g, out):
    """``out = g.sum(axis=0)``, accumulated in float64."""
    acc = np.zeros(g.shape[1], np.float64)
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            acc[j] += g[i, j]
    for j in range(g.shape[1]):
        out[j] = acc[j]


@njit(cache=True)
def _relu_mask(g, a):
    """In place: ``g[a <= 0] = 0`` (backward through a ReLU whose output is ``a``)."""
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            if a[i, j] <= 0.0:
                g[i, j] = 0.0


def _weight_grad(a, g, gW):
    """``gW = a.T @ g``. For a narrow ``g`` (at most 32 columns) OpenBLAS is faster computing
    ``g.T @ a`` and transposing the small result."""
    if g.shape[1] <= 32:
        gW[...] = (g.T @ a).T
    else:
        np.matmul(a.T, g, out=gW)


def _hidden(layers, X):
    """Input and hidden activations ``[X, a1, ...]``; products go to numpy's BLAS (see module doc)."""
    acts = [X]
    for W, b in layers[:-1]:
        z = acts[-1] @ W
        _bias_relu(z, b)
        acts.append(z)
    return acts


# --------------------------------------------------------------------------------------------- wrappers
def loss_grad(params: np.ndarray, sizes: np.ndarray, X: np.ndarray, y: np.ndarray,
              grad_out: np.ndarray) -> float:
    """Mean cross-entropy of a batch and its gradient.

    Args:
        params: Flat float32 parameters.
        sizes: Layer widths ``[d, h1, ..., k]``.
        X: Features, float32 ``(n, d)``.
        y: Labels in ``[0, k)``, int32 ``(n,)``.
        grad_out: Float32 ``(n_params,)``; overwritten with d(mean loss)/d(params).

    Returns:
        The mean loss (0.0 and a zero gradient for an empty batch).

    Raises:
        ValueError: On a shape/dtype mismatch or a label outside ``[0, k)``.
    """
    params, sizes, X, y = _check_batch(params, sizes, X, y)
    _check_out(grad_out, params.shape, np.float32, "grad_out")
    if X.shape[0] == 0:
        grad_out[:] = 0.0
        return 0.0
    layers, grads = _layers(params, sizes), _layers(grad_out, sizes)
    acts = _hidden(layers, X)
    g = acts[-1] @ layers[-1][0]
    loss = _xent_grad(g, layers[-1][1], y)
    for layer in range(len(layers) - 1, -1, -1):
        gW, gb = grads[layer]
        _weight_grad(acts[layer], g, gW)
        _col_sum(g, gb)
        if layer:  # back through W and the ReLU that produced acts[layer]
            g = g @ layers[layer][0].T
            _relu_mask(g, acts[layer])
    return float(loss)


def sample_loss(params: np.ndarray, sizes: np.ndarray, X: np.ndarray, y: np.ndarray,
                out: np.ndarray) -> None:
    """Per-sample cross-entropy, computed in chunks of ``CHUNK_ROWS`` rows.

    Args:
        params: Flat float32 parameters.
        sizes: Layer widths ``[d, h1, ..., k]``.
        X: Features, float32 ``(n, d)``.
        y: Labels in ``[0, k)``, int32 ``(n,)``.
        out: Float32 ``(n,)``, overwritten with the losses.

    Raises:
        ValueError: On a shape/dtype mismatch or a label outside ``[0, k)``.
    """
    params, sizes, X, y = _check_batch(params, sizes, X, y)
    _check_out(out, (X.shape[0],), np.float32, "out")
    layers = _layers(params, sizes)
    chunk = _layout.CHUNK_ROWS
    for start in range(0, X.shape[0], chunk):
        rows = slice(start, start + chunk)
        _xent(_hidden(layers, X[rows])[-1] @ layers[-1][0], layers[-1][1], y[rows], out[rows])
