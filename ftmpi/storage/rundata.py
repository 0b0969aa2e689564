"""The data a deputy coordinates from when it takes over: the training rows and the test set as the
run dir holds them. The dataset's source, and its prepared copy, may be readable on rank 0's host only.

Every row a worker owns is in a file of ``run_dir/shards``: the shards (``worker-0003.h5``: a fresh run's
shards hold every training row, a resume rewrites them with the rows each worker then owns), and copies of
handed rows in the handoff and standby files. :class:`RunRows` indexes those files by global row id (id ->
file and position: two small arrays, no row in memory) and reads rows on demand, as float32, exactly as
:func:`ftmpi.storage.shards.read_shard` would. It offers what the coordinator asks of ``Dataset.X_train``:
``rows[ids]``, ``len``, ``.shape``, and ``raw``/``scale`` for the standby files it writes. A file's ``/X`` is
memory-mapped at its HDF5 data offset when stored contiguous (a compressed shard is read through h5py),
through a file kept open from the moment it was indexed (a standby file deleted later, when its worker is
staged again, still reads as it was). A shard by reference (``rows_from``) names the prepared copy on a
filesystem every rank sees: it is read there.

The test set is ``shards/test.h5``, written by rank 0 once when a deputy or a standby coordinator may take
over (:func:`write_eval_set`: uint8 with a scale where that is lossless, as the source is; kept when it
already holds the same set, e.g. on resume). :func:`open_run_data` reads it and indexes the shards: a
standby coordinator does so in a thread (:class:`DatasetAhead`) as soon as it is named, a deputy that trains
does so at the takeover. The takeover then looks in the handoff and standby files only for rows the shards
lack (:func:`takeover_dataset`), and a row owned by a worker that is in no file ends the takeover with one
line.
"""
from __future__ import annotations

import contextlib
import json
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ftmpi.errors import DataError
from ftmpi.storage.data import PIXEL_SCALE, Dataset
from ftmpi.storage.fsutil import identity
from ftmpi.storage.rows import PackedRows, RowMatrix, RowStore
from ftmpi.storage.shards import ensure_shard, read_shard

__all__ = ["DatasetAhead", "RunData", "RunRows", "EvalSetWrite", "open_run_data", "takeover_dataset", "eval_set_path",
           "write_eval_set"]

_KINDS = {"worker": "worker-*.h5", "handoff": "handoff-e*.h5", "standby": "standby-e*-w*.h5"}


def eval_set_path(run_dir: str | os.PathLike[str]) -> Path:
    """Where rank 0 leaves the test set for a coordinator that takes over: ``run_dir/shards/test.h5``."""
    return Path(run_dir) / "shards" / "test.h5"


# ------------------------------------------------------------------------------------------ the test set

def _packed(data: Dataset) -> Any:
    """The test rows as uint8 and a scale when ``uint8 * float32(scale)`` gives them back bit for bit (image
    datasets), else the float32 rows."""
    if hasattr(data.X_test, "raw"):  # held as uint8 already (PackedRows)
        return data.X_test
    scale = getattr(data.X_train, "scale", None)
    if scale is None and data.name in ("mnist", "fashion-mnist"):
        scale = PIXEL_SCALE
    X = data.X_test
    if not scale or not X.size:
        return X
    f = np.float32(scale)
    u = np.empty(X.shape, np.uint8)
    for a in range(0, len(X), 1024):  # a block at a time: no float32 temporaries of the whole set on rank 0
        q = np.rint(X[a:a + 1024] / f)
        if q.min() < 0 or q.max() > 255:
            return X
        u[a:a + 1024] = q
        if not np.array_equal(u[a:a + 1024] * f, X[a:a + 1024]):
            return X
    return PackedRows(u, scale)


def write_eval_set(run_dir: str | os.PathLike[str], data: Dataset) -> int:
    """Write the test set to :func:`eval_set_path` unless the file there already holds exactly it; returns the
    bytes written (0 when kept). Its attributes say what a takeover needs besides: the dataset's name, its
    class names and number of training rows. Stored plainly: it is written while every rank starts (CPU-bound
    where ranks share cores), and is small next to the shards (8 MB for Fashion-MNIST)."""
    attrs = {"n_classes": data.n_classes, "dataset": data.name, "role": "test", "n_train": len(data.y_train),
             "classes": json.dumps(list(data.classes))}
    if data.labels is not None:  # a user file's label of each class: a takeover checks its replica against it
        attrs["labels"] = json.dumps([int(v) for v in data.labels])
    return ensure_shard(eval_set_path(run_dir), _packed(data), data.y_test, np.arange(len(data.y_test)), attrs)


