"""Shard and handoff files: naming, round trip, atomic writes, and clear errors for damaged files."""
from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from ftmpi.errors import DataError
from ftmpi.storage.shards import (
    Shard,
    handoff_path,
    handoff_slices,
    list_handoffs,
    parse_handoff_name,
    read_shard,
    shard_path,
    write_handoff,
    write_shard,
)


def rows(n: int = 50, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32), \
        np.sort(rng.choice(10 * n, n, replace=False)).astype(np.int64)


def test_paths(tmp_path):
    assert shard_path(tmp_path, 3) == tmp_path / "shards" / "worker-0003.h5"
    assert handoff_path(tmp_path, 1) == tmp_path / "shards" / "handoff-e0001.h5"
    assert shard_path("runs/x", 12).as_posix() == "runs/x/shards/worker-0012.h5"
    assert parse_handoff_name(handoff_path(tmp_path, 7)) == 7
    assert parse_handoff_name(shard_path(tmp_path, 1)) is None


def test_round_trip(tmp_path):
    X, y, ids = rows()
    p = write_shard(shard_path(tmp_path, 1), X, y, ids, {"n_classes": 3, "dataset": "synthetic"})
    assert p == shard_path(tmp_path, 1) and p.is_file()
    s = read_shard(p)
    assert isinstance(s, Shard) and len(s) == 50
    assert s.X.dtype == np.float32 and s.y.dtype == np.int32 and s.ids.dtype == np.int64
    assert np.array_equal(s.X, X) and np.array_equal(s.y, y) and np.array_equal(s.ids, ids)
    assert s.attrs["n_classes"] == 3 and isinstance(s.attrs["n_classes"], int)
    assert s.attrs["dataset"] == "synthetic" and s.attrs["format"] == "ftmpi-shard"


def test_dtypes_are_converted_and_empty_shards_work(tmp_path):
    X, y, ids = rows(10)
    p = write_shard(tmp_path / "a.h5", X.astype(np.float64), y.astype(np.int64), ids.astype(np.int32))
    s = read_shard(p)
    assert s.X.dtype == np.float32 and s.y.dtype == np.int32 and s.ids.dtype == np.int64
    e = read_shard(write_shard(tmp_path / "empty.h5", np.zeros((0, 6)), np.zeros(0), np.zeros(0)))
    assert e.X.shape == (0, 6) and len(e) == 0


def test_shape_mismatch_is_refused_before_writing(tmp_path):
    X, y, ids = rows(10)
    with pytest.raises(ValueError, match="expected X"):
        write_shard(tmp_path / "s" / "a.h5", X, y[:9], ids)
    with pytest.raises(ValueError):
        write_shard(tmp_path / "s" / "a.h5", X[0], y, ids)
    assert not (tmp_path / "s" / "a.h5").exists()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_failed_write_leaves_old_file_intact(tmp_path):
    X, y, ids = rows()
    p = write_shard(shard_path(tmp_path, 2), X, y, ids, {"version": 1})
    X2, y2, ids2 = rows(seed=1)
    with pytest.raises(TypeError):  # an attribute HDF5 cannot store fails after the datasets are written
        write_shard(p, X2, y2, ids2, {"bad": object()})
    s = read_shard(p)
    assert np.array_equal(s.X, X) and s.attrs["version"] == 1
    assert leftovers(p.parent) == ["worker-0002.h5"], "no temp file left behind"


def test_interrupted_write_leaves_old_file_intact(tmp_path, monkeypatch):
    X, y, ids = rows()
    p = write_shard(shard_path(tmp_path, 2), X, y, ids)
    real = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
        if name == "ids":
            raise OSError("disk full (simulated)")
        return real(self, name, *args, **kwargs)
    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="simulated"):
        write_shard(p, *rows(seed=1))
    monkeypatch.undo()
    assert np.array_equal(read_shard(p).X, X)
    assert leftovers(p.parent) == ["worker-0002.h5"]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope.h5'}: shard file not found")):
        read_shard(tmp_path / "nope.h5")


