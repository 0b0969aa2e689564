"""A training set kept on disk in its own type and read by row id: :class:`RowStore`, and the prepared copy.

Rank 0 does not need the training rows after sharding, and a worker needs only its own. So an image
dataset's training matrix is not loaded as float32 (4 bytes a pixel, 188 MB for Fashion-MNIST): it stays in
a file of uint8 pixels (the *prepared copy*) that is memory-mapped per read. ``store[ids]`` returns float32
rows exactly as the in-memory loader computed them (``uint8 * float32(1/255)``); ``store.raw(ids)`` the
stored uint8 rows for a shard file. A read walks the requested rows in file order, a chunk at a time, and
gives the chunk's pages back (``MADV_DONTNEED``) before the next one: the file stays in the page cache, but
the process's resident set (and its peak, ``VmHWM``) grows with the rows returned, not with the dataset.

The prepared copy is an uncompressed IDX file: a plain IDX source is used where it lies, a gzip-compressed
one is decompressed once (streamed, never whole in memory) into ``$FTMPI_PREPARED`` or
``~/.cache/ftmpi/prepared/``, under a name derived from the source's path, size and modification time.
"""
from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import mmap
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ftmpi.errors import DataError
from ftmpi.storage.fsutil import temp_beside

__all__ = ["RowStore", "RowsOf", "idx_store", "keep_resident", "prepared_dir"]

_CHUNK_BYTES = 8 << 20  # bytes of the file per read window (its pages are given back before the next one)
_PAGE = mmap.PAGESIZE
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux's value; Python 3.11 does not name it
# files mapped for good by keep_resident: (resolved path, size, mtime_ns) -> the mapping
_RESIDENT: dict[tuple[str, int, int], mmap.mmap] = {}


