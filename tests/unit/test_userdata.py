"""A dataset in a file of the user's (ftmpi/storage/userdata.py): HDF5, npz and CSV files made with numpy, their
key names, the label mapping, the prepared copy (rows read by id, never the whole matrix), and one line per bad
file."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from ftmpi.config import DataConfig, load_config
from ftmpi.errors import CheckpointError, ConfigError, DataError
from ftmpi.storage.data import load_dataset
from ftmpi.storage.rows import RowStore
from ftmpi.storage.userdata import TEST_IN_MEMORY, UINT8_SCALE, check_labels, split_test

LABELS = np.array([3, 7, 42])  # non-contiguous integer labels: classes 0, 1, 2


def blobs(n: int = 600, d: int = 6, labels: np.ndarray = LABELS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs (one centre per label, unit noise): a problem a linear model learns to ~90 %."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(labels), d))
    centres *= 2.2 / np.linalg.norm(centres, axis=1, keepdims=True)
    cls = rng.integers(0, len(labels), n)
    return (centres[cls] + rng.normal(size=(n, d))).astype(np.float32), np.asarray(labels)[cls]


def write_csv(path: Path, X: np.ndarray, y: np.ndarray, label: str = "label", at: int | None = None) -> Path:
    """A CSV with a header; the label column last, or at column ``at``."""
    names = [f"f{i}" for i in range(X.shape[1])]
    at = len(names) if at is None else at
    names.insert(at, label)
    with open(path, "w") as fh:
        fh.write(",".join(names) + "\n")
        for row, lab in zip(X, y, strict=True):
            cells = [f"{v:.9g}" for v in row]
            cells.insert(at, str(int(lab)))
            fh.write(",".join(cells) + "\n")
    return path


def write_h5(path: Path, **arrays: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
    return path


@pytest.fixture(autouse=True)
def prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("FTMPI_PREPARED", str(tmp_path / "prepared"))
    return tmp_path / "prepared"


def load(kind: str, path: Path, **keys) -> object:
    return load_dataset(DataConfig(dataset=kind, path=str(path), **keys), seed=0)


# ------------------------------------------------------------------------------------------ formats

def test_hdf5_with_its_own_test_set_is_read_where_it_lies(tmp_path, prepared):
    X, y = blobs()
    p = write_h5(tmp_path / "d.h5", X=X[:500], y=y[:500], X_test=X[500:], y_test=y[500:])
    d = load("hdf5", p)
    assert isinstance(d.X_train, RowStore) and d.X_train.path == p and not prepared.exists()  # nothing copied
    assert np.array_equal(np.asarray(d.X_train), X[:500]) and np.array_equal(d.X_test, X[500:])
    assert d.labels.tolist() == [3, 7, 42] and d.classes == ("3", "7", "42") and d.n_classes == 3
    assert np.array_equal(LABELS[d.y_train], y[:500]) and np.array_equal(LABELS[d.y_test], y[500:])
    assert d.name == "d.h5" and d.y_train.dtype == np.int32


def test_hdf5_without_a_test_set_is_split_by_test_fraction_into_a_prepared_copy(tmp_path, prepared):
    X, y = blobs(n=1000)
    p = write_h5(tmp_path / "d.h5", X=X.astype(np.float64), y=y)
    d = load("hdf5", p)
    test = split_test(1000, 0.2)
    assert test.sum() == 200 and len(d.y_test) == 200 and len(d.y_train) == 800
    assert isinstance(d.X_train, RowStore) and d.X_train.path.parent == prepared
    assert np.array_equal(np.asarray(d.X_train), X[~test]) and np.array_equal(d.X_test, X[test])
    assert np.array_equal(LABELS[d.y_train], y[~test])
    made = d.X_train.path.stat().st_mtime_ns
    again = load("hdf5", p)  # the prepared copy is reused
    assert again.X_train.path == d.X_train.path and again.X_train.path.stat().st_mtime_ns == made
    assert len(load("hdf5", p, test_fraction=0.5).y_test) == 500  # another fraction: another copy
    assert len(list(prepared.iterdir())) == 2


def test_a_compressed_chunked_hdf5_and_other_array_names(tmp_path):
    X, y = blobs()
    p = tmp_path / "c.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("feats", data=X, chunks=(64, 6), compression="gzip")
        f["grp/lab"] = y.astype(np.int16)
    d = load("hdf5", p, x="feats", y="grp/lab")
    test = split_test(600, 0.2)
    assert np.array_equal(np.asarray(d.X_train), X[~test]) and np.array_equal(LABELS[d.y_train], y[~test])


@pytest.mark.parametrize("compressed", [False, True])
def test_npz(tmp_path, compressed):
    X, y = blobs()
    p = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(p, X=X, y=y, X_test=X[:50], y_test=y[:50])
    d = load("npz", p)
    assert np.array_equal(np.asarray(d.X_train), X) and np.array_equal(d.X_test, X[:50])
    assert np.array_equal(LABELS[d.y_test], y[:50])


def test_uint8_features_stay_uint8_and_read_as_x_over_255(tmp_path):
    X, y = blobs()
    U = np.clip(X * 40 + 128, 0, 255).astype(np.uint8)
    np.savez(tmp_path / "u.npz", X=U, y=y)
    d = load("npz", tmp_path / "u.npz")
    test = split_test(600, 0.2)
    assert d.X_train.stored == np.uint8 and d.X_train.scale == UINT8_SCALE
    assert np.array_equal(d.X_train[np.arange(5)], U[~test][:5] * np.float32(UINT8_SCALE))
    assert d.X_test.raw(np.arange(3)).dtype == np.uint8  # the test set held as uint8 too


def test_csv_label_last_or_named(tmp_path):
    X, y = blobs()
    test = split_test(600, 0.2)
    d = load("csv", write_csv(tmp_path / "a.csv", X, y))
    assert np.allclose(np.asarray(d.X_train), X[~test]) and np.array_equal(LABELS[d.y_train], y[~test])
    d2 = load("csv", write_csv(tmp_path / "b.csv", X, y, label="kind", at=2), label="kind")
    assert np.array_equal(np.asarray(d2.X_train), np.asarray(d.X_train)) and d2.labels.tolist() == [3, 7, 42]


def test_negative_and_wide_labels_map_in_increasing_order(tmp_path):
    X, _ = blobs(n=40)
    y = np.array([-5, 10**12, 0, 7] * 10)
    d = load("hdf5", write_h5(tmp_path / "l.h5", X=X, y=y, X_test=X[:4], y_test=y[:4]))
    assert d.labels.tolist() == [-5, 0, 7, 10**12] and d.y_test.tolist() == [0, 3, 1, 2]


def test_a_large_test_set_stays_on_disk(tmp_path, monkeypatch):
    import ftmpi.storage.userdata as ud

    monkeypatch.setattr(ud, "TEST_IN_MEMORY", 100)
    X, y = blobs()
    d = load("hdf5", write_h5(tmp_path / "d.h5", X=X, y=y, X_test=X[:100], y_test=y[:100]))
    assert isinstance(d.X_test, RowStore) and np.array_equal(d.X_test[0:100], X[:100])
    assert TEST_IN_MEMORY >= 1 << 20


# ------------------------------------------------------------------------------------------ bad files

def _bad_h5(tmp_path: Path, **arrays) -> Path:
    return write_h5(tmp_path / "bad.h5", **arrays)


X0, Y0 = blobs(n=20, d=3)
XNAN = X0.copy()
XNAN[4, 1] = np.nan
BAD = {
    "missing X": (dict(Xs=X0, y=Y0), "bad.h5: no array 'X' (data.x); expected the features there (found: y)"),
    "missing y": (dict(X=X0), "bad.h5: no array 'y' (data.y); expected the labels there (found: X)"),
    "lengths": (dict(X=X0, y=Y0[:19]),
             "bad.h5: array 'X' has 20 rows but array 'y' has 19; expected one label per row"),
    "test half": (dict(X=X0, y=Y0, X_test=X0),
             "bad.h5: array 'X_test' but no 'y_test'; expected both (a test set) or neither"),
    "1-d X": (dict(X=X0[:, 0], y=Y0), "bad.h5: array 'X' has shape (20,); expected (rows, features)"),
    "strings": (dict(X=X0.astype("S4"), y=Y0),
             "bad.h5: array 'X' holds |S4 values; expected numbers (uint8 or float features)"),
    "nan": (dict(X=XNAN, y=Y0, X_test=X0, y_test=Y0),
             "bad.h5: array 'X' row 4 column 1 is nan; expected finite features"),
    "nan prepared": (dict(X=XNAN.astype(np.float64), y=Y0),
             "bad.h5: array 'X' row 4 column 1 is nan; expected finite features"),
    "one class": (dict(X=X0, y=np.full(20, 7)),
             "bad.h5: array 'y' holds one class only (label 7) in the training rows; expected at least 2 classes"),
    "float labels": (dict(X=X0, y=np.r_[Y0[:19], 2.5]), "bad.h5: array 'y' row 19 is 2.5; expected integer labels"),
    "columns": (dict(X=X0, y=Y0, X_test=X0[:, :2], y_test=Y0),
             "bad.h5: array 'X_test' has 2 features but array 'X' has 3; expected the same columns"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_hdf5_file_is_one_line(tmp_path, case):
    arrays, line = BAD[case]
    p = _bad_h5(tmp_path, **arrays)
    with pytest.raises(DataError) as exc:
        load("hdf5", p)
    assert str(exc.value) == f"{tmp_path}/{line}" and "\n" not in str(exc.value)


def test_bad_npz_and_not_a_file_of_the_format(tmp_path):
    np.savez(tmp_path / "b.npz", X=X0, y=np.array(["a"] * 20))
    with pytest.raises(DataError, match=r"b\.npz: array 'y' holds <U1 values; expected integer labels$"):
        load("npz", tmp_path / "b.npz")
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(DataError, match=r"t\.npz: not a readable npz file"):
        load("npz", tmp_path / "t.npz")
    with pytest.raises(DataError, match=r"t\.npz: not a readable HDF5 file"):
        load("hdf5", tmp_path / "t.npz")
    with pytest.raises(DataError, match=r"nowhere\.h5: file not found \(data\.path of data\.dataset hdf5\)$"):
        load("hdf5", tmp_path / "nowhere.h5")


CSV_BAD = {
    "non-numeric": ("a,b,label\n1,2,3\n1,x,7\n", "bad.csv:3: column 'b' holds 'x'; expected a number"),
    "nan": ("a,b,label\n1,2,3\n1,nan,7\n", "bad.csv:3: column 'b' is nan; expected a finite feature"),
    "fields": ("a,b,label\n1,2,3\n1,7\n", "bad.csv:3: 2 fields; expected 3 as in the header"),
    "no header": ("1,2,3\n1,2,7\n", "bad.csv:1: the first line holds numbers; expected a header naming the columns"),
    "label": ("a,b,label\n1,2,3\n1,2,7.5\n", "bad.csv:3: label column 'label' holds 7.5; expected an integer"),
    "one class": ("a,b,label\n1,2,3\n1,2,3\n3,3,3\n", "bad.csv: column 'label' holds one class only (label 3) in the "
                  "training rows; expected at least 2 classes"),
    "empty": ("\n\n", "bad.csv: empty file; expected a header line and rows"),
    "no rows": ("a,b,label\n", "bad.csv: no data rows; expected a header, then rows of features and a label"),
}


@pytest.mark.parametrize("case", sorted(CSV_BAD))
def test_each_bad_csv_file_is_one_line(tmp_path, case, prepared):
    text, line = CSV_BAD[case]
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError) as exc:
        load("csv", tmp_path / "bad.csv")
    assert str(exc.value) == f"{tmp_path}/{line}"
    assert not prepared.exists() or not [p for p in prepared.iterdir()]  # no copy, no temp file left


def test_csv_label_column_missing(tmp_path):
    (tmp_path / "c.csv").write_text("a,b,label\n1,2,3\n1,2,7\n")
    with pytest.raises(DataError, match=r"c\.csv:1: no column 'kind' \(data\.label\) in the header \(a, b, label\)$"):
        load("csv", tmp_path / "c.csv", label="kind")


# ------------------------------------------------------------------------------------------ config, mapping

def test_a_user_format_needs_data_path(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  dataset: csv\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: data\.path: expected the csv file to train on"):
        load_config(cfg, env={})
    ok = load_config(cfg, ["data.path=x.csv", "data.label=kind"], env={})
    assert (ok.data.path, ok.data.label, ok.data.x, ok.data.y) == ("x.csv", "kind", "X", "y")


def test_a_resume_with_another_label_mapping_is_refused():
    check_labels(None, None, "data.path")
    check_labels(np.array([3, 7]), np.array([3, 7]), "data.path")
    with pytest.raises(CheckpointError, match=r"to labels \[3, 7\], the data file gives \[3, 8\]"):
        check_labels(np.array([3, 7]), np.array([3, 8]), "data.path")
    with pytest.raises(CheckpointError, match="none \\(a built-in dataset\\)"):
        check_labels(None, np.array([3, 8]), "data.path")


def test_the_checkpoint_keeps_the_label_mapping(tmp_path):
    from ftmpi.storage.checkpoint import format_summary, save, summarize
    from ftmpi.storage.checkpoint import load as load_ckpt
    from tests.unit.test_checkpoint import make_snapshot

    snap = make_snapshot()
    snap.labels = np.array([3, 7, 42])
    save(tmp_path / "round-000012.h5", snap)
    assert load_ckpt(tmp_path / "round-000012.h5").labels.tolist() == [3, 7, 42]
    assert "labels          : 0=3  1=7  2=42" in format_summary(summarize(tmp_path / "round-000012.h5"))
    plain = make_snapshot()
    save(tmp_path / "round-000013.h5", plain)
    assert load_ckpt(tmp_path / "round-000013.h5").labels is None


def test_the_run_dirs_test_set_carries_the_mapping_to_a_takeover(tmp_path):
    from ftmpi.storage.rundata import open_run_data, write_eval_set

    X, y = blobs()
    d = load("hdf5", write_h5(tmp_path / "d.h5", X=X, y=y, X_test=X[:50], y_test=y[:50]))
    write_eval_set(tmp_path / "run", d)
    rd = open_run_data(tmp_path / "run")
    assert rd.labels.tolist() == [3, 7, 42] and rd.classes == ("3", "7", "42")


def test_no_prepared_copy_when_the_folder_cannot_be_written(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        monkeypatch.setenv("FTMPI_PREPARED", "/proc/ftmpi-nowhere")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        monkeypatch.setenv("FTMPI_PREPARED", str(tmp_path / "ro" / "p"))
    np.savez(tmp_path / "d.npz", X=X0, y=Y0)
    with pytest.raises(DataError, match=r"d\.npz: cannot write its prepared copy in .*; set FTMPI_PREPARED"):
        load("npz", tmp_path / "d.npz")
