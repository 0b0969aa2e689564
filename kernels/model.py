"""Softmax-regression / ReLU-MLP loss, gradient and prediction on one flat float32 parameter vector.

Layout: a model is ``sizes = [d, h1, ..., k]``. For each layer ``l`` the flat vector holds ``W_l``
of shape ``(sizes[l], sizes[l+1])`` row-major, then ``b_l`` of length ``sizes[l+1]``. Hidden layers
use ReLU, the output layer a softmax with mean cross-entropy loss. Gradients share the layout.

Matrix products go to numpy's ``@`` (its bundled BLAS; single-threaded when OPENBLAS_NUM_THREADS=1);
everything between them is fused into ``@njit(cache=True)`` row loops (bias + ReLU, log-softmax +
loss + logit gradient, column sums, ReLU masks); ``predict`` is numpy only (see there). ``np.dot``
inside numba was tried first: it calls scipy's OpenBLAS, which here (0.3.30 against numpy's 0.3.31) was
15-60 % slower on the weight-gradient products of the 15000-row shard, too slow to match a plain numpy implementation.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from numba import njit

CHUNK_ROWS = 4096  # rows per forward chunk in sample_loss / predict (bounds activation memory)


# --------------------------------------------------------------------------------------------- layout
def _check_sizes(sizes) -> tuple[int, ...]:
    if isinstance(sizes, tuple) and all(type(v) is int for v in sizes):  # already checked (Model keeps one)
        if len(sizes) >= 2 and min(sizes) >= 1:
            return sizes
    sizes = tuple(int(v) for v in np.asarray(sizes).reshape(-1))
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must be [d, (hidden...,) k] with positive entries, got {sizes}")
    return sizes


@functools.lru_cache(maxsize=64)
def _slices(sizes: tuple[int, ...]) -> tuple[tuple[slice, tuple[int, int], slice], ...]:
    out, start = [], 0
    for fan_in, fan_out in itertools.pairwise(sizes):
        w_end = start + fan_in * fan_out
        out.append((slice(start, w_end), (fan_in, fan_out), slice(w_end, w_end + fan_out)))
        start = w_end + fan_out
    return tuple(out)


def n_params(sizes: np.ndarray) -> int:
    """Length of the flat parameter vector for ``sizes``.

    Args:
        sizes: Layer widths ``[d, h1, ..., k]``.

    Returns:
        Total number of weights and biases.
    """
    return _slices(_check_sizes(sizes))[-1][2].stop


def layer_slices(sizes: np.ndarray) -> list[tuple[slice, tuple[int, int], slice]]:
    """Per-layer location of the tensors in the flat vector.

    Args:
        sizes: Layer widths ``[d, h1, ..., k]``.

    Returns:
        One ``(w_slice, (fan_in, fan_out), b_slice)`` per layer, in layout order.
    """
    return list(_slices(_check_sizes(sizes)))


def init_params(sizes: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic initial parameters.

    Hidden layers get He-uniform weights (``U(+-sqrt(6/fan_in))``), the output layer Glorot-uniform
    (``U(+-sqrt(6/(fan_in+fan_out)))``); biases are zero.

    Args:
        sizes: Layer widths ``[d, h1, ..., k]``.
        seed: Seed of the numpy PCG64 generator.

    Returns:
        Flat float32 parameter vector.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    slices = layer_slices(sizes)
    params = np.zeros(slices[-1][2].stop, np.float32)
    for i, (w_sl, (fan_in, fan_out), _) in enumerate(slices):
        last = i == len(slices) - 1
        limit = math.sqrt(6.0 / (fan_in + fan_out)) if last else math.sqrt(6.0 / fan_in)
        params[w_sl] = rng.uniform(-limit, limit, fan_in * fan_out).astype(np.float32)
    return params


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
    """``gW = a.T @ g``. For a narrow ``g`` OpenBLAS is faster (1.4-2.6x at k=10) computing
    ``g.T @ a`` and transposing the small result."""
    if g.shape[1] <= 32:
        gW[...] = (g.T @ a).T
    else:
        np.matmul(a.T, g, out=gW)


def _layers(params, sizes):
    """Views ``(W, b)`` of every layer inside the flat vector (no copy)."""
    return [(params[w].reshape(shape), params[b]) for w, shape, b in _slices(sizes)]


def _hidden(layers, X):
    """Input and hidden activations ``[X, a1, ...]``; products go to numpy's BLAS (see module doc)."""
    acts = [X]
    for W, b in layers[:-1]:
        z = acts[-1] @ W
        _bias_relu(z, b)
        acts.append(z)
    return acts


# --------------------------------------------------------------------------------------------- wrappers
def _check_batch(params, sizes, X, y=None):
    sizes = _check_sizes(sizes)
    params = np.ascontiguousarray(params, dtype=np.float32)
    X = np.ascontiguousarray(X, dtype=np.float32)
    if params.shape != (n_params(sizes),):
        raise ValueError(f"params has shape {params.shape}, expected ({n_params(sizes)},)")
    if X.ndim != 2 or X.shape[1] != sizes[0]:
        raise ValueError(f"X has shape {X.shape}, expected (n, {sizes[0]})")
    if y is not None:
        y = np.ascontiguousarray(y, dtype=np.int32)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y has shape {y.shape}, expected ({X.shape[0]},)")
    return params, sizes, X, y


def _check_out(out, shape, dtype, name):
    if not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == dtype
            and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous {np.dtype(dtype)} array of shape {shape}")


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
    for start in range(0, X.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        _xent(_hidden(layers, X[rows])[-1] @ layers[-1][0], layers[-1][1], y[rows], out[rows])


def predict(params: np.ndarray, sizes: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Predicted class (argmax of the logits, first on ties) of every row, chunked.

    Plain numpy (bias, ReLU and argmax are not fused here): rank 0 evaluates with it and so never loads a
    numba kernel; loading the first one from the cache costs ~1 s of CPU, which used to fall in round 0.

    Args:
        params: Flat float32 parameters.
        sizes: Layer widths ``[d, h1, ..., k]``.
        X: Features, float32 ``(n, d)``.

    Returns:
        Int32 labels ``(n,)``.
    """
    params, sizes, X, _ = _check_batch(params, sizes, X)
    layers = _layers(params, sizes)
    out = np.empty(X.shape[0], np.int32)
    for start in range(0, X.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        a = X[rows]
        for W, b in layers[:-1]:
            a = a @ W
            a += b
            np.maximum(a, np.float32(0.0), out=a)
        z = a @ layers[-1][0]
        z += layers[-1][1]
        out[rows] = z.argmax(axis=1)
    return out
