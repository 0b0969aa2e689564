"""Numba kernels of ftmpi: model loss/gradient, representative-point selection, gradient quantization.

Pure array functions that know nothing of MPI. Numeric loops are module-level ``@njit(cache=True)``
functions, single-threaded (several MPI ranks share the cores); matrix products use numpy's BLAS.

The model's layout and ``predict`` (:mod:`.layout`) and softmax regression (:mod:`.softmax`) are numpy only;
the modules that use numba (:mod:`.model`, :mod:`.quant`, :mod:`.select`) load at the first use of one of
their names. A softmax-regression run that quantizes nothing and whose workers score nothing (the default
``rep_selection: random``) so never imports numba in any process: importing it and loading the first kernel
costs every process CPU time while the ranks start on shared cores.
"""

from __future__ import annotations

import importlib
from typing import Any

from .layout import CHUNK_ROWS, _check_sizes, init_params, layer_slices, n_params, predict

_LAZY = {
    "dequantize": "quant", "pack": "quant", "packed_size": "quant", "quantize": "quant", "quantize_pack": "quant",
    "unpack": "quant", "unpack_dequantize": "quant",
    "CORESET_DIM": "select", "CORESET_MODES": "select", "SELECTORS": "select", "coreset_features": "select",
    "select": "select", "select_coreset": "select", "select_loss": "select", "select_random": "select",
    "select_stratified": "select", "topk": "select",
}


def loss_grad(params: Any, sizes: Any, X: Any, y: Any, grad_out: Any) -> float:
    """Mean cross-entropy of a batch and its gradient into ``grad_out`` (:func:`.model.loss_grad`); a
    softmax regression (``sizes`` ``[d, k]``) in numpy (:mod:`.softmax`), deeper models in numba."""
    if len(_check_sizes(sizes)) == 2:
        from .softmax import loss_grad as numpy_loss_grad

        return numpy_loss_grad(params, sizes, X, y, grad_out)
    from .model import loss_grad as numba_loss_grad

    return numba_loss_grad(params, sizes, X, y, grad_out)


def sample_loss(params: Any, sizes: Any, X: Any, y: Any, out: Any) -> None:
    """Per-sample cross-entropy into ``out`` (:func:`.model.sample_loss`); numpy for a softmax regression."""
    if len(_check_sizes(sizes)) == 2:
        from .softmax import sample_loss as numpy_sample_loss

        return numpy_sample_loss(params, sizes, X, y, out)
    from .model import sample_loss as numba_sample_loss

    return numba_sample_loss(params, sizes, X, y, out)


def __getattr__(name: str) -> Any:
    """A numba kernel (or a submodule), imported at its first use."""
    module = _LAZY.get(name)
    if module is None:
        if name in ("layout", "model", "quant", "select", "softmax"):
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    mod = importlib.import_module(f".{module}", __name__)
    for other, where in _LAZY.items():  # all of that module's names at once (``select`` the function
        if where == module:  # replaces ``select`` the submodule, which the import just bound here)
            globals()[other] = getattr(mod, other)
    return globals()[name]


__all__ = [
    "CHUNK_ROWS", "CORESET_DIM", "CORESET_MODES", "SELECTORS", "coreset_features", "dequantize", "init_params",
    "layer_slices", "loss_grad", "n_params", "pack", "packed_size", "predict", "quantize", "quantize_pack",
    "sample_loss", "select", "select_coreset", "select_loss", "select_random", "select_stratified", "topk", "unpack",
    "unpack_dequantize",
]
