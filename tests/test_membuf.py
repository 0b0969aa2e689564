"""ftmpi/membuf.py: buffers mapped at once (MAP_POPULATE) behave as ordinary writable zeroed arrays, and a
shard read with room lands in one such buffer (Shard.buf is that 2-D buffer, X its first rows)."""
from __future__ import annotations

import mmap

import numpy as np
import pytest

from ftmpi import membuf
from ftmpi.shards import read_shard, write_shard


def test_a_large_buffer_is_a_populated_mapping_and_a_small_one_plain():
    big = membuf.populated((3000, 784))
    assert big.shape == (3000, 784) and big.dtype == np.float32 and big.flags.writeable
    if hasattr(mmap, "MAP_POPULATE"):
        owner = big
        while isinstance(owner, np.ndarray):
            owner = owner.base
        assert isinstance(getattr(owner, "obj", owner), mmap.mmap), "the memory is an anonymous mapping"
    assert not big.any(), "anonymous memory starts zeroed"
    big[10:20] = 3.5
    view = big[:100]
    assert view.sum() == pytest.approx(3.5 * 10 * 784)
    small = membuf.populated((10, 10), np.int64)
    assert small.shape == (10, 10) and small.dtype == np.int64 and small.base is None


def test_read_with_room_returns_the_two_dimensional_buffer(tmp_path, monkeypatch):
    monkeypatch.setattr(membuf, "MIN_BYTES", 0)
    X = np.random.default_rng(0).random((500, 30), dtype=np.float32)
    write_shard(tmp_path / "s.h5", X, np.zeros(500, np.int32), np.arange(500))
    s = read_shard(tmp_path / "s.h5", room=lambda n: n // 2)
    assert s.buf is not None and s.buf.shape == (750, 30) and np.shares_memory(s.buf, s.X)
    assert np.array_equal(s.X, X) and np.array_equal(s.buf[:500], X)
