"""Per-tensor uniform quantization (1..8 bits) and tight bit packing for gradients on the wire.

A tensor is mapped to ``2**bits`` evenly spaced levels between its min ``lo`` and max ``hi``:
``code = round((x - lo) / scale)`` with ``scale = (hi - lo) / (2**bits - 1)``, dequantized as
``lo + code * scale``. Deterministic mode rounds to the nearest level (error <= scale / 2);
stochastic mode rounds up with probability equal to the fractional part, so the dequantized value
is unbiased. Its uniform numbers come from a counter-based hash of ``(element index, seed)``, so a
result depends only on the seed, never on chunking.

Packing stores code ``i`` in bits ``[i*bits, (i+1)*bits)`` of the byte stream, least significant
bit first. Inputs are flattened; they must be finite.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_CHUNK = 8192  # codes per scratch buffer in the generic fused paths; a multiple of 8 (byte-aligned)
_M64 = (1 << 64) - 1
_F32_MAX = float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------------------------- kernels
@njit(cache=True)
def _minmax(x):
    """(lo, hi) of a float32 vector in one vectorised pass over order-preserving int32 keys.

    A float's bits ``v`` map to ``v ^ ((v >> 31) & 0x7fffffff)``, which orders like the floats (and
    puts NaNs beyond +-inf); integer min/max reductions vectorise where float ones do not.
    """
    bits = x.view(np.int32)
    lo = np.int32(0x7FFFFFFF)
    hi = np.int32(-0x80000000)
    low31 = np.int32(0x7FFFFFFF)
    for i in range(bits.shape[0]):  # the int32 casts keep 16 lanes per AVX-512 register
        v = bits[i]
        key = np.int32(v ^ np.int32(np.int32(v >> np.int32(31)) & low31))
        lo = min(lo, key)
        hi = max(hi, key)
    keys = np.array([lo, hi], np.int32)
    keys ^= (keys >> 31) & np.int32(0x7FFFFFFF)  # the map is its own inverse
    vals = keys.view(np.float32)
    return vals[0], vals[1]


@njit(cache=True, inline="always")
def _uniform(i, key):
    """Uniform float32 in [0, 1) from a 32-bit integer hash (lowbias32) of ``i + key``."""
    h = np.uint32(np.uint32(i) + key)
    h ^= h >> np.uint32(16)
    h = np.uint32(h * np.uint32(0x7FEB352D))
    h ^= h >> np.uint32(15)
    h = np.uint32(h * np.uint32(0x846CA68B))
    h ^= h >> np.uint32(16)
    return np.float32(np.int32(h >> np.uint32(8))) * np.float32(1.0 / 16777216.0)


@njit(cache=True, inline="always")
def _code(v, i, lo, inv, top, stochastic, key):
    u = _uniform(i, key) if stochastic else np.float32(0.5)
    return min(np.int32((v - lo) * inv + u), top)


@njit(cache=True)
def _fill_codes(x, first, lo, inv, top, stochastic, key, out):
    """``out[j]`` = code of ``x[j]``, whose index in the whole tensor is ``first + j``."""
    for j in range(x.shape[0]):
        out[j] = _code(x[j], first + j, lo, inv, top, stochastic, key)


@njit(cache=True)
def _pack_into(codes, bits, out):
    """Pack ``codes`` (each < 2**bits) into the first ceil(n*bits/8) bytes of ``out``."""
    n = codes.shape[0]
    if bits == 8:
        for i in range(n):
            out[i] = codes[i]
        return
    if bits == 4:
        for j in range(n // 2):
            out[j] = codes[2 * j] | (codes[2 * j + 1] << np.uint8(4))
        if n % 2:
            out[n // 2] = codes[n - 1]
        return
    full = n // 8
    for g in range(full):  # 8 codes fill exactly `bits` bytes
        acc = np.uint64(0)
        for t in range(8):
            acc |= np.uint64(codes[8 * g + t]) << np.uint64(bits * t)
        for q in range(bits):
            out[g * bits + q] = np.uint8(acc >> np.uint64(8 * q))
    acc = np.uint64(0)
    for t in range(n - 8 * full):  # partial last group
        acc |= np.uint64(codes[8 * full + t]) << np.uint64(bits * t)
    for q in range((bits * (n - 8 * full) + 7) // 8):
        out[full * bits + q] = np.uint8(acc >> np.uint64(8 * q))


@njit(cache=True)
def _unpack_into(packed, bits, codes):
    """Inverse of :func:`_pack_into` for ``codes.shape[0]`` codes."""
    n = codes.shape[0]
    if bits == 8:
        for i in range(n):
            codes[i] = packed[i]
        return
    if bits == 4:
        for j in range(n // 2):
            codes[2 * j] = packed[j] & np.uint8(15)
            codes[2 * j + 1] = packed[j] >> np.uint8(4)
        if n % 2:
            codes[n - 1] = packed[n // 2] & np.uint8(15)
        return
    mask = np.uint64((1 << bits) - 1)
    full = n // 8
    for g in range(full):
        acc = np.uint64(0)
        for q in range(bits):
            acc |= np.uint64(packed[g * bits + q]) << np.uint64(8 * q)
        for t in range(8):
            codes[8 * g + t] = np.uint8((acc >> np.uint64(bits * t)) & mask)
    acc = np.uint64(0)
    for q in range((bits * (n - 8 * full) + 7) // 8):
        acc |= np.uint64(packed[full * bits + q]) << np.uint64(8 * q)
    for t in range(n - 8 * full):
        codes[8 * full + t] = np.uint8((acc >> np.uint64(bits * t)) & mask)


@njit(cache=True)
def _dequant_into(codes, lo, scale, out):
    for i in range(codes.shape[0]):
        out[i] = lo + np.float32(codes[i]) * scale


@njit(cache=True)
def _quantize_pack(x, bits, lo, inv, top, stochastic, key, packed):
    n = x.shape[0]
    if bits == 8:
        _fill_codes(x, 0, lo, inv, top, stochastic, key, packed)
    elif bits == 4:
        for j in range(n // 2):
            c0 = _code(x[2 * j], 2 * j, lo, inv, top, stochastic, key)
            c1 = _code(x[2 * j + 1], 2 * j + 1, lo, inv, top, stochastic, key)
            packed[j] = c0 | (c1 << 4)
        if n % 2:
            packed[n // 2] = _code(x[n - 1], n - 1, lo, inv, top, stochastic, key)
    else:
        buf = np.empty(_CHUNK, np.uint8)
        for start in range(0, n, _CHUNK):
            m = min(_CHUNK, n - start)
            _fill_codes(x[start:start + m], start, lo, inv, top, stochastic, key, buf)
            _pack_into(buf[:m], bits, packed[start * bits // 8:])


@njit(cache=True)
def _unpack_dequantize(packed, bits, lo, scale, out):
    n = out.shape[0]
    if bits == 8:
        _dequant_into(packed[:n], lo, scale, out)
    elif bits == 4:
        for j in range(n // 2):
            out[2 * j] = lo + np.float32(packed[j] & np.uint8(15)) * scale
            out[2 * j + 1] = lo + np.float32(packed[j] >> np.uint8(4)) * scale
        if n % 2:
            out[n - 1] = lo + np.float32(packed[n // 2] & np.uint8(15)) * scale
    else:
        buf = np.empty(_CHUNK, np.uint8)
        for start in range(0, n, _CHUNK):
            m = min(_CHUNK, n - start)
            _unpack_into(packed[start * bits // 8:], bits, buf[:m])
            _dequant_into(buf[:m], lo, scale, out[start:start + m])


# --------------------------------------------------------------------------------------------- wrappers
def _check_bits(bits: int) -> int:
    if not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return int(bits)


def _seed_key(seed: int) -> np.uint32:
    """32-bit hash key of a seed (splitmix64 finaliser), so nearby seeds give unrelated streams."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return np.uint32((z ^ (z >> 31)) & 0xFFFFFFFF)


