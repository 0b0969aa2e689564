"""What goes on the wire for a parameter-sized vector: raw float32, or per-tensor quantized bit-packed
codes with error feedback.

Quantizing raw parameters and averaging them collapsed the original system to chance accuracy: the
quantization step of a whole weight tensor is far coarser than one update. We quantize *deltas* (updates,
or the change of the global model since the last broadcast) and carry the rounding error into the next
message (error feedback), so nothing is lost over rounds, only delayed.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ftmpi import kernels as K


def encode(vec: np.ndarray, tensors: list[slice], bits: int, stochastic: bool, seed: int) -> Any:
    """Encode ``vec``: itself when ``bits`` is 0, else a tuple of per-tensor (packed, lo, hi) codes."""
    if bits == 0:
        return vec.astype(np.float32, copy=True)
    parts = []
    for i, sl in enumerate(tensors):
        packed, lo, hi = K.quantize_pack(np.ascontiguousarray(vec[sl]), bits, stochastic, seed * 1009 + i)
        parts.append((packed, float(lo), float(hi)))
    return (bits, tuple(parts))


def decode(payload: Any, tensors: list[slice], n: int) -> np.ndarray:
    """Inverse of :func:`encode` (up to quantization error)."""
    if isinstance(payload, np.ndarray):
        return payload
    bits, parts = payload
    out = np.empty(n, np.float32)
    for sl, (packed, lo, hi) in zip(tensors, parts, strict=True):
        view = out[sl]
        K.unpack_dequantize(packed, bits, np.float32(lo), np.float32(hi), view.shape[0], view)
    return out


class ErrorFeedback:
    """Compress a stream of vectors so that the sum of what was decoded tracks the sum of what was sent."""

    def __init__(self, n: int, tensors: list[slice], bits: int, stochastic: bool) -> None:
        # without quantization nothing is ever left over: an empty residual (not n zeros carried in every
        # state copy, reply and checkpoint)
        self.residual = np.zeros(n if bits else 0, np.float32)
        self.tensors, self.bits, self.stochastic, self.n = tensors, bits, stochastic, n

    def compress(self, vec: np.ndarray, seed: int) -> tuple[Any, np.ndarray]:
        """Return (payload, decoded); the residual keeps what the payload could not carry."""
        if self.bits == 0:
            return encode(vec, self.tensors, 0, False, seed), vec
        target = vec + self.residual
        payload = encode(target, self.tensors, self.bits, self.stochastic, seed)
        approx = decode(payload, self.tensors, self.n)
        self.residual = target - approx
        return payload, approx