def keep_resident(store: RowStore) -> bool:
    """Map ``store``'s file for the rest of the process, its pages mapped in now (``MADV_POPULATE_READ``,
    Linux 5.14+), and read every later :class:`RowStore` of the same file (same size and modification time)
    through that mapping without giving its pages back. A read of any rows is then a copy from the page
    cache with no page fault: a hot spare does this while it waits, so that taking a lost worker's shard
    costs a copy (~5 ms for 15000 Fashion-MNIST rows) instead of ~20 ms of faults. No memory beyond the
    page cache's own is used (the mapping shares its pages; they count in the resident set as shared file
    pages) besides page tables. False (and nothing kept) if the file cannot be mapped."""
    key = store._key()
    if key in _RESIDENT:
        return True
    try:
        with open(store.path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if (st.st_size, st.st_mtime_ns) != key[1:]:
                return False  # changed since the store was opened
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return False
    try:
        mm.madvise(MADV_POPULATE_READ)
    except (OSError, ValueError, AttributeError):
        pass  # an older kernel: the pages are mapped at first read, and kept
    _RESIDENT[key] = mm
    return True


class RowMatrix:
    """What the trainer asks of a training matrix whose rows are read by id on demand (:class:`RowStore`, a
    run dir's ``RunRows``): ``m[ids]`` (an int, a slice, int or bool arrays; negative ids count from the
    end) -> float32 rows, ``.shape``, ``len()``, ``.ndim``, ``.dtype`` (float32, the type rows come back in).
    A subclass sets ``n`` and ``d`` and reads rows with ``rows(ids)``."""

    ndim = 2
    dtype = np.dtype(np.float32)
    n: int
    d: int

    def rows(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.d)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.rows(self._ids(np.array([key])))[0]
        return self.rows(self._ids(key))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:  # noqa: ARG002 - always a copy
        out = self.rows(np.arange(self.n))
        return out if dtype is None else out.astype(dtype, copy=False)

    def _ids(self, key: Any) -> np.ndarray:
        """Row ids of an index, as int64 in ``[0, n)`` (IndexError otherwise)."""
        if isinstance(key, slice):
            return np.arange(self.n)[key]
        if isinstance(key, tuple):
            raise IndexError(f"{type(self).__name__} supports row selection only")
        arr = np.asarray(key)
        if arr.size == 0 and arr.dtype != bool:  # [] (float64 to numpy): no rows
            return np.zeros(0, np.int64)
        if arr.dtype == bool:
            if arr.shape != (self.n,):
                raise IndexError(f"boolean index of shape {arr.shape} for {self.n} rows")
            return np.flatnonzero(arr)
        if arr.dtype.kind not in "iu":
            raise IndexError(f"row ids must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64).reshape(-1)
        arr = np.where(arr < 0, arr + self.n, arr)
        if arr.size and (arr.min() < 0 or arr.max() >= self.n):
            raise IndexError(f"row ids outside [0, {self.n})")
        return arr


def features(X: np.ndarray, scale: float | None) -> np.ndarray:
    """float32 features of stored rows: ``X`` itself when ``scale`` is None, else ``X * float32(scale)`` computed
    in float32, exactly as the loaders and :func:`ftmpi.storage.shards.read_shard` compute them."""
    if scale is None:
        return X
    out = X.astype(np.float32)
    out *= np.float32(scale)
    return out


class RowsOf:
    """Rows ``ids`` of a matrix ``base``, in that order, copied only when indexed: ``m[idx]`` is
    ``base[ids[idx]]`` (an int array, a slice or a bool mask of positions), with ``shape``, ``dtype``, ``ndim``
    and ``len()`` of the ``(len(ids), d)`` matrix it stands for. A hot spare holds every worker's shard so,
    over the :func:`keep_resident` mapping of the training rows (:meth:`RowStore.resident`): nothing is
    copied ahead, and the shard it takes trains from the page cache at once. :meth:`gather` copies them all."""

    def __init__(self, base: np.ndarray, ids: np.ndarray) -> None:
        self.base, self.ids = base, np.asarray(ids, np.int64).reshape(-1)
        self.shape = (len(self.ids), *base.shape[1:])
        self.dtype, self.ndim = base.dtype, base.ndim
        self.nbytes = 0  # no memory of its own

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: Any) -> np.ndarray:
        return self.base[self.ids[idx]]

    def gather(self, out: np.ndarray) -> np.ndarray:
        """All the rows, into ``out`` (of ``shape`` and ``dtype``)."""
        np.take(self.base, self.ids, axis=0, out=out)
        return out


class PackedRows(RowMatrix):
    """Rows held in memory in their stored type (an image dataset's uint8 pixels) with the scale that makes
    them features: a quarter of the memory of float32, converted where they are used (``m[a:b]``, ``m[ids]``)
    to exactly the float32 features. Rank 0 keeps the test set so and evaluates it a chunk at a time
    (:func:`ftmpi.kernels.predict`); ``raw``/``scale``/``stored`` are what
    :func:`ftmpi.storage.shards.ensure_shard` asks to write them as they are."""

    def __init__(self, X: np.ndarray, scale: float) -> None:
        self.X = np.ascontiguousarray(X)
        if self.X.ndim != 2:
            raise ValueError(f"PackedRows needs (n, d) rows, got shape {self.X.shape}")
        self.n, self.d = self.X.shape
        self.scale, self.stored = float(scale), self.X.dtype

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return features(self.X[np.asarray(ids, np.int64)], self.scale)

    def raw(self, ids: np.ndarray) -> np.ndarray:
        return self.X[np.asarray(ids, np.int64)]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):  # a block of rows: converted from a view, no id array
            return features(self.X[key], self.scale)
        return super().__getitem__(key)


