"""HDF5 shard and handoff files: write atomically, read with validation, list. No MPI.

A shard holds one worker's rows: ``/X`` (``(n, d)``, in the source's own type: float32, or uint8 with a
``x_scale`` attribute, features being ``X * x_scale`` in float32), ``/y`` (int32, ``(n,)``) and ``/ids``
(int64 global row ids, ``(n,)``), plus attributes such as ``n_classes`` and ``dataset``. A shard *by
reference* has no ``/X``: its ``rows_from`` attribute names a prepared copy of the training set
(:class:`ftmpi.storage.rows.RowStore`) that every rank can read, and the worker reads its own rows from it by id, in
parallel with the others, instead of rank 0 writing them (:func:`ensure_shard`, :func:`rows_by_reference`).
:func:`read_shard` returns float32 features whatever the file holds (version 1 files, float32, still read).
A handoff file has the same layout and carries every row handed over in one membership epoch, grouped by the survivor
that takes them: ``/receivers`` (int64 world ranks, ``(m,)``) and ``/offsets`` (int64, ``(m + 1,)``) say
that receiver ``i`` takes rows ``offsets[i]:offsets[i + 1]``. One file, not one per survivor: creating an
HDF5 file costs milliseconds, and the survivors wait for it.

Each file is written by one rank to a temporary name in the destination directory and then moved into
place with ``os.replace``, so a reader sees either the old file or the complete new one, never a partial
write. Datasets are stored contiguous and uncompressed (shards are scratch files read once, and writing a
15000 x 784 shard must cost far less than a training round), except uint8 rows of a shard when asked
(``data.compress_shards``, the default): deflate-compressed, the chunks packed in parallel
(:mod:`ftmpi.storage.h5zip`), so that rank 0 writes ~0.6 of the training set's bytes at a launch, not all of them.
"""
from __future__ import annotations

import enum
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ftmpi.errors import DataError
from ftmpi.storage.fsutil import identity, temp_beside
from ftmpi.storage.h5zip import write_deflated
from ftmpi.storage.membuf import populated, reserve
from ftmpi.storage.rows import RowBlocks, RowsOf, RowStore, features, keep_resident

__all__ = ["Shard", "ensure_shard", "handoff_path", "handoff_slices", "list_handoffs", "parse_handoff_name",
           "ShardsAhead", "read_shard", "ready_for_any", "rows_by_reference", "shard_path", "standby_path",
           "stale_standbys", "write_handoff", "write_shard"]

FORMAT = "ftmpi-shard"
FORMAT_VERSION = 2  # 2: /X may be uint8 (x_scale) or absent (rows_from); version 1 files still read
_HANDOFF_RE = re.compile(r"^handoff-e(\d+)(?:-t\d+)?\.h5$")
_STANDBY_RE = re.compile(r"^standby-e\d+-w(\d+)(?:-t\d+)?\.h5$")
_DTYPES = {"y": np.int32, "ids": np.int64}


@dataclass
class Shard:
    """The rows of one shard or handoff file.

    Attributes:
        X: ``(n, d)`` float32 features.
        y: ``(n,)`` int32 labels.
        ids: ``(n,)`` int64 global row ids.
        w: ``(n,)`` float64 row weights (how many training rows each row stands for), or None: all 1. Rows
            handed over as a dead worker's representatives under ``rep_weight: shard`` weigh more than 1.
        attrs: The file's attributes (plain Python values), including ``format`` and ``format_version``.
        buf: With :func:`read_shard`'s ``room``: the buffer whose first ``n`` rows are ``X``.
        scale: None when ``X`` holds the features as float32; else ``X`` holds them in their stored type
            (uint8, read with ``raw=True``) and the features are ``X.astype(float32) * float32(scale)``.
    """

    X: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    w: np.ndarray | None = None
    buf: np.ndarray | None = None
    scale: float | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


def shard_path(run_dir: str | os.PathLike[str], rank: int) -> Path:
    """Path of worker ``rank``'s shard: ``run_dir/shards/worker-0003.h5``."""
    return Path(run_dir) / "shards" / f"worker-{rank:04d}.h5"


