"""The example CNN plug-in (examples/cnn.py): every numba kernel against a numpy reference, the backward
kernels and the whole model's gradient against finite differences (float64: the kernels are generic in the
float type), and the model against ftmpi's contract check."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from ftmpi.model.plugin import load, load_class

SPEC = f"{Path(__file__).resolve().parents[2] / 'examples' / 'cnn.py'}:SmallCNN"


@pytest.fixture(scope="module")
def cnn():
    """The example's module, imported as ftmpi imports it (its numba cache is keyed by the module's name)."""
    import sys

    load_class(SPEC)
    return sys.modules[load_class(SPEC).__module__]


def conv_ref(x, Wm, bias, k):
    """Valid convolution, NHWC, weights (k*k*C, F) ordered (di, dj, c), by sliding windows."""
    C, F = x.shape[3], Wm.shape[1]
    win = sliding_window_view(x, (k, k), axis=(1, 2))  # (B, Ho, Wo, C, k, k)
    return np.einsum("bijcuv,uvcf->bijf", win, Wm.reshape(k, k, C, F)) + bias


def relu_pool_ref(a):
    B, H, W, C = a.shape
    a = a[:, :H // 2 * 2, :W // 2 * 2]
    return np.maximum(a.reshape(B, H // 2, 2, W // 2, 2, C).max(axis=(2, 4)), 0)


def xent_ref(z, y):
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y]


def num_grad(f, x, eps=1e-6, idx=None):
    """Central differences of the scalar ``f()`` with respect to entries ``idx`` of ``x`` (all by default)."""
    flat = x.reshape(-1)
    idx = range(flat.size) if idx is None else idx
    out = []
    for i in idx:
        keep = flat[i]
        flat[i] = keep + eps
        up = f()
        flat[i] = keep - eps
        down = f()
        flat[i] = keep
        out.append((up - down) / (2 * eps))
    return np.array(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, C, F", [(3, 1, 4), (5, 3, 2), (1, 2, 3)])
def test_conv_forward_matches_numpy(cnn, dtype, k, C, F):
    rng = np.random.default_rng(k * 10 + C)
    x = rng.standard_normal((2, 7, 6, C)).astype(dtype)
    Wm, b = rng.standard_normal((k * k * C, F)).astype(dtype), rng.standard_normal(F).astype(dtype)
    cols = np.empty((2 * (7 - k + 1) * (6 - k + 1), k * k * C), dtype)
    out = np.full((2, 7 - k + 1, 6 - k + 1, F), np.nan, dtype)
    cnn.conv_forward(x, Wm, b, k, cols, out)
    np.testing.assert_allclose(out, conv_ref(x, Wm, b, k), rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)


def test_conv_backward_matches_finite_differences(cnn):
    rng = np.random.default_rng(1)
    k, C, F = 3, 2, 3
    x = rng.standard_normal((2, 6, 5, C))
    Wm, b = rng.standard_normal((k * k * C, F)), rng.standard_normal(F)
    R = rng.standard_normal((2, 4, 3, F))  # L = sum(conv(x) * R): dL/dout = R

    def L():
        return float(np.sum(conv_ref(x, Wm, b, k) * R))

    cols = np.empty((2 * 4 * 3, k * k * C))
    cnn.conv_forward(x, Wm, b, k, cols, np.empty((2, 4, 3, F)))
    dW, db, dx = np.full_like(Wm, np.nan), np.full_like(b, np.nan), np.full_like(x, np.nan)
    cnn.conv_backward(R, cols, Wm, dW, db, True, k, np.empty_like(cols), dx)
    np.testing.assert_allclose(dW.ravel(), num_grad(L, Wm), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, num_grad(L, b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx.ravel(), num_grad(L, x), rtol=1e-6, atol=1e-7)
    dx_before = dx.copy()
    cnn.conv_backward(R, cols, Wm, dW, db, False, k, np.empty_like(cols), dx)  # the first layer: no dx
    assert np.array_equal(dx, dx_before)


@pytest.mark.parametrize("H, W", [(4, 6), (5, 7), (2, 2)])
def test_relu_pool_forward_and_backward(cnn, H, W):
    rng = np.random.default_rng(H * W)
    a = rng.standard_normal((3, H, W, 2))
    out, arg = np.empty((3, H // 2, W // 2, 2)), np.empty((3, H // 2, W // 2, 2), np.int8)
    cnn.relu_pool_forward(a, out, arg)
    np.testing.assert_array_equal(out, relu_pool_ref(a))
    assert np.all((arg == -1) == (out == 0))
    R = rng.standard_normal(out.shape)
    da = np.full_like(a, np.nan)
    cnn.relu_pool_backward(R, arg, da)
    np.testing.assert_allclose(da.ravel(), num_grad(lambda: float(np.sum(relu_pool_ref(a) * R)), a), atol=1e-7)


def test_dense_and_softmax_kernels(cnn):
    rng = np.random.default_rng(3)
    h = np.maximum(rng.standard_normal((5, 4)), 0)  # the ReLU output of the layer below
    W, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    for relu in (False, True):
        ref = h @ W + b
        np.testing.assert_allclose(cnn.dense_forward(h, W, b, relu), np.maximum(ref, 0) if relu else ref)
    y = np.array([0, 2, 1, 2, 0], np.int32)
    z = h @ W + b
    dz, losses = np.empty_like(z), np.empty(5)
    mean = cnn.softmax_xent(z, y, dz, losses)
    np.testing.assert_allclose(losses, xent_ref(z, y))
    assert mean == pytest.approx(xent_ref(z, y).mean())
    np.testing.assert_allclose(dz.ravel(), num_grad(lambda: float(xent_ref(z, y).mean()), z), atol=1e-8)
    dW, db = np.empty_like(W), np.empty_like(b)
    dh = cnn.dense_backward(dz, h, W, dW, db, True)
    loss = lambda: float(xent_ref(h @ W + b, y).mean())  # noqa: E731
    np.testing.assert_allclose(dW.ravel(), num_grad(loss, W), atol=1e-8)
    np.testing.assert_allclose(db, num_grad(loss, b), atol=1e-8)
    # dh is masked where h was cut by the ReLU below (h == 0): the gradient flows only through active units
    np.testing.assert_allclose(dh.ravel(), (num_grad(loss, h) * (h.ravel() > 0)), atol=1e-8)


@pytest.mark.parametrize("options", [
    {"channels": [2, 3], "kernels": [3, 3], "hidden": 4},
    {"channels": [3], "kernels": [5], "hidden": 0},
])
def test_the_whole_model_gradient_matches_finite_differences(options):
    """Every parameter tensor (both convolutions, the pools, the dense layers, the loss), in float64."""
    m = load_class(SPEC)(144, 3, **options)  # 12 x 12 images
    rng = np.random.default_rng(7)
    params = m.init(5).astype(np.float64) + 0.05 * rng.standard_normal(m.n_params)
    X, y = rng.random((4, 144)), np.array([0, 1, 2, 1], np.int32)
    grad = np.full(m.n_params, np.nan)
    loss = m.loss_grad(params, X, y, grad)
    assert np.all(np.isfinite(grad))

    def L():
        g = np.empty_like(params)
        return m.loss_grad(params, X, y, g)

    assert loss == pytest.approx(float(xent_ref(_logits_ref(m, params, X), y).mean()), rel=1e-10)
    idx = np.concatenate([rng.choice(np.arange(sl.start, sl.stop), min(6, sl.stop - sl.start), replace=False)
                          for sl in m.tensors()])  # some entries of every tensor
    np.testing.assert_allclose(grad[idx], num_grad(L, params, idx=idx), rtol=1e-5, atol=1e-8)
    # float32, as ftmpi trains it: the same gradient up to rounding
    g32 = np.empty(m.n_params, np.float32)
    l32 = m.loss_grad(params.astype(np.float32), X.astype(np.float32), y, g32)
    assert l32 == pytest.approx(loss, rel=1e-4)
    np.testing.assert_allclose(g32, grad, rtol=1e-3, atol=1e-5)


def _logits_ref(m, params, X):
    """The model's forward pass in numpy alone (conv_ref, relu_pool_ref, dense), from its parameter layout."""
    v = [params[sl].reshape(s) for sl, s in zip(m.slices, m.shapes, strict=True)]
    a = X.reshape(len(X), m.side, m.side, 1)
    for li, (k, *_rest) in enumerate(m.convs):
        a = relu_pool_ref(conv_ref(a, v[2 * li], v[2 * li + 1], k))
    h = a.reshape(len(X), -1)
    base = 2 * len(m.convs)
    for di in range(len(m.dense)):
        h = h @ v[base + 2 * di] + v[base + 2 * di + 1]
        if di < len(m.dense) - 1:
            h = np.maximum(h, 0)
    return h


def test_predict_and_sample_loss_match_the_reference():
    m = load_class(SPEC)(144, 3, channels=[2, 3], kernels=[3, 3], hidden=4)
    rng = np.random.default_rng(2)
    params, X, y = m.init(1), rng.random((9, 144), dtype=np.float32), rng.integers(0, 3, 9).astype(np.int32)
    z = _logits_ref(m, params.astype(np.float64), X.astype(np.float64))
    np.testing.assert_array_equal(m.predict(params, X), z.argmax(axis=1))
    np.testing.assert_allclose(m.sample_loss(params, X, y), xent_ref(z, y), rtol=1e-4)


def test_the_example_passes_ftmpis_contract_check():
    m = load(SPEC, {"channels": [16, 32], "kernels": [5, 3], "hidden": 128}, 784, 10)
    assert m.n_params == 108874 and len(m.tensors()) == 8
    with pytest.raises(Exception, match="square single-channel images"):
        load(SPEC, {}, 785, 10)
