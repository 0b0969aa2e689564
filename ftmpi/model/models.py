"""Model parameter layout and its binding to the numba kernels.

A built-in model is its layer sizes ``[d, h1, ..., k]``; softmax regression is the MLP with no hidden layer.
All parameters live in one flat float32 vector (per layer: W row-major, then b), so optimizers, quantization
and messages handle one array. :func:`build_model` also builds plug-in models (:mod:`ftmpi.model.plugin`),
which follow the same contract with a flat vector of their own layout.
"""
from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftmpi import kernels as K
from ftmpi.model.plugin import PluginModel, accuracy, is_plugin, load


@dataclass(frozen=True)
class Model:
    """A model shape and the kernels that evaluate it."""

    sizes: np.ndarray

    def __post_init__(self) -> None:
        # the checked layer widths as a tuple: the kernels take it without converting the array at every step
        object.__setattr__(self, "_t", tuple(int(v) for v in np.asarray(self.sizes).reshape(-1)))

    @classmethod
    def build(cls, kind: str, hidden: tuple[int, ...], n_features: int, n_classes: int) -> Model:
        """The built-in model ``kind`` (``mlp``: with ``hidden`` layers; else softmax regression). For a plug-in
        ``kind`` the sizes are ``[d, k]``, which is what a plug-in model's checkpoints record
        (:func:`build_model` builds the plug-in itself)."""
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
        return float(K.loss_grad(params, self._t, X, y, grad))

    def sample_loss(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape[0], dtype=np.float32)
        if X.shape[0]:
            K.sample_loss(params, self._t, X, y, out)
        return out

    def predict(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        return K.predict(params, self._t, X)

    def evaluate(self, params: np.ndarray, X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[float, np.ndarray]:
        """Accuracy and per-class accuracy (NaN for a class absent from ``y``)."""
        return accuracy(self.predict(params, X), y, n_classes)


def build_model(kind: str, hidden: tuple[int, ...], n_features: int, n_classes: int,
                options: Mapping[str, Any] | None = None, *, check: bool = True, scored: bool = False,
                seed: int = 0) -> Model | PluginModel:
    """The model ``model.type`` names: a built-in :class:`Model` (``logreg``, ``mlp``), or a plug-in class
    (``file.py:Class``, ``module:Class``) constructed with ``options`` and, when ``check``, contract-checked
    (:func:`ftmpi.model.plugin.load`; rank 0 checks, workers only construct).

    Raises:
        ConfigError: A plug-in that cannot be imported or constructed, or breaks the contract (one line).
    """
    if is_plugin(kind):
        return load(kind, options or {}, n_features, n_classes, check=check, scored=scored, seed=seed)
    return Model.build(kind, hidden, n_features, n_classes)


def model_key(model: Model | PluginModel) -> str:
    """What a checkpoint records of a model besides its ``sizes``: a plug-in's type and options, "" for a built-in."""
    return getattr(model, "key", "")


def warmup(quantize_bits: int = 0, mlp: bool = True, selection: str = "all") -> None:
    """Load every kernel this process will call from numba's cache (or compile it) on tiny inputs, so
    that the first round does not pay for it. Workers do this while rank 0 is still loading the data;
    ``jobs/setup.sh`` runs it once at install time (``python -m ftmpi.model.models``), so that the first training
    run finds a warm cache.

    On a cold cache the ranks of a node take turns (a file lock): the first compiles what the run needs and
    writes the cache, the others then load it instead of all compiling at once (ranks compiling side by side
    on shared cores take many times as long as one compile). A marker file next
    to the lock lists the parts (:func:`_parts`) whose warm-up succeeded for these very kernels; a rank that
    needs only those loads them side by side, without the lock. The lock and the marker live in a directory
    only this user can write (:func:`_lock_dir`), opened without following symlinks: names in the shared
    temp dir could be taken first by another user and make every rank crash at start-up. Without such a
    directory the ranks warm up side by side, unlocked (slower, never an error).
    """
    need = _parts(quantize_bits, mlp, selection)
    if not need:  # softmax regression, no quantization, nothing scored: numpy only (kernels/softmax.py)
        return
    sig = _kernels_signature()
    folder = _lock_dir()
    if folder is None:
        _warm(quantize_bits, mlp, selection)
        return
    if need <= _marked(folder, sig):  # the cache is warm for these very kernels: load side by side
        _warm(quantize_bits, mlp, selection)
        return
    try:
        fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        _warm(quantize_bits, mlp, selection)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        have = _marked(folder, sig)  # what the rank that held the lock before us compiled
        _warm(quantize_bits, mlp, selection)  # loads what is cached, compiles the rest
        tmp = folder / f"{_MARKER}.{os.getpid()}"
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(out, "w") as fh:
                fh.write(sig + "\n" + " ".join(sorted(have | need)))
            os.replace(tmp, folder / _MARKER)
        except OSError:  # no marker: the next warm-up takes the lock again (a second, not an error)
            tmp.unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock


_LOCK = "ftmpi-warmup.lock"
_MARKER = "ftmpi-warmup.ok"


def _parts(quantize_bits: int, mlp: bool, selection: str) -> set[str]:
    """The groups of numba kernels a warm-up with these arguments loads: none for a softmax regression (numpy,
    :mod:`ftmpi.kernels.softmax`) that quantizes nothing and selects ``random`` (rank 0's draw, numpy)."""
    parts = ({"mlp"} if mlp else set()) | ({"quant"} if quantize_bits else set())
    rules = ("loss", "stratified", "random") if selection == "all" else () if selection == "random" else (selection,)
    return parts | {f"select-{r}" for r in rules}


def _marked(folder: Path, sig: str) -> set[str]:
    """The parts the marker in ``folder`` says are warm for kernels ``sig`` (empty if none or stale)."""
    text = _read_private(folder / _MARKER)
    if text is None:
        return set()
    first, _, rest = text.partition("\n")
    return set(rest.split()) if first == sig else set()


def _private(folder: Path) -> bool:
    """``folder`` is a real directory (not a symlink) owned by this user that no other user can write."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _lock_dir() -> Path | None:
    """Where the warm-up's lock and marker go: numba's cache next to the kernels (``kernels/__pycache__``,
    where ``cache=True`` writes) when this user owns it, else ``~/.cache/ftmpi`` (created 0700); None if
    neither is private to this user."""
    kdir = Path(K.__file__).resolve().parent
    candidates = [kdir / "__pycache__"]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(Path(cache_home) / "ftmpi")
    for folder in candidates:
        try:
            folder.mkdir(mode=0o700, parents=folder.parent != kdir, exist_ok=True)
        except OSError:
            continue
        if _private(folder) and os.access(folder, os.W_OK):
            return folder
    return None


def _read_private(path: Path) -> str | None:
    """The content of a small file, not following a symlink; None if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd) as fh:
        try:
            return fh.read(65536)
        except (OSError, UnicodeDecodeError):
            return None


def _kernels_signature() -> str:
    """Identifies the compiled kernels: their source files (path, size, mtime) and the numba version."""
    import numba

    kdir = os.path.dirname(K.__file__)
    parts = [numba.__version__, kdir]
    for name in sorted(os.listdir(kdir)):
        if name.endswith(".py"):
            st = os.stat(os.path.join(kdir, name))
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _warm(quantize_bits: int, mlp: bool, selection: str) -> None:
    X = np.zeros((4, 3), np.float32)
    y = np.zeros(4, np.int32)
    out = np.zeros(4, np.float32)
    if mlp:  # a softmax regression's are numpy (kernels/softmax.py)
        sizes = np.array([3, 2, 2], np.int64)
        p = K.init_params(sizes, 0)
        K.loss_grad(p, sizes, X, y, np.zeros_like(p))
        K.sample_loss(p, sizes, X, y, out)
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


if __name__ == "__main__":  # jobs/setup.sh: compile every kernel into numba's cache once, at install time
    import time

    _t0 = time.monotonic()
    warmup(8, True, "all")
    print(f"ftmpi: numba kernels compiled and cached in {time.monotonic() - _t0:.1f}s")
