"""Softmax-regression / ReLU-MLP kernels on one flat float32 parameter vector.

Layout: a model is ``sizes = [d, h1, ..., k]`` (int64). For each layer ``l`` the flat vector holds
``W_l`` of shape ``(sizes[l], sizes[l+1])`` row-major, then ``b_l`` of length ``sizes[l+1]``. Hidden
layers use ReLU, the output layer a softmax with mean cross-entropy loss. Gradients share the layout.

The numeric work is done by module-level ``@njit(cache=True)`` kernels (single-threaded; matrix
products go to BLAS through ``np.dot``); the public functions are thin wrappers that check
shapes and dtypes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

CHUNK_ROWS = 4096  # rows per forward chunk in sample_loss / predict (bounds activation memory)


# --------------------------------------------------------------------------------------------- layout
@njit(cache=True)
def _offsets(sizes: np.ndarray) -> np.ndarray:
    """Start offset of each layer's W in the flat vector; the last entry is the total size."""
    n_layers = sizes.shape[0] - 1
    off = np.zeros(n_layers + 1, np.int64)
    for layer in range(n_layers):
        off[layer + 1] = off[layer] + sizes[layer] * sizes[layer + 1] + sizes[layer + 1]
    return off


@njit(cache=True)
def _layer(params, sizes, off, layer):
    """Views ``(W, b)`` of one layer inside ``params`` (no copy)."""
    a = sizes[layer]
    b = sizes[layer + 1]
    start = off[layer]
    return params[start:start + a * b].reshape((a, b)), params[start + a * b:off[layer + 1]]


def _check_sizes(sizes: np.ndarray) -> np.ndarray:
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or sizes.shape[0] < 2 or np.any(sizes < 1):
        raise ValueError(f"sizes must be [d, (hidden...,) k] with positive entries, got {sizes!r}")
    return sizes


def n_params(sizes: np.ndarray) -> int:
    """Length of the flat parameter vector for ``sizes``.

    Args:
        sizes: Layer widths ``[d, h1, ..., k]``.

    Returns:
        Total number of weights and biases.
    """
    sizes = _check_sizes(sizes)
    return int(np.sum(sizes[:-1] * sizes[1:] + sizes[1:]))


def layer_slices(sizes: np.ndarray) -> list[tuple[slice, tuple[int, int], slice]]:
    """Per-layer location of the tensors in the flat vector.

    Args:
        sizes: Layer widths ``[d, h1, ..., k]``.

    Returns:
        One ``(w_slice, (fan_in, fan_out), b_slice)`` per layer, in layout order.
    """
    sizes = _check_sizes(sizes)
    out, start = [], 0
    for fan_in, fan_out in zip(sizes[:-1].tolist(), sizes[1:].tolist()):
        w_end = start + fan_in * fan_out
        out.append((slice(start, w_end), (fan_in, fan_out), slice(w_end, w_end + fan_out)))
        start = w_end + fan_out
    return out


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
    params = np.zeros(n_params(sizes), np.float32)
    slices = layer_slices(sizes)
    for i, (w_sl, (fan_in, fan_out), _) in enumerate(slices):
        last = i == len(slices) - 1
        limit = math.sqrt(6.0 / (fan_in + fan_out)) if last else math.sqrt(6.0 / fan_in)
        params[w_sl] = rng.uniform(-limit, limit, fan_in * fan_out).astype(np.float32)
    return params


# --------------------------------------------------------------------------------------------- kernels
@njit(cache=True)
def _hidden_forward(params, sizes, off, X):
    """ReLU activations of every hidden layer (list, possibly empty) for the rows of ``X``."""
    acts = []
    a = X
    for layer in range(sizes.shape[0] - 2):
        W, b = _layer(params, sizes, off, layer)
        z = np.dot(a, W)
        for i in range(z.shape[0]):
            for j in range(z.shape[1]):
                v = z[i, j] + b[j]
                z[i, j] = v if v > 0.0 else np.float32(0.0)
        acts.append(z)
        a = z
    return acts


@njit(cache=True)
def _logits(params, sizes, off, a):
    """Output-layer scores ``a @ W_out + b_out`` for the last hidden activation ``a``."""
    W, b = _layer(params, sizes, off, sizes.shape[0] - 2)
    z = np.dot(a, W)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[i, j] += b[j]
    return z


