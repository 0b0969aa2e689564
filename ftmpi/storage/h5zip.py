"""uint8 rows written to HDF5 compressed with the standard deflate filter, the chunks compressed in parallel.

Shard and standby files of uint8 rows (images) are most of what rank 0 writes at a launch when the workers
cannot read the prepared copy themselves, and image rows deflate well at level 1. h5py runs HDF5's
filters one chunk at a time under its global lock, so rank 0 would compress on one core alone; instead each
chunk is compressed by ``zlib`` in a thread pool (zlib lets go of the GIL) and
handed to HDF5 as it is (``write_direct_chunk``). The file is an ordinary deflate-filtered dataset: h5py,
h5dump and any HDF5 reader read it without knowing how it was written.
"""
from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h5py
import numpy as np

__all__ = ["CHUNK_BYTES", "MIN_BYTES", "write_deflated"]

CHUNK_BYTES = 256 * 1024  # about this much per chunk: a row read by id decompresses one chunk
MIN_BYTES = 1 << 20  # below this, compression is not worth a thread pool
LEVEL = 1  # zlib level 1: most of level 9's gain on images at a fraction of its time


def write_deflated(f: h5py.File, name: str, X: Any, threads: int | None = None) -> h5py.Dataset:
    """Create ``f[name]`` holding the 2-D uint8 rows ``X`` (an array, or a block source such as
    :class:`ftmpi.storage.rows.RowBlocks`: ``shape``, ``dtype``, ``nbytes``, ``block(a, b)``, read a chunk at a time):
    deflate-compressed chunks of whole rows when ``X`` is at least :data:`MIN_BYTES`, else stored plainly."""
    if not hasattr(X, "block"):
        X = np.ascontiguousarray(X)
    rows_of = X.block if hasattr(X, "block") else lambda a, b: X[a:b]
    if X.dtype != np.uint8 or X.ndim != 2 or X.nbytes < MIN_BYTES or X.shape[1] == 0:
        return f.create_dataset(name, data=rows_of(0, len(X)))
    n, d = X.shape
    rows = max(1, min(n, CHUNK_BYTES // d))
    ds = f.create_dataset(name, shape=X.shape, dtype=np.uint8, chunks=(rows, d), compression="gzip",
                          compression_opts=LEVEL)

    def pack(start: int) -> tuple[int, bytes]:
        block = rows_of(start, start + rows)
        if len(block) < rows:  # HDF5 stores an edge chunk at full size
            block = np.concatenate([block, np.zeros((rows - len(block), d), np.uint8)])
        return start, zlib.compress(memoryview(block).cast("B"), LEVEL)

    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ftmpi-deflate") as pool:
        for start, packed in pool.map(pack, range(0, n, rows)):
            ds.id.write_direct_chunk((start, 0), packed)
    return ds