class RowBlocks:
    """Rows ``ids`` of a row source (a :class:`RowStore`, :class:`PackedRows` or a run dir's ``RunRows``), read
    a block at a time when they are written out, so that writing a shard never holds all of its rows at once
    (and as much again in the allocator afterwards): a block bounds that to ``rows * d`` bytes. The rows keep
    the source's stored type (uint8, with ``scale``) where it has one."""

    def __init__(self, source: Any, ids: np.ndarray, rows: int = 2048) -> None:
        self.source, self.ids, self.step = source, np.asarray(ids, np.int64), max(1, int(rows))
        probe = source.raw(self.ids[:1])
        self.stored = probe.dtype == np.uint8
        self.dtype = np.dtype(np.uint8 if self.stored else np.float32)
        self.scale: float | None = float(source.scale) if self.stored else None
        self.shape = (len(self.ids), int(source.shape[1]))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    def block(self, a: int, b: int) -> np.ndarray:
        """Rows ``a:b`` (positions in ``ids``), C-contiguous, in :attr:`dtype`."""
        part = self.ids[a:b]
        X = self.source.raw(part) if self.stored else self.source.rows(part)
        return np.ascontiguousarray(X, dtype=self.dtype)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for a in range(0, self.shape[0], self.step):
            yield a, self.block(a, a + self.step)

    def crc32(self) -> int:
        """zlib's CRC-32 of all the rows' bytes, in order (the same as of the whole array at once)."""
        crc = 0
        for _, X in self.blocks():
            crc = zlib.crc32(memoryview(X).cast("B"), crc)
        return crc