def _term(term: int) -> str:
    """The name's term suffix: none under the first coordinator, ``-t0002`` from the first takeover on (a new
    coordinator never writes over a file of its predecessor's, which a survivor may be reading)."""
    return "" if term <= 1 else f"-t{term:04d}"


def handoff_path(run_dir: str | os.PathLike[str], epoch: int, term: int = 1) -> Path:
    """Path of the rows handed over in membership ``epoch`` by the coordinator of ``term``:
    ``run_dir/shards/handoff-e0001.h5`` (``handoff-e0001-t0002.h5`` after a takeover)."""
    return Path(run_dir) / "shards" / f"handoff-e{epoch:04d}{_term(term)}.h5"


def standby_path(run_dir: str | os.PathLike[str], epoch: int, rank: int, term: int = 1) -> Path:
    """Path of worker ``rank``'s representative rows as staged in ``epoch`` (read only if it dies):
    ``run_dir/shards/standby-e0001-w0002.h5`` (``...-t0002.h5`` after a takeover). A new epoch's or term's
    file never overwrites one a survivor may be reading."""
    return Path(run_dir) / "shards" / f"standby-e{epoch:04d}-w{rank:04d}{_term(term)}.h5"


def stale_standbys(path: str | os.PathLike[str]) -> list[Path]:
    """The other standby files of the worker that ``path`` (a :func:`standby_path`) belongs to."""
    path = Path(path)
    m = _STANDBY_RE.match(path.name)
    if m is None:
        return []
    return sorted(p for p in path.parent.glob(f"standby-e*-w{m.group(1)}*.h5")
                  if p != path and (o := _STANDBY_RE.match(p.name)) is not None and o.group(1) == m.group(1))


