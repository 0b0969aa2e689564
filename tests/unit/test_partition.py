"""Partition and handoff maths: determinism, one owner per id, the promised skew, Ownership invariants."""
from __future__ import annotations

import numpy as np
import pytest

from ftmpi.core.partition import KINDS, Ownership, assign_handoff, class_histogram, coverage, deal_slices, partition


def labels(n: int = 2000, k: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % k).astype(np.int32)


def assert_exact_cover(parts, n):
    assert all(p.dtype == np.int64 for p in parts)
    assert all(len(p) > 0 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts), "sorted, no duplicates"
    allids = np.concatenate(parts)
    assert len(allids) == n and np.array_equal(np.sort(allids), np.arange(n))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_workers", [1, 3, 4, 7])
def test_every_id_has_exactly_one_owner(kind, n_workers):
    y = labels()
    parts = partition(y, n_workers, kind, seed=5)
    assert len(parts) == n_workers
    assert_exact_cover(parts, len(y))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_by_seed(kind):
    y = labels()
    a, b = partition(y, 4, kind, seed=1), partition(y, 4, kind, seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    if kind != "contiguous":
        c = partition(y, 4, kind, seed=2)
        assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_iid_sizes_and_mixing():
    y = labels(2003)
    parts = partition(y, 4, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    hist = class_histogram(y, parts, 10)
    assert hist.min() > 30  # every worker sees every class
    assert not np.array_equal(parts[0], np.arange(len(parts[0])))  # shuffled, not file order


def test_contiguous_is_file_order():
    parts = partition(labels(10), 3, "contiguous", seed=0)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_unbalanced_sizes_follow_power_law():
    y = labels(4000)
    parts = partition(y, 4, "unbalanced", seed=0, power=1.5)
    sizes = np.array([len(p) for p in parts])
    assert sizes[0] == sizes.max() and np.all(np.diff(sizes) < 0)
    assert sizes.max() / sizes.min() > 3
    hist = class_histogram(y, parts, 10)
    assert np.all(hist > 0), "classes stay mixed"
    flatter = partition(y, 4, "unbalanced", seed=0, power=0.2)
    assert max(map(len, flatter)) / min(map(len, flatter)) < sizes.max() / sizes.min()


def test_label_skew_dirichlet_is_skewed():
    y = labels(6000)
    skew = class_histogram(y, partition(y, 4, "label-skew", seed=0, alpha=0.1), 10)
    iid = class_histogram(y, partition(y, 4, "iid", seed=0), 10)

    def dominant_share(h):  # mean share of each worker's most frequent class
        return float(np.mean(h.max(axis=1) / h.sum(axis=1)))
    assert dominant_share(skew) > 2 * dominant_share(iid)
    assert (skew == 0).sum() > 5  # many (worker, class) pairs are empty
    mild = class_histogram(y, partition(y, 4, "label-skew", seed=0, alpha=100.0), 10)
    assert dominant_share(mild) < dominant_share(skew)


def test_label_skew_never_leaves_a_worker_empty():
    y = np.array([0] * 50 + [1] * 50)
    for seed in range(20):
        parts = partition(y, 8, "label-skew", seed=seed, alpha=0.01)
        assert_exact_cover(parts, len(y))


def test_label_skew_classes_per_worker():
    y = labels(3000)
    parts = partition(y, 5, "label-skew", seed=3, classes_per_worker=2)
    assert_exact_cover(parts, len(y))
    hist = class_histogram(y, parts, 10)
    assert np.all((hist > 0).sum(axis=1) == 2), "exactly two classes each"
    assert np.all((hist > 0).sum(axis=0) >= 1), "every class has an owner"
    parts8 = partition(y, 8, "label-skew", seed=3, classes_per_worker=2)
    hist8 = class_histogram(y, parts8, 10)
    assert np.all((hist8 > 0).sum(axis=1) == 2) and np.all(hist8.sum(axis=0) == np.bincount(y))


@pytest.mark.parametrize("kwargs,match", [
    ({"n_workers": 4, "kind": "label-skew", "classes_per_worker": 2}, "cannot cover"),
    ({"n_workers": 2, "kind": "label-skew", "classes_per_worker": 11}, "only 10 classes"),
    ({"n_workers": 0, "kind": "iid"}, "n_workers"),
    ({"n_workers": 3, "kind": "shuffled"}, "unknown partition kind"),
    ({"n_workers": 3, "kind": "label-skew", "alpha": 0.0}, "alpha"),
    ({"n_workers": 3, "kind": "unbalanced", "power": -1.0}, "power"),
])
def test_partition_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        partition(labels(100), seed=0, **kwargs)


def test_more_workers_than_rows_is_an_error():
    with pytest.raises(ValueError, match="a row each"):
        partition(np.zeros(3, dtype=np.int32), 4, "iid", seed=0)


def test_class_histogram():
    y = np.array([0, 1, 1, 2, 2, 2])
    hist = class_histogram(y, [np.array([0, 1]), np.array([2, 3, 4, 5])], 4)
    assert hist.tolist() == [[1, 1, 0, 0], [0, 1, 3, 0]]


# -------------------------------------------------------------------------------------------- handoff

@pytest.mark.parametrize("n_ids,survivors", [(10, [1, 2, 3]), (100, [4, 2]), (2, [1, 2, 3, 5]), (0, [1])])
def test_handoff_spread_evenly_once(n_ids, survivors):
    ids = np.arange(1000, 1000 + n_ids) * 3
    out = assign_handoff(ids, survivors, seed=7)
    assert sorted(out) == sorted(survivors)
    sizes = [len(v) for v in out.values()]
    assert max(sizes) - min(sizes) <= 1
    given = np.concatenate(list(out.values()))
    assert len(given) == n_ids and np.array_equal(np.sort(given), np.sort(ids))
    assert all(v.dtype == np.int64 and np.all(np.diff(v) > 0) for v in out.values())


def test_handoff_deterministic_and_order_independent():
    ids = np.arange(37)
    a = assign_handoff(ids, [3, 1, 2], seed=11)
    b = assign_handoff(ids, [1, 2, 3], seed=11)
    assert a.keys() == b.keys() and all(np.array_equal(a[r], b[r]) for r in a)
    c = assign_handoff(ids, [1, 2, 3], seed=12)
    assert not all(np.array_equal(a[r], c[r]) for r in a)


def test_handoff_extra_rows_do_not_always_go_to_the_lowest_rank():
    got_extra = dict.fromkeys((1, 2, 3), 0)
    for seed in range(30):
        out = assign_handoff(np.arange(4), [1, 2, 3], seed=seed)
        for r, v in out.items():
            got_extra[r] += len(v) == 2
    assert all(v > 0 for v in got_extra.values())


def test_handoff_errors():
    with pytest.raises(ValueError, match="no surviving"):
        assign_handoff(np.arange(3), [], seed=0)
    with pytest.raises(ValueError, match="repeat"):
        assign_handoff(np.arange(3), [1, 1], seed=0)
    with pytest.raises(ValueError, match="duplicates"):
        assign_handoff(np.array([1, 1, 2]), [1, 2], seed=0)


# ------------------------------------------------------------------------------------------ Ownership

def test_ownership_lifecycle_full_remap():
    n = 100
    parts = partition(labels(n), 3, "iid", seed=0)
    own = Ownership(n)
    assert own.coverage() == 0.0
    for rank, ids in zip((1, 2, 3), parts, strict=True):
        own.assign(rank, ids)
    assert own.coverage() == 1.0 and own.ranks() == [1, 2, 3] and len(own.unaccounted()) == 0
    assert np.array_equal(own.owned(2), parts[1])
    dead = own.release(2)
    assert np.array_equal(dead, parts[1]) and len(own.owned(2)) == 0
    assert own.coverage() == pytest.approx(1 - len(dead) / n)
    for rank, ids in assign_handoff(dead, [1, 3], seed=0).items():
        own.assign(rank, ids)
    assert own.coverage() == 1.0 and sum(own.counts().values()) == n and own.ranks() == [1, 3]
    owner = own.owner_array()
    assert owner.dtype == np.int32 and set(np.unique(owner)) == {1, 3}


def test_ownership_representative_remap_drops_the_rest():
    own = Ownership(10)
    own.assign(1, np.arange(5))
    own.assign(2, np.arange(5, 10))
    dead = own.release(2)
    keep, rest = dead[:2], dead[2:]
    own.assign(1, keep)
    own.drop(rest)
    assert own.coverage() == pytest.approx(0.7)
    assert own.dropped().tolist() == [7, 8, 9] and len(own.unaccounted()) == 0
    assert own.owner_array().tolist() == [1] * 7 + [-1] * 3
    again = Ownership.from_arrays(own.owner_array(), own.dropped())
    assert np.array_equal(again.owner_array(), own.owner_array())
    assert np.array_equal(again.dropped(), own.dropped()) and again.coverage() == own.coverage()
    again.assign(1, [8])  # a dropped id may be taken back
    assert again.dropped().tolist() == [7, 9]


def test_ownership_invariants():
    own = Ownership(10)
    own.assign(1, [0, 1, 2])
    with pytest.raises(ValueError, match="already owned"):
        own.assign(2, [2, 3])
    with pytest.raises(ValueError, match="already owned"):
        own.assign(1, [1])
    assert own.owned(2).size == 0, "a failed assign changes nothing"
    with pytest.raises(ValueError, match="duplicates"):
        own.assign(2, [4, 4])
    with pytest.raises(ValueError, match="out of range"):
        own.assign(2, [10])
    with pytest.raises(ValueError, match="out of range"):
        own.assign(2, [-1])
    with pytest.raises(ValueError, match="still owned"):
        own.drop([0])
    with pytest.raises(ValueError, match="rank"):
        own.assign(-1, [5])
    assert own.unaccounted().tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert own.release(7).size == 0


def test_coverage_helper():
    assert coverage(5, 10) == 0.5 and coverage(0, 0) == 1.0
    assert Ownership(0).coverage() == 1.0


@pytest.mark.parametrize("n", [0, 1, 7, 100, 101])
def test_deal_slices_cover_the_file_once_evenly(n):
    survivors = [4, 1, 3]
    out = deal_slices(n, survivors, seed=5)
    assert sorted(r for r, _, _ in out) == [1, 3, 4]
    spans = sorted((a, b) for _, a, b in out)
    assert spans[0][0] == 0 and spans[-1][1] == n and all(spans[i][1] == spans[i + 1][0] for i in range(2))
    sizes = [b - a for _, a, b in out]
    assert max(sizes) - min(sizes) <= 1
    assert deal_slices(n, [1, 3, 4], seed=5) == out, "the order of the survivors does not matter"


def test_deal_slices_by_ident_gives_a_spare_the_lost_workers_slice_and_moves_nobody_else():
    before = deal_slices(10, [1, 2, 3, 4], seed=3)
    after = deal_slices(10, [1, 3, 4, 7], seed=3, ident=lambda r: {7: 2}.get(r, r))
    assert [(r if r != 7 else 2, a, b) for r, a, b in after] == before
    assert deal_slices(10, [1, 3, 4, 7], seed=3) != after, "by rank, the spare sorts last and the slices move"


def test_deal_slices_rotates_the_larger_slices_and_refuses_bad_survivors():
    first = {deal_slices(7, [1, 2, 3], seed)[0][0] for seed in range(30)}
    assert first == {1, 2, 3}, "the first (larger) slice does not always go to the lowest rank"
    with pytest.raises(ValueError, match="no surviving"):
        deal_slices(5, [], 0)
    with pytest.raises(ValueError, match="repeat"):
        deal_slices(5, [2, 2], 0)
