"""Kernels against plain numpy references, with degenerate inputs (zero rows, one class)."""

from __future__ import annotations

import numpy as np
import pytest

from ftmpi import kernels as K

MODELS = [[6, 4], [6, 8, 4], [6, 40, 5, 4]]  # logreg, MLP with 1 and 2 hidden layers (one > 32 wide)


def _data(sizes, n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n).astype(np.int32)
    return X, y


def _params(sizes, seed=0):
    """Random params with non-zero biases (init_params zeroes them)."""
    return np.random.default_rng(seed + 100).uniform(-1, 1, K.n_params(sizes)).astype(np.float32)


def _reference(params, sizes, X, y):
    """float64 numpy forward/backward: (mean loss, flat grad, per-sample loss, logits)."""
    layers = [(params[w].astype(np.float64).reshape(shape), params[b].astype(np.float64))
              for w, shape, b in K.layer_slices(sizes)]
    acts = [X.astype(np.float64)]
    for W, b in layers[:-1]:
        acts.append(np.maximum(acts[-1] @ W + b, 0.0))
    z = acts[-1] @ layers[-1][0] + layers[-1][1]
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    per_sample = -logp[rows, y]
    g = np.exp(logp)
    g[rows, y] -= 1.0
    g /= max(len(y), 1)
    grads = []
    for layer in range(len(layers) - 1, -1, -1):
        grads = [(acts[layer].T @ g).ravel(), g.sum(axis=0)] + grads
        if layer:
            g = (g @ layers[layer][0].T) * (acts[layer] > 0)
    return per_sample.mean(), np.concatenate(grads), per_sample, z


# ------------------------------------------------------------------------------------------ model
def test_layout():
    sizes = np.array([5, 7, 3], np.int64)
    assert K.n_params(sizes) == 5 * 7 + 7 + 7 * 3 + 3
    assert K.n_params([784, 10]) == 7850
    (w0, s0, b0), (w1, s1, b1) = K.layer_slices(sizes)
    assert (w0, s0, b0) == (slice(0, 35), (5, 7), slice(35, 42))
    assert (w1, s1, b1) == (slice(42, 63), (7, 3), slice(63, 66))
    with pytest.raises(ValueError):
        K.n_params([5])


def test_init_params():
    sizes = np.array([20, 30, 5], np.int64)
    p = K.init_params(sizes, seed=3)
    assert p.dtype == np.float32 and p.shape == (K.n_params(sizes),)
    assert np.array_equal(p, K.init_params(sizes, seed=3))
    assert not np.array_equal(p, K.init_params(sizes, seed=4))
    (w0, _, b0), (w1, _, b1) = K.layer_slices(sizes)
    assert not p[b0].any() and not p[b1].any()
    assert np.abs(p[w0]).max() <= np.sqrt(6 / 20) and np.abs(p[w1]).max() <= np.sqrt(6 / 35)


@pytest.mark.parametrize("sizes", MODELS)
@pytest.mark.parametrize("n", [1, 37])
def test_loss_grad_matches_numpy(sizes, n):
    X, y = _data(sizes, n)
    params = _params(sizes)
    grad = np.full(K.n_params(sizes), np.nan, np.float32)
    loss = K.loss_grad(params, np.array(sizes), X, y, grad)
    ref_loss, ref_grad, _, _ = _reference(params, sizes, X, y)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5 * np.abs(ref_grad).max())


@pytest.mark.parametrize("sizes", [[3, 4], [3, 4, 3], [3, 5, 4, 3]])
def test_gradient_finite_differences(sizes):
    X, y = _data(sizes, 16, seed=1)
    params = _params(sizes, seed=1)
    grad = np.empty_like(params)
    K.loss_grad(params, sizes, X, y, grad)
    scratch, eps = np.empty_like(params), 1e-3
    for i in range(params.size):  # central differences on every coordinate of a tiny model
        up, down = params.copy(), params.copy()
        up[i] += eps
        down[i] -= eps
        fd = (K.loss_grad(up, sizes, X, y, scratch) - K.loss_grad(down, sizes, X, y, scratch)) / (2 * eps)
        assert grad[i] == pytest.approx(fd, rel=1e-2, abs=2e-3), f"coordinate {i}"