def parse_handoff_name(path: str | os.PathLike[str]) -> int | None:
    """Return the epoch of a handoff file name, or None if the name is not one."""
    m = _HANDOFF_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_handoffs(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Handoff files of a run, sorted by epoch. Temporary files of writes in progress are never listed."""
    folder = Path(run_dir) / "shards"
    if not folder.is_dir():
        return []
    found = [(e, p) for p in folder.iterdir() if (e := parse_handoff_name(p)) is not None]
    return [p for _, p in sorted(found)]


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _weights_ok(w: np.ndarray, n: int) -> bool:
    """Row weights are ``n`` finite positive numbers."""
    return w.shape == (n,) and bool(np.all(np.isfinite(w))) and not np.any(w <= 0)


def write_shard(path: str | os.PathLike[str], X: np.ndarray | RowBlocks | None, y: np.ndarray, ids: np.ndarray,
                attrs: Mapping[str, Any] | None = None, extra: Mapping[str, np.ndarray] | None = None,
                w: np.ndarray | None = None, scale: float | None = None, rows_from: str | None = None,
                compress: bool = False) -> Path:
    """Write a shard (or handoff) file atomically.

    Args:
        path: Destination; missing parent directories are created.
        X: ``(n, d)`` features: uint8 (with ``scale``) stored as they are, anything else as float32; or a
            :class:`~ftmpi.storage.rows.RowBlocks`, read and written a block at a time; None with ``rows_from``.
        y: ``(n,)`` labels, stored as int32.
        ids: ``(n,)`` global row ids, stored as int64.
        attrs: Extra HDF5 attributes (strings, numbers, small arrays), e.g. ``n_classes``, ``dataset``; an
            enum member is stored as its value (h5py cannot store a ``str`` enum member itself).
        extra: Extra datasets (name -> array), e.g. a handoff file's ``receivers`` and ``offsets``.
        w: The rows' weights (see :class:`Shard`), stored as ``/w`` only when some weight is not 1.
        scale: For uint8 ``X``: the features are ``X * scale`` (stored as the ``x_scale`` attribute).
        rows_from: Instead of ``X``: a :meth:`RowStore.ref_json` the reader takes the rows ``ids`` from.
        compress: uint8 ``X`` of 1 MB or more is stored deflate-compressed (:mod:`ftmpi.storage.h5zip`).

    Returns:
        The destination path.

    Raises:
        ValueError: If the shapes disagree.
        Exception: Whatever the write raised; the destination is then untouched and no temp file left.
    """
    dest = Path(path)
    if (X is None) == (rows_from is None):
        raise ValueError(f"{dest}: give the rows X or a reference rows_from, not both or neither")
    if X is not None:
        if not isinstance(X, RowBlocks):  # (a RowBlocks is read and written a block at a time)
            X = np.asarray(X)
            X = np.ascontiguousarray(X, dtype=np.uint8 if X.dtype == np.uint8 else np.float32)
        if X.dtype != np.uint8:
            scale = None
        elif scale is None or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"{dest}: uint8 rows need a positive scale")
    y = np.ascontiguousarray(y, dtype=np.int32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n_x = len(ids) if X is None else len(X)
    if (X is not None and X.ndim != 2) or y.ndim != 1 or ids.ndim != 1 or not n_x == len(y) == len(ids):
        raise ValueError(f"{dest}: expected X (n, d), y (n,), ids (n,); "
                         f"got {None if X is None else X.shape}, {y.shape}, {ids.shape}")
    if w is not None:
        w = np.asarray(w, np.float64)
        if not _weights_ok(w, len(ids)):
            raise ValueError(f"{dest}: weights must be {len(ids)} positive numbers")
        if np.any(w != 1.0):
            extra = {**(extra or {}), "w": w}
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(dest)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            if X is not None and compress and X.dtype == np.uint8:
                write_deflated(f, "X", X)
            elif isinstance(X, RowBlocks):
                ds = f.create_dataset("X", shape=X.shape, dtype=X.dtype)
                for a, block in X.blocks():
                    ds[a:a + len(block)] = block
            elif X is not None:
                f.create_dataset("X", data=X)
            f.create_dataset("y", data=y)
            f.create_dataset("ids", data=ids)
            for name, arr in (extra or {}).items():
                f.create_dataset(name, data=arr)
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            if scale is not None:
                f.attrs["x_scale"] = float(scale)
            if rows_from is not None:
                f.attrs["rows_from"] = rows_from
            for key, value in (attrs or {}).items():
                f.attrs[key] = value.value if isinstance(value, enum.Enum) else value
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def write_handoff(path: str | os.PathLike[str], X: np.ndarray | None, y: np.ndarray, ids: np.ndarray,
                  parts: Mapping[int, int], attrs: Mapping[str, Any] | None = None,
                  w: np.ndarray | None = None, scale: float | None = None, rows_from: str | None = None) -> Path:
    """Write one epoch's handoff file: the rows of ``X``/``y``/``ids`` grouped by receiver, in the order of
    ``parts`` (receiver world rank -> its number of rows, summing to ``len(ids)``); ``w``: the rows' weights
    (stored as ``/w`` only when some weight is not 1); ``scale``/``rows_from``: uint8 rows, or none and a
    reference to the prepared copy, as in :func:`write_shard`."""
    counts = np.array(list(parts.values()), np.int64)
    if counts.sum() != len(ids):
        raise ValueError(f"{path}: the receivers' rows add up to {counts.sum()}, not {len(ids)}")
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return write_shard(path, X, y, ids, attrs, {"receivers": np.array(list(parts), np.int64), "offsets": offsets},
                       w, scale, rows_from)


def handoff_slices(path: str | os.PathLike[str]) -> dict[int, tuple[int, int]]:
    """Receiver world rank -> ``(start, stop)`` of its rows in a handoff file (DataError if not one)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            ranks, offsets = f["receivers"][()], f["offsets"][()]
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: not a readable handoff file: {' '.join(str(exc).split())}") from None
    if len(offsets) != len(ranks) + 1 or np.any(np.diff(offsets) < 0):
        raise DataError(f"{path}: /offsets {offsets.tolist()} do not fit /receivers {ranks.tolist()}")
    return {int(r): (int(offsets[i]), int(offsets[i + 1])) for i, r in enumerate(ranks)}


def read_shard(path: str | os.PathLike[str], rows: tuple[int, int] | None = None,
               room: Callable[[int], int] | None = None, raw: bool = False, lazy: bool = False) -> Shard:
    """Read and validate a shard (or handoff) file, or only rows ``start:stop`` of it.

    Args:
        path: The file.
        rows: ``(start, stop)``: read only these rows (a survivor's part of a handoff file).
        room: Given the number of rows ``n``, how many more rows of room to leave after them: the features
            are then read straight into a float32 buffer of ``n + room(n)`` rows (``Shard.buf``; ``X`` is its
            first ``n`` rows), so a worker that wants room for handed rows holds one copy, not two.
        raw: Rows stored as uint8 with a scale (in the file or the file it refers to) stay uint8, with
            ``Shard.scale`` set: a quarter of the memory, converted a batch at a time by the reader.
        lazy: A shard by reference whose training rows are kept resident (:func:`~ftmpi.storage.rows.keep_resident`)
            and need no conversion (``raw`` uint8, or float32 with scale 1) is not copied: ``X`` is a
            :class:`~ftmpi.storage.rows.RowsOf` of that mapping (``room`` is then not used).

    Returns:
        The :class:`Shard`, arrays loaded into memory.

    Raises:
        DataError: Naming the file, if it is missing, not HDF5, truncated, or lacks or misshapes a dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: shard file not found")
    arrays: dict[str, np.ndarray] = {}
    room_buf: np.ndarray | None = None  # the buffer X is the first rows of, when room was asked
    x_u8 = False
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            for name, dtype in _DTYPES.items():
                ds = f.get(name)
                if not isinstance(ds, h5py.Dataset):
                    raise DataError(f"{path}: not a shard file: no dataset /{name}")
                if ds.dtype != dtype:
                    raise DataError(f"{path}: /{name} has dtype {ds.dtype}, expected {np.dtype(dtype)}")
                if rows is not None and (ds.ndim == 0 or not 0 <= rows[0] <= rows[1] <= ds.shape[0]):
                    raise DataError(f"{path}: rows {rows[0]}:{rows[1]} are outside /{name} {ds.shape}")
                arrays[name] = ds[()] if rows is None else ds[rows[0]:rows[1]]
            xd = f.get("X")
            ref = attrs.get("rows_from")
            if isinstance(xd, h5py.Dataset):
                if xd.dtype not in (np.float32, np.uint8) or (xd.dtype == np.uint8 and "x_scale" not in attrs):
                    raise DataError(f"{path}: /X has dtype {xd.dtype}, expected float32 (or uint8 with x_scale)")
                if xd.ndim != 2 or (rows is not None and not rows[1] <= xd.shape[0]):
                    raise DataError(f"{path}: rows {rows and f'{rows[0]}:{rows[1]} '}do not fit /X {xd.shape}")
                r0, r1 = rows if rows is not None else (0, xd.shape[0])
                x_u8 = xd.dtype == np.uint8
                keep = raw and x_u8  # rows stay in their stored type
                if room is None:
                    arrays["X"] = xd[r0:r1]
                else:
                    buf = room_buf = populated((max(r1 - r0, 0) + max(int(room(r1 - r0)), 0), xd.shape[1]),
                                               np.uint8 if keep else np.float32, ready=r1 - r0)
                    if (xd.dtype == np.float32 or keep) and r1 > r0:
                        xd.read_direct(buf, np.s_[r0:r1], np.s_[0:r1 - r0])
                    elif r1 > r0:
                        buf[:r1 - r0] = xd[r0:r1]
                    arrays["X"] = buf[:r1 - r0]
            elif ref is None:
                raise DataError(f"{path}: not a shard file: no dataset /X")
            wd = f.get("w")
            if isinstance(wd, h5py.Dataset):  # optional row weights
                if wd.dtype != np.float64 or wd.shape != f["ids"].shape:
                    raise DataError(f"{path}: /w must be float64 of shape {f['ids'].shape}, got {wd.dtype} "
                                    f"{wd.shape}")
                arrays["w"] = wd[()] if rows is None else wd[rows[0]:rows[1]]
    except DataError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"{path}: unreadable HDF5 shard (corrupt or truncated?): {reason}") from None
    y, ids = arrays["y"], arrays["ids"]
    scale: float | None = None
    if "X" in arrays:
        X = arrays["X"]
        if x_u8:
            scale = _scale(attrs["x_scale"], path)
        if x_u8 and not raw:  # float32 times the scale (already in the float32 buffer when room was asked)
            if X.dtype == np.uint8:
                X = features(X, scale)
            else:
                X *= np.float32(scale)
            scale = None
    else:
        store = RowStore.from_ref(str(attrs["rows_from"]), str(path)) if len(ids) else None
        d = store.d if store is not None else int(json.loads(str(attrs["rows_from"])).get("d", 0))
        n = len(ids)
        keep = raw and store is not None and store.stored == np.uint8
        held = store.resident() if lazy and store is not None and _converts_not(store, raw) else None
        if held is not None and store is not None:
            return _checked(path, Shard(RowsOf(held, ids), y, ids, attrs, arrays.get("w"), None,  # type: ignore[arg-type]
                                        store.scale if keep else None))
        buf = room_buf = populated((n + (max(int(room(n)), 0) if room is not None else 0), d),
                                   np.uint8 if keep else np.float32, ready=n)
        X = buf[:n]
        if keep:
            assert store is not None
            store.raw(ids, out=X)
            scale = store.scale
        elif store is not None:
            store.rows(ids, out=X)
    return _checked(path, Shard(X, y, ids, attrs, arrays.get("w"), room_buf if room is not None else None, scale))


def _checked(path: Path, sh: Shard) -> Shard:
    """``sh`` if its arrays agree in shape and its weights are positive; DataError naming ``path`` otherwise."""
    X, y, ids, w = sh.X, sh.y, sh.ids, sh.w
    if X.ndim != 2 or y.ndim != 1 or ids.ndim != 1 or not len(X) == len(y) == len(ids):
        raise DataError(f"{path}: inconsistent shapes X {X.shape}, y {y.shape}, ids {ids.shape}")
    if w is not None and not _weights_ok(w, len(ids)):
        raise DataError(f"{path}: /w holds weights that are not positive numbers")
    return sh


def _extent(path: str | os.PathLike[str], raw: bool) -> tuple[int, int, int, RowStore | None] | None:
    """(rows, features, bytes per feature as :func:`read_shard` with ``raw`` would hold them, the row store the
    file refers to or None) of a shard file, from its datasets' shapes and attributes only; None if unreadable."""
    try:
        with h5py.File(path, "r") as f:
            n = int(f["ids"].shape[0])
            ref, xd = f.attrs.get("rows_from"), f.get("X")
            if ref is not None:
                store = RowStore.from_ref(str(_plain(ref)), str(path))
                return n, store.d, 1 if raw and store.stored == np.uint8 else 4, store
            if isinstance(xd, h5py.Dataset) and xd.ndim == 2:
                u8 = xd.dtype == np.uint8 and "x_scale" in f.attrs
                return n, int(xd.shape[1]), 1 if raw and u8 else 4, None
    except (OSError, KeyError, ValueError, RuntimeError, DataError):
        pass
    return None


def ready_for_any(paths: Iterable[str | os.PathLike[str]], room: Callable[[int], int], raw: bool = False) -> int:
    """Get this process ready to :func:`read_shard` any one of the shard files ``paths`` (with ``room`` and
    ``raw`` as it will be read) at short notice: the training rows they refer to stay mapped with their
    pages in (:func:`~ftmpi.storage.rows.keep_resident`), and a buffer for the largest of them with its room
    is mapped ahead (:func:`~ftmpi.storage.membuf.reserve`). A hot spare does it while it waits when the
    shards are too large to read ahead whole (:class:`ShardsAhead`); the files are only looked at (ids'
    length, the row reference), and one that cannot be read is passed over (the read then goes as it would
    have). Returns the bytes reserved (0: none)."""
    ext = [e for e in (_extent(p, raw) for p in paths) if e is not None]
    _keep_rows_resident(ext)
    biggest = max(((n + max(int(room(n)), 0)) * d * size for n, d, size, _ in ext), default=0)
    return biggest if biggest and reserve(biggest) else 0


def _keep_rows_resident(ext: Iterable[tuple[int, int, int, RowStore | None] | None]) -> None:
    """:func:`~ftmpi.storage.rows.keep_resident` the training rows the shards of ``ext`` (:func:`_extent`)
    refer to, each file once."""
    stores = {str(e[3].path.resolve()): e[3] for e in ext if e is not None and e[3] is not None}
    for store in stores.values():
        keep_resident(store)


class ShardsAhead:
    """Shard files read ahead of need, for one of them to be taken later without reading anything: a hot
    spare's, since any worker may be the one it replaces. The training rows they refer to are kept resident
    (:func:`~ftmpi.storage.rows.keep_resident`), and a shard by reference is held as its ids over that mapping
    (``read_shard(lazy=True)``): no copy, no memory of its own, and the shard taken trains from the page cache
    at once. A shard that holds its rows (or whose rows need converting) is read as :func:`read_shard` with
    ``raw`` would (no room after the rows: :class:`~ftmpi.worker.localshard.LocalShard` grows its buffer when
    rows are handed to it), when all such copies take at most ``budget`` bytes (``held``); else nothing is
    read (``ready`` is False) and the caller falls back on :func:`ready_for_any`.

    Measured on Fashion-MNIST, 4 iid shards of 15000 rows: copying them all took 50-80 ms of CPU (zero-filled
    pages, then the gather), on a machine where the spare's CPU is the workers' (their first rounds);
    holding them by reference takes the mapping's ~3 ms and the shard files' ids."""

    def __init__(self, paths: Iterable[str | os.PathLike[str]], raw: bool, budget: int) -> None:
        self._shards: dict[str, tuple[tuple[int, int, int, int], Shard]] = {}
        self.held = 0
        paths = [Path(p) for p in paths]
        ext = [_extent(p, raw) for p in paths]
        _keep_rows_resident(ext)
        total = sum(n * d * size for n, d, size, store in (e for e in ext if e is not None)
                    if not _by_reference(store, raw))
        if total > budget:
            return
        for p, e in zip(paths, ext, strict=True):
            if e is None:
                continue
            try:
                stamp = identity(p.stat())
                self._shards[str(p.resolve())] = (stamp, read_shard(p, room=lambda n: 0, raw=raw, lazy=True))
            except (OSError, DataError):
                continue
        self.held = sum(sh.X.nbytes for _, sh in self._shards.values())

    @property
    def ready(self) -> bool:
        """Whether any shard is held (read ahead, or by reference)."""
        return bool(self._shards)

    def take(self, path: str | os.PathLike[str]) -> Shard | None:
        """The shard of ``path`` as read ahead, if the file is still the one read (:func:`identity`), else
        None. The others stay held until this object is let go (freeing them takes
        milliseconds: not while the others wait)."""
        key = str(Path(path).resolve())
        got = self._shards.pop(key, None)
        if got is None:
            return None
        try:
            return got[1] if identity(Path(path).stat()) == got[0] else None
        except OSError:
            return None


def _by_reference(store: RowStore | None, raw: bool) -> bool:
    """Whether ``read_shard(lazy=True)`` holds a shard of ``store``'s rows without copying them (its file kept
    resident, the rows needing no conversion)."""
    return store is not None and _converts_not(store, raw) and store.resident() is not None


def _converts_not(store: RowStore, raw: bool) -> bool:
    """Whether ``read_shard`` with ``raw`` gives ``store``'s rows as stored: uint8 kept raw, or the features
    themselves (float32, scale 1)."""
    return (raw and store.stored == np.uint8) or (store.stored == np.float32 and store.scale == 1.0)


def _scale(v: Any, path: Path) -> float:
    """A shard's ``x_scale`` attribute as a positive float; DataError naming the file otherwise."""
    try:
        scale = float(v)
    except (TypeError, ValueError):
        scale = float("nan")
    if not (np.isfinite(scale) and scale > 0):
        raise DataError(f"{path}: x_scale is {v!r}, expected a positive number")
    return scale


def _umask() -> int:
    """The process's umask, read without changing it (other threads may be creating files)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def rows_by_reference(X_train: Any, hosts: list[str], root_host: str) -> bool:
    """Whether workers should read their rows from the prepared copy themselves (shards by reference):
    ``FTMPI_SHARED_DATA=1`` or ``0`` decides; else yes when the rows are in a file (:class:`RowStore`) and
    every worker runs on rank 0's host (then the file is certainly visible to all)."""
    if not isinstance(X_train, RowStore):
        return False
    env = os.environ.get("FTMPI_SHARED_DATA", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return all(h == root_host for h in hosts)


def ensure_shard(path: str | os.PathLike[str], X_train: Any, y_train: np.ndarray, ids: np.ndarray,
                 attrs: Mapping[str, Any] | None = None, w: np.ndarray | None = None,
                 by_ref: bool = False, compress: bool = False) -> int:
    """Make ``path`` hold the shard of rows ``ids`` of ``X_train``/``y_train``, writing only if the file there
    does not already hold exactly it (same ids, labels, weights, attributes and rows): a resume whose
    ownership did not change writes nothing. Returns the bytes written (0 if the file was kept).

    ``X_train``: a float32 array, or a :class:`RowStore` whose rows are stored in their own type (uint8 with a
    scale); ``by_ref`` (RowStore only): store a reference to it instead of the rows (see :func:`read_shard`);
    ``compress``: uint8 rows deflate-compressed (see :func:`write_shard`).
    """
    path = Path(path)
    ids = np.asarray(ids, np.int64)
    y = np.asarray(y_train[ids], np.int32)
    if w is not None and not np.any(np.asarray(w) != 1.0):
        w = None
    full = dict(attrs or {})
    X: np.ndarray | RowBlocks | None = None
    scale: float | None = None
    ref: str | None = None
    if by_ref:
        if not isinstance(X_train, RowStore):
            raise ValueError(f"{path}: a shard by reference needs the rows in a file (a RowStore)")
        ref = X_train.ref_json()
        full["rows_from"] = ref
    else:
        if hasattr(X_train, "raw"):  # rows kept in their own type (a RowStore, PackedRows, a run dir's RunRows)
            X = RowBlocks(X_train, ids)  # checked, then written, a block at a time
            scale = X.scale
            full["rows_crc"] = X.crc32() if len(X) else 0
        else:
            X = np.ascontiguousarray(X_train[ids], dtype=np.float32)
            full["rows_crc"] = zlib.crc32(memoryview(X).cast("B")) if X.size else 0
        if scale is not None:
            full["x_scale"] = float(scale)
    if _holds(path, ids, y, w, full, None if X is None else X.shape, None if X is None else X.dtype):
        return 0
    write_shard(path, X, y, ids, {k: v for k, v in full.items() if k not in ("rows_from", "x_scale")}, w=w,
                scale=scale, rows_from=ref, compress=compress)
    return path.stat().st_size


def _holds(path: Path, ids: np.ndarray, y: np.ndarray, w: np.ndarray | None, attrs: Mapping[str, Any],
           x_shape: tuple[int, ...] | None, x_dtype: Any) -> bool:
    """The file at ``path`` is a valid shard of exactly these ids, labels, weights and attributes (checked
    without reading its rows: their checksum is one of the attributes)."""
    try:
        with h5py.File(path, "r") as f:
            if _plain(f.attrs.get("format")) != FORMAT or int(f.attrs.get("format_version", 0)) != FORMAT_VERSION:
                return False
            for key, value in attrs.items():
                if key not in f.attrs or _plain(f.attrs[key]) != _plain(value):
                    return False
            if ("rows_from" in f.attrs) != ("rows_from" in attrs):
                return False
            xd = f.get("X")
            if x_shape is None:
                if xd is not None:
                    return False
            elif not isinstance(xd, h5py.Dataset) or xd.shape != x_shape or xd.dtype != x_dtype:
                return False
            if not (np.array_equal(f["ids"][()], ids) and np.array_equal(f["y"][()], y)):
                return False
            wd = f.get("w")
            return (wd is None and w is None) or (wd is not None and w is not None
                                                  and np.array_equal(wd[()], np.asarray(w, np.float64)))
    except (OSError, KeyError, RuntimeError, ValueError, TypeError):
        return False
