"""A small convolutional network for ftmpi, as a plug-in model (``model.type: examples/cnn.py:SmallCNN``).

    image (side x side x 1) -> conv k1 x k1, c1 filters -> ReLU -> 2x2 max-pool
                            -> conv k2 x k2, c2 filters -> ReLU -> 2x2 max-pool      (when c2 > 0)
                            -> dense h -> ReLU                                        (when hidden > 0)
                            -> dense n_classes -> softmax cross-entropy

Every layer is a pair of numba kernels (forward, backward) below; convolutions are im2col + one matrix
product (numpy's BLAS, called from numba), activations are NHWC so that no transpose is ever needed.
The kernels are generic in the float type: the model trains in float32, and the tests run the same
kernels in float64 to compare them with finite differences (``tests/unit/test_cnn.py``).

The parameter vector, in order: conv1 W (k1, k1, 1, c1) and b (c1), conv2 W (k2, k2, c1, c2) and b (c2),
dense W (fan_in, hidden) and b, output W (fan_in, n_classes) and b; :meth:`SmallCNN.tensors` says where each
lies, so ftmpi quantizes each on its own.
"""
from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit


# ---------------------------------------------------------------------------------------------- kernels
@njit(cache=True)
def im2col(x, k, cols):
    """Patches of ``x`` (B, H, W, C) for a valid k x k convolution: ``cols[(b, i, j), (di, dj, c)]``."""
    B, H, W, C = x.shape
    Ho, Wo = H - k + 1, W - k + 1
    r = 0
    for b in range(B):
        for i in range(Ho):
            for j in range(Wo):
                col = 0
                for di in range(k):
                    for dj in range(k):
                        for c in range(C):
                            cols[r, col] = x[b, i + di, j + dj, c]
                            col += 1
                r += 1


@njit(cache=True)
def col2im(dcols, k, dx):
    """Adjoint of :func:`im2col`: adds every patch gradient back onto ``dx`` (B, H, W, C), which it zeroes."""
    B, H, W, C = dx.shape
    Ho, Wo = H - k + 1, W - k + 1
    dx[...] = 0
    r = 0
    for b in range(B):
        for i in range(Ho):
            for j in range(Wo):
                col = 0
                for di in range(k):
                    for dj in range(k):
                        for c in range(C):
                            dx[b, i + di, j + dj, c] += dcols[r, col]
                            col += 1
                r += 1


@njit(cache=True)
def conv_forward(x, Wm, bias, k, cols, out):
    """Valid k x k convolution of ``x`` (B, H, W, C) with ``Wm`` (k*k*C, F) into ``out`` (B, H-k+1, W-k+1, F);
    ``cols`` (B*(H-k+1)*(W-k+1), k*k*C) receives the patches (kept for the backward pass)."""
    im2col(x, k, cols)
    o2 = out.reshape(cols.shape[0], Wm.shape[1])
    np.dot(cols, Wm, o2)
    for r in range(o2.shape[0]):
        for f in range(o2.shape[1]):
            o2[r, f] += bias[f]


@njit(cache=True)
def conv_backward(dout, cols, Wm, dW, db, need_dx, k, dcols, dx):
    """Gradients of a convolution: ``dW`` (k*k*C, F) and ``db`` (F) written; ``dx`` (B, H, W, C) written when
    ``need_dx`` (the first layer's input needs none), through ``dcols`` (the shape of ``cols``)."""
    F = dout.shape[3]
    d2 = dout.reshape(-1, F)
    np.dot(cols.T, d2, dW)
    for f in range(F):
        db[f] = 0
    for r in range(d2.shape[0]):
        for f in range(F):
            db[f] += d2[r, f]
    if need_dx:
        np.dot(d2, Wm.T, dcols)
        col2im(dcols, k, dx)


@njit(cache=True)
def relu_pool_forward(a, out, arg):
    """ReLU then 2x2 max-pool (stride 2, a last odd row/column dropped) of ``a`` (B, H, W, C) into ``out``
    (B, H//2, W//2, C); ``arg`` keeps which of the four won (0..3), or -1 where the ReLU cut it to 0."""
    B, Hp, Wp, C = out.shape
    for b in range(B):
        for i in range(Hp):
            for j in range(Wp):
                for c in range(C):
                    best = a[b, 2 * i, 2 * j, c]
                    w = 0
                    v = a[b, 2 * i, 2 * j + 1, c]
                    if v > best:
                        best, w = v, 1
                    v = a[b, 2 * i + 1, 2 * j, c]
                    if v > best:
                        best, w = v, 2
                    v = a[b, 2 * i + 1, 2 * j + 1, c]
                    if v > best:
                        best, w = v, 3
                    if best > 0:
                        out[b, i, j, c] = best
                        arg[b, i, j, c] = w
                    else:
                        out[b, i, j, c] = 0
                        arg[b, i, j, c] = -1


