"""Plug-in models: a user's class named in ``model.type`` as ``path/to/file.py:ClassName`` or
``package.module:ClassName``, constructed with ``model.options`` and checked against the trainer's contract.

The contract (what :class:`ftmpi.model.models.Model` does for the built-in models)::

    class MyModel:
        def __init__(self, n_features: int, n_classes: int, **options): ...
        n_params: int                                     # attribute or property
        def init(self, seed: int) -> np.ndarray           # float32 (n_params,), finite
        def loss_grad(self, params, X, y, grad) -> float  # mean loss of the batch; writes d loss / d params
                                                          # into grad (float32 (n_params,)); params unchanged
        def predict(self, params, X) -> np.ndarray        # integer labels (n,) in [0, n_classes)
        def sample_loss(self, params, X, y) -> np.ndarray # optional: per-row loss (n,), for loss-based
                                                          # selection (optimizer.rep_selection: loss, stratified)
        def tensors(self) -> list[slice]                  # optional: the tensors of the flat vector, in order,
                                                          # covering it (per-tensor quantization); default one

``X`` is float32 ``(n, n_features)`` C-contiguous, ``y`` int32 ``(n,)``. Row weights stay the trainer's: it
draws minibatches in proportion to them, so a model sees plain rows.

:func:`load` imports, constructs and (on rank 0, before any worker trains) checks a model on a small
synthetic batch; anything wrong is one :class:`~ftmpi.errors.ConfigError` line naming the file, the class
and what was expected (exit 2 on every rank). Import rules: numpy, ``ftmpi.errors``, the standard library.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ftmpi.errors import ConfigError

__all__ = ["PluginModel", "accuracy", "is_plugin", "load", "load_class", "spec_key"]

REQUIRED = ("n_params", "init", "loss_grad", "predict")
_CHUNK = 1024  # rows per predict / sample_loss call: bounds a plug-in's activation memory on a whole test set
_CHECK_ROWS = 8  # rows of the synthetic batch the contract check runs


def is_plugin(kind: str) -> bool:
    """True when ``model.type`` names a plug-in class (``file.py:Class`` or ``module:Class``), not a built-in."""
    return ":" in kind


def spec_key(kind: str, options: Mapping[str, Any]) -> str:
    """What identifies a plug-in model in a checkpoint: its ``model.type`` and ``model.options``, as JSON."""
    return json.dumps({"type": kind, "options": dict(options)}, sort_keys=True, default=str)


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _split(spec: str) -> tuple[str, str]:
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ConfigError(f"model.type {spec}: expected path/to/file.py:ClassName or package.module:ClassName")
    return where, name


def _is_file(where: str) -> bool:
    return where.endswith(".py") or os.sep in where or "/" in where


def _module_name(path: str) -> str:
    """The name a model file is imported under: its stem (``my_model``), the name a user imports it by in a
    notebook or a test, unless that name belongs to another module; else one made from its path. numba's
    cache (``cache=True``) records the module's name and imports it by that name when it loads a kernel, so
    the file must have the same name wherever its kernels were compiled."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.isidentifier():
        have = sys.modules.get(stem)
        if have is not None:
            if os.path.abspath(getattr(have, "__file__", None) or "") == path:
                return stem
        else:
            try:
                found = importlib.util.find_spec(stem)
            except (ImportError, ValueError):
                found = None
            if found is None or (found.origin and os.path.abspath(found.origin) == path):
                return stem
    return f"ftmpi_plugin_{hashlib.sha1(path.encode()).hexdigest()[:12]}"


