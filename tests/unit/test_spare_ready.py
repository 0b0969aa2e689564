"""A waiting hot spare gets ready to take any worker's shard at short notice: every shard read ahead when
they fit in its budget (``shards.ShardsAhead``), and the training rows mapped with their pages in
(``rows.keep_resident``) with a buffer for the largest shard mapped ahead (``membuf.reserve``;
``shards.ready_for_any`` does both from the shard files). What is taken or read afterwards is the same bytes
as without it, from the file as it was when it was read ahead or made resident."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ftmpi.storage import membuf
from ftmpi.storage import rows as rows_mod
from ftmpi.storage import shards as shards_mod
from ftmpi.storage.rows import RowsOf, RowStore
from ftmpi.storage.shards import ShardsAhead, read_shard, ready_for_any, write_shard
from ftmpi.worker.localshard import LocalShard

N, D = 6000, 784


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rows_mod, "_RESIDENT", {})
    monkeypatch.setattr(membuf, "_RESERVED", [])
    monkeypatch.setattr(membuf, "MIN_BYTES", 1 << 20)  # this file's small shards are "large"


def _idx_file(path: Path, seed: int = 0) -> tuple[RowStore, np.ndarray]:
    X = np.random.default_rng(seed).integers(0, 256, (N, D), dtype=np.uint8)
    path.write_bytes(bytes([0, 0, 8, 2]) + np.array([N, D], ">u4").tobytes() + X.tobytes())
    return RowStore(path, 12, N, D, np.uint8, 1 / 255), X


def test_a_resident_file_gives_the_same_rows_in_the_order_asked(tmp_path: Path) -> None:
    store, X = _idx_file(tmp_path / "train")
    ids = np.random.default_rng(1).integers(0, N, 5000)  # unsorted, with duplicates
    cold_raw, cold_rows = store.raw(ids), store.rows(ids)
    assert rows_mod.keep_resident(store) and len(rows_mod._RESIDENT) == 1
    assert rows_mod.keep_resident(store) and len(rows_mod._RESIDENT) == 1, "kept once"
    again = RowStore(tmp_path / "train", 12, N, D, np.uint8, 1 / 255)  # another store of the same file
    out = np.full((len(ids), D), 7, np.uint8)
    assert again.raw(ids, out) is out
    assert np.array_equal(out, X[ids]) and np.array_equal(out, cold_raw)
    hot = again.rows(ids)
    assert hot.dtype == np.float32 and np.array_equal(hot, cold_rows)  # bit for bit: uint8 * float32(1/255)
    assert np.array_equal(hot, X[ids].astype(np.float32) * np.float32(1 / 255))
    with pytest.raises(IndexError):
        again.raw(np.array([N]))


def test_a_file_replaced_since_is_read_anew_not_through_the_old_mapping(tmp_path: Path) -> None:
    store, _ = _idx_file(tmp_path / "train")
    assert rows_mod.keep_resident(store)
    os.replace(_idx_file(tmp_path / "new", seed=5)[0].path, tmp_path / "train")
    _, X2 = _idx_file(tmp_path / "x", seed=5)
    fresh = RowStore(tmp_path / "train", 12, N, D, np.uint8, 1 / 255)
    assert np.array_equal(fresh.raw(np.arange(10)), X2[:10])


def test_a_reserved_buffer_is_handed_out_once_zeroed_to_the_first_read_that_fits(monkeypatch) -> None:
    assert not membuf.reserve(1000), "below MIN_BYTES nothing is reserved"
    nbytes = 5 << 20
    assert membuf.reserve(nbytes) and len(membuf._RESERVED) == 1
    m = membuf._RESERVED[0]
    too_big = membuf.populated((nbytes // 784 + 10, 784), np.uint8)
    assert len(membuf._RESERVED) == 1, "a buffer larger than the reserved one is mapped as usual"
    a = membuf.populated((5000, 784), np.uint8, ready=3000)
    assert not membuf._RESERVED and not a.any() and a.flags.writeable and a.shape == (5000, 784)
    assert np.shares_memory(a, np.frombuffer(m, np.uint8)), "the reserved mapping itself"
    b = membuf.populated((5000, 784), np.uint8)
    assert not np.shares_memory(a, b) and too_big.shape[0] > 0


def test_ready_for_any_reserves_the_largest_shard_with_its_room_and_reads_the_same(tmp_path: Path) -> None:
    store, X = _idx_file(tmp_path / "train")
    ref = store.ref_json()
    y = np.arange(N, dtype=np.int32) % 10
    parts = {1: np.arange(0, 4000), 2: np.arange(4000, 6000)[::-1]}
    for r, ids in parts.items():
        write_shard(tmp_path / f"worker-{r:04d}.h5", None, y[ids], ids, {"rank": r}, rows_from=ref)
    room = lambda n: max(n // 2, 1024)  # noqa: E731
    before = read_shard(tmp_path / "worker-0002.h5", room=room, raw=True)
    paths = [tmp_path / "worker-0001.h5", tmp_path / "worker-0002.h5", tmp_path / "worker-0009.h5"]  # one missing
    assert ready_for_any(paths, room, raw=True) == (4000 + 2000) * D
    assert len(rows_mod._RESIDENT) == 1 and len(membuf._RESERVED) == 1
    after = read_shard(tmp_path / "worker-0002.h5", room=room, raw=True)
    assert not membuf._RESERVED, "the shard's buffer is the reserved one"
    assert after.buf is not None and after.buf.shape == (2000 + 1024, D) and not after.buf[2000:].any()
    assert np.array_equal(after.X, before.X) and np.array_equal(after.X, X[parts[2]])
    assert np.array_equal(after.ids, before.ids) and after.scale == before.scale
    assert ready_for_any([tmp_path / "nothing.h5"], room) == 0


def _dealt(tmp_path: Path) -> tuple[np.ndarray, dict[int, np.ndarray], list[Path]]:
    store, X = _idx_file(tmp_path / "train")
    y = np.arange(N, dtype=np.int32) % 10
    parts = {1: np.arange(0, 4000), 2: np.arange(4000, 6000)[::-1]}
    paths = []
    for r, ids in parts.items():
        paths.append(write_shard(tmp_path / f"worker-{r:04d}.h5", None, y[ids], ids, {"rank": r},
                                 rows_from=store.ref_json()))
    return X, parts, paths


def test_shards_by_reference_are_held_over_the_resident_rows_without_a_copy(tmp_path: Path, monkeypatch) -> None:
    X, parts, paths = _dealt(tmp_path)
    ahead = ShardsAhead([*paths, tmp_path / "worker-0009.h5"], raw=True, budget=0)  # one missing: passed over
    assert ahead.ready and ahead.held == 0, "no copy: the budget is for copies"
    assert len(rows_mod._RESIDENT) == 1
    calls = []
    monkeypatch.setattr(shards_mod, "read_shard", lambda *a, **k: calls.append(a))  # nothing is read any more
    got = ahead.take(paths[1])
    assert got is not None and not calls and isinstance(got.X, RowsOf)
    assert got.X.shape == (2000, D) and got.X.dtype == np.uint8 and got.scale == pytest.approx(1 / 255)
    mapping = np.frombuffer(next(iter(rows_mod._RESIDENT.values())), np.uint8)
    assert np.shares_memory(got.X.base, mapping), "a view of the page cache's mapping"
    assert np.array_equal(got.X[:], X[parts[2]]) and np.array_equal(got.ids, parts[2])
    b = np.array([5, 0, 1999, 7])
    assert np.array_equal(got.X[b], X[parts[2][b]]) and np.array_equal(got.X[3:9], X[parts[2][3:9]])
    assert ahead.take(paths[1]) is None, "taken once"


def test_shards_that_hold_their_rows_are_copied_ahead_within_the_budget(tmp_path: Path, monkeypatch) -> None:
    X, parts, _ = _dealt(tmp_path)
    y = np.arange(N, dtype=np.int32) % 10
    paths = [write_shard(tmp_path / f"own-{r}.h5", X[ids].astype(np.float32), y[ids], ids, {"rank": r})
             for r, ids in parts.items()]
    assert ShardsAhead(paths, raw=True, budget=N * D * 4 - 1).held == 0, "float32 rows over the budget: none"
    ahead = ShardsAhead(paths, raw=True, budget=N * D * 4)
    assert ahead.ready and ahead.held == N * D * 4
    got = ahead.take(paths[1])
    assert got is not None and isinstance(got.X, np.ndarray)
    assert np.array_equal(got.X, X[parts[2]].astype(np.float32)) and np.array_equal(got.ids, parts[2])


def test_a_changed_file_or_rows_that_need_converting_over_the_budget_read_nothing_ahead(tmp_path: Path) -> None:
    X, parts, paths = _dealt(tmp_path)
    over = ShardsAhead(paths, raw=False, budget=N * D * 4 - 1)
    assert not over.ready and over.held == 0, "uint8 rows read as float32 features are copies, over the budget"
    conv = ShardsAhead(paths, raw=False, budget=N * D * 4)
    got = conv.take(paths[0])
    assert got is not None and isinstance(got.X, np.ndarray) and got.scale is None
    assert np.array_equal(got.X, X[parts[1]].astype(np.float32) * np.float32(1 / 255))
    ahead = ShardsAhead(paths, raw=True, budget=0)
    y = np.arange(N, dtype=np.int32) % 10
    ids = parts[1][::2]
    write_shard(paths[0], None, y[ids], ids, {"rank": 1}, rows_from=RowStore(tmp_path / "train", 12, N, D, np.uint8,
                                                                             1 / 255).ref_json())
    assert ahead.take(paths[0]) is None, "rewritten since: read it anew"
    fresh = read_shard(paths[0], raw=True)
    assert np.array_equal(fresh.X, X[ids])


def test_a_local_shard_by_reference_trains_on_the_same_features_and_copies_its_rows_once_rows_are_handed(
        tmp_path: Path) -> None:
    X, parts, paths = _dealt(tmp_path)
    copied = LocalShard(read_shard(paths[1], raw=True))
    held = LocalShard(ShardsAhead(paths, raw=True, budget=0).take(paths[1]))
    assert isinstance(held.X, RowsOf) and held._buf is None and len(held) == 2000 and held.mass == 2000.0
    b = np.sort(np.random.default_rng(3).choice(2000, 128, replace=False))
    assert np.array_equal(held.rows(b), copied.rows(b)) and held.rows(b).dtype == np.float32
    assert np.array_equal(held.rows(slice(100, 300)), copied.rows(slice(100, 300)))
    handed = read_shard(paths[0], rows=(0, 50), raw=True)
    held.append(handed, weight=2.0)
    copied.append(handed, weight=2.0)
    assert isinstance(held.X, np.ndarray) and held._buf is not None and len(held._buf) > len(held)
    assert np.array_equal(held.X, copied.X) and np.array_equal(held.X[:2000], X[parts[2]])
    assert np.array_equal(held.ids, copied.ids) and np.array_equal(held.w, copied.w)
    again = LocalShard(ShardsAhead(paths, raw=True, budget=0).take(paths[1]))
    assert again.append(read_shard(paths[1], rows=(0, 10), raw=True)) == 0, "rows it holds: none appended"
    assert isinstance(again.X, RowsOf), "nothing appended: still by reference"
