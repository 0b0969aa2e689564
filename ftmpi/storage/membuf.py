"""Large buffers whose memory is mapped at once, not page by page on first touch.

A worker's shard buffer (its rows plus room for handed rows) is allocated once and filled at start-up.
Filled page by page, fresh anonymous memory costs a page fault per 4 KB page (dear on a VM), paid by every
worker while every rank is starting. ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14+) has the kernel map a
range in one call, for a fraction of that cost. Only the rows about to be written are mapped so: the room
stays unbacked until rows are handed over, as it would with :func:`numpy.empty` (mapping all of it would
make every worker resident at 1.5 times its shard).
"""
from __future__ import annotations

import math
import mmap
import sys

import numpy as np

__all__ = ["MIN_BYTES", "populated", "reserve"]

MIN_BYTES = 4 << 20  # below this, np.empty (the allocator's own pages are cheap enough)
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux's value; Python 3.11 does not name it


def populated(shape: tuple[int, ...], dtype: np.dtype | type = np.float32, ready: int | None = None) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` (zero-filled) whose first ``ready`` rows (all by default) are mapped
    already, else :func:`numpy.empty` (small arrays, not Linux, a mapping refused). On a kernel without
    ``MADV_POPULATE_WRITE`` the rows are mapped at first touch, as with :func:`numpy.empty`."""
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes < MIN_BYTES or not sys.platform.startswith("linux"):
        return np.empty(shape, dt)
    fits = [m for m in _RESERVED if len(m) >= nbytes]
    if fits:  # mapped ahead (reserve): zero-filled, every page already in
        m = min(fits, key=len)
        _RESERVED.remove(m)
        return np.frombuffer(m, dt, count=math.prod(shape)).reshape(shape)
    try:
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, OverflowError):
        return np.empty(shape, dt)
    rows = shape[0] if ready is None else max(0, min(int(ready), shape[0]))
    prefix = rows * (nbytes // shape[0]) if shape[0] else 0
    if prefix:
        try:
            m.madvise(MADV_POPULATE_WRITE, 0, prefix)
        except (OSError, ValueError):
            pass  # an older kernel: faults at first touch
    return np.frombuffer(m, dt).reshape(shape)  # the array keeps the mapping alive; writable


_RESERVED: list[mmap.mmap] = []  # buffers mapped ahead by reserve, each handed out once by populated


def reserve(nbytes: int) -> bool:
    """Map ``nbytes`` of zero-filled memory now, every page of it, for the next :func:`populated` call that
    fits in it (a hot spare, while it waits, for the shard it may take: ~5 ms of mapping then not paid
    while the others wait for it). False if nothing was reserved (small, not Linux, refused)."""
    if nbytes < MIN_BYTES or not sys.platform.startswith("linux"):
        return False
    try:
        m = mmap.mmap(-1, int(nbytes), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, OverflowError):
        return False
    try:
        m.madvise(MADV_POPULATE_WRITE, 0, int(nbytes))
    except (OSError, ValueError):
        pass
    _RESERVED.append(m)
    return True