def _prepare(x: np.ndarray, bits: int):
    """Flat float32 view, bits, and the (lo, hi, inv, top) of the level grid."""
    bits = _check_bits(bits)
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if x.shape[0] == 0:
        return x, bits, np.float32(0.0), np.float32(0.0), np.float32(0.0), np.int32((1 << bits) - 1)
    lo, hi = _minmax(x)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi - lo <= _F32_MAX):
        raise ValueError("cannot quantize: the tensor holds NaN/inf or its range overflows float32")
    top = (1 << bits) - 1
    inv = top / (float(hi) - float(lo)) if hi > lo else 0.0
    if inv > _F32_MAX:  # span below ~1e-36: code as constant (error <= span)
        inv = 0.0
    return x, bits, np.float32(lo), np.float32(hi), np.float32(inv), np.int32(top)


def _scale(bits: int, lo: float, hi: float) -> np.float32:
    return np.float32((float(hi) - float(lo)) / ((1 << bits) - 1))


def packed_size(n: int, bits: int) -> int:
    """Bytes needed for ``n`` codes of ``bits`` bits: ``ceil(n * bits / 8)``."""
    return (int(n) * _check_bits(bits) + 7) // 8


def quantize(x: np.ndarray, bits: int, stochastic: bool = False,
             seed: int = 0) -> tuple[np.ndarray, np.float32, np.float32]:
    """Quantize a tensor to ``2**bits`` uniform levels between its min and max.

    Args:
        x: Finite float tensor (flattened, cast to float32).
        bits: Bits per code, 1..8.
        stochastic: Unbiased stochastic rounding instead of round-to-nearest.
        seed: Seed of the stochastic rounding (ignored when deterministic).

    Returns:
        ``(codes, lo, hi)``: uint8 codes (one per element) and the float32 range.

    Raises:
        ValueError: On bits outside 1..8 or a non-finite tensor.
    """
    x, bits, lo, hi, inv, top = _prepare(x, bits)
    codes = np.empty(x.shape[0], np.uint8)
    _fill_codes(x, 0, lo, inv, top, bool(stochastic), _seed_key(seed), codes)
    return codes, lo, hi