def _import_file(path: str, spec: str) -> Any:
    """The module of a model file, imported once per process (:func:`_module_name`)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"model.type {spec}: no such file {path}")
    name = _module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    found = importlib.util.spec_from_file_location(name, path)
    if found is None or found.loader is None:
        raise ConfigError(f"model.type {spec}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module  # dataclasses, pickling and numba's cache look the module up by name
    try:
        found.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ConfigError(f"model.type {spec}: importing {path} raised {_line(exc)}") from None
    return module


def load_class(spec: str) -> type:
    """The class ``spec`` names (``path/to/file.py:Class``, or ``package.module:Class`` on the Python path).

    Raises:
        ConfigError: one line: the file or module is missing or raised on import, or has no such class.
    """
    where, name = _split(spec)
    if _is_file(where):
        module = _import_file(where, spec)
        origin = os.path.abspath(where)
    else:
        try:
            module = importlib.import_module(where)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise ConfigError(f"model.type {spec}: importing module {where} raised {_line(exc)}") from None
        origin = f"module {where}"
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"model.type {spec}: {origin} defines no class {name}")
    return cls


class PluginModel:
    """A plug-in model bound to what the trainer calls: the user's ``loss_grad`` is called directly (no
    wrapper per step); ``predict`` and ``sample_loss`` are chunked, so a whole test set never reaches the
    model at once.

    Attributes:
        obj: The user's model object.
        spec: ``model.type``; ``key``: :func:`spec_key` (what a checkpoint records).
        sizes: ``[n_features, n_classes]`` (int64): what the Setup message and a checkpoint carry.
        n_params: Length of the flat float32 parameter vector.
    """

    def __init__(self, obj: Any, spec: str, options: Mapping[str, Any], n_features: int, n_classes: int) -> None:
        self.obj, self.spec, self.options = obj, spec, dict(options)
        self.key = spec_key(spec, self.options)
        self.sizes = np.array([n_features, n_classes], np.int64)
        self.n_classes = int(n_classes)
        self.n_params = int(obj.n_params)
        self.loss_grad: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float] = obj.loss_grad
        self._predict = obj.predict
        self._sample_loss = getattr(obj, "sample_loss", None)
        self._tensors = list(obj.tensors()) if callable(getattr(obj, "tensors", None)) else [slice(0, self.n_params)]

    def init(self, seed: int) -> np.ndarray:
        return np.ascontiguousarray(self.obj.init(seed), dtype=np.float32)

    def tensors(self) -> list[slice]:
        return list(self._tensors)

    @property
    def has_sample_loss(self) -> bool:
        return self._sample_loss is not None

    def predict(self, params: np.ndarray, X: Any) -> np.ndarray:
        """Labels of every row of ``X`` (an array, or a row matrix of :mod:`ftmpi.storage.rows`), a chunk at a
        time."""
        out = np.empty(X.shape[0], np.int32)
        for a in range(0, X.shape[0], _CHUNK):
            rows = np.ascontiguousarray(X[a:a + _CHUNK], dtype=np.float32)
            out[a:a + len(rows)] = self._predict(params, rows)
        return out

    def sample_loss(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-row losses, a chunk at a time (the contract check refuses loss-based selection without one)."""
        if self._sample_loss is None:
            raise ConfigError(f"model.type {self.spec}: {type(self.obj).__name__} has no sample_loss(params, X, y), "
                              "which optimizer.rep_selection loss and stratified need")
        out = np.empty(X.shape[0], np.float32)
        y = np.ascontiguousarray(y, dtype=np.int32)
        for a in range(0, X.shape[0], _CHUNK):
            rows = np.ascontiguousarray(X[a:a + _CHUNK], dtype=np.float32)
            out[a:a + len(rows)] = self._sample_loss(params, rows, y[a:a + len(rows)])
        return out

    def evaluate(self, params: np.ndarray, X: Any, y: np.ndarray, n_classes: int) -> tuple[float, np.ndarray]:
        return accuracy(self.predict(params, X), y, n_classes)