@njit(cache=True)
def _row_nll(z, i, label):
    """Cross-entropy of row ``i`` of the logits (stable log-sum-exp); returns (nll, max, sum_exp)."""
    k = z.shape[1]
    if label < 0 or label >= k:
        raise ValueError("label out of range [0, n_classes)")
    m = z[i, 0]
    for j in range(1, k):
        m = max(m, z[i, j])
    s = 0.0
    for j in range(k):
        s += math.exp(z[i, j] - m)
    return math.log(s) + m - z[i, label], m, s


@njit(cache=True)
def _loss_grad(params, sizes, X, y, grad):
    off = _offsets(sizes)
    n = X.shape[0]
    n_layers = sizes.shape[0] - 1
    acts = _hidden_forward(params, sizes, off, X)
    g = _logits(params, sizes, off, acts[-1] if n_layers > 1 else X)
    inv_n = 1.0 / n
    total = 0.0
    for i in range(n):  # g <- d(mean loss)/d(logits) = (softmax - onehot) / n
        nll, m, s = _row_nll(g, i, y[i])
        total += nll
        z_label = g[i, y[i]]
        for j in range(g.shape[1]):
            g[i, j] = math.exp(g[i, j] - m) / s * inv_n
        g[i, y[i]] = (math.exp(z_label - m) / s - 1.0) * inv_n
    for layer in range(n_layers - 1, -1, -1):
        a_prev = acts[layer - 1] if layer > 0 else X
        gW, gb = _layer(grad, sizes, off, layer)
        np.dot(a_prev.T, g, gW)
        col = np.zeros(g.shape[1], np.float64)
        for i in range(n):
            for j in range(g.shape[1]):
                col[j] += g[i, j]
        for j in range(g.shape[1]):
            gb[j] = col[j]
        if layer > 0:  # back through W and the ReLU of the previous layer
            W, _ = _layer(params, sizes, off, layer)
            g_prev = np.dot(g, W.T)
            for i in range(n):
                for j in range(g_prev.shape[1]):
                    if a_prev[i, j] <= 0.0:
                        g_prev[i, j] = 0.0
            g = g_prev
    return total * inv_n


@njit(cache=True)
def _chunk_logits(params, sizes, off, X):
    acts = _hidden_forward(params, sizes, off, X)
    return _logits(params, sizes, off, acts[-1] if sizes.shape[0] > 2 else X)


@njit(cache=True)
def _sample_loss(params, sizes, X, y, out, chunk):
    off = _offsets(sizes)
    for start in range(0, X.shape[0], chunk):
        stop = min(start + chunk, X.shape[0])
        z = _chunk_logits(params, sizes, off, X[start:stop])
        for i in range(stop - start):
            out[start + i] = _row_nll(z, i, y[start + i])[0]


@njit(cache=True)
def _predict(params, sizes, X, out, chunk):
    off = _offsets(sizes)
    for start in range(0, X.shape[0], chunk):
        stop = min(start + chunk, X.shape[0])
        z = _chunk_logits(params, sizes, off, X[start:stop])
        for i in range(stop - start):
            best = 0
            for j in range(1, z.shape[1]):
                if z[i, j] > z[i, best]:
                    best = j
            out[start + i] = best


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
    return float(_loss_grad(params, sizes, X, y, grad_out))


def sample_loss(params: np.ndarray, sizes: np.ndarray, X: np.ndarray, y: np.ndarray,
                out: np.ndarray) -> None:
    """Per-sample cross-entropy, computed in chunks of ``CHUNK_ROWS`` rows.

    Args:
        params: Flat float32 parameters.
        sizes: Layer widths ``[d, h1, ..., k]``.
        X: Features, float32 ``(n, d)``.
        y: Labels in ``[0, k)``, int32 ``(n,)``.
        out: Float32 ``(n,)``, overwritten with the losses.
    """
    params, sizes, X, y = _check_batch(params, sizes, X, y)
    _check_out(out, (X.shape[0],), np.float32, "out")
    if X.shape[0]:
        _sample_loss(params, sizes, X, y, out, CHUNK_ROWS)


def predict(params: np.ndarray, sizes: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Predicted class (argmax of the logits, first on ties) of every row, chunked.

    Args:
        params: Flat float32 parameters.
        sizes: Layer widths ``[d, h1, ..., k]``.
        X: Features, float32 ``(n, d)``.

    Returns:
        Int32 labels ``(n,)``.
    """
    params, sizes, X, _ = _check_batch(params, sizes, X)
    out = np.zeros(X.shape[0], np.int32)
    if X.shape[0]:
        _predict(params, sizes, X, out, CHUNK_ROWS)
    return out
