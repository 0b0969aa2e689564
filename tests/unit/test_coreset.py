"""select_coreset against a plain numpy reference (same seed, same rows and weights), degenerate inputs, and
the property the handoff relies on: the chosen rows' weights carry each class's mass of the shard."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ftmpi import kernels as K

# ------------------------------------------------------------------------------------------ the reference


def _ref_quotas(mass: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    live = (mass > 0) & (counts > 0)
    quota = np.zeros(len(mass), np.int64)
    m = min(k, int(counts[live].sum()))
    if m <= 0:
        return quota
    total = 0.0
    for c in np.flatnonzero(live):  # summed in class order, as the kernel does
        total += mass[c]
    share = np.where(live, m * mass / total, 0.0)
    quota[live] = np.minimum(np.floor(share[live]).astype(np.int64), counts[live])
    order = sorted(range(len(mass)), key=lambda c: (-(share[c] - math.floor(share[c])), c))
    left = m - quota.sum()
    while left > 0:
        for c in order:
            if left > 0 and live[c] and quota[c] < counts[c]:
                quota[c] += 1
                left -= 1
    if m >= live.sum():
        for c in np.flatnonzero(live & (quota == 0)):
            big = int(np.argmax(quota))
            quota[big] -= 1
            quota[c] = 1
    return quota


def _ref_draw(p: np.ndarray, u: float, chosen: np.ndarray) -> int:
    total = p.sum()
    if total > 0:
        cum = np.cumsum(p)
        hit = np.flatnonzero((cum > u * total) & (p > 0))
        return int(hit[0]) if len(hit) else int(np.flatnonzero(p > 0)[-1])
    return int(np.flatnonzero(~chosen)[0])


def _ref_class(Z: np.ndarray, w: np.ndarray, k: int, kcenter: bool, u: np.ndarray):
    m = len(w)
    best, owner, chosen = np.full(m, np.inf), np.zeros(m, np.int64), np.zeros(m, bool)
    centers = []
    for t in range(k):
        if t == 0:
            j = _ref_draw(w, u[0], chosen)
        elif kcenter:
            j = int(np.argmax(np.where(chosen, -1.0, best)))
        else:
            j = _ref_draw(np.where(chosen, 0.0, w * best), u[t], chosen)
        centers.append(j)
        chosen[j] = True
        dist = ((Z - Z[j]) ** 2).sum(axis=1)
        closer = dist < best
        best[closer], owner[closer] = dist[closer], t
        best[j], owner[j] = 0.0, t
    return np.array(centers, np.int64), np.bincount(owner, weights=w, minlength=k)


def reference(X, y, w, k, n_classes, seed, mode="kmeans++", dim=K.CORESET_DIM):
    """The algorithm of :func:`ftmpi.kernels.select_coreset`, written again in numpy."""
    n = len(y)
    w = np.ones(n) if w is None else np.asarray(w, np.float64)
    if k <= 0 or n == 0:
        return np.empty(0, np.int64), np.empty(0)
    if k >= n:
        return np.arange(n), w.copy()
    rng = np.random.Generator(np.random.PCG64(seed))
    if 0 < dim < X.shape[1]:
        P = rng.standard_normal((X.shape[1], dim)).astype(np.float32) / np.float32(math.sqrt(dim))
        Z = (np.asarray(X, np.float32) @ P).astype(np.float64)
    else:
        Z = np.asarray(X, np.float64)
    u = rng.random(k)
    counts = np.bincount(y, minlength=n_classes)
    mass = np.zeros(n_classes)
    for i in range(n):  # summed in row order, as the kernel does
        mass[y[i]] += w[i]
    quota = _ref_quotas(mass, counts, k)
    idx, wts, upos = [], [], 0
    for c in range(n_classes):
        q = quota[c]
        members = np.flatnonzero(y == c)
        if q == 0:
            continue
        if q >= len(members):
            idx.append(members)
            wts.append(w[members])
        else:
            centers, cm = _ref_class(Z[members], w[members], q, mode == "kcenter", u[upos:upos + q])
            idx.append(members[centers])
            wts.append(cm)
        upos += q
    idx, wts = np.concatenate(idx), np.concatenate(wts)
    order = np.argsort(idx)
    return idx[order], wts[order]


def _shard(n=600, d=20, n_classes=5, seed=0, p=None):
    rng = np.random.default_rng(seed)
    y = rng.choice(n_classes, n, p=p)
    X = (rng.standard_normal((n, d)) + 3 * rng.standard_normal((n_classes, d))[y]).astype(np.float32)
    return X, y


def _class_mass(y, w, n_classes):
    return np.bincount(y, weights=w, minlength=n_classes)


# ---------------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("mode", K.CORESET_MODES)
@pytest.mark.parametrize("k", [1, 3, 7, 60, 599])
@pytest.mark.parametrize("dim", [0, 8])
def test_matches_the_numpy_reference(mode, k, dim):
    X, y = _shard(p=[0.5, 0.3, 0.0, 0.15, 0.05])  # class 2 absent
    w = np.random.default_rng(3).uniform(0.5, 3.0, len(y))
    idx, wts = K.select_coreset(X, y, w, k, 5, seed=11, mode=mode, dim=dim)
    ref_idx, ref_w = reference(X, y, w, k, 5, seed=11, mode=mode, dim=dim)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(wts, ref_w, rtol=1e-12)
    assert idx.dtype == np.int64 and wts.dtype == np.float64
    assert len(idx) == k and len(np.unique(idx)) == k and np.all(np.diff(idx) > 0)
    again = K.select_coreset(X, y, w, k, 5, seed=11, mode=mode, dim=dim)
    np.testing.assert_array_equal(again[0], idx)
    np.testing.assert_array_equal(again[1], wts)


def test_the_seed_changes_the_choice_and_the_budgets_follow_class_mass():
    X, y = _shard(n=2000, p=[0.6, 0.25, 0.1, 0.05, 0.0])
    w = np.where(y == 3, 4.0, 1.0)  # class 3: 5% of the rows, ~17% of the mass
    a, _ = K.select_coreset(X, y, w, 100, 5, seed=1)
    b, _ = K.select_coreset(X, y, w, 100, 5, seed=2)
    assert not np.array_equal(a, b)
    per = np.bincount(y[a], minlength=5)
    share = 100 * _class_mass(y, w, 5) / w.sum()
    assert np.all(np.abs(per - share) < 1), (per, share)


@pytest.mark.parametrize("seed", range(12))
def test_per_class_mass_is_conserved(seed):
    """Property, over random shards, weights, budgets and modes: every class present keeps its mass."""
    rng = np.random.default_rng(100 + seed)
    n_classes = int(rng.integers(1, 8))
    n = int(rng.integers(1, 400))
    X, y = _shard(n=n, d=int(rng.integers(1, 50)), n_classes=n_classes, seed=seed,
                  p=rng.dirichlet(np.full(n_classes, 0.3)))
    w = rng.choice([1.0, 20.0, 26.25, 0.4], n) * (rng.random(n) < 0.95)  # handed rows, and a few at 0
    present = int(((_class_mass(y, w, n_classes) > 0)).sum())
    k = int(rng.integers(present, n + 2)) if present else 1
    mode = K.CORESET_MODES[seed % 2]
    idx, wts = K.select_coreset(X, y, w, k, n_classes, seed, mode=mode, dim=int(rng.choice([0, 4])))
    np.testing.assert_allclose(_class_mass(y[idx], wts, n_classes), _class_mass(y, w, n_classes), rtol=1e-12,
                               atol=1e-9)
    live_rows = int(np.isin(y, np.flatnonzero(_class_mass(y, w, n_classes) > 0)).sum())
    assert np.all(wts >= 0) and len(idx) == (n if k >= n else min(k, live_rows))


def test_cluster_mass_is_the_weight_of_the_nearest_rows():
    # two tight groups of one class, 9 rows and 3 rows: two centres, one per group, weigh 9 w and 3 w
    X = np.array([[0.0, 0.0]] * 9 + [[10.0, 10.0]] * 3, np.float32) + np.linspace(0, 0.01, 12)[:, None]
    y = np.zeros(12, np.int64)
    w = np.full(12, 2.5)
    for mode in K.CORESET_MODES:
        idx, wts = K.select_coreset(X, y, w, 2, 1, seed=0, mode=mode)
        assert sorted(idx < 9) == [False, True]
        np.testing.assert_allclose(wts[np.argsort(idx >= 9)], [22.5, 7.5])


def test_degenerate_inputs():
    X, y = _shard(n=50)
    w = np.full(50, 3.0)
    idx, wts = K.select_coreset(X, y, w, 0, 5, seed=0)
    assert idx.shape == (0,) and wts.shape == (0,) and idx.dtype == np.int64
    idx, wts = K.select_coreset(X, y, w, -3, 5, seed=0)
    assert idx.shape == (0,)
    for k in (50, 51, 10_000):  # k >= n: every row, each with its own weight
        idx, wts = K.select_coreset(X, y, w, k, 5, seed=0)
        np.testing.assert_array_equal(idx, np.arange(50))
        np.testing.assert_array_equal(wts, w)
    idx, wts = K.select_coreset(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), None, 5, 3, seed=0)
    assert idx.shape == (0,) and wts.shape == (0,)
    # one class
    idx, wts = K.select_coreset(X, np.zeros(50, np.int64), None, 7, 1, seed=4)
    assert len(idx) == 7 and wts.sum() == 50.0
    # every row the same: any rows, but the mass is kept and nothing is chosen twice
    for mode in K.CORESET_MODES:
        idx, wts = K.select_coreset(np.ones((30, 6), np.float32), np.zeros(30, np.int64), None, 5, 1, 0, mode=mode)
        assert len(np.unique(idx)) == 5 and wts.sum() == 30.0
        np.testing.assert_array_equal(idx, reference(np.ones((30, 6)), np.zeros(30, np.int64), None, 5, 1, 0,
                                                     mode=mode)[0])
    # duplicated rows among distinct ones
    Xd = np.repeat(X[:10], 4, axis=0)
    yd = np.repeat(y[:10], 4)
    idx, wts = K.select_coreset(Xd, yd, None, 15, 5, seed=2)
    ref = reference(Xd, yd, None, 15, 5, seed=2)
    np.testing.assert_array_equal(idx, ref[0])
    np.testing.assert_allclose(wts, ref[1])
    np.testing.assert_array_equal(_class_mass(yd[idx], wts, 5), _class_mass(yd, np.ones(40), 5))


def test_fewer_rows_than_classes_keeps_the_heaviest_classes():
    X, y = _shard(n=300, n_classes=5, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    idx, wts = K.select_coreset(X, y, None, 2, 5, seed=0)
    assert sorted(set(y[idx])) == [0, 1]  # only two rows: the two heaviest classes, each its own mass
    np.testing.assert_allclose(sorted(wts), sorted(_class_mass(y, np.ones(300), 5)[:2]))


def test_class_with_only_zero_weights_gets_no_row():
    X, y = _shard(n=100, n_classes=2, p=[0.5, 0.5])
    w = np.where(y == 1, 0.0, 1.0)
    idx, wts = K.select_coreset(X, y, w, 10, 2, seed=0)
    assert np.all(y[idx] == 0) and wts.sum() == pytest.approx(w.sum())


def test_bad_input_is_refused_with_one_clear_error():
    X, y = _shard(n=20)
    with pytest.raises(ValueError, match="label out of range"):
        K.select_coreset(X, y, None, 5, 3, seed=0)
    with pytest.raises(ValueError, match="weights >= 0"):
        K.select_coreset(X, y, -np.ones(20), 5, 5, seed=0)
    with pytest.raises(ValueError, match="weights >= 0"):
        K.select_coreset(X, y, np.full(20, np.nan), 5, 5, seed=0)
    with pytest.raises(ValueError, match="one row per label"):
        K.select_coreset(X[:10], y, None, 5, 5, seed=0)
    with pytest.raises(ValueError, match="unknown coreset mode"):
        K.select_coreset(X, y, None, 5, 5, seed=0, mode="kmeans")