class RowStore(RowMatrix):
    """An ``(n, d)`` matrix in a file (``dtype`` rows at byte ``offset``), read by row id as float32.

    Supports what the trainer asks of a training matrix: ``store[ids]`` (an int, a slice, int or bool
    arrays) -> float32 rows times ``scale``, ``.shape``, ``len()``, ``.ndim``, ``.dtype`` (float32, the type
    rows come back in) and ``np.asarray(store)`` (everything, for tools that want the whole matrix).
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, n: int, d: int, stored: Any,
                 scale: float = 1.0) -> None:
        self.path = Path(path)
        self.offset, self.n, self.d = int(offset), int(n), int(d)
        self.stored = np.dtype(stored)
        self.scale = float(scale)
        try:
            st = self.path.stat()
        except OSError as exc:
            raise DataError(f"{self.path}: cannot open the training rows: {exc.strerror}") from None
        need = self.offset + self.n * self.d * self.stored.itemsize
        if st.st_size < need:
            raise DataError(f"{self.path}: {st.st_size} bytes, expected at least {need} for {self.n} rows of "
                            f"{self.d} {self.stored}")
        self.size, self.mtime_ns = int(st.st_size), int(st.st_mtime_ns)

    def __repr__(self) -> str:
        return f"RowStore({str(self.path)!r}, {self.n}x{self.d} {self.stored}, scale={self.scale:g})"

    # ------------------------------------------------------------------ reading
    def rows(self, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``ids`` as float32 (``stored * scale``), in the order given; into ``out`` (a float32
        ``(len(ids), d)`` array, e.g. the first rows of a bigger buffer) if given."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if out is None:
            out = np.empty((len(ids), self.d), np.float32)
        elif out.shape != (len(ids), self.d) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 of shape {(len(ids), self.d)}, got {out.dtype} {out.shape}")
        self._gather(ids, out, True)
        return out

    def raw(self, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``ids`` in the stored type, in the order given (each id in ``[0, n)``); into ``out`` (an array
        of the stored type and shape ``(len(ids), d)``) if given."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if out is None:
            out = np.empty((len(ids), self.d), self.stored)
        elif out.shape != (len(ids), self.d) or out.dtype != self.stored:
            raise ValueError(f"out must be {self.stored} of shape {(len(ids), self.d)}, got {out.dtype} {out.shape}")
        self._gather(ids, out, False)
        return out

    def _gather(self, ids: np.ndarray, out: np.ndarray, convert: bool) -> None:
        """Copy rows ``ids`` into ``out`` (converted to float32 times ``scale`` if ``convert``), one window of
        the file at a time: the rows of a window, then its pages given back. A window is a byte range, not a
        number of rows: the kernel maps the pages around each faulting one (fault-around), so sparse rows
        spread over a wide range would make the whole range resident."""
        if not len(ids) or not self.d:
            return
        if ids.min() < 0 or ids.max() >= self.n:
            raise IndexError(f"{self.path}: row ids outside [0, {self.n})")
        mat = self.resident()
        if mat is not None:
            self._copy_resident(mat, ids, out, convert)
            return
        order = np.argsort(ids, kind="stable")
        sids = ids[order]
        row_bytes = self.d * self.stored.itemsize
        window = (self.offset + sids * row_bytes) // _CHUNK_BYTES
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(window)) + 1, [len(sids)]])
        scale = np.float32(self.scale)
        try:
            with self._mapped() as mm:
                whole = np.frombuffer(mm, self.stored, count=self.n * self.d, offset=self.offset)
                mat = whole.reshape(self.n, self.d)
                for a, b in itertools.pairwise(cuts.tolist()):
                    chunk = mat[sids[a:b]]
                    if convert:
                        chunk = chunk.astype(np.float32)
                        if self.scale != 1.0:
                            chunk *= scale
                    out[order[a:b]] = chunk
                    lo = (self.offset + int(sids[a]) * row_bytes) // _PAGE * _PAGE
                    hi = self.offset + (int(sids[b - 1]) + 1) * row_bytes
                    if hasattr(mm, "madvise"):
                        mm.madvise(mmap.MADV_DONTNEED, lo, min(hi, len(mm)) - lo)
                del mat, whole
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read the training rows: {exc}") from None

    def _copy_resident(self, mat: np.ndarray, ids: np.ndarray, out: np.ndarray, convert: bool) -> None:
        """:meth:`_gather` from a :func:`keep_resident` mapping (``mat``: :meth:`resident`): straight into
        ``out`` in the order given (no temporary copy, whose fresh pages would cost more than the copy itself),
        a block at a time when converting; no page is given back."""
        if not convert:
            np.take(mat, ids, axis=0, out=out)
            return
        scale, step = np.float32(self.scale), max(1, (1 << 20) // max(1, self.d))
        for a in range(0, len(ids), step):
            o = out[a:a + step]
            o[...] = mat[ids[a:a + step]]
            if self.scale != 1.0:
                o *= scale

    def resident(self) -> np.ndarray | None:
        """The ``(n, d)`` matrix of the stored rows as a read-only view of the :func:`keep_resident` mapping
        of this file (no copy; indexing it copies from the page cache), or None when it is not kept."""
        held = _RESIDENT.get(self._key()) if _RESIDENT else None
        if held is None:
            return None
        return np.frombuffer(held, self.stored, count=self.n * self.d, offset=self.offset).reshape(self.n, self.d)

    def _key(self) -> tuple[str, int, int]:
        return str(self.path.resolve()), self.size, self.mtime_ns

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[mmap.mmap]:
        """The file, memory-mapped read-only for one read (a subclass may hold one open instead)."""
        with open(self.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm

    # ------------------------------------------------------------------ by reference
    def ref(self) -> dict[str, Any]:
        """What another process needs to read these rows (and to check it reads the same file)."""
        return {"path": str(self.path.resolve()), "offset": self.offset, "n": self.n, "d": self.d,
                "stored": self.stored.str, "scale": self.scale, "size": self.size, "mtime_ns": self.mtime_ns}

    def ref_json(self) -> str:
        return json.dumps(self.ref(), sort_keys=True)

    @classmethod
    def from_ref(cls, ref: dict[str, Any] | str, where: str = "") -> RowStore:
        """Open the rows ``ref`` (a :meth:`ref`, or its JSON) names; DataError if the file is not the same one
        (missing on this host, or changed since): set ``FTMPI_SHARED_DATA=0`` to have rank 0 write the rows."""
        try:
            r = json.loads(ref) if isinstance(ref, str) else dict(ref)
            store = cls(r["path"], r["offset"], r["n"], r["d"], r["stored"], r["scale"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{where}: malformed row reference ({exc})") from None
        except DataError as exc:
            raise DataError(f"{where}: the shard's rows are in a file this rank cannot use: {exc} (is the data "
                            "on a filesystem every rank sees? FTMPI_SHARED_DATA=0 has rank 0 write the rows)") from None
        if (store.size, store.mtime_ns) != (int(r["size"]), int(r["mtime_ns"])):
            raise DataError(f"{where}: {store.path} changed since rank 0 opened it (size or modification time)")
        return store


# ----------------------------------------------------------------------------- the prepared copy

def prepared_dir() -> Path:
    """Where decompressed copies go: ``$FTMPI_PREPARED``, else ``~/.cache/ftmpi/prepared``."""
    env = os.environ.get("FTMPI_PREPARED")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ftmpi" / "prepared"


def idx_header(fh: Any, path: Path) -> tuple[int, tuple[int, ...], bytes]:
    """Read an IDX header: two zero bytes, type code 0x08 (unsigned byte), the number of dimensions, then
    each dimension as a big-endian uint32. Returns (header size, dimensions, the header's bytes)."""
    head = fh.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
    if head[2] != 0x08:
        raise DataError(f"{path}: IDX type code 0x{head[2]:02x} is not supported (only 0x08, ubyte)")
    ndim = head[3]
    if ndim == 0:
        raise DataError(f"{path}: IDX file announces 0 dimensions")
    raw = fh.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
    return 4 + 4 * ndim, tuple(int(v) for v in np.frombuffer(raw, ">u4")), head + raw


def _plain_idx(path: Path) -> tuple[int, tuple[int, ...]] | None:
    """Header size and dimensions of an uncompressed IDX file of exactly the announced size; None if gzip."""
    with open(path, "rb") as fh:
        if fh.read(2) == b"\x1f\x8b":
            return None
        fh.seek(0)
        off, dims, _ = idx_header(fh, path)
    need = off + int(np.prod(dims))
    size = path.stat().st_size
    if size != need:
        what = "truncated IDX file" if size < need else "IDX file is longer than its header's shape"
        raise DataError(f"{path}: {what}: {size} bytes for shape {dims} ({need} expected)")
    return off, dims


def _decompress(src: Path, dest: Path) -> None:
    """Stream a gzip-compressed IDX file into ``dest`` (atomically), checking its length against the header."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(dest)
    try:
        with open(src, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz, os.fdopen(fd, "wb") as out:
            _, dims, header = idx_header(gz, src)
            out.write(header)
            need = int(np.prod(dims))
            got = 0
            while got < need:
                block = gz.read(min(4 << 20, need - got))
                if not block:
                    raise DataError(f"{src}: truncated IDX file: {got} of {need} data bytes for shape {dims}")
                out.write(block)
                got += len(block)
            if gz.read(1):
                raise DataError(f"{src}: IDX file is longer than its header's shape {dims} says")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"{src}: corrupt or truncated gzip data ({exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def idx_store(path: Path, scale: float) -> RowStore | None:
    """A :class:`RowStore` over the images of an IDX file, flattened to ``(n, rows * cols)``: the file itself
    if uncompressed, else its prepared copy (made now if missing). None if no prepared copy can be written
    (the caller then loads the file into memory)."""
    src = path
    plain = _plain_idx(path)
    if plain is None:
        st = path.stat()
        import hashlib

        key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        src = prepared_dir() / f"{path.name.removesuffix('.gz')}-{key}"
        try:
            plain = _plain_idx(src) if src.is_file() else None
        except DataError:
            plain = None
        if plain is None:
            try:
                _decompress(path, src)
            except OSError:
                return None
            plain = _plain_idx(src)
            assert plain is not None
    off, dims = plain
    if len(dims) != 3:
        raise DataError(f"{path}: expected images (n, rows, cols), got shape {dims}")
    return RowStore(src, off, dims[0], dims[1] * dims[2], np.uint8, scale)