def accuracy(pred: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[float, np.ndarray]:
    """Accuracy and per-class accuracy (NaN for a class absent from ``y``) of predicted labels; every model's
    ``evaluate`` (the built-in :class:`ftmpi.model.models.Model` too)."""
    hit = pred == y
    per = np.full(n_classes, np.nan)
    counts = np.bincount(y, minlength=n_classes)
    hits = np.bincount(y[hit], minlength=n_classes)
    nz = counts > 0
    per[nz] = hits[nz] / counts[nz]
    return float(hit.mean()) if len(y) else float("nan"), per


def load(spec: str, options: Mapping[str, Any], n_features: int, n_classes: int, *, check: bool = True,
         scored: bool = False, seed: int = 0) -> PluginModel:
    """Import, construct and (``check``) contract-check the plug-in model ``spec``.

    Args:
        spec: ``model.type``; options: ``model.options`` (keyword arguments of the constructor).
        n_features, n_classes: Of the dataset.
        check: Run :func:`check` on a small synthetic batch (rank 0, before any worker trains).
        scored: ``optimizer.rep_selection`` is ``loss`` or ``stratified``: ``sample_loss`` is required.
        seed: ``model.seed``, passed to ``init`` by the check.

    Raises:
        ConfigError: one line naming the file, the class and what was expected.
    """
    cls = load_class(spec)
    args = "".join(f", {k}={v!r}" for k, v in options.items())
    name = f"{cls.__name__}(n_features={n_features}, n_classes={n_classes}{args})"
    try:
        obj = cls(n_features=int(n_features), n_classes=int(n_classes), **dict(options))
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ConfigError(f"model.type {spec}: {name} raised {_line(exc)}") from None
    missing = [m for m in REQUIRED if not hasattr(obj, m) or (m != "n_params" and not callable(getattr(obj, m)))]
    if missing:
        raise ConfigError(f"model.type {spec}: {cls.__name__} lacks {', '.join(missing)}; expected n_params, "
                          "init(seed), loss_grad(params, X, y, grad) and predict(params, X)")
    n = obj.n_params
    if not (isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1):
        raise ConfigError(f"model.type {spec}: {cls.__name__}.n_params is {n!r:.40}; expected an integer >= 1")
    if check:
        _check_tensors(obj, spec, int(n))
    model = PluginModel(obj, spec, options, n_features, n_classes)
    if check:
        _check(model, seed, scored)
    return model


def _check_tensors(obj: Any, spec: str, n: int) -> None:
    tensors = getattr(obj, "tensors", None)
    if tensors is None:
        return
    what = f"model.type {spec}: {type(obj).__name__}.tensors()"
    try:
        parts = list(tensors())
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ConfigError(f"{what} raised {_line(exc)}") from None
    pos = 0
    for sl in parts:
        if not isinstance(sl, slice) or sl.step not in (None, 1) or sl.start != pos or not \
                isinstance(sl.stop, int) or sl.stop <= pos:
            raise ConfigError(f"{what} returned {parts!r:.80}; expected slices in order that cover "
                              f"0..n_params={n} without gaps or overlaps")
        pos = sl.stop
    if pos != n:
        raise ConfigError(f"{what} covers 0..{pos}; expected slices that cover 0..n_params={n}")


def _call(model: PluginModel, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ConfigError(f"model.type {model.spec}: {type(model.obj).__name__}.{what} raised {_line(exc)}") from None


def _vector(v: Any) -> str:
    return f"{v.dtype} {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__


def _check(model: PluginModel, seed: int, scored: bool) -> None:
    """Call every method once on a synthetic batch and check what comes back (shapes, dtypes, finiteness)."""
    cls, n, k = type(model.obj).__name__, model.n_params, model.n_classes
    bad = f"model.type {model.spec}: {cls}."

    def fail(text: str) -> None:
        raise ConfigError(bad + text)

    p = _call(model, "init(seed)", model.obj.init, seed)
    if not (isinstance(p, np.ndarray) and p.dtype == np.float32 and p.shape == (n,)):
        fail(f"init(seed) returned {_vector(p)}; expected a float32 vector of shape (n_params,) = ({n},)")
    if not np.all(np.isfinite(p)):
        fail(f"init(seed) returned {int(np.count_nonzero(~np.isfinite(p)))} non-finite value(s); expected finite "
             "parameters")
    rng = np.random.default_rng(seed)
    d = int(model.sizes[0])
    X = rng.random((_CHECK_ROWS, d), dtype=np.float32)
    y = (np.arange(_CHECK_ROWS) % k).astype(np.int32)
    params = p.copy()
    grad = np.full(n, np.nan, np.float32)
    loss = _call(model, "loss_grad(params, X, y, grad)", model.loss_grad, params, X, y, grad)
    try:
        loss_value = float(loss)
    except (TypeError, ValueError):
        fail(f"loss_grad(params, X, y, grad) returned {type(loss).__name__}; expected the mean loss as a number")
    if not math.isfinite(loss_value):
        fail(f"loss_grad(params, X, y, grad) returned {loss_value} on {_CHECK_ROWS} random rows at init; expected "
             "a finite mean loss")
    if not np.all(np.isfinite(grad)):
        fail(f"loss_grad(params, X, y, grad) left {int(np.count_nonzero(~np.isfinite(grad)))} of {n} gradient "
             "entries unwritten or non-finite; expected it to write the whole float32 grad (n_params,) in place")
    if not np.array_equal(params, p):
        fail("loss_grad(params, X, y, grad) changed params; expected it to write the gradient into grad only")
    pred = _call(model, "predict(params, X)", model.obj.predict, params, X)
    if not (isinstance(pred, np.ndarray) and pred.shape == (_CHECK_ROWS,) and np.issubdtype(pred.dtype, np.integer)):
        fail(f"predict(params, X) returned {_vector(pred)} for {_CHECK_ROWS} rows; expected integer labels of "
             f"shape ({_CHECK_ROWS},)")
    if pred.size and (pred.min() < 0 or pred.max() >= k):
        fail(f"predict(params, X) returned labels in [{pred.min()}, {pred.max()}]; expected labels in [0, {k})")
    if model.has_sample_loss:
        sl = _call(model, "sample_loss(params, X, y)", model._sample_loss, params, X, y)
        if not (isinstance(sl, np.ndarray) and sl.shape == (_CHECK_ROWS,) and np.issubdtype(sl.dtype, np.floating)):
            fail(f"sample_loss(params, X, y) returned {_vector(sl)} for {_CHECK_ROWS} rows; expected float losses "
                 f"of shape ({_CHECK_ROWS},)")
        if not np.all(np.isfinite(sl)):
            fail("sample_loss(params, X, y) returned non-finite losses at init; expected finite ones")
    elif scored:
        fail("sample_loss(params, X, y) is missing; optimizer.rep_selection loss and stratified need it (or use "
             "rep_selection random or coreset)")
