"""Top-k and representative-point selection on one shard.

Every score selector returns exactly ``min(k, n)`` distinct local row indices (int64) and is deterministic:
``select_loss`` and ``select_stratified`` order them by score, highest first (ties: lower index
first); ``select_random`` returns them ascending (the order HDF5 fancy indexing wants).
NaN scores count as -inf. ``select_coreset`` chooses by the features instead and also returns the weight
each chosen row carries (the mass of the rows it stands for).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SELECTORS = ("loss", "random", "stratified")  # score-based, dispatched by select()
CORESET_MODES = ("kmeans++", "kcenter")  # select_coreset(mode=...)
CORESET_DIM = 32  # select_coreset projects wider features to this many dimensions


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


# ------------------------------------------------------------------------------------------------ coreset
@njit(cache=True)
def _mass_quotas(mass, counts, k):
    """Per-class budgets summing to ``min(k, rows of classes with mass)``: largest-remainder shares of
    ``k`` by class mass (ties: lower class), at least one for every class with mass while ``k`` allows
    (taken from the largest budgets), at most the class's row count."""
    n_cls = mass.shape[0]
    quota = np.zeros(n_cls, np.int64)
    live = np.zeros(n_cls, np.bool_)
    n_live, room = 0, 0
    for c in range(n_cls):
        if mass[c] > 0.0 and counts[c] > 0:
            live[c] = True
            n_live += 1
            room += counts[c]
    m = min(k, room)
    if m <= 0:
        return quota
    total = 0.0
    for c in range(n_cls):
        if live[c]:
            total += mass[c]
    frac = np.zeros(n_cls, np.float64)
    for c in range(n_cls):
        if live[c]:
            share = m * mass[c] / total
            quota[c] = min(int(math.floor(share)), counts[c])
            frac[c] = share - math.floor(share)
    order = np.argsort(-frac, kind="mergesort")  # largest remainder first, ties: lower class
    left = m - quota.sum()
    while left < 0:  # guard: float rounding of the shares can only err by one, and only in theory
        quota[np.argmax(quota)] -= 1
        left += 1
    while left > 0:  # the remainders first, then any class with room left (after caps)
        for c in order:
            if left > 0 and live[c] and quota[c] < counts[c]:
                quota[c] += 1
                left -= 1
    if m >= n_live:  # every class with mass keeps at least one row: its mass is then conserved
        for c in range(n_cls):
            if live[c] and quota[c] == 0:
                big = np.argmax(quota)  # first of the largest budgets (>= 2, since m >= n_live)
                quota[big] -= 1
                quota[c] = 1
    return quota


@njit(cache=True)
def _draw(p, u, chosen):
    """Index drawn with probability proportional to ``p`` (``u`` uniform in [0, 1)); the first row not yet
    chosen when ``p`` sums to zero."""
    total = 0.0
    for i in range(p.shape[0]):
        total += p[i]
    if total > 0.0:
        target = u * total
        acc = 0.0
        last = -1
        for i in range(p.shape[0]):
            if p[i] > 0.0:
                acc += p[i]
                last = i
                if acc > target:
                    return i
        return last  # rounding put the target at the very end
    for i in range(chosen.shape[0]):
        if not chosen[i]:
            return i
    return 0


@njit(cache=True)
def _coreset_class(Z, w, k, kcenter, u):
    """``k`` centres among the rows of one class (1 <= k < rows) and each centre's mass.

    k-means++ seeding (each next centre drawn with probability proportional to weight x squared distance to
    the nearest centre so far) or, with ``kcenter``, farthest-point greedy (the row farthest from every centre
    so far, ties: lower index). The first centre is drawn in proportion to weight either way. A row belongs to
    the nearest centre (ties: the earlier centre); a centre's mass is the weight of its rows.
    """
    m, d = Z.shape
    best = np.full(m, np.inf)
    owner = np.zeros(m, np.int64)
    chosen = np.zeros(m, np.bool_)
    centers = np.empty(k, np.int64)
    p = np.empty(m, np.float64)
    for t in range(k):
        if t == 0:
            j = _draw(w, u[0], chosen)
        elif kcenter:
            j, far = -1, -1.0
            for i in range(m):
                if not chosen[i] and best[i] > far:
                    j, far = i, best[i]
        else:
            for i in range(m):
                p[i] = 0.0 if chosen[i] else w[i] * best[i]
            j = _draw(p, u[t], chosen)
        centers[t] = j
        chosen[j] = True
        for i in range(m):
            dist = 0.0
            for f in range(d):
                diff = Z[i, f] - Z[j, f]
                dist += diff * diff
            if dist < best[i]:
                best[i] = dist
                owner[i] = t
        best[j] = 0.0
        owner[j] = t  # a duplicate of an earlier centre still stands for itself
    mass = np.zeros(k, np.float64)
    for i in range(m):
        mass[owner[i]] += w[i]
    return centers, mass