class EvalSetWrite:
    """:func:`write_eval_set` in a thread (rank 0 starts it before the join, while the workers start up)."""

    def __init__(self, run_dir: Path, data: Dataset) -> None:
        self.bytes = 0
        self.error: str | None = None
        self._path = eval_set_path(run_dir)
        self._t = threading.Thread(target=self._run, args=(run_dir, data), name="ftmpi-test-set", daemon=True)
        self._t.start()

    def _run(self, run_dir: Path, data: Dataset) -> None:
        try:
            self.bytes = write_eval_set(run_dir, data)
        except (OSError, RuntimeError, ValueError) as exc:  # a full disk: only a takeover needs the file
            self.error = f"cannot write {eval_set_path(run_dir)}: {' '.join(str(exc).split())}"

    def result(self, limit: float | None = None) -> tuple[int, str | None]:
        """Wait for the write, at most ``limit`` seconds: (bytes written, why it failed or None). A write still
        going at the limit (a stalled filesystem) is reported as failed; its thread is left behind."""
        self._t.join(limit)
        if self._t.is_alive():
            return 0, f"cannot write {self._path}: not done after {limit:g}s (a stalled filesystem?)"
        return self.bytes, self.error


# ------------------------------------------------------------------------------------- the training rows

class _HeldRows(RowStore):
    """A :class:`RowStore` over an open file: mapped once, read as it was when opened, whatever happens to
    its name since."""

    def __init__(self, fh: Any, path: Path, offset: int, n: int, d: int, stored: Any, scale: float) -> None:
        # not RowStore.__init__: that stats the name, which may name another file by now
        self.path, self.offset, self.n, self.d = path, int(offset), int(n), int(d)
        self.stored, self.scale = np.dtype(stored), float(scale)
        st = os.fstat(fh.fileno())
        self.size, self.mtime_ns = int(st.st_size), int(st.st_mtime_ns)
        if self.size < self.offset + self.n * self.d * self.stored.itemsize:
            raise DataError(f"{path}: truncated /X")
        self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[mmap.mmap]:
        yield self._mm


class _ChunkedRows:
    """The rows of a chunked (deflate-compressed) ``/X``, read through h5py from a duplicate of the file
    descriptor held since indexing (so, like :class:`_HeldRows`, as the file was then). Reads the whole
    dataset when a large part of it is asked for (h5py's point selections are slow), else those rows."""

    def __init__(self, fh: Any, path: Path, n: int, d: int, stored: Any, scale: float) -> None:
        self.path, self.n, self.d = path, int(n), int(d)
        self.stored, self.scale = np.dtype(stored), float(scale)
        self._fh = os.fdopen(os.dup(fh.fileno()), "rb")
        self._f = h5py.File(self._fh, "r")

    def raw(self, pos: np.ndarray) -> np.ndarray:
        pos = np.asarray(pos, np.int64).reshape(-1)
        ds = self._f["X"]
        if len(pos) * 8 >= self.n:
            return np.asarray(ds[()])[pos]
        uniq, back = np.unique(pos, return_inverse=True)
        return np.asarray(ds[uniq])[back]

    def rows(self, pos: np.ndarray) -> np.ndarray:
        out = self.raw(pos).astype(np.float32)
        if self.stored == np.uint8:
            out *= np.float32(self.scale)
        return out


