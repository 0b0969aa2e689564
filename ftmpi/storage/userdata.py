"""A dataset in a file of the user's: ``data.dataset: hdf5 | npz | csv`` with ``data.path``.

An HDF5 or npz file holds the features ``X`` (``(n, d)``) and the labels ``y`` (``(n,)``), other names given by
``data.x`` / ``data.y``, and, when present, a test set of its own under the same names with ``_test``
(``X_test``, ``y_test``). A CSV file has a header line naming its columns and the label in the last column
(or the column ``data.label`` names); every other column is a feature. Without a test set of its own,
``data.test_fraction`` of the rows, drawn with a fixed seed (the split belongs to the file and that fraction,
not to the run's seed), are the test set.

Features are uint8 (kept as uint8; a feature is ``x / 255``, as for images) or any other numbers (float32).
Labels are any integers: their distinct values, in increasing order, become the classes ``0..k-1``
(:attr:`UserData.labels` keeps the value of each class; the checkpoint records it and a resume with another
mapping is refused, :func:`check_labels`).

Rank 0 never holds the training matrix: ``X_train`` is a :class:`~ftmpi.storage.rows.RowStore` read by row id
from a file, which is

- the user's HDF5 file itself when its ``X`` and ``X_test`` are stored contiguous and uncompressed, as uint8 or
  little-endian float32 (nothing is copied; float rows are checked for NaN a block at a time at each load);
- else a *prepared copy*: an HDF5 file with contiguous ``X_train``, ``y_train``, ``X_test``, ``y_test``, written
  once, a block of rows at a time (npz members are streamed out of the zip, a CSV parsed a block of lines at
  a time), into ``$FTMPI_PREPARED`` or ``~/.cache/ftmpi/prepared/``, under a name derived from the source's
  path, size and modification time and the keys that shape it; every later run reuses it.

The test set is held in memory when it is small (:data:`TEST_IN_MEMORY` bytes in its stored type), else read
a chunk at a time from the file too. Every problem of the file (missing array or column, mismatched lengths,
non-numeric values, NaN features, one class only) is one :class:`~ftmpi.errors.DataError` line naming the file,
the array or column (and the row) and what was expected.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ftmpi.config import DataConfig
from ftmpi.errors import CheckpointError, DataError
from ftmpi.storage.fsutil import temp_beside
from ftmpi.storage.rows import PackedRows, RowStore, prepared_dir

__all__ = ["TEST_IN_MEMORY", "UINT8_SCALE", "UserData", "check_labels", "load_user_data", "split_test"]

UINT8_SCALE = 1.0 / 255.0  # uint8 features are x * float32(1/255), as image pixels are
TEST_IN_MEMORY = 64 << 20  # a test set up to this many bytes (stored type) is held in memory
_BLOCK_BYTES = 16 << 20  # rows read, checked and written per block while preparing or checking
_SPLIT_SEED = 0x5EED  # the test rows drawn by test_fraction depend on the file and the fraction only
_FORMAT, _VERSION = "ftmpi-prepared-userdata", 1


@dataclass
class UserData:
    """What :func:`load_user_data` returns (``ftmpi.storage.data`` makes it a ``Dataset``)."""

    X_train: RowStore
    y_train: np.ndarray  # int32 classes 0..k-1
    X_test: RowStore | PackedRows | np.ndarray
    y_test: np.ndarray
    labels: np.ndarray  # int64: the file's label value of each class
    source: str


def split_test(n: int, fraction: float) -> np.ndarray:
    """Whether each of ``n`` rows is a test row when a file has no test set of its own: ``round(n * fraction)``
    rows (at least 1, at most ``n - 1``) drawn with a fixed seed."""
    k = min(max(round(n * fraction), 1), n - 1)
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(_SPLIT_SEED).permutation(n)[:k]] = True
    return mask


def check_labels(saved: Any, labels: Any, where: str) -> None:
    """Refuse to continue a run whose checkpoint (``saved``: its label mapping, or None) maps the file's labels
    to classes otherwise than the dataset now does (``labels``, or None for a built-in dataset)."""
    if saved is None and labels is None:
        return
    if saved is None or labels is None or not np.array_equal(np.asarray(saved), np.asarray(labels)):
        show = lambda v: "none (a built-in dataset)" if v is None else list(map(int, v))  # noqa: E731
        raise CheckpointError(f"{where}: the checkpoint maps classes 0..k-1 to labels {show(saved)}, the data file "
                              f"gives {show(labels)}; resume with the file the run was started on")


# ------------------------------------------------------------------------------------------- checks

def _feature_type(path: Path, what: str, dtype: np.dtype) -> np.dtype:
    """The type features are kept in: uint8 as they are, other numbers as float32."""
    if dtype == np.uint8:
        return np.dtype(np.uint8)
    if dtype.kind in "iubf":
        return np.dtype(np.float32)
    raise DataError(f"{path}: {what} holds {dtype} values; expected numbers (uint8 or float features)")


def _finite(path: Path, what: str, X: np.ndarray, first: int) -> None:
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        r, c = np.argwhere(~np.isfinite(X))[0]
        raise DataError(f"{path}: {what} row {first + int(r)} column {int(c)} is {X[r, c]}; expected finite features")


def _int_labels(path: Path, what: str, y: np.ndarray) -> np.ndarray:
    """Labels as int64; DataError unless every one is an integer."""
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y)) if y.size else np.zeros(0, bool)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: {what} row {i} is {y[i]}; expected integer labels")
        return y.astype(np.int64)
    raise DataError(f"{path}: {what} holds {y.dtype} values; expected integer labels")


# ------------------------------------------------------------------------------------------ sources

@dataclass
class _Array:
    """One array of an HDF5 or npz file: its shape and type, rows ``a:b`` read with ``read`` (an npz member in
    increasing order only), and where its raw rows start in the file when they can be mapped (else None)."""

    what: str
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[int, int], np.ndarray]
    offset: int | None = None


def _hdf5_arrays(path: Path, names: list[str], stack: contextlib.ExitStack) -> dict[str, _Array]:
    try:
        f = stack.enter_context(h5py.File(path, "r"))
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())})") from None
    out = {}
    for name in names:
        ds = f.get(name)
        if ds is None:
            continue
        if not isinstance(ds, h5py.Dataset):
            raise DataError(f"{path}: '{name}' is a group; expected an array")
        plain = ds.chunks is None and ds.compression is None and ds.dtype in (np.dtype("|u1"), np.dtype("<f4"))
        offset = ds.id.get_offset() if plain else None
        out[name] = _Array(f"array '{name}'", ds.shape, ds.dtype, lambda a, b, ds=ds: ds[a:b], offset)
    return out


def _npz_arrays(path: Path, names: list[str], stack: contextlib.ExitStack) -> dict[str, _Array]:
    try:
        zf = stack.enter_context(zipfile.ZipFile(path))
        members = set(zf.namelist())
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})") from None
    out = {}
    for name in names:
        if f"{name}.npy" not in members:
            continue
        fh = stack.enter_context(zf.open(f"{name}.npy"))
        try:
            version = np.lib.format.read_magic(fh)
            header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            read_header = header.get(version)
            shape, fortran, dtype = read_header(fh) if read_header is not None else \
                np.lib.format._read_array_header(fh, version)  # type: ignore[attr-defined]  # (3, 0): utf-8
        except ValueError as exc:
            raise DataError(f"{path}: array '{name}' is not a numpy array ({exc})") from None
        if dtype.hasobject:
            raise DataError(f"{path}: array '{name}' holds Python objects; expected numbers")
        out[name] = _Array(f"array '{name}'", tuple(shape), dtype, _npy_reader(path, name, fh, shape, fortran, dtype))
    return out


def _npy_reader(path: Path, name: str, fh: Any, shape: tuple[int, ...], fortran: bool, dtype: np.dtype
                ) -> Callable[[int, int], np.ndarray]:
    """Rows ``a:b`` of an npy member, read in increasing order from its stream (a Fortran-ordered array, rare,
    is read whole at the first call)."""
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    state = {"at": 0, "whole": None}

    def read(a: int, b: int) -> np.ndarray:
        if fortran:
            if state["whole"] is None:
                nbytes = int(np.prod(shape)) * dtype.itemsize
                state["whole"] = _read_exact(path, name, fh, nbytes, dtype).reshape(shape, order="F")
            return state["whole"][a:b]
        if a != state["at"]:
            raise ValueError(f"{name}: npz rows are read in order ({a} asked, at {state['at']})")
        state["at"] = b
        return _read_exact(path, name, fh, (b - a) * row * dtype.itemsize, dtype).reshape((b - a, *shape[1:]))

    return read


def _read_exact(path: Path, name: str, fh: Any, nbytes: int, dtype: np.dtype) -> np.ndarray:
    buf = bytearray(nbytes)
    view, got = memoryview(buf), 0
    try:
        while got < nbytes:
            n = fh.readinto(view[got:])
            if not n:
                raise DataError(f"{path}: array '{name}' is truncated ({got} of {nbytes} bytes)")
            got += n
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: array '{name}' cannot be read ({exc})") from None
    return np.frombuffer(buf, dtype)


def _arrays(path: Path, cfg: DataConfig, stack: contextlib.ExitStack) -> tuple[_Array, _Array, _Array | None,
                                                                                _Array | None]:
    """The features and labels (train, then test or None) of an HDF5 or npz file, checked for shape."""
    names = [cfg.x, cfg.y, f"{cfg.x}_test", f"{cfg.y}_test"]
    found = (_hdf5_arrays if cfg.dataset == "hdf5" else _npz_arrays)(path, names, stack)
    for key, name in (("data.x", cfg.x), ("data.y", cfg.y)):
        if name not in found:
            have = ", ".join(sorted(found)) or "none of the expected names"
            what = "features" if key == "data.x" else "labels"
            raise DataError(f"{path}: no array '{name}' ({key}); expected the {what} there (found: {have})")
    X, y, Xt, yt = (found.get(n) for n in names)
    if (Xt is None) != (yt is None):
        have, lack = (names[2], names[3]) if Xt is not None else (names[3], names[2])
        raise DataError(f"{path}: array '{have}' but no '{lack}'; expected both (a test set) or neither")
    for Xa, ya in ((X, y), (Xt, yt)):
        if Xa is None or ya is None:
            continue
        if len(Xa.shape) != 2 or Xa.shape[1] == 0:
            raise DataError(f"{path}: {Xa.what} has shape {Xa.shape}; expected (rows, features)")
        if len(ya.shape) != 1:
            raise DataError(f"{path}: {ya.what} has shape {ya.shape}; expected (rows,)")
        if Xa.shape[0] != ya.shape[0]:
            raise DataError(f"{path}: {Xa.what} has {Xa.shape[0]} rows but {ya.what} has {ya.shape[0]}; "
                            "expected one label per row")
        if Xa.shape[0] == 0:
            raise DataError(f"{path}: {Xa.what} has no rows")
        _feature_type(path, Xa.what, Xa.dtype)
    if Xt is not None and Xt.shape[1] != X.shape[1]:
        raise DataError(f"{path}: {Xt.what} has {Xt.shape[1]} features but {X.what} has {X.shape[1]}; expected "
                        "the same columns")
    return X, y, Xt, yt  # type: ignore[return-value]


def _blocks(n: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    step = max(1, _BLOCK_BYTES // max(row_bytes, 1))
    for a in range(0, n, step):
        yield a, min(n, a + step)


# -------------------------------------------------------------------------------------- loading

def load_user_data(cfg: DataConfig) -> UserData:
    """Load the file ``cfg.path`` as ``cfg.dataset`` (hdf5, npz or csv); see the module's docstring.

    Raises:
        DataError: One line naming the file, the array or column and what was expected.
    """
    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: file not found (data.path of data.dataset {cfg.dataset})")
    if cfg.dataset == "hdf5":
        with contextlib.ExitStack() as stack:
            X, y, Xt, yt = _arrays(path, cfg, stack)
            if Xt is not None and X.offset is not None and Xt.offset is not None:  # mapped where it lies
                for a in (X, Xt):
                    if a.dtype.kind == "f":
                        for lo, hi in _blocks(a.shape[0], a.shape[1] * 4):
                            _finite(path, a.what, a.read(lo, hi), lo)
                ytr = _int_labels(path, y.what, y.read(0, y.shape[0]))
                yte = _int_labels(path, yt.what, yt.read(0, yt.shape[0]))  # type: ignore[union-attr]
                stores = [RowStore(path, a.offset, a.shape[0], a.shape[1], a.dtype,  # type: ignore[arg-type]
                                   UINT8_SCALE if a.dtype == np.uint8 else 1.0) for a in (X, Xt)]
                return _finish(path, y.what, stores[0], ytr, stores[1], yte, str(path))
    dest = _prepared_path(path, cfg)
    if not _usable(dest):
        _prepare(path, cfg, dest)
    return _open_prepared(path, cfg, dest)


def _finish(path: Path, what: str, X: RowStore, y: np.ndarray, Xt: RowStore, yt: np.ndarray, source: str
            ) -> UserData:
    """Map the labels to classes, refuse a single class, and hold a small test set in memory."""
    _two_classes(path, what, y)
    labels = np.unique(np.concatenate([y, yt]))
    y_cls = np.searchsorted(labels, y).astype(np.int32)
    yt_cls = np.searchsorted(labels, yt).astype(np.int32)
    X_test: RowStore | PackedRows | np.ndarray = Xt
    if Xt.n * Xt.d * Xt.stored.itemsize <= TEST_IN_MEMORY:
        raw = Xt.raw(np.arange(Xt.n))
        X_test = PackedRows(raw, Xt.scale) if Xt.stored == np.uint8 else raw
    return UserData(X, y_cls, X_test, yt_cls, labels.astype(np.int64), source)


def _two_classes(path: Path, what: str, y: np.ndarray) -> None:
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{path}: {what} holds one class only (label {int(present[0])}) in the training rows; "
                        "expected at least 2 classes")


def _prepared_path(path: Path, cfg: DataConfig) -> Path:
    st = path.stat()
    keys = [str(path.resolve()), st.st_size, st.st_mtime_ns, cfg.dataset, cfg.x, cfg.y, cfg.label,
            cfg.test_fraction, _VERSION]
    key = hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]
    return prepared_dir() / f"{path.name}-{key}.h5"


def _usable(dest: Path) -> bool:
    try:
        with h5py.File(dest, "r") as f:
            return f.attrs.get("format") == _FORMAT and int(f.attrs.get("version", 0)) == _VERSION
    except (OSError, ValueError, TypeError):
        return False


def _open_prepared(path: Path, cfg: DataConfig, dest: Path) -> UserData:
    try:
        with h5py.File(dest, "r") as f:
            parts = []
            for name in ("X_train", "X_test"):
                ds = f[name]
                parts.append(RowStore(dest, ds.id.get_offset(), ds.shape[0], ds.shape[1], ds.dtype,
                                      UINT8_SCALE if ds.dtype == np.uint8 else 1.0))
            y, yt = np.asarray(f["y_train"][()], np.int64), np.asarray(f["y_test"][()], np.int64)
            what = str(f.attrs["labels_from"])
    except (OSError, KeyError, TypeError) as exc:
        raise DataError(f"{dest}: the prepared copy of {path} cannot be read ({exc}); delete it to have it "
                        "made again") from None
    return _finish(path, what, parts[0], y, parts[1], yt, f"{path} (prepared copy {dest})")


# ------------------------------------------------------------------------------------ preparing

class _Out:
    """The prepared copy being written: contiguous ``X_train``/``X_test`` and their labels, filled a block
    at a time; ``mask`` (None when the file has a test set) sends each source row to the test set or not."""

    def __init__(self, f: h5py.File, n: int, n_test: int, d: int, dtype: np.dtype) -> None:
        self.f, self.n_test = f, n_test
        self.X = {"train": f.create_dataset("X_train", (n - n_test, d), dtype),
                  "test": f.create_dataset("X_test", (n_test, d), dtype)}
        self.at = {"train": 0, "test": 0}

    def put(self, part: str, X: np.ndarray) -> None:
        a = self.at[part]
        if len(X):
            self.X[part][a:a + len(X)] = X
        self.at[part] = a + len(X)

    def split(self, X: np.ndarray, test: np.ndarray | None) -> None:
        if test is None:
            self.put("train", X)
        else:
            self.put("train", X[~test])
            self.put("test", X[test])


def _prepare(path: Path, cfg: DataConfig, dest: Path) -> None:
    """Write the prepared copy of ``path`` to ``dest`` (atomically), checking every row on the way."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_beside(dest)
        os.close(fd)
    except OSError as exc:
        raise DataError(f"{path}: cannot write its prepared copy in {dest.parent} ({exc.strerror}); set "
                        "FTMPI_PREPARED to a writable folder") from None
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"], f.attrs["version"], f.attrs["source"] = _FORMAT, _VERSION, str(path)
            if cfg.dataset == "csv":
                _prepare_csv(path, cfg, f)
            else:
                _prepare_arrays(path, cfg, f)
            _two_classes(path, str(f.attrs["labels_from"]), f["y_train"][()])  # refused before it is kept
        os.replace(tmp, dest)
    except OSError as exc:
        raise DataError(f"{path}: cannot write its prepared copy {dest} ({' '.join(str(exc).split())}); set "
                        "FTMPI_PREPARED to a folder with room") from None
    finally:
        tmp.unlink(missing_ok=True)


