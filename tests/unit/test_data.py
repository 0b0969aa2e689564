"""Datasets: the IDX reader, MNIST-like loading, Occupancy parsing, synthetic data and the search order."""
from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from ftmpi.config import DataConfig
from ftmpi.errors import DataError
from ftmpi.storage import data as data_mod
from ftmpi.storage.data import FASHION_CLASSES, IDX_FILES, Dataset, load_dataset, read_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    head = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    raw = idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_mnist_dir(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return folder


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No FTMPI_DATA, an empty system dir and an empty home, so only what a test creates is found."""
    monkeypatch.delenv("FTMPI_DATA", raising=False)
    monkeypatch.setattr(data_mod, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# ------------------------------------------------------------------------------------------------ IDX

@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / "a-idx3-ubyte", arr, gz)
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and np.array_equal(out, arr)
    out[0, 0, 0] = 7  # writable
    labels = read_idx(write_idx(tmp_path / "l-idx1-ubyte", np.array([3, 1, 4]), gz))
    assert labels.tolist() == [3, 1, 4]


def test_read_idx_bad_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match=re.escape(f"{p}: not an IDX file")):
        read_idx(p)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(empty)


def test_read_idx_unsupported_type(tmp_path):
    p = tmp_path / "floats"
    p.write_bytes(idx_bytes(np.zeros(4), type_code=0x0D))
    with pytest.raises(DataError, match="type code 0x0d"):
        read_idx(p)


def test_read_idx_truncated_and_too_long(tmp_path):
    raw = idx_bytes(np.zeros((10, 4, 4)))
    p = tmp_path / "short"
    p.write_bytes(raw[:-5])
    with pytest.raises(DataError, match=re.escape(f"{p}: truncated IDX file: 155 of 160")):
        read_idx(p)
    p.write_bytes(raw[:10])
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(p)
    p.write_bytes(raw + b"\x00")
    with pytest.raises(DataError, match="longer than its header"):
        read_idx(p)


def test_read_idx_truncated_gzip(tmp_path):
    comp = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (50, 28, 28))))
    p = tmp_path / "cut.gz"
    p.write_bytes(comp[: len(comp) // 2])
    with pytest.raises(DataError, match=re.escape(str(p))):
        read_idx(p)
    p.write_bytes(comp[:2] + b"\xff" * 40)
    with pytest.raises(DataError, match=re.escape(str(p))):
        read_idx(p)


def test_read_idx_missing(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------------------------------ MNIST-like

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_data_path(isolated, gz):
    folder = make_mnist_dir(isolated / "m", gz=gz)
    ds = load_dataset(DataConfig(dataset="mnist", path=str(folder)), seed=0)
    assert ds.X_train.shape == (12, 784) and ds.X_test.shape == (5, 784)
    X = np.asarray(ds.X_train)  # the training rows stay on disk (a RowStore); all of them, as float32
    assert X.dtype == np.float32 and X.flags.c_contiguous and ds.X_train.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_train.tolist() == [i % 10 for i in range(12)]
    assert X.min() >= 0.0 and X.max() <= 1.0
    raw = read_idx(next(folder.glob("train-images*")))
    assert np.allclose(ds.X_train[3], raw[3].reshape(-1) / 255.0)
    assert ds.n_classes == 10 and ds.classes == tuple("0123456789") and ds.source == str(folder)


def test_fashion_class_names(isolated):
    folder = make_mnist_dir(isolated / "f")
    ds = load_dataset(DataConfig(dataset="fashion-mnist", path=str(folder)), seed=0)
    assert ds.classes == FASHION_CLASSES and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_mnist_count_mismatch(isolated):
    folder = make_mnist_dir(isolated / "m", gz=False)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(4))
    with pytest.raises(DataError, match="5 images but t10k-labels-idx1-ubyte has 4 labels"):
        load_dataset(DataConfig(dataset="mnist", path=str(folder)), seed=0)


def test_mnist_label_out_of_range(isolated):
    folder = make_mnist_dir(isolated / "m", gz=False)
    write_idx(folder / "train-labels-idx1-ubyte", np.full(12, 11))
    with pytest.raises(DataError, match="label 11 out of range"):
        load_dataset(DataConfig(dataset="mnist", path=str(folder)), seed=0)


def test_search_order(isolated, monkeypatch):
    root = isolated / "ftdata"
    home = isolated / "home" / ".cache" / "ftmpi" / "mnist"
    system = isolated / "system" / "mnist"
    places = {"path": isolated / "explicit", "env_named": root / "mnist", "env_root": root,
              "system": system, "home": home}
    monkeypatch.setenv("FTMPI_DATA", str(root))
    cfg_with_path = DataConfig(dataset="mnist", path=str(places["path"]))
    for name in ("home", "system", "env_root", "env_named", "path"):  # each new one must take over
        make_mnist_dir(places[name])
        assert load_dataset(cfg_with_path, 0).source == str(places[name]), name
    # a data.path without the files is skipped, not fatal
    assert load_dataset(DataConfig(dataset="mnist", path=str(isolated / "empty")), 0).source == str(
        places["env_named"])


def test_search_needs_all_files(isolated):
    folder = make_mnist_dir(isolated / "m")
    (folder / (IDX_FILES[3] + ".gz")).unlink()
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(dataset="mnist", path=str(folder)), 0)
    msg = str(info.value)
    assert str(folder) in msg and "~/.cache/ftmpi/mnist" in msg and str(isolated / "system" / "mnist") in msg


def test_not_found_hint_for_fashion(isolated):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig(dataset="fashion-mnist"), 0)


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("FTMPI_PREPARED", str(tmp_path))  # the decompressed copy goes here, not to ~/.cache
    ds = load_dataset(DataConfig(dataset="fashion-mnist", path=str(FASHION_DIR)), seed=0)
    assert ds.X_train.shape == (60000, 784) and ds.X_test.shape == (10000, 784)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    X = np.asarray(ds.X_train)
    assert X.dtype == np.float32 and X.flags.c_contiguous
    assert float(X.max()) == 1.0 and float(X.min()) == 0.0
    assert np.bincount(ds.y_train).tolist() == [6000] * 10 and ds.n_classes == 10


# ------------------------------------------------------------------------------------------ Occupancy

HEADER = '"date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"'
ROWS = [
    ("2015-02-04 17:51:00", 23.18, 27.272, 426, 721.25, 0.00479298817650529, 1),
    ("2015-02-04 17:51:59", 23.15, 27.2675, 429.5, 714, 0.00478344094931065, 1),
    ("2015-02-04 17:53:00", 23.15, 27.245, 426, 713.5, 0.00477946352442199, 1),
    ("2015-02-04 17:54:00", 22.15, 27.2, 0, 708.25, 0.00477150882608175, 0),
    ("2015-02-04 17:55:00", 21.1, 27.2, 0, 704.5, 0.00476952235802499, 0),
]


def occupancy_text(rows, row_id: bool = True, start: int = 1) -> str:
    lines = [HEADER]
    for i, (date, *vals) in enumerate(rows, start=start):
        fields = ([f'"{i}"'] if row_id else []) + [f'"{date}"'] + [repr(v) for v in vals]
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"


def make_occupancy(folder: Path, row_id: bool = True, test2: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datatraining.txt").write_text(occupancy_text(ROWS, row_id))
    (folder / "datatest.txt").write_text(occupancy_text(ROWS[:2], row_id))
    if test2:
        (folder / "datatest2.txt").write_text(occupancy_text(ROWS[2:], row_id))
    return folder


@pytest.mark.parametrize("row_id", [True, False])
def test_occupancy_real_format(isolated, row_id):
    folder = make_occupancy(isolated / "occ", row_id)
    ds = load_dataset(DataConfig(dataset="occupancy", path=str(folder)), 0)
    assert ds.X_train.shape == (5, 5) and ds.X_test.shape == (2, 5)
    assert ds.y_train.tolist() == [1, 1, 1, 0, 0] and ds.y_test.tolist() == [1, 1]
    assert np.allclose(ds.X_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(ds.X_train.std(axis=0), 1, atol=1e-4)
    raw = np.array([r[1:6] for r in ROWS], dtype=np.float64)
    expected_test = (raw[:2] - raw.mean(0)) / raw.std(0)   # standardised with the TRAIN statistics
    assert np.allclose(ds.X_test, expected_test, atol=1e-4)
    assert ds.n_classes == 2 and len(ds.classes) == 2


def test_occupancy_concatenates_datatest2(isolated):
    folder = make_occupancy(isolated / "occ", test2=True)
    ds = load_dataset(DataConfig(dataset="occupancy", path=str(folder)), 0)
    assert ds.y_test.tolist() == [1, 1, 1, 0, 0]


@pytest.mark.parametrize("bad_line,match", [
    ('"3","2015-02-04 17:53:00",23.15,abc,426,713.5,0.0047,1', "non-numeric"),
    ('"3","2015-02-04 17:53:00",23.15,27.2,426,713.5', "expected 7 or 8 fields"),
    ('"3","2015-02-04 17:53:00",23.15,27.2,426,713.5,0.0047,2', "Occupancy must be 0 or 1"),
    ('"3","2015-02-04 17:53:00",nan,27.2,426,713.5,0.0047,1', "non-finite"),
])
def test_occupancy_bad_row_names_file_and_line(isolated, bad_line, match):
    folder = make_occupancy(isolated / "occ")
    lines = occupancy_text(ROWS).splitlines()
    lines[3] = bad_line
    (folder / "datatraining.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"datatraining\.txt:4: {match}"):
        load_dataset(DataConfig(dataset="occupancy", path=str(folder)), 0)


def test_occupancy_bad_header(isolated):
    folder = make_occupancy(isolated / "occ")
    (folder / "datatest.txt").write_text('"date","Temperature"\n"1","x",1\n')
    with pytest.raises(DataError, match=r"datatest\.txt:1: header lacks column"):
        load_dataset(DataConfig(dataset="occupancy", path=str(folder)), 0)


# ------------------------------------------------------------------------------------------ synthetic

def logreg_accuracy(ds: Dataset, steps: int = 200, lr: float = 0.5) -> float:
    X, y, k = ds.X_train.astype(np.float64), ds.y_train, ds.n_classes
    W, b = np.zeros((X.shape[1], k)), np.zeros(k)
    for _ in range(steps):
        z = X @ W + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        W -= lr * X.T @ p / len(y)
        b -= lr * p.mean(axis=0)
    return float(((ds.X_test @ W + b).argmax(axis=1) == ds.y_test).mean())


def test_synthetic_shapes_and_determinism():
    cfg = DataConfig(dataset="synthetic", n_samples=1000, n_features=7, n_classes=3, test_fraction=0.25)
    a, b, c = load_dataset(cfg, 1), load_dataset(cfg, 1), load_dataset(cfg, 2)
    assert a.X_train.shape == (750, 7) and a.X_test.shape == (250, 7) and a.n_classes == 3
    assert a.X_train.dtype == np.float32 and a.y_train.dtype == np.int32 and a.X_train.flags.c_contiguous
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.X_train, c.X_train)
    assert set(np.unique(a.y_train)) == {0, 1, 2}


def test_synthetic_is_learnable():
    ds = load_dataset(DataConfig(dataset="synthetic"), 0)
    acc = logreg_accuracy(ds)
    assert acc > 0.75, acc  # chance is 0.25 for the default 4 classes
