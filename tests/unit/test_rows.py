"""The training rows on disk (ftmpi/storage/rows.py): same float32 rows as the in-memory loader, read by id, the
prepared copy made once, references that refuse a different file."""
from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest

from ftmpi.config import DataConfig
from ftmpi.errors import DataError
from ftmpi.storage import rows as rows_mod
from ftmpi.storage.data import load_dataset
from ftmpi.storage.rows import RowStore, idx_store


def _idx(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()


def _mnist(folder: Path, n: int = 40, gz: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, m in (("train", n), ("t10k", 7)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (m, 28, 28))), ("labels-idx1", np.arange(m) % 10)):
            data = _idx(arr)
            name = folder / f"{prefix}-{kind}-ubyte"
            if gz:
                Path(f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                name.write_bytes(data)
    return folder


@pytest.fixture
def prep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "prepared"
    monkeypatch.setenv("FTMPI_PREPARED", str(folder))
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_rows_by_id_equal_the_in_memory_loader(tmp_path: Path, prep: Path, gz: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _mnist(tmp_path / "m", gz=gz)
    cfg = DataConfig(dataset="mnist", path=str(folder))
    lazy, eager = load_dataset(cfg, 0), load_dataset(cfg, 0, lazy=False)
    assert isinstance(lazy.X_train, RowStore) and isinstance(eager.X_train, np.ndarray)
    X = eager.X_train
    assert lazy.X_train.shape == X.shape and len(lazy.X_train) == 40 and lazy.n_features == 784
    monkeypatch.setattr(rows_mod, "_CHUNK_BYTES", 3 * 784)  # many windows, each given back
    ids = np.array([39, 0, 7, 7, 12, 38, 1])
    assert np.array_equal(lazy.X_train[ids], X[ids])  # bit for bit, in the order asked, duplicates kept
    assert np.array_equal(lazy.X_train[5], X[5]) and np.array_equal(lazy.X_train[-1], X[-1])
    assert np.array_equal(lazy.X_train[10:20:3], X[10:20:3])
    mask = np.arange(40) % 3 == 0
    assert np.array_equal(lazy.X_train[mask], X[mask])
    assert np.array_equal(np.asarray(lazy.X_train), X)
    assert lazy.X_train[np.zeros(0, np.int64)].shape == (0, 784) and lazy.X_train[[]].shape == (0, 784)
    assert lazy.X_train.raw([3]).dtype == np.uint8
    with pytest.raises(IndexError):
        lazy.X_train[np.array([40])]
    # a plain IDX file is read where it lies; a gzip one is decompressed once into the prepared dir
    made = sorted(p.name for p in prep.glob("*")) if prep.exists() else []
    assert len(made) == (1 if gz else 0)
    if gz:
        assert lazy.X_train.path.parent == prep and lazy.X_train.path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_prepared_copy_is_reused_and_a_damaged_one_remade(tmp_path: Path, prep: Path) -> None:
    folder = _mnist(tmp_path / "m")
    src = folder / "train-images-idx3-ubyte.gz"
    a = idx_store(src, 1 / 255)
    assert a is not None
    first = a.path.stat().st_mtime_ns
    b = idx_store(src, 1 / 255)
    assert b is not None and b.path == a.path and b.path.stat().st_mtime_ns == first  # not written again
    with open(a.path, "r+b") as fh:  # cut short (a crash of an old writer, a full disk)
        fh.truncate(1000)
    c = idx_store(src, 1 / 255)
    assert c is not None and c.path.stat().st_size == 16 + 40 * 784
    assert np.array_equal(c.raw(np.arange(40)), a.raw(np.arange(40)))


def test_a_damaged_source_is_named(tmp_path: Path, prep: Path) -> None:
    folder = _mnist(tmp_path / "m")
    src = folder / "train-images-idx3-ubyte.gz"
    src.write_bytes(src.read_bytes()[:200])
    with pytest.raises(DataError, match=re.escape(str(src))):
        load_dataset(DataConfig(dataset="mnist", path=str(folder)), 0)
    assert not any(prep.glob("*")) if prep.exists() else True  # no half copy left behind
    plain = _mnist(tmp_path / "p", gz=False)
    img = plain / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated IDX file"):
        load_dataset(DataConfig(dataset="mnist", path=str(plain)), 0)


def test_no_writable_prepared_dir_falls_back_to_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FTMPI_PREPARED", str(blocker / "sub"))
    ds = load_dataset(DataConfig(dataset="mnist", path=str(_mnist(tmp_path / "m"))), 0)
    assert isinstance(ds.X_train, np.ndarray) and ds.X_train.shape == (40, 784)


def test_reference_opens_the_same_file_or_says_why_not(tmp_path: Path, prep: Path) -> None:
    store = idx_store(_mnist(tmp_path / "m", gz=False) / "train-images-idx3-ubyte", 1 / 255)
    assert store is not None
    again = RowStore.from_ref(store.ref_json(), "shard.h5")
    assert np.array_equal(again[[1, 2]], store[[1, 2]])
    moved = dict(store.ref(), path=str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"shard\.h5: .*cannot use.*FTMPI_SHARED_DATA=0"):
        RowStore.from_ref(moved, "shard.h5")
    os.utime(store.path, ns=(1, 1))
    with pytest.raises(DataError, match="changed since rank 0 opened it"):
        RowStore.from_ref(store.ref(), "shard.h5")
    with pytest.raises(DataError, match="malformed row reference"):
        RowStore.from_ref("{}", "shard.h5")


def _peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


def test_sparse_rows_of_a_big_file_do_not_make_it_resident(tmp_path: Path) -> None:
    """Rank 0 and the workers read scattered rows (5 % of a 96 MB file here): the resident peak grows with
    the rows returned and a window of the file, not with the file (which would be 96 MB more)."""
    n, d = 120_000, 800
    path = tmp_path / "big"
    with open(path, "wb") as fh:
        fh.write(bytes([0, 0, 8, 2]) + np.array([n, d], ">u4").tobytes())
        block = np.random.default_rng(0).integers(0, 256, (10_000, d), dtype=np.uint8).tobytes()
        for _ in range(n // 10_000):
            fh.write(block)
    store = RowStore(path, 12, n, d, np.uint8, 1 / 255)
    ids = np.sort(np.random.default_rng(1).choice(n, n // 20, replace=False))
    store.raw(ids[:10])  # warm the code path
    if not _peak_reset():
        pytest.skip("/proc/self/clear_refs not writable")
    base = _status_kb("VmHWM")
    got = store.raw(ids)  # 4.6 MB of rows
    grew_mb = (_status_kb("VmHWM") - base) / 1024
    assert grew_mb < 40, f"resident peak grew by {grew_mb:.0f} MB reading 5 % of a 96 MB file"
    out = np.zeros((len(ids), d), np.float32)
    assert store.rows(ids, out) is out and np.array_equal(out[:5], store[ids[:5]])
    assert np.array_equal(got[:5].astype(np.float32) * np.float32(1 / 255), out[:5])


def test_the_test_images_stay_uint8_and_evaluate_exactly_as_float32(tmp_path: Path, prep: Path) -> None:
    """An image dataset's test rows are held as uint8 (PackedRows: a quarter of the memory on rank 0); every
    way of indexing them gives exactly the float32 features of the eager loader, a prediction over them (a
    chunk converted at a time) is the float32 one, and the test-set file a takeover needs is written from
    the uint8 rows as they are."""
    from ftmpi.kernels.layout import PACKED_CHUNK_ROWS

    from ftmpi.model.models import Model
    from ftmpi.storage.rows import PackedRows
    from ftmpi.storage.rundata import eval_set_path, open_run_data, write_eval_set
    from ftmpi.storage.shards import read_shard

    folder = _mnist(tmp_path / "m", gz=False)
    big = np.random.default_rng(3).integers(0, 256, (PACKED_CHUNK_ROWS * 2 + 5, 28, 28))  # several chunks
    (folder / "t10k-images-idx3-ubyte").write_bytes(_idx(big))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.arange(len(big)) % 10))
    cfg = DataConfig(dataset="mnist", path=str(folder))
    lazy, eager = load_dataset(cfg, 0), load_dataset(cfg, 0, lazy=False)
    T, X = lazy.X_test, eager.X_test
    assert isinstance(T, PackedRows) and T.X.dtype == np.uint8 and isinstance(X, np.ndarray)
    assert T.shape == X.shape and T.dtype == np.float32 and T.X.nbytes * 4 == X.nbytes
    ids = np.array([len(X) - 1, 0, 7, 7])
    assert np.array_equal(T[ids], X[ids]) and np.array_equal(T[3:300:7], X[3:300:7])
    assert np.array_equal(T[5], X[5]) and np.array_equal(np.asarray(T), X)
    model = Model.build("mlp", (16,), 784, 10)
    params = np.random.default_rng(0).normal(0, 0.05, model.n_params).astype(np.float32)
    assert np.array_equal(model.predict(params, T), model.predict(params, X))
    assert model.evaluate(params, T, lazy.y_test, 10)[0] == model.evaluate(params, X, eager.y_test, 10)[0]
    with pytest.raises(ValueError, match="expected"):
        Model.build("logreg", (), 783, 10).predict(np.zeros(7840, np.float32), T)
    run = tmp_path / "run"
    assert write_eval_set(run, lazy) > 0
    s = read_shard(eval_set_path(run), raw=True)
    assert s.X.dtype == np.uint8 and np.array_equal(s.X, T.X)
    got = open_run_data(run).X_test  # a takeover's test set: uint8 again, the same features
    assert isinstance(got, PackedRows) and np.array_equal(np.asarray(got), X)
    assert write_eval_set(tmp_path / "eager", eager) > 0  # float32 test rows: packed back to uint8, losslessly
    s = read_shard(eval_set_path(tmp_path / "eager"), raw=True)
    assert s.X.dtype == np.uint8 and np.array_equal(s.X, T.X)