@pytest.mark.parametrize("cut", [0.5, 0.01])
def test_truncated_file(tmp_path, cut):
    p = write_shard(tmp_path / "t.h5", *rows(500))
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DataError, match=re.escape(f"{p}: unreadable HDF5 shard")):
        read_shard(p)


def test_not_hdf5(tmp_path):
    p = tmp_path / "junk.h5"
    p.write_bytes(b"this is not an HDF5 file" * 20)
    with pytest.raises(DataError, match=re.escape(str(p))):
        read_shard(p)


def test_missing_dataset_wrong_dtype_and_inconsistent_lengths(tmp_path):
    X, y, ids = rows(10)
    p = tmp_path / "partial.h5"
    with h5py.File(p, "w") as f:
        f["X"], f["y"] = X, y
    with pytest.raises(DataError, match="no dataset /ids"):
        read_shard(p)
    with h5py.File(p, "a") as f:
        f["ids"] = ids
        del f["X"]
        f["X"] = X.astype(np.float64)
    with pytest.raises(DataError, match="/X has dtype float64"):
        read_shard(p)
    with h5py.File(p, "a") as f:
        del f["X"]
        f["X"] = X[:9]
    with pytest.raises(DataError, match="inconsistent shapes"):
        read_shard(p)


def test_list_handoffs(tmp_path):
    assert list_handoffs(tmp_path) == []
    X, y, ids = rows(4)
    for epoch in [2, 10, 1]:
        write_handoff(handoff_path(tmp_path, epoch), X, y, ids, {3: 4})
    write_shard(shard_path(tmp_path, 1), X, y, ids)
    (tmp_path / "shards" / ".handoff-e0003.h5.abc.tmp").write_bytes(b"")  # a write in progress
    names = [p.name for p in list_handoffs(tmp_path)]
    assert names == ["handoff-e0001.h5", "handoff-e0002.h5", "handoff-e0010.h5"]


def test_handoff_file_gives_each_receiver_its_rows(tmp_path):
    """One file per epoch; each survivor reads exactly its slice, and nothing else."""
    X, y, ids = rows(10)
    p = write_handoff(handoff_path(tmp_path, 1), X, y, ids, {4: 3, 1: 0, 3: 7}, {"epoch": 1})
    slices = handoff_slices(p)
    assert slices == {4: (0, 3), 1: (3, 3), 3: (3, 10)}
    got = {r: read_shard(p, sl) for r, sl in slices.items()}
    assert np.array_equal(np.concatenate([got[r].ids for r in (4, 1, 3)]), ids)
    assert np.array_equal(got[3].X, X[3:]) and np.array_equal(got[4].y, y[:3]) and len(got[1]) == 0
    assert got[3].attrs["epoch"] == 1
    with pytest.raises(ValueError, match="add up to 9"):
        write_handoff(tmp_path / "bad.h5", X, y, ids, {1: 9})
    with pytest.raises(DataError, match="rows 8:12 are outside"):
        read_shard(p, (8, 12))
    with pytest.raises(DataError, match="not a readable handoff"):
        handoff_slices(write_shard(tmp_path / "plain.h5", X, y, ids))


def test_handoff_row_weights_are_stored_only_when_they_matter(tmp_path):
    X, y, ids = rows(10)
    w = np.r_[np.ones(4), np.full(6, 2.5)]
    p = write_handoff(tmp_path / "w.h5", X, y, ids, {1: 4, 2: 6}, w=w)
    assert read_shard(p).w.tolist() == w.tolist() and read_shard(p, (4, 10)).w.tolist() == [2.5] * 6
    assert read_shard(p, (0, 4)).w.tolist() == [1.0] * 4
    ones = write_handoff(tmp_path / "ones.h5", X, y, ids, {1: 10}, w=np.ones(10))
    assert read_shard(ones).w is None, "all weights 1: no /w dataset"
    for bad in (np.zeros(10), np.ones(9), np.full(10, np.nan)):
        with pytest.raises(ValueError, match="positive"):
            write_handoff(tmp_path / "bad.h5", X, y, ids, {1: 10}, w=bad)
    with h5py.File(p, "r+") as f:  # damaged on disk: named, one line
        f["w"][0] = -1.0
    with pytest.raises(DataError, match="/w holds weights that are not positive"):
        read_shard(p)