def _plain(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v


class RunRows(RowMatrix):
    """The training rows of a run, read by global row id from its shard, handoff and standby files.

    Args:
        n: Number of training rows (ids ``0 .. n-1``).
        d: Features per row.
        dataset: The dataset's name: a file written for another dataset is not used.

    Attributes:
        y: ``(n,)`` int32 labels of the rows found so far (-1 for the others).
        notes: Files that could not be used, and why (for the error that names missing rows).
    """


    def __init__(self, n: int, d: int, dataset: str) -> None:
        self.n, self.d, self.dataset = int(n), int(d), dataset
        self.y = np.full(self.n, -1, np.int32)
        self._src = np.full(self.n, -1, np.int32)  # id -> index in _stores, -1: in no file indexed
        self._pos = np.zeros(self.n, np.int64)  # id -> row in that store
        self._stores: list[RowStore] = []
        self._refs: dict[str, int] = {}  # a prepared copy named by shards by reference -> its store
        self._seen: set[tuple[int, ...]] = set()  # (device, inode, size, mtime) of the files looked at
        self.notes: list[str] = []

    def __repr__(self) -> str:
        return f"RunRows({self.n}x{self.d}, {len(self._stores)} files, {int(np.count_nonzero(self._src >= 0))} found)"

    def has(self, ids: np.ndarray) -> np.ndarray:
        """Whether each row of ``ids`` is in a file indexed so far."""
        return self._src[np.asarray(ids, np.int64)] >= 0

    @property
    def scale(self) -> float | None:
        """The scale of the uint8 files when they share one (then :meth:`raw` may return uint8)."""
        scales = {s.scale for s in self._stores if s.stored == np.uint8}
        return scales.pop() if len(scales) == 1 else None

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` as float32, in the order given (DataError naming them if some are in no file)."""
        ids = self._ids(ids)
        src = self._src[ids]
        if np.any(src < 0):
            raise DataError(self.missing_line(ids[src < 0]))
        out = np.empty((len(ids), self.d), np.float32)
        for s in np.unique(src).tolist():
            sel = np.flatnonzero(src == s)
            out[sel] = self._stores[s].rows(self._pos[ids[sel]])
        return out

    def raw(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` as uint8 (times :attr:`scale`) when every one is stored so; else as float32."""
        ids = self._ids(ids)
        src = self._src[ids]
        scale = self.scale
        used = np.unique(src).tolist()
        if scale is None or any(s < 0 or self._stores[s].stored != np.uint8 for s in used):
            return self.rows(ids)
        out = np.empty((len(ids), self.d), np.uint8)
        for s in used:
            sel = np.flatnonzero(src == s)
            out[sel] = self._stores[s].raw(self._pos[ids[sel]])
        return out

    # ------------------------------------------------------------------ indexing the files
    def scan(self, run_dir: str | os.PathLike[str], kind: str) -> int:
        """Index the files of one kind (``worker``, ``handoff``, ``standby``) not looked at yet, newest first
        (a stale file of an earlier launch yields to this launch's). Returns the rows that became known."""
        folder = Path(run_dir) / "shards"
        found = []
        for p in folder.glob(_KINDS[kind]):
            with contextlib.suppress(OSError):
                found.append((p.stat().st_mtime_ns, p))
        return sum(self.add(p) for _, p in sorted(found, reverse=True))

    def add(self, path: Path) -> int:
        """Index the rows of one shard, handoff or standby file that no file indexed before holds."""
        try:
            fh = open(path, "rb")  # noqa: SIM115 - kept open by the store when the file is used
        except OSError:
            return 0  # gone since it was listed
        try:
            st = os.fstat(fh.fileno())
            key = identity(st)
            if key in self._seen:
                return 0
            self._seen.add(key)
            return self._add(fh, path)
        finally:
            fh.close()  # a store holds its own mapping

    def _add(self, fh: Any, path: Path) -> int:
        try:
            with h5py.File(fh, "r") as f:
                attrs = {k: _plain(v) for k, v in f.attrs.items()}
                ids, y = np.asarray(f["ids"][()], np.int64), np.asarray(f["y"][()], np.int32)
                xd = f.get("X")
                x = None if xd is None else (xd.shape, xd.dtype, xd.id.get_offset(), xd.chunks, xd.compression)
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
            self.notes.append(f"{path.name}: unreadable ({' '.join(str(exc).split())})")
            return 0
        if attrs.get("dataset") != self.dataset:
            self.notes.append(f"{path.name}: written for dataset {attrs.get('dataset')!r}, not {self.dataset!r}")
            return 0
        if ids.ndim != 1 or y.shape != ids.shape or (ids.size and (ids.min() < 0 or ids.max() >= self.n)):
            self.notes.append(f"{path.name}: /ids do not fit {self.n} training rows")
            return 0
        new = np.flatnonzero(self._src[ids] < 0)
        if not new.size:
            return 0
        try:
            store, pos = self._store(fh, path, attrs, x, ids)
        except DataError as exc:
            self.notes.append(str(exc))
            return 0
        if store.d != self.d:
            self.notes.append(f"{path.name}: rows of {store.d} features, expected {self.d}")
            return 0
        key = attrs.get("rows_from")
        if key is not None and key in self._refs:
            s = self._refs[key]
        else:
            s = len(self._stores)
            self._stores.append(store)
            if key is not None:
                self._refs[key] = s
        self._src[ids[new]], self._pos[ids[new]], self.y[ids[new]] = s, pos[new], y[new]
        return int(new.size)

    def _store(self, fh: Any, path: Path, attrs: dict[str, Any], x: Any, ids: np.ndarray
               ) -> tuple[RowStore, np.ndarray]:
        """The store holding the file's rows, and each row's position in it."""
        if x is None:
            ref = attrs.get("rows_from")
            if ref is None:
                raise DataError(f"{path.name}: no /X and no rows_from")
            if ref in self._refs:
                return self._stores[self._refs[ref]], ids
            return RowStore.from_ref(str(ref), str(path)), ids
        shape, dtype, offset, chunks, compression = x
        if len(shape) != 2 or shape[0] != len(ids) or dtype not in (np.float32, np.uint8):
            raise DataError(f"{path.name}: /X {dtype} {shape} does not fit {len(ids)} rows")
        if dtype == np.uint8 and "x_scale" not in attrs:
            raise DataError(f"{path.name}: uint8 /X without x_scale")
        scale = float(attrs["x_scale"]) if dtype == np.uint8 else 1.0
        pos = np.arange(len(ids), dtype=np.int64)
        if offset is None or chunks is not None or compression is not None:  # compressed (data.compress_shards)
            return _ChunkedRows(fh, path, shape[0], shape[1], dtype, scale), pos  # type: ignore[return-value]
        return _HeldRows(fh, path, offset, shape[0], shape[1], dtype, scale), pos

    def missing_line(self, missing: np.ndarray, owner: np.ndarray | None = None) -> str:
        """One line naming rows in no file (and, given ``owner``, their owners), and the files not used."""
        whose = f" owned by worker(s) {sorted(set(owner[missing].tolist()))}" if owner is not None else ""
        notes = f" (not used: {'; '.join(self.notes[:3])}{' ...' if len(self.notes) > 3 else ''})" \
            if self.notes else ""
        return (f"{len(missing)} training row(s){whose} are in none of the run dir's shard, handoff or standby "
                f"files, e.g. row {int(missing[0])}{notes}")


# ------------------------------------------------------------------------------------------ a takeover

@dataclass
class RunData:
    """What a deputy reads ahead: the test set and the index of the run dir's training rows."""

    run_dir: Path
    rows: RunRows
    X_test: np.ndarray | PackedRows
    y_test: np.ndarray
    n_classes: int
    classes: tuple[str, ...]
    labels: np.ndarray | None = None


def open_run_data(run_dir: str | os.PathLike[str]) -> RunData:
    """The test set from ``shards/test.h5`` and the workers' shards indexed (DataError naming the file)."""
    run_dir = Path(run_dir)
    path = eval_set_path(run_dir)
    if not path.is_file():
        raise DataError(f"{path}: no test set in the run dir (rank 0 writes it at start-up when executor.deputy "
                        "or executor.standby_coordinator is on)")
    t = read_shard(path, raw=True)
    a = t.attrs
    try:
        n, nc, name, classes = int(a["n_train"]), int(a["n_classes"]), str(a["dataset"]), json.loads(a["classes"])
        labels = np.asarray(json.loads(a["labels"]), np.int64) if "labels" in a else None
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a test set file (attribute {exc})") from None
    rows = RunRows(n, t.X.shape[1], name)
    rows.scan(run_dir, "worker")
    X_test = PackedRows(t.X, t.scale) if t.scale is not None else t.X
    return RunData(run_dir, rows, X_test, t.y, nc, tuple(str(c) for c in classes), labels)


def takeover_dataset(ahead: Any, run_dir: str | os.PathLike[str], owner: np.ndarray) -> Dataset:
    """The dataset a deputy coordinates from: the run dir's rows and test set, as read ahead (``ahead.get()``:
    a :class:`RunData`; read again now if that failed). Every row a worker owns (``owner``: the replica's owner
    per row, -1 for none) must be in a file: the shards first, then (only for rows they lack) new shards,
    handoff and standby files; DataError with one line otherwise."""
    try:
        rd = ahead.get()
    except DataError:  # read before the files were there (or a file came since): once more, now
        rd = open_run_data(run_dir)
    rows, owner = rd.rows, np.asarray(owner)
    if len(owner) != rows.n:
        raise DataError(f"{eval_set_path(rd.run_dir)}: {rows.n} training rows, but the replica's state has "
                        f"{len(owner)}")
    need = np.flatnonzero(owner >= 0)
    for kind in _KINDS:
        if rows.has(need).all():
            break
        rows.scan(rd.run_dir, kind)
    missing = need[~rows.has(need)]
    if missing.size:
        raise DataError(f"{rd.run_dir / 'shards'}: {rows.missing_line(missing, owner)}")
    return Dataset(rows.dataset, rows, rows.y, rd.X_test, rd.y_test, rd.n_classes,  # type: ignore[arg-type]
                   rd.classes, f"{rd.run_dir / 'shards'} (the run dir's copy)", rd.labels)


class DatasetAhead:
    """A deputy's run data, read in a thread from the moment it is named (a takeover needs the test set and the
    training rows of the handoffs it will write), so that the takeover finds it ready. ``get`` waits for it and
    raises what the reading raised."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self.data: Any = None
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._run, args=(load,), name="ftmpi-deputy-data", daemon=True)
        self._t.start()

    def _run(self, load: Callable[[], Any]) -> None:
        try:
            self.data = load()
        except BaseException as exc:  # raised by get() in the worker's thread
            self.error = exc

    def get(self) -> Any:
        self._t.join()
        if self.error is not None:
            raise self.error
        return self.data
