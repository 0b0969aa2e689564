"""ftmpi/storage/membuf.py: buffers mapped at once (MAP_POPULATE) behave as ordinary writable zeroed arrays, and a
shard read with room lands in one such buffer (Shard.buf is that 2-D buffer, X its first rows)."""
from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

from ftmpi.storage import membuf
from ftmpi.storage.shards import read_shard, write_shard


def test_a_large_buffer_is_a_populated_mapping_and_a_small_one_plain():
    big = membuf.populated((3000, 784))
    assert big.shape == (3000, 784) and big.dtype == np.float32 and big.flags.writeable
    if sys.platform.startswith("linux"):
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


def _rss_kb() -> int:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise: Linux")
def test_only_the_ready_rows_are_resident_the_room_is_not():
    """A worker's buffer has room for half a shard more; mapping all of it at once would make every worker
    resident at 1.5 times its shard. Only the rows about to be filled are mapped."""
    before = _rss_kb()
    buf = membuf.populated((20000, 1000), np.float32, ready=5000)  # 80 MB, 20 MB of rows ready
    grown = _rss_kb() - before
    assert 15_000 < grown < 40_000, f"{grown} kB resident after mapping 20 MB of an 80 MB buffer"
    buf[:5000] = 1.0  # filling the ready rows maps nothing more
    assert _rss_kb() - before < 40_000
