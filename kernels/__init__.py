"""Numba kernels of ftmpi: model loss/gradient, representative-point selection, gradient quantization.

Pure array functions that know nothing of MPI. Numeric loops are module-level ``@njit(cache=True)``
functions, single-threaded (several MPI ranks share the cores); matrix products use numpy's BLAS.

The model's layout and ``predict`` (:mod:`.layout`, numpy only) load with the package; the modules that use
numba (:mod:`.model`, :mod:`.quant`, :mod:`.select`) load at the first use of one of their names. Rank 0 of a
run that quantizes nothing and selects no coreset so never imports numba (~0.1-0.2 s of CPU per process,
on cores that the workers share while they start).
"""

from __future__ import annotations

import importlib
from typing import Any

from .layout import CHUNK_ROWS, init_params, layer_slices, n_params, predict

_LAZY = {
    "loss_grad": "model", "sample_loss": "model",
    "dequantize": "quant", "pack": "quant", "packed_size": "quant", "quantize": "quant", "quantize_pack": "quant",
    "unpack": "quant", "unpack_dequantize": "quant",
    "CORESET_DIM": "select", "CORESET_MODES": "select", "SELECTORS": "select", "coreset_features": "select",
    "select": "select", "select_coreset": "select", "select_loss": "select", "select_random": "select",
    "select_stratified": "select", "topk": "select",
}


def __getattr__(name: str) -> Any:
    """A numba kernel (or a submodule), imported at its first use."""
    module = _LAZY.get(name)
    if module is None:
        if name in ("layout", "model", "quant", "select"):
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