def test_large_shard_is_stored_contiguous_and_uncompressed(tmp_path):
    """Shards are scratch files read once: no chunking or compression to pay for (the write time is in
    benchmarks/results/checkpoint.md)."""
    X = np.random.default_rng(0).random((15000, 784), dtype=np.float32)
    y, ids = np.zeros(15000, np.int32), np.arange(15000, dtype=np.int64)
    write_shard(shard_path(tmp_path, 1), X, y, ids)
    with h5py.File(shard_path(tmp_path, 1), "r") as f:
        assert f["X"].chunks is None and f["X"].compression is None
    assert np.array_equal(read_shard(shard_path(tmp_path, 1)).X, X)


# ------------------------------------------------------------------ rows in their own type, by reference
def _store(tmp_path: Path, n: int = 60, d: int = 20):
    from ftmpi.storage.rows import RowStore

    img = np.random.default_rng(3).integers(0, 256, (n, d), dtype=np.uint8)
    p = tmp_path / "train-images"
    p.write_bytes(bytes([0, 0, 8, 2]) + np.array([n, d], ">u4").tobytes() + img.tobytes())
    return RowStore(p, 12, n, d, np.uint8, 1 / 255), img


def test_uint8_shard_is_a_quarter_of_float32_and_reads_back_as_the_same_floats(tmp_path):
    from ftmpi.storage.shards import ensure_shard

    store, _ = _store(tmp_path, 400, 100)
    y = np.arange(400, dtype=np.int32) % 3
    ids = np.arange(0, 400, 2)
    n8 = ensure_shard(tmp_path / "u8.h5", store, y, ids, {"rank": 1})
    n32 = ensure_shard(tmp_path / "f32.h5", store[np.arange(400)], y, ids, {"rank": 1})
    with h5py.File(tmp_path / "u8.h5", "r") as f:
        assert f["X"].dtype == np.uint8 and f.attrs["x_scale"] == pytest.approx(1 / 255)
    assert n8 < 0.4 * n32
    for name in ("u8.h5", "f32.h5"):
        s = read_shard(tmp_path / name)
        assert s.X.dtype == np.float32 and np.array_equal(s.X, store[ids]) and np.array_equal(s.y, y[ids])
    part = read_shard(tmp_path / "u8.h5", (5, 9))
    assert np.array_equal(part.X, store[ids[5:9]])