@pytest.mark.parametrize("sizes", MODELS)
def test_sample_loss_and_predict_chunked(sizes, monkeypatch):
    monkeypatch.setattr(K.layout, "CHUNK_ROWS", 7)  # several chunks and a partial one
    X, y = _data(sizes, 45)
    params = _params(sizes)
    _, _, ref_per_sample, ref_logits = _reference(params, sizes, X, y)
    out = np.empty(45, np.float32)
    K.sample_loss(params, sizes, X, y, out)
    np.testing.assert_allclose(out, ref_per_sample, rtol=1e-5, atol=1e-6)
    assert out.sum() == pytest.approx(45 * K.loss_grad(params, sizes, X, y, np.empty_like(params)), rel=1e-5)
    labels = K.predict(params, sizes, X)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, ref_logits.argmax(axis=1))


@pytest.mark.parametrize("sizes", MODELS)
def test_zero_rows(sizes):
    X, y = _data(sizes, 0)
    params = _params(sizes)
    grad = np.full_like(params, np.nan)
    assert K.loss_grad(params, sizes, X, y, grad) == 0.0 and not grad.any()
    out = np.empty(0, np.float32)
    K.sample_loss(params, sizes, X, y, out)
    assert K.predict(params, sizes, X).shape == (0,)


@pytest.mark.parametrize("sizes", [[4, 3, 1], [4, 1]])
def test_one_class_model(sizes):
    X, y = _data(sizes, 9)
    params = _params(sizes)
    grad = np.full_like(params, np.nan)
    assert K.loss_grad(params, sizes, X, y, grad) == 0.0 and not grad.any()
    assert not K.predict(params, sizes, X).any()


@pytest.mark.parametrize("n", [1, 37, 300])
def test_softmax_regression_in_numpy_matches_the_numba_kernels(n, monkeypatch):
    """K.loss_grad / K.sample_loss of a [d, k] model run kernels/softmax.py (no numba); the numba kernels of
    kernels/model.py compute the same thing."""
    monkeypatch.setattr(K.layout, "CHUNK_ROWS", 64)  # several chunks
    sizes = [30, 7]
    X, y = _data(sizes, n, seed=n)
    params = _params(sizes, seed=n)
    g_np, g_nb = np.empty_like(params), np.empty_like(params)
    loss_np = K.loss_grad(params, sizes, X, y, g_np)
    loss_nb = K.model.loss_grad(params, sizes, X, y, g_nb)
    assert loss_np == pytest.approx(loss_nb, rel=1e-6)
    np.testing.assert_allclose(g_np, g_nb, rtol=1e-5, atol=1e-7)
    s_np, s_nb = np.empty(n, np.float32), np.empty(n, np.float32)
    K.sample_loss(params, sizes, X, y, s_np)
    K.model.sample_loss(params, sizes, X, y, s_nb)
    np.testing.assert_allclose(s_np, s_nb, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="label"):
        K.sample_loss(params, sizes, X, np.full(n, 7, np.int32), s_np)
    with pytest.raises(ValueError, match="softmax regression"):
        K.softmax.loss_grad(_params([30, 4, 7]), [30, 4, 7], X, y, np.empty(K.n_params([30, 4, 7]), np.float32))


def test_bad_inputs():
    sizes = [4, 3]
    X, y = _data(sizes, 5)
    params, grad = _params(sizes), np.empty(K.n_params(sizes), np.float32)
    with pytest.raises(ValueError, match="label"):
        K.loss_grad(params, sizes, X, np.array([0, 1, 3, 0, 0], np.int32), grad)
    with pytest.raises(ValueError, match="X has shape"):
        K.loss_grad(params, sizes, X[:, :3], y, grad)
    with pytest.raises(ValueError, match="grad_out"):
        K.loss_grad(params, sizes, X, y, np.empty(K.n_params(sizes), np.float64))


# ------------------------------------------------------------------------------------------ selection
def _ref_topk(scores, k):
    order = np.lexsort((np.arange(len(scores)), -np.nan_to_num(scores, nan=-np.inf)))
    return order[:max(k, 0)]


