"""Top-k and representative-point selection on one shard.

Every selector returns exactly ``min(k, n)`` distinct local row indices (int64) and is deterministic:
``select_loss`` and ``select_stratified`` order them by score, highest first (ties: lower index
first); ``select_random`` returns them ascending (the order HDF5 fancy indexing wants).
NaN scores count as -inf.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SELECTORS = ("loss", "random", "stratified")


@njit(cache=True, inline="always")
def _better(s_a, i_a, s_b, i_b):
    """True if (score s_a, index i_a) ranks strictly before (s_b, i_b)."""
    if s_a == s_b:
        return i_a < i_b
    return s_a > s_b


@njit(cache=True)
def _sift_down(hs, hi, pos, size):
    """Restore the min-heap (root = worst kept item) below ``pos``."""
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        if child + 1 < size and _better(hs[child], hi[child], hs[child + 1], hi[child + 1]):
            child += 1
        if not _better(hs[pos], hi[pos], hs[child], hi[child]):
            return
        hs[pos], hs[child] = hs[child], hs[pos]
        hi[pos], hi[child] = hi[child], hi[pos]
        pos = child


@njit(cache=True)
def _topk(scores, k):
    """Indices of the ``k`` best scores (1 <= k <= n) with a size-k heap: O(n log k)."""
    hs = np.empty(k, np.float64)
    hi = np.empty(k, np.int64)
    for i in range(k):
        s = scores[i]
        hs[i] = -np.inf if math.isnan(s) else s
        hi[i] = i
    for pos in range(k // 2 - 1, -1, -1):
        _sift_down(hs, hi, pos, k)
    for i in range(k, scores.shape[0]):
        s = scores[i]
        s = -np.inf if math.isnan(s) else s
        if s > hs[0]:  # a later index never wins a tie
            hs[0] = s
            hi[0] = i
            _sift_down(hs, hi, 0, k)
    out = np.empty(k, np.int64)
    for size in range(k, 0, -1):  # pop the worst to the back
        out[size - 1] = hi[0]
        hs[0] = hs[size - 1]
        hi[0] = hi[size - 1]
        _sift_down(hs, hi, 0, size - 1)
    return out


@njit(cache=True)
def _quotas(counts, m):
    """Largest-remainder split of ``m`` picks proportional to ``counts`` (capped by the counts)."""
    n = counts.sum()
    quota = (m * counts) // n
    rem = (m * counts) % n
    order = np.argsort(-rem, kind="mergesort")  # largest remainder first, ties: lower class
    left = m - quota.sum()
    for c in order[:left]:
        quota[c] += 1
    surplus = 0
    for c in range(counts.shape[0]):  # never triggers for exact proportional quotas; kept as a guard
        if quota[c] > counts[c]:
            surplus += quota[c] - counts[c]
            quota[c] = counts[c]
    while surplus > 0:
        for c in order:
            if surplus > 0 and quota[c] < counts[c]:
                quota[c] += 1
                surplus -= 1
    return quota


@njit(cache=True)
def _stratified(scores, y, k, n_classes):
    n = scores.shape[0]
    counts = np.zeros(n_classes, np.int64)
    for i in range(n):
        if y[i] < 0 or y[i] >= n_classes:
            raise ValueError("label out of range [0, n_classes)")
        counts[y[i]] += 1
    quota = _quotas(counts, min(k, n))
    start = np.zeros(n_classes + 1, np.int64)  # counting sort of rows by class (stable)
    start[1:] = np.cumsum(counts)
    rows = np.empty(n, np.int64)
    fill = start[:-1].copy()
    for i in range(n):
        rows[fill[y[i]]] = i
        fill[y[i]] += 1
    picked = np.empty(quota.sum(), np.int64)
    m = 0
    for c in range(n_classes):
        if quota[c] > 0:
            members = rows[start[c]:start[c + 1]]
            best = _topk(scores[members], quota[c])
            picked[m:m + quota[c]] = members[best]
            m += quota[c]
    picked = np.sort(picked)  # row order, so that the final ranking breaks ties by row index
    return picked[_topk(scores[picked], m)]


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, highest first, ties broken by lower index.

    Args:
        scores: 1-D scores (any float or int dtype; compared as float64, NaN as -inf).
        k: Number wanted; ``k <= 0`` gives an empty result, ``k >= n`` all ``n`` sorted.

    Returns:
        Int64 indices, ``min(max(k, 0), n)`` of them.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    k = min(int(k), scores.shape[0])
    return _topk(scores, k) if k > 0 else np.empty(0, np.int64)


def select_loss(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` highest-loss rows (same as :func:`topk`).

    Args:
        scores: Per-row loss.
        k: Number of rows wanted.

    Returns:
        Int64 row indices, highest loss first.
    """
    return topk(scores, k)


def select_random(n: int, k: int, seed: int) -> np.ndarray:
    """Uniform sample of ``min(k, n)`` rows without replacement.

    Args:
        n: Number of rows in the shard.
        k: Number of rows wanted.
        seed: Seed of the numpy PCG64 generator.

    Returns:
        Int64 row indices, ascending.
    """
    m = max(0, min(int(k), int(n)))
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.sort(rng.choice(int(n), size=m, replace=False)).astype(np.int64)


def select_stratified(scores: np.ndarray, y: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Highest-loss rows within each class, class quotas proportional to the shard's class counts.

    Quotas use largest-remainder rounding (ties: lower class first) so they sum to ``min(k, n)``;
    a class absent from the shard gets none.

    Args:
        scores: Per-row loss, shape ``(n,)``.
        y: Labels in ``[0, n_classes)``, shape ``(n,)``.
        k: Number of rows wanted.
        n_classes: Number of classes.

    Returns:
        Int64 row indices, highest loss first.

    Raises:
        ValueError: On mismatched shapes or a label outside ``[0, n_classes)``.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.int64)
    if scores.ndim != 1 or y.shape != scores.shape:
        raise ValueError(f"scores {scores.shape} and y {y.shape} must be 1-D of equal length")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if min(int(k), scores.shape[0]) <= 0:
        return np.empty(0, np.int64)
    return _stratified(scores, y, int(k), int(n_classes))


def select(method: str, scores: np.ndarray, y: np.ndarray, k: int, n_classes: int,
           seed: int = 0) -> np.ndarray:
    """Pick representative rows by the method's name (one of :data:`SELECTORS`).

    Args:
        method: ``"loss"``, ``"random"`` or ``"stratified"``.
        scores: Per-row loss, shape ``(n,)`` (only its length is used by ``"random"``).
        y: Labels, shape ``(n,)`` (used by ``"stratified"``).
        k: Number of rows wanted.
        n_classes: Number of classes (used by ``"stratified"``).
        seed: Seed (used by ``"random"``).

    Returns:
        Int64 row indices, ``min(k, n)`` of them.
    """
    if method == "loss":
        return select_loss(scores, k)
    if method == "random":
        return select_random(len(scores), k, seed)
    if method == "stratified":
        return select_stratified(scores, y, k, n_classes)
    raise ValueError(f"unknown selection method {method!r}; expected one of {SELECTORS}")
