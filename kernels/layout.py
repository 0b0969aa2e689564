"""The flat parameter layout of a model and its numpy-only uses: sizes, slices, initial values, prediction.

Layout: a model is ``sizes = [d, h1, ..., k]``. For each layer ``l`` the flat vector holds ``W_l``
of shape ``(sizes[l], sizes[l+1])`` row-major, then ``b_l`` of length ``sizes[l+1]``. Hidden layers
use ReLU, the output layer a softmax. Nothing here imports numba: rank 0 builds, initialises and evaluates
the global model with these alone, so it never pays numba's import; the
numba kernels (loss, gradient, per-sample loss) are in :mod:`ftmpi.kernels.model`.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

CHUNK_ROWS = 4096  # rows per forward chunk in sample_loss / predict (bounds activation memory)
# rows per chunk when predict converts stored rows (uint8) to float32 first: a chunk that stays in a core's
# cache between the conversion and the product, so uint8 rows evaluate as fast as float32 rows in memory
PACKED_CHUNK_ROWS = 256


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


def _layers(params, sizes):
    """Views ``(W, b)`` of every layer inside the flat vector (no copy)."""
    return [(params[w].reshape(shape), params[b]) for w, shape, b in _slices(sizes)]


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


def predict(params: np.ndarray, sizes: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Predicted class (argmax of the logits, first on ties) of every row, chunked.

    Plain numpy (bias, ReLU and argmax are not fused here): rank 0 evaluates with it and so never loads a
    numba kernel, whose first load from the cache would cost rank 0 start-up CPU.

    Args:
        params: Flat float32 parameters.
        sizes: Layer widths ``[d, h1, ..., k]``.
        X: Features, float32 ``(n, d)``, or a row matrix of :mod:`ftmpi.storage.rows` (converted a chunk at a time).

    Returns:
        Int32 labels ``(n,)``.
    """
    packed = hasattr(X, "rows")  # a row matrix (ftmpi.storage.rows, e.g. uint8 pixels): float32 a chunk at a time
    params, sizes, head, _ = _check_batch(params, sizes, X[:0] if packed else X)
    if not packed:
        X = head
    elif X.ndim != 2 or X.shape[1] != sizes[0]:
        raise ValueError(f"X has shape {X.shape}, expected (n, {sizes[0]})")
    layers = _layers(params, sizes)
    out = np.empty(X.shape[0], np.int32)
    step = PACKED_CHUNK_ROWS if packed else CHUNK_ROWS
    for start in range(0, X.shape[0], step):
        rows = slice(start, start + step)
        a = X[rows]
        for W, b in layers[:-1]:
            a = a @ W
            a += b
            np.maximum(a, np.float32(0.0), out=a)
        z = a @ layers[-1][0]
        z += layers[-1][1]
        out[rows] = z.argmax(axis=1)
    return out
