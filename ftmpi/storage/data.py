"""Datasets: MNIST and Fashion-MNIST (IDX files), UCI Occupancy (CSV text), seeded synthetic data, and a file
of the user's (HDF5, npz or CSV: :mod:`ftmpi.storage.userdata`, rows read by id like an image dataset's).

Everything comes back as a :class:`Dataset` of C-contiguous ``float32`` features and ``int32`` labels,
with the train/test split the dataset defines (synthetic data is split by ``data.test_fraction``).
Pixel data is scaled to [0, 1] (an image dataset's training rows stay on disk as uint8 and are read by id:
``X_train`` is then a :class:`~ftmpi.storage.rows.RowStore`, see ``ftmpi/storage/rows.py``); Occupancy features are
standardised with the *training* mean and standard deviation, so no statistic of the test set leaks into training.

A dataset directory is looked up in this order, the first one holding every file winning:
``data.path``, ``$FTMPI_DATA/<name>``, ``$FTMPI_DATA``, ``/usr/share/datasets/<name>`` (where Debian's
``dataset-fashion-mnist`` package puts its files) and ``~/.cache/ftmpi/<name>``.
Each file may also be present gzip-compressed with a ``.gz`` suffix; the plain file is preferred.
"""
from __future__ import annotations

import csv
import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ftmpi.config import USER_FORMATS, DataConfig
from ftmpi.errors import DataError
from ftmpi.storage.rows import PackedRows, RowStore, features, idx_header, idx_store

__all__ = ["SYSTEM_DATA_DIR", "Dataset", "find_dataset_dir", "load_dataset", "read_idx"]

#: Where distribution packages install datasets (Debian: ``dataset-fashion-mnist``).
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
PIXEL_SCALE = 1.0 / 255.0  # IDX pixels are uint8; features are pixel * float32(PIXEL_SCALE)
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
OCCUPANCY_FILES = ("datatraining.txt", "datatest.txt")
OCCUPANCY_FEATURES = ("Temperature", "Humidity", "Light", "CO2", "HumidityRatio")

_INSTALL_HINTS = {
    "fashion-mnist": "install with `apt-get install dataset-fashion-mnist` or put the four IDX files "
                     "in ~/.cache/ftmpi/fashion-mnist",
    "mnist": "put the four MNIST IDX files (train-images-idx3-ubyte.gz, ...) in ~/.cache/ftmpi/mnist",
    "occupancy": "put datatraining.txt and datatest.txt (UCI Occupancy Detection) "
                 "in ~/.cache/ftmpi/occupancy",
}


@dataclass
class Dataset:
    """A train/test pair of feature matrices and integer labels.

    Attributes:
        name: The dataset's name (``fashion-mnist``, ``mnist``, ``occupancy``, ``synthetic``).
        X_train: ``(n, d)`` float32, C-contiguous; or, for image datasets, a :class:`~ftmpi.storage.rows.RowStore`
            that keeps the rows on disk as uint8 and returns float32 rows by id (``X_train[ids]``).
        y_train: ``(n,)`` int32 in ``[0, n_classes)``.
        X_test: ``(m, d)`` float32, C-contiguous; or, for image datasets (unless loaded with ``lazy=False``), a
            :class:`~ftmpi.storage.rows.PackedRows` holding the uint8 pixels (``X_test[a:b]`` -> float32 rows).
        y_test: ``(m,)`` int32.
        n_classes: Number of classes.
        classes: One human-readable name per class.
        source: Where the data came from (a directory, or a description of the generator).
        labels: A user file's label value of each class ``0..k-1`` (int64); None when the labels are the
            classes (the built-in datasets).
    """

    name: str
    X_train: np.ndarray | RowStore
    y_train: np.ndarray
    X_test: np.ndarray | PackedRows
    y_test: np.ndarray
    n_classes: int
    classes: tuple[str, ...]
    source: str
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not hasattr(self.X_train, "rows"):  # rows read by id (a RowStore, a run dir's RunRows) stay there
            self.X_train = np.ascontiguousarray(self.X_train, dtype=np.float32)
        if not hasattr(self.X_test, "rows"):
            self.X_test = np.ascontiguousarray(self.X_test, dtype=np.float32)
        self.y_train = np.ascontiguousarray(self.y_train, dtype=np.int32)
        self.y_test = np.ascontiguousarray(self.y_test, dtype=np.int32)
        for X, y, part in ((self.X_train, self.y_train, "train"), (self.X_test, self.y_test, "test")):
            if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
                raise DataError(f"{self.source}: {part} set has X {X.shape} and y {y.shape}; "
                                "expected (n, d) and (n,)")
        if self.X_train.shape[1] != self.X_test.shape[1]:
            raise DataError(f"{self.source}: train has {self.X_train.shape[1]} features, "
                            f"test has {self.X_test.shape[1]}")
        if len(self.classes) != self.n_classes:
            raise DataError(f"{self.source}: {len(self.classes)} class names for {self.n_classes} classes")
        if self.labels is not None and len(self.labels) != self.n_classes:
            raise DataError(f"{self.source}: {len(self.labels)} label values for {self.n_classes} classes")

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return int(self.X_train.shape[1])