@njit(cache=True)
def _coreset(Z, y, w, k, n_classes, kcenter, u):
    n = Z.shape[0]
    counts = np.zeros(n_classes, np.int64)
    cmass = np.zeros(n_classes, np.float64)
    for i in range(n):
        if y[i] < 0 or y[i] >= n_classes:
            raise ValueError("label out of range [0, n_classes)")
        counts[y[i]] += 1
        cmass[y[i]] += w[i]
    quota = _mass_quotas(cmass, counts, k)
    out_idx = np.empty(quota.sum(), np.int64)
    out_w = np.empty(quota.sum(), np.float64)
    pos, upos = 0, 0
    for c in range(n_classes):
        q = quota[c]
        if q == 0:
            continue
        members = np.empty(counts[c], np.int64)
        f = 0
        for i in range(n):
            if y[i] == c:
                members[f] = i
                f += 1
        if q >= counts[c]:  # the whole class: every row stands for itself
            out_idx[pos:pos + q] = members
            out_w[pos:pos + q] = w[members]
        else:
            centers, mass = _coreset_class(Z[members], w[members], q, kcenter, u[upos:upos + q])
            out_idx[pos:pos + q] = members[centers]
            out_w[pos:pos + q] = mass
        pos += q
        upos += q
    order = np.argsort(out_idx)
    return out_idx[order], out_w[order]


def coreset_features(X: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """The features the coreset compares, float64: ``X`` itself when it has at most ``dim`` columns (or
    ``dim <= 0``), else a Gaussian random projection to ``dim`` columns (distances kept within a few tens of
    percent, and the greedy costs ``dim`` instead of all columns per row and centre)."""
    X = np.asarray(X)
    if dim <= 0 or X.shape[1] <= dim:
        return np.ascontiguousarray(X, dtype=np.float64)
    P = rng.standard_normal((X.shape[1], dim)).astype(np.float32) / np.float32(math.sqrt(dim))
    return np.ascontiguousarray(np.asarray(X, np.float32) @ P, dtype=np.float64)


def select_coreset(X: np.ndarray, y: np.ndarray, w: np.ndarray | None, k: int, n_classes: int, seed: int,
                   mode: str = "kmeans++", dim: int = CORESET_DIM) -> tuple[np.ndarray, np.ndarray]:
    """A weighted coreset of one shard: per-class centres on the features, each weighing its cluster's mass.

    Class budgets are proportional to class mass (sum of ``w``; largest remainder, ties: lower class), at
    least one row for every class with mass while ``k`` allows; within a class, ``k_c`` centres by k-means++
    seeding (``mode="kmeans++"``, default) or farthest-point greedy (``"kcenter"``), each row assigned to its
    nearest centre. So the returned weights of a class sum to the class's mass in the shard (up to float
    rounding) whenever ``k`` >= the number of classes with mass; below that, the classes left without a row
    lose theirs. Cost: ``sum_c k_c * n_c * dim`` operations.

    Randomness (numpy PCG64 of ``seed``): first the projection (when the features are wider than ``dim``),
    then ``k`` uniforms consumed class by class (first centre, then k-means++ draws). Same inputs and seed,
    same result (on one machine: the projection's float32 BLAS product may round differently elsewhere).

    Args:
        X: Features, shape ``(n, d)``.
        y: Labels in ``[0, n_classes)``, shape ``(n,)``.
        w: Row weights (>= 0), shape ``(n,)``; None means all 1.
        k: Number of rows wanted; ``k <= 0`` gives none, ``k >= n`` every row with its own weight.
        n_classes: Number of classes.
        seed: Seed of the projection and the draws.
        mode: ``"kmeans++"`` or ``"kcenter"``.
        dim: Projection width (``<= 0``: compare the raw features).

    Returns:
        ``(local_idx, weights)``: int64 row indices, ascending, and float64 weights aligned with them.

    Raises:
        ValueError: On mismatched shapes, a label outside ``[0, n_classes)``, a negative or non-finite
            weight, or an unknown mode.
    """
    if mode not in CORESET_MODES:
        raise ValueError(f"unknown coreset mode {mode!r}; expected one of {CORESET_MODES}")
    X = np.asarray(X)
    y = np.ascontiguousarray(y, dtype=np.int64)
    n = y.shape[0]
    if X.ndim != 2 or X.shape[0] != n or y.ndim != 1:
        raise ValueError(f"X {X.shape} must be 2-D with one row per label of y {y.shape}")
    w = np.ones(n, np.float64) if w is None else np.ascontiguousarray(w, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or (n and w.min() < 0):
        raise ValueError(f"w must be {n} finite weights >= 0, got shape {w.shape}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError("label out of range [0, n_classes)")
    k = int(k)
    if k <= 0 or n == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    if k >= n:
        return np.arange(n, dtype=np.int64), w.copy()
    rng = np.random.Generator(np.random.PCG64(seed))
    Z = coreset_features(X, dim, rng)
    u = rng.random(k)
    return _coreset(Z, y, w, k, int(n_classes), mode == "kcenter", u)