@pytest.mark.parametrize("k", [-2, 0, 1, 5, 40, 43])
def test_topk_ties_and_edges(k):
    scores = np.random.default_rng(0).integers(0, 4, 40).astype(np.float32)  # many ties
    scores[[3, 17]] = np.nan
    idx = K.topk(scores, k)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, _ref_topk(scores, k))
    np.testing.assert_array_equal(K.select_loss(scores, k), idx)


def test_topk_large_matches_argsort():
    scores = np.random.default_rng(1).standard_normal(10_000)
    np.testing.assert_array_equal(K.topk(scores, 300), np.argsort(-scores, kind="stable")[:300])
    assert K.topk(np.empty(0), 3).shape == (0,)


def test_select_random():
    idx = K.select_random(100, 30, seed=5)
    assert idx.dtype == np.int64 and len(idx) == 30 and len(np.unique(idx)) == 30
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < 100
    np.testing.assert_array_equal(idx, K.select_random(100, 30, seed=5))
    assert not np.array_equal(idx, K.select_random(100, 30, seed=6))
    np.testing.assert_array_equal(K.select_random(7, 50, seed=0), np.arange(7))
    assert K.select_random(0, 5, seed=0).shape == (0,)


def _ref_quotas(counts, m):
    n = counts.sum()
    quota = m * counts // n
    order = sorted(range(len(counts)), key=lambda c: (-(m * counts[c] % n), c))
    for c in order[:m - quota.sum()]:
        quota[c] += 1
    return quota


@pytest.mark.parametrize("k", [1, 10, 97, 500, 2000])
def test_select_stratified(k):
    rng = np.random.default_rng(2)
    y = rng.choice(5, 1000, p=[0.5, 0.3, 0.0, 0.15, 0.05])  # class 2 absent
    scores = rng.random(1000)
    idx = K.select_stratified(scores, y, k, n_classes=5)
    m = min(k, 1000)
    assert idx.dtype == np.int64 and len(idx) == m and len(np.unique(idx)) == m
    counts = np.bincount(y, minlength=5)
    np.testing.assert_array_equal(np.bincount(y[idx], minlength=5), _ref_quotas(counts, m))
    for c in range(5):  # within a class, the highest losses
        chosen = np.sort(scores[idx][y[idx] == c])
        members = np.sort(scores[y == c])
        np.testing.assert_array_equal(chosen, members[len(members) - len(chosen):])
    np.testing.assert_array_equal(idx, _ref_topk(scores, 1000)[np.isin(_ref_topk(scores, 1000), idx)])
    np.testing.assert_array_equal(idx, K.select_stratified(scores, y, k, n_classes=5))


def test_select_stratified_degenerate():
    scores = np.array([0.3, 0.9, 0.1, 0.5])
    np.testing.assert_array_equal(K.select_stratified(scores, np.zeros(4, np.int32), 2, 1), [1, 3])
    assert K.select_stratified(np.empty(0), np.empty(0, np.int32), 3, 4).shape == (0,)
    assert K.select_stratified(scores, np.zeros(4, np.int32), 0, 1).shape == (0,)
    with pytest.raises(ValueError, match="label"):
        K.select_stratified(scores, np.array([0, 1, 2, 3]), 2, 3)


def test_select_dispatch():
    scores, y = np.array([0.3, 0.9, 0.1, 0.5]), np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(K.select("loss", scores, y, 2, 2), [1, 3])
    np.testing.assert_array_equal(K.select("stratified", scores, y, 2, 2), [1, 0])
    assert len(K.select("random", scores, y, 3, 2, seed=1)) == 3
    with pytest.raises(ValueError, match="unknown"):
        K.select("best", scores, y, 2, 2)


