"""Numba kernels of ftmpi: model loss/gradient, representative-point selection, gradient quantization.

Pure array functions that know nothing of MPI. Numeric loops are module-level ``@njit(cache=True)``
functions, single-threaded (several MPI ranks share the cores); matrix products use numpy's BLAS.
"""

from .model import CHUNK_ROWS, init_params, layer_slices, loss_grad, n_params, predict, sample_loss
from .quant import dequantize, pack, packed_size, quantize, quantize_pack, unpack, unpack_dequantize
from .select import (
    CORESET_DIM,
    CORESET_MODES,
    SELECTORS,
    coreset_features,
    select,
    select_coreset,
    select_loss,
    select_random,
    select_stratified,
    topk,
)

__all__ = [
    "CHUNK_ROWS", "CORESET_DIM", "CORESET_MODES", "SELECTORS", "coreset_features", "dequantize", "init_params",
    "layer_slices", "loss_grad", "n_params", "pack", "packed_size", "predict", "quantize", "quantize_pack",
    "sample_loss", "select", "select_coreset", "select_loss", "select_random", "select_stratified", "topk", "unpack",
    "unpack_dequantize",
]