def _prepare_arrays(path: Path, cfg: DataConfig, f: h5py.File) -> None:
    with contextlib.ExitStack() as stack:
        X, y, Xt, yt = _arrays(path, cfg, stack)
        labels = {"y": _int_labels(path, y.what, y.read(0, y.shape[0]))}
        n, d = X.shape
        dtype = _feature_type(path, X.what, X.dtype)
        if Xt is not None:
            if _feature_type(path, Xt.what, Xt.dtype) != dtype:
                dtype = np.dtype(np.float32)  # uint8 in one set, other numbers in the other: both float32
            labels["yt"] = _int_labels(path, yt.what, yt.read(0, yt.shape[0]))  # type: ignore[union-attr]
        test = split_test(n, cfg.test_fraction) if Xt is None else None
        out = _Out(f, n + (0 if Xt is None else Xt.shape[0]), int(test.sum()) if test is not None else Xt.shape[0],
                   d, dtype)
        for src, part in ((X, None), (Xt, "test")):
            if src is None:
                continue
            for a, b in _blocks(src.shape[0], d * src.dtype.itemsize):
                block = np.asarray(src.read(a, b))
                _finite(path, src.what, block, a)
                block = block if block.dtype == dtype else block.astype(dtype)
                if part is None:
                    out.split(block, None if test is None else test[a:b])
                else:
                    out.put(part, block)
        ytr = labels["y"] if test is None else labels["y"][~test]
        yte = labels["yt"] if test is None else labels["y"][test]
        f["y_train"], f["y_test"] = ytr, yte
        f.attrs["labels_from"] = y.what


