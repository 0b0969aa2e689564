"""The handed rows' weights (ftmpi.core.weighting): the unbiased rule keeps every class's and every origin's
expected mass through two losses in sequence (checked over many seeds with numpy), the rule before the fix
does not, and the damped and class-mix rules stay within the bounds their docstrings promise. No MPI."""
from __future__ import annotations

import numpy as np
import pytest

from ftmpi.core import weighting as W
from ftmpi.core.handoff import pps_systematic

N_CLASSES = 4


def _draw(rule: str, w: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The policy's choice (:func:`ftmpi.core.handoff.pps_systematic` over a random order; a uniform one under
    ``shard-legacy``) and the chosen rows' weights under ``rule``."""
    order = rng.permutation(len(w))
    pos, hits = pps_systematic(np.ones(len(w)) if rule == "shard-legacy" else w[order], k, rng)
    chosen = order[pos]
    base = hits * (w.sum() / hits.sum())
    return chosen, W.handed_weights(rule, w[chosen], base, mass=w.sum())


def _two_losses(rule: str, seed: int, k_frac: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Worker A (classes 0-1, 5000 rows) is lost, 5 % of its rows go to worker B (classes 1-3, 15 000
    rows); then B is lost and 5 % of everything it owns is handed on. Per class and per origin (A, B), the
    mass B's handed rows carry."""
    rng = np.random.default_rng(seed)
    ya = np.repeat([0, 1], [3000, 2000])
    yb = np.repeat([1, 2, 3], [5000, 6000, 4000])
    ca, w_handed = _draw(rule, np.ones(len(ya)), int(round(k_frac * len(ya))), rng)
    # B now owns its own rows and A's handed ones
    y = np.concatenate([yb, ya[ca]])
    w = np.concatenate([np.ones(len(yb)), w_handed])
    origin = np.concatenate([np.ones(len(yb), np.int64), np.zeros(len(ca), np.int64)])
    cb, wb = _draw(rule, w, int(round(k_frac * len(y))), rng)
    return W.class_mass(y[cb], wb, N_CLASSES), np.bincount(origin[cb], weights=wb, minlength=2)


TRUE_CLASS = np.array([3000, 7000, 6000, 4000], float)  # what A and B held, per class
TRUE_ORIGIN = np.array([5000, 15000], float)


def _means(rule: str, seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    runs = [_two_losses(rule, s) for s in range(seeds)]
    cls, org = np.array([r[0] for r in runs]), np.array([r[1] for r in runs])
    return cls.mean(0), cls.std(0) / np.sqrt(seeds), org.mean(0), org.std(0) / np.sqrt(seeds)


def test_unbiased_rule_keeps_each_class_and_origin_mass_through_two_losses():
    cls, cls_se, org, org_se = _means("shard", 1500)
    assert np.all(np.abs(cls - TRUE_CLASS) < 4 * cls_se + 1e-9), (cls, cls_se)
    assert np.all(np.abs(org - TRUE_ORIGIN) < 4 * org_se + 1e-9), (org, org_se)
    assert cls_se.max() < 0.05 * TRUE_CLASS.min()  # the check has the power to see a 20 % bias


def test_the_rule_before_the_fix_loses_the_first_shard_at_the_second_loss():
    # the worked example: A's mass falls from 5000 to ~5000 * 0.05 * 20 / 20 ... far below 5000
    cls, cls_se, org, org_se = _means("shard-legacy", 300)
    assert org[0] < 0.2 * TRUE_ORIGIN[0] and abs(org.sum() - TRUE_ORIGIN.sum()) < 1e-6 * TRUE_ORIGIN.sum()
    assert cls[0] < 0.2 * TRUE_CLASS[0]  # class 0 lived only on A


def test_the_legacy_and_one_rules():
    w = np.array([1.0, 20.0, 1.0, 1.0])
    base = np.full(4, 46.0 / 4)
    np.testing.assert_allclose(W.handed_weights("shard-legacy", w, base, mass=46.0), np.full(4, 46.0 / 4))
    np.testing.assert_array_equal(W.handed_weights("one", w, base), w)
    np.testing.assert_array_equal(W.handed_weights("shard", w, base), base)


def test_remaining_draws():
    assert W.remaining_draws(560, 128, 20_000) == pytest.approx(3.584)
    assert W.remaining_draws(10, 128, 20_000) == 1.0  # never below 1
    assert W.remaining_draws(10, 128, 0) == 1.0


def test_damped_stays_between_own_and_unbiased():
    rng = np.random.default_rng(0)
    own = rng.choice([1.0, 20.0, 2.5], 200)
    base = own * 20
    for cap in (1.0, 3.6, 50.0, 1e9):
        d = W.handed_weights("damped", own, base, cap=cap)
        assert np.all(d >= own) and np.all(d <= base)
        np.testing.assert_allclose(d, np.minimum(base, np.maximum(cap, own)))
    np.testing.assert_array_equal(W.handed_weights("damped", own, base, cap=1e9), base)
    kept = W.kept_fraction(W.handed_weights("damped", np.ones(750), np.full(750, 20.0), cap=3.6), np.full(750, 20.0))
    assert kept == pytest.approx(0.18)
    np.testing.assert_allclose(W.handed_weights("sqrt", np.ones(3), np.full(3, 16.0)), [4.0, 4.0, 4.0])


def _classmix_case(S, M, y_chosen, seed=0):
    rng = np.random.default_rng(seed)
    own = rng.choice([1.0, 2.0], len(y_chosen))
    base = own * rng.uniform(5, 30, len(y_chosen))
    return own, base, W.classmix(own, base, y_chosen, M, S)


def test_classmix_on_an_iid_split_is_about_one_and_keeps_the_shares():
    S, M = np.full(4, 4500.0), np.full(4, 1500.0)  # three survivors and the lost worker hold alike
    y = np.repeat(np.arange(4), 75)  # 5 % of each class handed
    own = np.ones(len(y))
    out = W.classmix(own, np.full(300, 20.0), y, M, S)
    np.testing.assert_allclose(out, 1.0)


@pytest.mark.parametrize("seed", range(8))
def test_classmix_keeps_every_class_share_and_at_least_the_handed_rows_own_mass(seed):
    rng = np.random.default_rng(seed)
    S = rng.uniform(0, 5000, N_CLASSES) * (rng.random(N_CLASSES) < 0.8)
    M = rng.uniform(100, 5000, N_CLASSES)
    y = np.concatenate([np.arange(N_CLASSES), rng.integers(0, N_CLASSES, 40)])  # every class has a row
    own, base, out = _classmix_case(S, M, y, seed)
    H = W.class_mass(y, out, N_CLASSES)
    np.testing.assert_allclose((S + H) / (S + H).sum(), (S + M) / (S + M).sum(), rtol=1e-10)
    a = W.class_mass(y, own, N_CLASSES)
    assert np.all(H >= a * (1 - 1e-12)) and np.all(H <= M * (1 + 1e-12))
    uniform = W.classmix(own, own * 20, y, M, S)  # a uniform choice: base / own alike, so per row as well
    assert np.all(uniform >= own * (1 - 1e-12))
    for c in range(N_CLASSES):  # within a class, the split follows base
        sel = y == c
        np.testing.assert_allclose(out[sel] / base[sel], out[sel][0] / base[sel][0])


def test_classmix_is_per_class_exact_when_survivors_hold_a_class_the_lost_worker_did_not():
    S = np.array([0.0, 100.0, 4000.0, 3000.0])
    M = np.array([3000.0, 2000.0, 500.0, 0.0])
    y = np.array([0, 0, 0, 1, 1, 2])
    own, base, out = _classmix_case(S, M, y)
    np.testing.assert_allclose(W.class_mass(y, out, N_CLASSES), M)


def test_bad_calls_name_what_is_missing():
    with pytest.raises(ValueError, match="unknown rep_weight"):
        W.handed_weights("heavy", np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="needs cap"):
        W.handed_weights("damped", np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="needs mass"):
        W.handed_weights("shard-legacy", np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="needs y"):
        W.handed_weights("classmix", np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="equal length"):
        W.handed_weights("shard", np.ones(2), np.ones(3))
    for rule in W.RULES:
        kw = {"mass": 0.0, "cap": 2.0, "y": np.zeros(0, np.int64), "dead_class_mass": np.zeros(2),
              "survivor_class_mass": np.zeros(2)}
        assert W.handed_weights(rule, np.zeros(0), np.zeros(0), **kw).shape == (0,)