# --------------------------------------------------------------------------------------------- IDX files

def _open_maybe_gzip(path: Path) -> BinaryIO:
    fh = open(path, "rb")  # noqa: SIM115 - handed to the caller's with-block
    magic = fh.read(2)
    fh.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


def _read_exact(fh: BinaryIO, buf: memoryview) -> int:
    got = 0
    while got < len(buf):
        n = fh.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    The header is two zero bytes, a type code (only ``0x08``, unsigned byte, is supported), the number
    of dimensions, then each dimension as a big-endian uint32. The data must fill exactly the size the
    dimensions announce.

    Args:
        path: The file; gzip compression is detected from its content, not its name.

    Returns:
        A writable ``uint8`` array of the announced shape.

    Raises:
        DataError: Naming the file, if it is missing, not IDX, of another type, truncated or too long.
    """
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as fh:
            _, dims, _ = idx_header(fh, path)
            out = np.empty(dims, dtype=np.uint8)
            got = _read_exact(fh, out.reshape(-1).data)
            if got < out.size:
                raise DataError(f"{path}: truncated IDX file: {got} of {out.size} data bytes "
                                f"for shape {dims}")
            if fh.read(1):
                raise DataError(f"{path}: IDX file is longer than its header's shape {dims} says")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    return out


# ------------------------------------------------------------------------------------ finding the files

def _idx_rows(path: Path) -> RowStore | None:
    """The training images as a :class:`RowStore` (uint8, scale 1/255), or None if no prepared copy can be
    written (the caller then loads them into memory)."""
    try:
        return idx_store(path, PIXEL_SCALE)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None


def _resolve(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_dataset_dir(name: str, files: tuple[str, ...], path: str | None = None) -> tuple[Path, list[Path]]:
    """Find the first directory that holds every one of ``files`` (each plain or ``.gz``).

    Args:
        name: The dataset's name, used for the per-dataset subdirectories.
        files: The base file names required.
        path: ``data.path`` from the config, tried first.

    Returns:
        The directory and the resolved path of each file, in the order of ``files``.

    Raises:
        DataError: Listing every place tried and how to install the dataset.
    """
    candidates: list[Path] = []
    if path:
        candidates.append(Path(path).expanduser())
    env_root = os.environ.get("FTMPI_DATA")
    if env_root:
        candidates += [Path(env_root).expanduser() / name, Path(env_root).expanduser()]
    candidates += [SYSTEM_DATA_DIR / name, Path.home() / ".cache" / "ftmpi" / name]
    for directory in candidates:
        found = [_resolve(directory, f) for f in files]
        if all(p is not None for p in found):
            return directory, [p for p in found if p is not None]
    tried = ", ".join(str(c) for c in candidates)
    hint = _INSTALL_HINTS.get(name, f"put {', '.join(files)} in ~/.cache/ftmpi/{name}")
    raise DataError(f"{name}: dataset files ({', '.join(files)}) not found; tried {tried}; {hint}")


# ------------------------------------------------------------------------------------ MNIST-like loaders

def _load_idx_dataset(name: str, classes: tuple[str, ...], path: str | None, lazy: bool = True) -> Dataset:
    directory, (tr_x, tr_y, te_x, te_y) = find_dataset_dir(name, IDX_FILES, path)
    parts: list[tuple[np.ndarray | RowStore | PackedRows, np.ndarray]] = []
    for img_path, lab_path in ((tr_x, tr_y), (te_x, te_y)):
        labels = read_idx(lab_path)
        # the training images stay on disk as uint8 (see ftmpi.storage.rows); the test images are scored by rank 0
        store = _idx_rows(img_path) if lazy and img_path == tr_x else None
        images = read_idx(img_path) if store is None else None
        shape = images.shape if images is not None else (len(store), -1)  # type: ignore[arg-type]
        if images is not None and images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{img_path}: expected images (n, rows, cols) and labels (n,), "
                            f"got {shape} and {labels.shape}")
        if shape[0] != len(labels):
            raise DataError(f"{img_path}: {shape[0]} images but {lab_path.name} has {len(labels)} labels")
        if labels.size and int(labels.max()) >= len(classes):
            raise DataError(f"{lab_path}: label {int(labels.max())} out of range for {len(classes)} classes")
        if store is not None:
            parts.append((store, labels.astype(np.int32)))
            continue
        assert images is not None
        if lazy and img_path == te_x:  # the test images stay uint8 (a quarter of the bytes), evaluated by chunk
            parts.append((PackedRows(images.reshape(len(images), -1), PIXEL_SCALE), labels.astype(np.int32)))
            continue
        parts.append((features(images.reshape(len(images), -1), PIXEL_SCALE), labels.astype(np.int32)))
    (X_train, y_train), (X_test, y_test) = parts
    return Dataset(name, X_train, y_train, X_test, y_test, len(classes), classes, str(directory))


# ------------------------------------------------------------------------------------------- Occupancy

def _read_occupancy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one UCI Occupancy text file; rows may or may not start with a quoted row id."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file ({exc.reason})") from None
    rows = [(i, r) for i, r in enumerate(csv.reader(text.splitlines()), start=1) if r and any(r)]
    if not rows:
        raise DataError(f"{path}: empty file")
    header = [h.strip() for h in rows[0][1]]
    missing = [c for c in (*OCCUPANCY_FEATURES, "Occupancy") if c not in header]
    if missing:
        raise DataError(f"{path}:{rows[0][0]}: header lacks column(s) {', '.join(missing)}")
    cols = [header.index(c) for c in (*OCCUPANCY_FEATURES, "Occupancy")]
    X = np.empty((len(rows) - 1, len(OCCUPANCY_FEATURES)), dtype=np.float64)
    y = np.empty(len(rows) - 1, dtype=np.int32)
    for k, (lineno, row) in enumerate(rows[1:]):
        if len(row) == len(header) + 1:  # a leading row id, absent from the header
            offset = 1
        elif len(row) == len(header):
            offset = 0
        else:
            raise DataError(f"{path}:{lineno}: expected {len(header)} or {len(header) + 1} fields, "
                            f"got {len(row)}")
        try:
            values = [float(row[c + offset]) for c in cols]
        except ValueError:
            raise DataError(f"{path}:{lineno}: non-numeric value in {row!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"{path}:{lineno}: non-finite value in {row!r}")
        if values[-1] not in (0.0, 1.0):
            raise DataError(f"{path}:{lineno}: Occupancy must be 0 or 1, got {row[cols[-1] + offset]!r}")
        X[k] = values[:-1]
        y[k] = int(values[-1])
    if len(y) == 0:
        raise DataError(f"{path}: no data rows")
    return X, y


def _load_occupancy(path: str | None) -> Dataset:
    directory, (train_path, test_path) = find_dataset_dir("occupancy", OCCUPANCY_FILES, path)
    X_train, y_train = _read_occupancy(train_path)
    tests = [_read_occupancy(test_path)]
    extra = _resolve(directory, "datatest2.txt")
    if extra is not None:
        tests.append(_read_occupancy(extra))
    X_test = np.concatenate([t[0] for t in tests])
    y_test = np.concatenate([t[1] for t in tests])
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std[std == 0] = 1.0
    return Dataset("occupancy", (X_train - mean) / std, y_train, (X_test - mean) / std, y_test,
                   2, ("empty", "occupied"), str(directory))


# ------------------------------------------------------------------------------------------- synthetic

_CENTRE_RADIUS = 2.2


def _synthetic(cfg: DataConfig, seed: int) -> Dataset:
    """Gaussian blobs: one random centre per class, unit-variance noise around it.

    Centres lie on a sphere of radius ``_CENTRE_RADIUS``; in a few dimensions or more they are nearly
    orthogonal, so classes sit about 3 noise units apart and overlap a little: a linear model reaches
    roughly 85-95% accuracy, far above chance but not trivially perfect, so training curves mean something.
    """
    rng = np.random.default_rng(seed)
    n, d, k = cfg.n_samples, cfg.n_features, cfg.n_classes
    centres = rng.normal(size=(k, d))
    centres *= _CENTRE_RADIUS / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    y = rng.permutation(np.arange(n) % k).astype(np.int32)
    X = centres[y] + rng.normal(size=(n, d))
    n_test = min(max(round(n * cfg.test_fraction), 1), n - 1)
    source = f"synthetic(n={n}, d={d}, classes={k}, seed={seed})"
    return Dataset("synthetic", X[n_test:], y[n_test:], X[:n_test], y[:n_test], k,
                   tuple(f"class {c}" for c in range(k)), source)


def load_dataset(cfg: DataConfig, seed: int, lazy: bool = True) -> Dataset:
    """Load the dataset ``cfg`` names.

    Args:
        cfg: The ``data`` section of the config.
        seed: Seeds the synthetic generator (file datasets ignore it; a user file without a test set is split
            with a fixed seed).
        lazy: Image datasets keep their training rows on disk (``X_train`` a RowStore) and their test rows as
            uint8 (``X_test`` a PackedRows); False loads both as float32 arrays.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: If the files are missing or malformed; the message names the file.
    """
    if cfg.dataset == "fashion-mnist":
        return _load_idx_dataset("fashion-mnist", FASHION_CLASSES, cfg.path, lazy)
    if cfg.dataset == "mnist":
        return _load_idx_dataset("mnist", DIGIT_CLASSES, cfg.path, lazy)
    if cfg.dataset == "occupancy":
        return _load_occupancy(cfg.path)
    if cfg.dataset == "synthetic":
        return _synthetic(cfg, seed)
    if cfg.dataset in USER_FORMATS:
        from ftmpi.storage.userdata import load_user_data

        u = load_user_data(cfg)
        return Dataset(Path(str(cfg.path)).name, u.X_train, u.y_train, u.X_test, u.y_test, len(u.labels),
                       tuple(str(v) for v in u.labels.tolist()), u.source, u.labels)
    raise DataError(f"unknown dataset {cfg.dataset!r}")
