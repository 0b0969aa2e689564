"""Model parameter layout and its binding to the numba kernels.

A model is its layer sizes ``[d, h1, ..., k]``; softmax regression is the MLP with no hidden layer. All
parameters live in one flat float32 vector (per layer: W row-major, then b), so optimizers, quantization and
messages handle one array.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels as K


@dataclass(frozen=True)
class Model:
    """A model shape and the kernels that evaluate it."""

    sizes: np.ndarray

    @classmethod
    def build(cls, kind: str, hidden: tuple[int, ...], n_features: int, n_classes: int) -> Model:
        layers = [n_features] + (list(hidden) if kind == "mlp" else []) + [n_classes]
        return cls(np.asarray(layers, dtype=np.int64))

    @property
    def n_params(self) -> int:
        return int(K.n_params(self.sizes))

    def tensors(self) -> list[slice]:
        """The slices of each tensor (every W and every b) in the flat vector, for per-tensor codecs."""
        out: list[slice] = []
        for w_sl, _shape, b_sl in K.layer_slices(self.sizes):
            out += [w_sl, b_sl]
        return out

    def init(self, seed: int) -> np.ndarray:
        return K.init_params(self.sizes, seed)

    def loss_grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray, grad: np.ndarray) -> float:
        return float(K.loss_grad(params, self.sizes, X, y, grad))

    def sample_loss(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape[0], dtype=np.float32)
        if X.shape[0]:
            K.sample_loss(params, self.sizes, X, y, out)
        return out

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return K.predict(params, self.sizes, X)

    def evaluate(self, params: np.ndarray, X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[float, np.ndarray]:
        """Accuracy and per-class accuracy (NaN for a class absent from ``y``)."""
        pred = self.predict(params, X)
        hit = pred == y
        per = np.full(n_classes, np.nan)
        counts = np.bincount(y, minlength=n_classes)
        hits = np.bincount(y[hit], minlength=n_classes)
        nz = counts > 0
        per[nz] = hits[nz] / counts[nz]
        return float(hit.mean()) if len(y) else float("nan"), per


def warmup(quantize_bits: int = 0, mlp: bool = True, selection: str = "all") -> None:
    """Load every kernel this process will call from numba's cache (or compile it) on tiny inputs, so
    that the first round does not pay for it. Workers do this while rank 0 is still loading the data.

    On a cold cache the ranks of a node take turns (a file lock in the temp dir): the first compiles and
    writes the cache, the others then load it in a second instead of all compiling at once (4 workers
    compiling side by side on 2 cores took over a minute; one compile takes ~12 s here). Once a warm-up of
    these very kernels succeeded (a marker file next to the lock), they load side by side. Only what
    the run will call is loaded: the MLP pieces for an MLP, the configured selection rule.
    """
    import fcntl
    import os
    import tempfile

    base = os.path.join(tempfile.gettempdir(), f"ftmpi-numba-{os.getuid()}")
    sig = _kernels_signature()
    try:
        with open(base + ".ok") as fh:
            if fh.read() == sig:  # the cache was warm for these very kernels: load it side by side
                _warm(quantize_bits, mlp, selection)
                return
    except OSError:
        pass
    with open(base + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            _warm(quantize_bits, True, "all")  # everything, so that the marker means the whole cache is warm
            tmp = f"{base}.ok.{os.getpid()}"
            with open(tmp, "w") as out:
                out.write(sig)
            os.replace(tmp, base + ".ok")
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _kernels_signature() -> str:
    """Identifies the compiled kernels: their source files (path, size, mtime) and the numba version."""
    import os

    import numba

    kdir = os.path.dirname(K.__file__)
    parts = [numba.__version__, kdir]
    for name in sorted(os.listdir(kdir)):
        if name.endswith(".py"):
            st = os.stat(os.path.join(kdir, name))
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _warm(quantize_bits: int, mlp: bool, selection: str) -> None:
    sizes = np.array([3, 2, 2], np.int64) if mlp else np.array([3, 2], np.int64)
    p = K.init_params(sizes, 0)
    X = np.zeros((4, 3), np.float32)
    y = np.zeros(4, np.int32)
    K.loss_grad(p, sizes, X, y, np.zeros_like(p))
    out = np.zeros(4, np.float32)
    K.sample_loss(p, sizes, X, y, out)
    K.predict(p, sizes, X)
    if selection in ("loss", "all"):
        K.select_loss(out, 2)
    if selection in ("stratified", "all"):
        K.select_stratified(out, y, 2, 2)
    if selection in ("random", "all"):
        K.select_random(4, 2, 0)
    if selection in ("coreset", "all"):  # rank 0's, at a loss
        K.select_coreset(np.zeros((4, 2), np.float32), np.arange(4) % 2, None, 2, 2, 0)
    if quantize_bits:
        packed, lo, hi = K.quantize_pack(out, quantize_bits, False, 0)
        K.unpack_dequantize(packed, quantize_bits, lo, hi, 4, np.zeros(4, np.float32))