def _prepare_csv(path: Path, cfg: DataConfig, f: h5py.File) -> None:
    """A CSV file: header, then one row per line (blank lines skipped); two passes, the first counting rows."""
    try:
        with open(path, "rb") as fh:
            n = sum(1 for line in fh if line.strip()) - 1
        text = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    with text:
        lines = ((i, r) for i, r in enumerate(csv.reader(text), start=1) if r and any(c.strip() for c in r))
        try:
            lineno, header = next(lines)
        except StopIteration:
            raise DataError(f"{path}: empty file; expected a header line and rows") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: not a CSV text file ({exc})") from None
        header = [h.strip() for h in header]
        if all(_number(h) for h in header):
            raise DataError(f"{path}:{lineno}: the first line holds numbers; expected a header naming the columns")
        if cfg.label is not None and cfg.label not in header:
            raise DataError(f"{path}:{lineno}: no column '{cfg.label}' (data.label) in the header "
                            f"({', '.join(header[:8])}{', ...' if len(header) > 8 else ''})")
        lab = header.index(cfg.label) if cfg.label is not None else len(header) - 1
        cols = [c for c in range(len(header)) if c != lab]
        if not cols or n < 1:
            raise DataError(f"{path}: {'no data rows' if n < 1 else 'no feature column'}; expected a header, "
                            "then rows of features and a label")
        test = split_test(n, cfg.test_fraction) if n > 1 else np.zeros(n, bool)
        out = _Out(f, n, int(test.sum()), len(cols), np.dtype(np.float32))
        y = np.empty(n, np.float64)
        at, step = 0, max(1, (2 << 20) // (8 * len(header)))  # ~2 MB of values (and ~7x that of str) a block
        while at < n:
            rows = _csv_block(path, lines, header, min(step, n - at))
            block = np.empty((len(rows), len(header)), np.float64)
            for k, (ln, r) in enumerate(rows):
                block[k] = _csv_values(path, ln, r, header, lab)
            y[at:at + len(rows)] = block[:, lab]
            out.split(block[:, cols].astype(np.float32), test[at:at + len(rows)])
            at += len(rows)
    labels = _int_labels(path, f"column '{header[lab]}'", y)
    f["y_train"], f["y_test"] = labels[~test], labels[test]
    f.attrs["labels_from"] = f"column '{header[lab]}'"


def _csv_block(path: Path, lines: Iterator[tuple[int, list[str]]], header: list[str], k: int
               ) -> list[tuple[int, list[str]]]:
    rows = []
    try:
        for lineno, r in lines:
            if len(r) != len(header):
                raise DataError(f"{path}:{lineno}: {len(r)} fields; expected {len(header)} as in the header")
            rows.append((lineno, r))
            if len(rows) == k:
                break
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a CSV text file ({exc})") from None
    if len(rows) < k:
        raise DataError(f"{path}: changed while it was read (fewer rows than counted)")
    return rows


def _number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _csv_values(path: Path, lineno: int, row: list[str], header: list[str], lab: int) -> list[float]:
    try:
        values = [float(v) for v in row]
    except ValueError:
        c = next(c for c, v in enumerate(row) if not _number(v))
        raise DataError(f"{path}:{lineno}: column '{header[c]}' holds {row[c].strip()!r}; expected a number") from None
    for c, v in enumerate(values):
        if not np.isfinite(v):
            what = "an integer label" if c == lab else "a finite feature"
            raise DataError(f"{path}:{lineno}: column '{header[c]}' is {row[c].strip()}; expected {what}")
    if values[lab] != round(values[lab]):
        raise DataError(f"{path}:{lineno}: label column '{header[lab]}' holds {row[lab].strip()}; expected an integer")
    return values