@njit(cache=True)
def relu_pool_backward(dout, arg, da):
    """Adjoint of :func:`relu_pool_forward`: each pooled gradient goes to the input that won, into ``da``."""
    da[...] = 0
    B, Hp, Wp, C = dout.shape
    for b in range(B):
        for i in range(Hp):
            for j in range(Wp):
                for c in range(C):
                    w = arg[b, i, j, c]
                    if w >= 0:
                        da[b, 2 * i + w // 2, 2 * j + w % 2, c] = dout[b, i, j, c]


@njit(cache=True)
def dense_forward(h, W, bias, relu):
    """``h @ W + bias`` (ReLU applied when ``relu``)."""
    z = np.dot(h, W)
    z += bias
    if relu:
        for i in range(z.shape[0]):
            for j in range(z.shape[1]):
                if z[i, j] < 0:
                    z[i, j] = 0
    return z


@njit(cache=True)
def dense_backward(dz, h, W, dW, db, out_relu):
    """Gradients of ``z = h @ W + b``: ``dW``, ``db`` written; returns ``dh``. ``out_relu``: ``h`` is the ReLU
    output of the layer below, whose gradient is then masked where it was cut (h == 0)."""
    dW[...] = np.dot(np.ascontiguousarray(h.T), dz)
    for j in range(dz.shape[1]):
        s = 0.0
        for i in range(dz.shape[0]):
            s += dz[i, j]
        db[j] = s
    dh = np.dot(dz, np.ascontiguousarray(W.T))
    if out_relu:
        for i in range(dh.shape[0]):
            for j in range(dh.shape[1]):
                if h[i, j] <= 0:
                    dh[i, j] = 0
    return dh


@njit(cache=True)
def softmax_xent(z, y, dz, losses):
    """Per-row cross-entropy of logits ``z`` (B, K) against labels ``y`` into ``losses``; ``dz`` receives the
    gradient of their mean. Returns the mean."""
    B, K = z.shape
    total = 0.0
    for i in range(B):
        m = z[i, 0]
        for j in range(1, K):
            if z[i, j] > m:
                m = z[i, j]
        s = 0.0
        for j in range(K):
            dz[i, j] = math.exp(z[i, j] - m)
            s += dz[i, j]
        loss = math.log(s) + m - z[i, y[i]]
        losses[i] = loss
        total += loss
        for j in range(K):
            dz[i, j] = dz[i, j] / s / B
        dz[i, y[i]] -= 1.0 / B
    return total / max(B, 1)


# ---------------------------------------------------------------------------------------------- the model
class SmallCNN:
    """conv -> ReLU -> pool (x1 or x2) -> (dense -> ReLU) -> dense, over square single-channel images.

    Args:
        n_features, n_classes: Given by ftmpi (a square image of ``side * side`` pixels).
        channels: Filters of the first and second convolution (``[c1]`` or ``[c1, c2]``).
        kernels: Their sizes (``[k1]`` or ``[k1, k2]``).
        hidden: Width of the dense hidden layer (0: none).
    """

    def __init__(self, n_features: int, n_classes: int, channels=(16, 32), kernels=(5, 3), hidden: int = 128):
        side = int(round(math.sqrt(n_features)))
        if side * side != n_features:
            raise ValueError(f"SmallCNN needs square single-channel images, got {n_features} features")
        if len(channels) != len(kernels) or not 1 <= len(channels) <= 2:
            raise ValueError("channels and kernels must both list one or two layers")
        self.side, self.k = side, int(n_classes)
        self.convs = []  # (k, c_in, c_out, H_in, H_conv, H_pool)
        h, c_in = side, 1
        for c, k in zip(channels, kernels, strict=True):
            hc = h - k + 1
            if hc < 2:
                raise ValueError(f"a {k}x{k} convolution does not fit a {h}x{h} input")
            self.convs.append((int(k), c_in, int(c), h, hc, hc // 2))
            h, c_in = hc // 2, int(c)
        self.flat = h * h * c_in
        dims = [self.flat] + ([int(hidden)] if hidden else []) + [self.k]
        self.dense = list(zip(dims[:-1], dims[1:], strict=True))
        shapes = []
        for k, ci, co, *_ in self.convs:
            shapes += [(k * k * ci, co), (co,)]
        for fi, fo in self.dense:
            shapes += [(fi, fo), (fo,)]
        self.shapes = shapes
        self.slices = []
        pos = 0
        for s in shapes:
            n = int(np.prod(s))
            self.slices.append(slice(pos, pos + n))
            pos += n
        self.n_params = pos
        self._ws: dict[tuple, list[dict[str, np.ndarray]]] = {}

    def tensors(self) -> list[slice]:
        return list(self.slices)

    def _views(self, vec: np.ndarray) -> list[np.ndarray]:
        return [vec[sl].reshape(s) for sl, s in zip(self.slices, self.shapes, strict=True)]

    def init(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        p = np.zeros(self.n_params, np.float32)
        views = self._views(p)
        for i in range(0, len(views), 2):
            fan_in = views[i].shape[0]
            gain = 2.0 if i + 2 < len(views) else 1.0  # He for ReLU layers, Glorot-like for the logits
            views[i][...] = rng.standard_normal(views[i].shape) * math.sqrt(gain / fan_in)
        return p

    def _workspace(self, B: int, dtype: np.dtype) -> list[dict[str, np.ndarray]]:
        """Per conv layer, the buffers of a batch of ``B`` rows, kept between calls: allocating a few MB afresh
        at every step costs more than the arithmetic (page faults)."""
        key = (B, np.dtype(dtype).str, threading.get_ident())
        ws = self._ws.get(key)
        if ws is None:
            if len(self._ws) >= 8:
                self._ws.clear()
            ws = [{"cols": np.empty((B * hc * hc, k * k * ci), dtype), "z": np.empty((B, hc, hc, co), dtype),
                   "pooled": np.empty((B, hp, hp, co), dtype), "arg": np.empty((B, hp, hp, co), np.int8),
                   "dx": np.empty((B, h, h, ci), dtype), "dcols": np.empty((B * hc * hc, k * k * ci), dtype)}
                  for k, ci, co, h, hc, hp in self.convs]
            self._ws[key] = ws
        return ws

    def _forward(self, params: np.ndarray, X: np.ndarray) -> list[np.ndarray]:
        """The dense layers' inputs and the logits; the conv layers' intermediates stay in the workspace."""
        v = self._views(params)
        B = X.shape[0]
        a = np.ascontiguousarray(X, dtype=params.dtype).reshape(B, self.side, self.side, 1)
        ws = self._workspace(B, params.dtype)
        for li, (k, *_) in enumerate(self.convs):
            w = ws[li]
            conv_forward(a, v[2 * li], v[2 * li + 1], k, w["cols"], w["z"])
            relu_pool_forward(w["z"], w["pooled"], w["arg"])
            a = w["pooled"]
        h = a.reshape(B, self.flat)
        base = 2 * len(self.convs)
        hs = [h]
        for di in range(len(self.dense)):
            last = di == len(self.dense) - 1
            h = dense_forward(h, v[base + 2 * di], v[base + 2 * di + 1], not last)
            hs.append(h)
        return hs

    def loss_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray, grad: np.ndarray) -> float:
        B = X.shape[0]
        hs = self._forward(params, X)
        v, g = self._views(params), self._views(grad)
        dz = np.empty_like(hs[-1])
        loss = softmax_xent(hs[-1], y, dz, np.empty(B, params.dtype))
        base = 2 * len(self.convs)
        for di in range(len(self.dense) - 1, -1, -1):
            dz = dense_backward(dz, hs[di], v[base + 2 * di], g[base + 2 * di], g[base + 2 * di + 1], True)
        d = dz  # the gradient of the flattened output of the last pool
        ws = self._workspace(B, params.dtype)
        for li in range(len(self.convs) - 1, -1, -1):
            k, ci, co, h, hc, hp = self.convs[li]
            w = ws[li]
            da = w["z"]  # the pre-activations are not needed any more: their buffer takes their gradient
            relu_pool_backward(np.ascontiguousarray(d).reshape(B, hp, hp, co), w["arg"], da)
            conv_backward(da, w["cols"], v[2 * li], g[2 * li], g[2 * li + 1], li > 0, k, w["dcols"], w["dx"])
            d = w["dx"]
        return float(loss)

    def sample_loss(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        hs = self._forward(params, X)
        losses = np.empty(X.shape[0], params.dtype)
        softmax_xent(hs[-1], y, np.empty_like(hs[-1]), losses)
        return losses.astype(np.float32)

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        hs = self._forward(params, X)
        return np.argmax(hs[-1], axis=1).astype(np.int32)
