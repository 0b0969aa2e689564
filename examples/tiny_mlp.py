"""A model of your own for ftmpi: a one-hidden-layer MLP in plain numpy (README, "Your own model").

ftmpi constructs it as TinyMLP(n_features=..., n_classes=..., **model.options) and calls the methods below;
all parameters live in one flat float32 vector that ftmpi averages, quantizes and checkpoints.
"""
import numpy as np


class TinyMLP:
    def __init__(self, n_features, n_classes, hidden=64):
        self.d, self.h, self.k = n_features, hidden, n_classes
        self.shapes = [(n_features, hidden), (hidden,), (hidden, n_classes), (n_classes,)]
        sizes = [int(np.prod(s)) for s in self.shapes]
        ends = np.cumsum(sizes)
        self.slices = [slice(int(e - n), int(e)) for e, n in zip(ends, sizes, strict=True)]
        self.n_params = int(ends[-1])                       # required: length of the flat vector

    def tensors(self):                                      # optional: quantize W1, b1, W2, b2 separately
        return self.slices

    def _views(self, vec):
        return [vec[sl].reshape(shape) for sl, shape in zip(self.slices, self.shapes, strict=True)]

    def init(self, seed):                                   # required: a float32 vector of n_params
        rng = np.random.default_rng(seed)
        params = np.zeros(self.n_params, np.float32)
        W1, _, W2, _ = self._views(params)
        W1[...] = rng.standard_normal(W1.shape) * np.sqrt(2.0 / self.d)
        W2[...] = rng.standard_normal(W2.shape) * np.sqrt(1.0 / self.h)
        return params

    def _forward(self, params, X):
        W1, b1, W2, b2 = self._views(params)
        a = np.maximum(X @ W1 + b1, 0)
        z = a @ W2 + b2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return a, p / p.sum(axis=1, keepdims=True)

    def loss_grad(self, params, X, y, grad):                # required: mean loss; gradient written into grad
        W1, b1, W2, b2 = self._views(params)
        gW1, gb1, gW2, gb2 = self._views(grad)
        a, p = self._forward(params, X)
        n = len(y)
        loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
        dz = p
        dz[np.arange(n), y] -= 1.0
        dz /= n
        gW2[...] = a.T @ dz
        gb2[...] = dz.sum(axis=0)
        da = (dz @ W2.T) * (a > 0)
        gW1[...] = X.T @ da
        gb1[...] = da.sum(axis=0)
        return float(loss)

    def sample_loss(self, params, X, y):                    # optional: per-row loss (rep_selection: loss)
        _, p = self._forward(params, X)
        return -np.log(p[np.arange(len(y)), y] + 1e-12).astype(np.float32)

    def predict(self, params, X):                           # required: a label per row
        return self._forward(params, X)[1].argmax(axis=1)