# ------------------------------------------------------------------------------------------ quantization
def _ref_pack(codes, bits):
    planes = (codes[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.ravel(), bitorder="little")


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("stochastic", [False, True])
def test_quantize_error_bound(bits, stochastic):
    x = np.random.default_rng(bits).standard_normal(5001).astype(np.float32) * 3 + 1
    codes, lo, hi = K.quantize(x, bits, stochastic, seed=7)
    assert codes.dtype == np.uint8 and codes.max() < 2 ** bits
    assert (lo, hi) == (x.min(), x.max())
    err = np.abs(K.dequantize(codes, bits, lo, hi) - x)
    scale = (float(hi) - float(lo)) / (2 ** bits - 1)
    slack = 4 * np.finfo(np.float32).eps * max(abs(lo), abs(hi))
    assert err.max() <= (scale if stochastic else scale / 2) + slack


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_stochastic_rounding_unbiased(bits):
    x = np.random.default_rng(0).uniform(-1, 1, 64).astype(np.float32)
    x[[0, 1]] = -1.0, 1.0  # fix the range
    seeds = 400
    mean = np.mean([K.dequantize(K.quantize(x, bits, True, seed)[0], bits, -1.0, 1.0)
                    for seed in range(seeds)], axis=0)
    scale = 2.0 / (2 ** bits - 1)
    assert np.abs(mean - x).max() <= 5 * (scale / 2) / np.sqrt(seeds)
    assert not np.array_equal(K.quantize(x, bits, True, 1)[0], K.quantize(x, bits, True, 2)[0])


@pytest.mark.parametrize("stochastic", [False, True])
def test_constant_and_empty_tensor(stochastic):
    x = np.full(33, -2.5, np.float32)
    for bits in (1, 4, 8):
        codes, lo, hi = K.quantize(x, bits, stochastic, seed=3)
        assert lo == hi == np.float32(-2.5) and not codes.any()
        assert np.array_equal(K.dequantize(codes, bits, lo, hi), x)
        packed, lo, hi = K.quantize_pack(x, bits, stochastic, seed=3)
        assert np.array_equal(K.unpack_dequantize(packed, bits, lo, hi, 33), x)
    packed, lo, hi = K.quantize_pack(np.empty(0, np.float32), 4, stochastic)
    assert packed.shape == (0,) and K.unpack_dequantize(packed, 4, lo, hi, 0).shape == (0,)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 13, 1001])
def test_pack_round_trip(bits, n):
    codes = np.random.default_rng(n).integers(0, 2 ** bits, n).astype(np.uint8)
    packed = K.pack(codes, bits)
    assert packed.shape == (K.packed_size(n, bits),) == (-(-n * bits // 8),)
    np.testing.assert_array_equal(packed, _ref_pack(codes, bits))
    np.testing.assert_array_equal(K.unpack(packed, bits, n), codes)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("stochastic", [False, True])
def test_fused_equals_unfused(bits, stochastic):
    x = np.random.default_rng(bits).standard_normal(20_003).astype(np.float32)  # > one scratch chunk
    codes, lo, hi = K.quantize(x, bits, stochastic, seed=11)
    packed, lo2, hi2 = K.quantize_pack(x, bits, stochastic, seed=11)
    assert (lo, hi) == (lo2, hi2)
    np.testing.assert_array_equal(packed, K.pack(codes, bits))
    buf = np.zeros(20_010, np.float32)
    out = K.unpack_dequantize(packed, bits, lo, hi, x.size, buf[5:20_008])
    assert out.base is buf and not buf[:5].any() and not buf[20_008:].any()
    np.testing.assert_array_equal(out, K.dequantize(codes, bits, lo, hi))


def test_quantize_extreme_ranges():
    tiny = np.array([0.0, 1e-40, 2e-40], np.float32)  # span too small for a float32 1/scale
    codes, lo, hi = K.quantize(tiny, 8)
    assert np.abs(K.dequantize(codes, 8, lo, hi) - tiny).max() <= hi - lo
    with pytest.raises(ValueError, match="range overflows"):
        K.quantize(np.array([-3e38, 3e38], np.float32), 8)


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        K.quantize(np.array([1.0, np.nan], np.float32), 4)
    with pytest.raises(ValueError, match="NaN"):
        K.quantize_pack(np.array([1.0, -np.inf], np.float32), 8)
    with pytest.raises(ValueError, match="bits"):
        K.quantize(np.ones(3, np.float32), 9)
    with pytest.raises(ValueError, match="codes"):
        K.pack(np.array([4], np.uint8), 2)
    with pytest.raises(ValueError, match="packed"):
        K.unpack(np.zeros(1, np.uint8), 3, 4)