def test_uint8_shard_compressed_holds_the_same_rows_in_fewer_bytes(tmp_path):
    """compress (data.compress_shards): a standard deflate dataset any HDF5 reader reads, smaller for
    image-like rows, every row read back exactly, whole, by range and into a buffer with room."""
    from ftmpi.storage.shards import ensure_shard

    n, d = 4001, 784  # not a whole number of chunks: the edge chunk is padded
    store, img = _store(tmp_path, n, d)
    img[:, : d // 2] = 0  # half of every image blank, as in MNIST-like data
    store.path.write_bytes(store.path.read_bytes()[:12] + img.tobytes())
    y = np.arange(n, dtype=np.int32) % 10
    ids = np.random.default_rng(1).permutation(n)[:3500]
    packed = ensure_shard(tmp_path / "z.h5", store, y, ids, {"rank": 1}, compress=True)
    plain = ensure_shard(tmp_path / "p.h5", store, y, ids, {"rank": 1})
    with h5py.File(tmp_path / "z.h5", "r") as f:
        assert f["X"].compression == "gzip" and f["X"].chunks[1] == d
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert f["X"].compression is None
    assert packed < 0.75 * plain
    whole = read_shard(tmp_path / "z.h5")
    assert np.array_equal(whole.X, store[ids]) and np.array_equal(whole.ids, ids)
    assert np.array_equal(read_shard(tmp_path / "z.h5", (333, 3411)).X, store[ids[333:3411]])
    roomy = read_shard(tmp_path / "z.h5", room=lambda k: 7)
    assert roomy.buf.shape == (3507, d) and np.array_equal(roomy.X, store[ids])
    assert ensure_shard(tmp_path / "z.h5", store, y, ids, {"rank": 1}, compress=True) == 0, "kept on resume"


def test_version_1_float32_shard_still_reads(tmp_path):
    X, y, ids = rows()
    p = tmp_path / "old.h5"
    with h5py.File(p, "w") as f:  # what the previous release wrote
        f["X"], f["y"], f["ids"] = X, y, ids
        f.attrs["format"], f.attrs["format_version"] = "ftmpi-shard", 1
    s = read_shard(p)
    assert np.array_equal(s.X, X) and np.array_equal(s.ids, ids)
    with h5py.File(p, "r+") as f:
        del f["X"]
        f["X"] = X.astype(np.int16)
    with pytest.raises(DataError, match="/X has dtype int16"):
        read_shard(p)


def test_same_shard_again_writes_nothing_and_any_change_rewrites(tmp_path):
    from ftmpi.storage.shards import ensure_shard

    store, _ = _store(tmp_path)
    y = np.arange(60, dtype=np.int32) % 4
    ids, w = np.arange(10, 40), np.ones(30)
    p = shard_path(tmp_path, 2)
    assert ensure_shard(p, store, y, ids, {"rank": 2}, w=w) > 0
    before = p.stat().st_mtime_ns
    assert ensure_shard(p, store, y, ids, {"rank": 2}, w=w) == 0  # a resume, ownership unchanged
    assert p.stat().st_mtime_ns == before
    w2 = w.copy()
    w2[3] = 2.5
    for changed in (dict(ids=np.arange(11, 41)), dict(w=w2), dict(attrs={"rank": 3}), dict(y=y[::-1].copy())):
        args = dict(ids=ids, w=w, attrs={"rank": 2}, y=y) | changed
        assert ensure_shard(p, store, args["y"], args["ids"], args["attrs"], w=args["w"]) > 0
        assert ensure_shard(p, store, y, ids, {"rank": 2}, w=w) > 0  # back
    with open(p, "r+b") as fh:  # damaged: written again
        fh.truncate(100)
    assert ensure_shard(p, store, y, ids, {"rank": 2}, w=w) > 0
    assert np.array_equal(read_shard(p).X, store[ids])
    Xf = np.asarray(store)  # float rows in memory: a different row content is noticed (checksum)
    assert ensure_shard(p, Xf, y, ids, {"rank": 2}) > 0
    assert ensure_shard(p, Xf, y, ids, {"rank": 2}) == 0
    Xf[ids[0], 0] += 1
    assert ensure_shard(p, Xf, y, ids, {"rank": 2}) > 0


def test_shard_by_reference_holds_ids_and_the_worker_reads_its_rows(tmp_path, monkeypatch):
    from ftmpi.storage.shards import ensure_shard, rows_by_reference

    store, _ = _store(tmp_path, 300, 50)
    y = np.arange(300, dtype=np.int32) % 5
    ids = np.array([299, 4, 150, 7])
    p = shard_path(tmp_path, 1)
    nbytes = ensure_shard(p, store, y, ids, {"rank": 1}, by_ref=True)
    with h5py.File(p, "r") as f:
        assert "X" not in f and "rows_from" in f.attrs
    assert nbytes < 8000  # ids, labels and the reference: no rows
    s = read_shard(p)
    assert s.X.dtype == np.float32 and np.array_equal(s.X, store[ids]) and np.array_equal(s.y, y[ids])
    assert np.array_equal(read_shard(p, (1, 3)).X, store[ids[1:3]])
    assert ensure_shard(p, store, y, ids, {"rank": 1}, by_ref=True) == 0
    assert ensure_shard(p, store, y, ids, {"rank": 1}, by_ref=False) > 0  # switching kind rewrites
    ensure_shard(p, store, y, ids, {"rank": 1}, by_ref=True)
    store.path.rename(tmp_path / "gone")
    with pytest.raises(DataError, match=re.escape(str(p)) + ".*FTMPI_SHARED_DATA=0"):
        read_shard(p)
    with pytest.raises(ValueError, match="RowStore"):
        ensure_shard(p, np.zeros((300, 50), np.float32), y, ids, by_ref=True)
    # who reads by reference: rows in a file and every worker on rank 0's host, unless the env says
    monkeypatch.delenv("FTMPI_SHARED_DATA", raising=False)
    assert rows_by_reference(store, ["a", "a"], "a") and not rows_by_reference(store, ["a", "b"], "a")
    assert not rows_by_reference(np.zeros((2, 2)), ["a"], "a")
    monkeypatch.setenv("FTMPI_SHARED_DATA", "1")
    assert rows_by_reference(store, ["b"], "a")
    monkeypatch.setenv("FTMPI_SHARED_DATA", "0")
    assert not rows_by_reference(store, ["a"], "a")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_shard_files_follow_the_umask(tmp_path, umask):
    X, y, ids = rows()
    old = os.umask(umask)
    try:
        write_shard(tmp_path / "s.h5", X, y, ids)
        write_handoff(tmp_path / "h.h5", X, y, ids, {1: len(ids)})
    finally:
        os.umask(old)
    for name in ("s.h5", "h.h5"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("kind", ["float32", "uint8", "ref"])
def test_read_with_room_fills_one_buffer(tmp_path, kind):
    from ftmpi.storage.shards import ensure_shard

    store, _ = _store(tmp_path, 80, 30)
    y = np.arange(80, dtype=np.int32) % 3
    ids = np.array([5, 70, 1, 33, 9, 10])
    p = tmp_path / "s.h5"
    X_train = np.asarray(store) if kind == "float32" else store
    ensure_shard(p, X_train, y, ids, by_ref=kind == "ref")
    plain = read_shard(p)
    assert plain.buf is None
    s = read_shard(p, room=lambda n: n // 2 + 1)
    assert s.buf is not None and s.buf.shape == (6 + 4, 30) and s.buf.dtype == np.float32
    assert np.shares_memory(s.X, s.buf) and s.X.shape == (6, 30)
    assert np.array_equal(s.X, plain.X) and np.array_equal(s.X, store[ids])
    part = read_shard(p, (2, 5), room=lambda n: 0)
    assert np.array_equal(part.X, store[ids[2:5]]) and part.buf.shape == (3, 30)


def test_handoff_by_reference_gives_each_receiver_its_rows(tmp_path):
    store, _ = _store(tmp_path, 50, 8)
    ids = np.array([40, 2, 17, 3, 9])
    y = (ids % 3).astype(np.int32)
    p = handoff_path(tmp_path, 1)
    write_handoff(p, None, y, ids, {2: 3, 4: 2}, rows_from=store.ref_json())
    sl = handoff_slices(p)
    assert sl == {2: (0, 3), 4: (3, 5)}
    part = read_shard(p, sl[4])
    assert np.array_equal(part.ids, ids[3:]) and np.array_equal(part.X, store[ids[3:]])


@pytest.mark.parametrize("kind", ["uint8", "compressed", "ref", "float32"])
def test_a_worker_keeps_uint8_rows_and_converts_each_batch_to_the_same_floats(tmp_path, kind):
    """read_shard(raw=True) keeps an image dataset's uint8 rows (a quarter of the memory) with their scale;
    LocalShard.rows gives exactly the float32 features a float32 read gives, for any indices or slice, and
    handed rows of the same dataset are appended as uint8 too. Rows of another kind turn it into float32."""
    from ftmpi.storage.shards import ensure_shard
    from ftmpi.worker.localshard import LocalShard

    store, _ = _store(tmp_path, 90, 20)
    y = np.arange(90, dtype=np.int32) % 4
    ids = np.array([5, 70, 1, 33, 9, 10, 88, 41])
    p = tmp_path / "s.h5"
    ensure_shard(p, np.asarray(store) if kind == "float32" else store, y, ids, by_ref=kind == "ref",
                 compress=kind == "compressed")
    floats = read_shard(p).X
    s = read_shard(p, room=lambda n: 4, raw=True)
    assert s.X.dtype == (np.float32 if kind == "float32" else np.uint8) and s.buf.dtype == s.X.dtype
    assert s.scale == (None if kind == "float32" else pytest.approx(1 / 255))
    assert np.array_equal(read_shard(p, (2, 6), raw=True).X, s.X[2:6])
    local = LocalShard(s)
    pick = np.array([7, 0, 3, 3])
    assert local.rows(pick).dtype == np.float32 and np.array_equal(local.rows(pick), floats[pick])
    assert np.array_equal(local.rows(slice(2, 7)), floats[2:7])
    more = np.array([2, 3, 60])  # a handoff from the same dataset
    h = handoff_path(tmp_path, 3)
    write_handoff(h, store.raw(more), y[more], more, {1: 3}, scale=store.scale)
    local.append(read_shard(h, (0, 3), raw=True))
    assert local.X.dtype == s.X.dtype and len(local) == 11
    assert np.array_equal(local.rows(np.arange(8, 11)), store[more])
    assert np.array_equal(local.rows(slice(0, 8)), floats)
    odd = Shard(np.full((2, 20), 0.5, np.float32), np.zeros(2, np.int32), np.array([80, 81]))  # rows not held
    local.append(odd)  # float32 rows onto uint8 ones: everything becomes float32 features, unchanged
    assert local.X.dtype == np.float32 and local.scale is None
    assert np.array_equal(local.rows(slice(0, 8)), floats) and np.array_equal(local.rows(slice(11, 13)), odd.X)
    empty = LocalShard()
    empty.append(read_shard(p, raw=True))  # nothing held yet: takes the rows' own type
    assert empty.X.dtype == s.X.dtype and np.array_equal(empty.rows(slice(None)), floats)


def test_a_shard_with_a_bad_scale_is_refused_naming_the_file(tmp_path):
    p = tmp_path / "s.h5"
    write_shard(p, np.ones((3, 4), np.uint8), np.zeros(3, np.int32), np.arange(3), scale=0.5)
    with h5py.File(p, "r+") as f:
        f.attrs["x_scale"] = -1.0
    for raw in (False, True):
        with pytest.raises(DataError, match=re.escape(str(p)) + ": x_scale is -1.0, expected a positive number"):
            read_shard(p, raw=raw)


@pytest.mark.parametrize("compress", [False, True])
def test_rank_0_copies_a_shards_rows_a_block_at_a_time(tmp_path, compress):
    """Rows read by id (a RowStore) are checked and written a block at a time: rank 0 never holds a whole
    shard's rows (it held 12 MB per Fashion-MNIST shard, and as much again in the allocator), the file holds
    exactly the rows, and its checksum is the whole-array one (a file written before is still kept)."""
    from ftmpi.storage.rows import RowBlocks
    from ftmpi.storage.shards import ensure_shard

    store, _ = _store(tmp_path, 5000, 784)
    asked: list[int] = []
    raw = store.raw

    def counting(ids, out=None):
        asked.append(len(ids))
        return raw(ids, out)

    store.raw = counting  # type: ignore[method-assign]
    y = np.arange(5000, dtype=np.int32) % 10
    ids = np.random.default_rng(2).permutation(5000)[:4500]
    p = tmp_path / "s.h5"
    assert ensure_shard(p, store, y, ids, {"rank": 1}, compress=compress) > 0
    assert max(asked) <= 2048 < len(ids)
    assert np.array_equal(read_shard(p).X, store[ids])
    with h5py.File(p, "r") as f:
        assert f.attrs["rows_crc"] == zlib.crc32(memoryview(raw(ids)).cast("B"))
    assert RowBlocks(store, ids, rows=333).crc32() == zlib.crc32(memoryview(raw(ids)).cast("B"))
    assert ensure_shard(p, store, y, ids, {"rank": 1}, compress=compress) == 0