def dequantize(codes: np.ndarray, bits: int, lo: float, hi: float,
               out: np.ndarray | None = None) -> np.ndarray:
    """Map codes back to ``lo + code * (hi - lo) / (2**bits - 1)``.

    Args:
        codes: Uint8 codes.
        bits: Bits per code, 1..8.
        lo: Tensor minimum from :func:`quantize`.
        hi: Tensor maximum from :func:`quantize`.
        out: Optional float32 output of ``codes.size`` elements.

    Returns:
        The float32 values (``out`` if given).
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    out = _out(out, codes.shape[0])
    _dequant_into(codes, np.float32(lo), _scale(_check_bits(bits), lo, hi), out)
    return out


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes tightly, ``bits`` per code, least significant bit first.

    Args:
        codes: Uint8 codes, each < ``2**bits``.
        bits: Bits per code, 1..8.

    Returns:
        Uint8 array of ``ceil(n * bits / 8)`` bytes.
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    bits = _check_bits(bits)
    if codes.shape[0] and int(codes.max()) >> bits:
        raise ValueError(f"codes must be < 2**{bits}")
    out = np.empty(packed_size(codes.shape[0], bits), np.uint8)
    _pack_into(codes, bits, out)
    return out


def unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack`.

    Args:
        packed: Packed bytes.
        bits: Bits per code, 1..8.
        n: Number of codes.

    Returns:
        Uint8 codes, shape ``(n,)``.
    """
    packed = _check_packed(packed, bits, n)
    codes = np.empty(int(n), np.uint8)
    _unpack_into(packed, int(bits), codes)
    return codes


def quantize_pack(x: np.ndarray, bits: int, stochastic: bool = False,
                  seed: int = 0) -> tuple[np.ndarray, np.float32, np.float32]:
    """Fused :func:`quantize` + :func:`pack` (same bytes, one pass after the min/max pass).

    Args:
        x: Finite float tensor (flattened, cast to float32).
        bits: Bits per code, 1..8.
        stochastic: Unbiased stochastic rounding instead of round-to-nearest.
        seed: Seed of the stochastic rounding (ignored when deterministic).

    Returns:
        ``(packed, lo, hi)``.
    """
    x, bits, lo, hi, inv, top = _prepare(x, bits)
    packed = np.empty(packed_size(x.shape[0], bits), np.uint8)
    _quantize_pack(x, bits, lo, inv, top, bool(stochastic), _seed_key(seed), packed)
    return packed, lo, hi


def unpack_dequantize(packed: np.ndarray, bits: int, lo: float, hi: float, n: int,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Fused :func:`unpack` + :func:`dequantize`.

    Args:
        packed: Packed bytes from :func:`quantize_pack`.
        bits: Bits per code, 1..8.
        lo: Tensor minimum.
        hi: Tensor maximum.
        n: Number of elements.
        out: Optional float32 output of ``n`` elements (e.g. a slice of a gradient buffer).

    Returns:
        The float32 values (``out`` if given).
    """
    packed = _check_packed(packed, bits, n)
    out = _out(out, int(n))
    _unpack_dequantize(packed, int(bits), np.float32(lo), _scale(int(bits), lo, hi), out)
    return out


def _check_packed(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    need = packed_size(n, bits)
    if n < 0 or packed.shape[0] < need:
        raise ValueError(f"packed holds {packed.shape[0]} bytes, {n} codes of {bits} bits need {need}")
    return packed


def _out(out: np.ndarray | None, n: int) -> np.ndarray:
    if out is None:
        return np.empty(n, np.float32)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.size == n
            and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous float32 array of {n} elements")
    return out.reshape(-1)
