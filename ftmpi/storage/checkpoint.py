"""HDF5 checkpoints of rank 0's state: save atomically, load with validation, summarise. No MPI.

A checkpoint is one file, ``run_dir/ckpt/round-000120.h5``, where the number is the next round to run.
Its layout is meant to be read with ``h5ls -r`` / ``h5dump`` as well as by :func:`load`::

    /                              attrs: format, format_version, round, epoch, iters_done, period,
                                          switched_at (-1 = never), test_acc, train_loss, coverage, dataset,
                                          n_classes, created (unix), created_iso, stale_dropped, rows_handed,
                                          wall_seconds, bytes_total, config (YAML), failures, rng (JSON),
                                          labels (JSON: a user dataset's label value per class, 0..k-1)
    /model/sizes                   int64 [d, h..., k]; a plug-in model's [d, k]
    /model/layer0/W, /model/layer0/b, ...   float32, W of shape (fan_in, fan_out)
    /model/params                  float32, the flat vector of a plug-in model (instead of layers); /model's
                                   attribute spec says which model: JSON {"type": model.type, "options": ...}
    /optimizer/m, /optimizer/v     float32 (v empty for SGD); attrs name, step
    /membership/alive, /dead       int32 world ranks
    /ownership/owner               int32 per training id: owning rank, or -1
    /ownership/dropped             uint8 per training id: 1 = dropped on purpose
    /ownership/weight              float64 per training id: how many rows it stands for (only when some
                                   weight is not 1: representative rows handed over under rep_weight: shard)
    /representative/worker-0003    int64 global ids, one dataset per worker
    /metrics/per_class_acc         float64
    /model/bcast                   float32, what the workers hold of the model under quantization (the sum of
                                   the broadcast changes; absent without quantization)
    /workers/worker-0003/m, /v     float32, that worker's local optimizer moments as of the start of round
                                   ``round`` (v empty for SGD); /workers/worker-0003/residual its uplink
                                   error-feedback residual (empty without quantization); attrs round, step,
                                   shard (:func:`shard_key` of its rows). Present for the workers that sent
                                   their state with the round before (an exact resume needs every
                                   member's); absent in checkpoints written before.

The root attribute ``screen`` (JSON, optional) holds the update screen's recent norms per worker.

The parameters are stored per layer so a user sees matrices, not one long vector; :func:`load` puts them
back into the flat layout of :func:`ftmpi.kernels.layout.layer_slices`.

Integrity, in two layers. (1) Every dataset carries an attribute ``crc32``: ``zlib.crc32`` of its
little-endian C-order bytes (HDF5 has no checksum on contiguous raw data; its Fletcher32 filter needs chunked
storage and its error does not name the dataset). (2) The file starts with a 512+ byte HDF5 *user block*
(which HDF5, ``h5ls`` and ``h5dump`` skip) holding a manifest: ``FTMPI-CKPT <user block size>`` and a JSON
object with the format version, the file size, ``[offset, nbytes, crc32]`` of each dataset's raw bytes, and
one crc32 over every other byte (HDF5's metadata: superblock, object headers, attributes, heaps).
:func:`load` checks the manifest *before* HDF5 parses the file, because HDF5 (2.0.0, bundled with h5py 3.16)
does not survive damaged metadata: a single flipped byte can make it segfault or, with the v1.8+ file
format, loop forever. Damaged data is named by dataset; damaged metadata is one error.

Atomicity: :func:`save` writes a fresh temp file ``.round-000120.h5.<random>.tmp`` in the same folder
(``mkstemp``: no symlink or planted file is followed; mode from the umask), fsyncs it, moves it into place
with ``os.replace`` and fsyncs the folder, so a reader sees the old set of checkpoints or the new one, never
a partial file. A failed write (``ENOSPC`` included) removes its temp file and leaves the other checkpoints
as they were. A writer killed midway leaves only its temp file, which :func:`list_checkpoints` never lists
and :func:`prune` deletes once a newer checkpoint is complete.

Pruning follows the run's lineage, not round numbers alone: after a resume from round 15 past a corrupt
round 20, the run's newest checkpoint is round 18, and round 20 belongs to an abandoned future. :func:`prune`
keeps the newest ``keep`` checkpoints that pass the integrity check, up to the one just written, moves
newer-numbered and damaged files into ``ckpt/set-aside/`` (never resumed from, never deleted), and never
deletes a valid checkpoint unless ``keep`` valid newer ones remain.
"""
from __future__ import annotations

import datetime
import io
import json
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np
import yaml

from ftmpi.core.partition import coverage as _coverage
from ftmpi.errors import CheckpointError
from ftmpi.kernels.layout import layer_slices
from ftmpi.storage.fsutil import TEMP_RE, fsync_dir, identity, temp_beside, write_error

__all__ = ["FORMAT", "FORMAT_VERSION", "SET_ASIDE", "Snapshot", "ckpt_path", "format_summary", "intact",
           "list_checkpoints", "load", "newest_valid", "prune", "save", "shard_key", "summarize"]

FORMAT = "ftmpi-checkpoint"
FORMAT_VERSION = 1
_MAGIC = b"FTMPI-CKPT "
_NAME_RE = re.compile(r"^round-(\d+)\.h5$")
_TMP_RE = re.compile(r"^\.round-\d+\.h5\.tmp-\d+$")  # temp names of earlier ftmpi versions (prune deletes them too)
SET_ASIDE = "set-aside"
_WORKER_RE = re.compile(r"^worker-(\d+)$")
_LAYER_RE = re.compile(r"^layer(\d+)$")
_INT_ATTRS = ("round", "epoch", "iters_done", "period", "n_classes", "stale_dropped", "rows_handed",
              "bytes_total")
_FLOAT_ATTRS = ("test_acc", "train_loss", "wall_seconds", "created")
_PathLike = str | os.PathLike[str]


@dataclass(eq=False)
class Snapshot:
    """A consistent snapshot of rank 0's state, enough to resume a run and to audit it.

    Attributes:
        round, epoch, iters_done, period: The next round to run, the membership epoch, local iterations
            done so far, and the current communication period.
        switched_at: Round at which ``delta_switch`` set the period to 1, or None.
        params, sizes: Flat float32 global parameters; int64 layer widths ``[d, h..., k]`` (``[d, k]`` for a
            plug-in model).
        model: A plug-in model's type and options (:func:`ftmpi.model.plugin.spec_key`); "" for a built-in one.
        optim: ``{"name": str, "m": float32, "v": float32 (empty for SGD), "step": int}``.
        members, dead: World ranks of the alive workers and of those declared dead.
        owner, dropped: Per training id, the int32 owning rank (-1 none) and whether it was dropped.
        weight: Per training id, float64: how many rows it stands for; None when every weight is 1.
        representative: Worker rank -> int64 global ids of its most representative rows.
        rng, config: Seeds/state to reproduce the run (small, JSON-able); the resolved config
            (:func:`ftmpi.config.config_to_dict`).
        test_acc, per_class_acc, train_loss: Metrics at save time (NaN/empty before the first evaluation).
        failures: One JSON-able dict per lost worker.
        stale_dropped, rows_handed, wall_seconds, bytes_total: Run counters so far.
        dataset, n_classes, created: Dataset name, number of classes, ``time.time()`` at save.
        labels: A user dataset's label mapping: the file's label value of each class ``0..k-1`` (int64); None
            for the built-in datasets, whose labels are the classes.
    """

    round: int
    epoch: int
    iters_done: int
    period: int
    switched_at: int | None
    params: np.ndarray
    sizes: np.ndarray
    optim: dict[str, Any]
    members: list[int]
    dead: list[int]
    owner: np.ndarray
    dropped: np.ndarray
    representative: dict[int, np.ndarray]
    rng: dict[str, Any]
    config: dict[str, Any]
    test_acc: float
    per_class_acc: np.ndarray
    train_loss: float
    failures: list[dict[str, Any]]
    stale_dropped: int
    rows_handed: int
    wall_seconds: float
    bytes_total: int
    dataset: str
    n_classes: int
    created: float
    weight: np.ndarray | None = None
    term: int = 0  # the coordinator term that wrote it (0: written before terms existed)
    model: str = ""  # a plug-in model's spec (its params are stored flat); "" for the built-in layered models
    labels: np.ndarray | None = None
    # exact resume: what the workers hold of the model under quantization; each worker's own state
    # (rank -> {"round", "step", "m", "v", "residual", "shard"}); the update screen's history (JSON-able)
    bcast: np.ndarray | None = None
    workers: dict[int, dict[str, Any]] | None = None
    screen: dict[str, Any] | None = None

    @property
    def coverage(self) -> float:
        """Fraction of training ids owned by some worker (1.0 for an empty training set)."""
        owner = np.asarray(self.owner)
        return _coverage(int(np.count_nonzero(owner >= 0)), owner.size)


class _Invalid(Exception):
    """What is wrong with a checkpoint file (the caller adds the file name)."""


def shard_key(ids: np.ndarray, weight: np.ndarray | None) -> int:
    """A fingerprint of a worker's rows in order (global ids, and their weights when some are not 1): a
    worker's state is restored only onto the very rows it was trained on."""
    crc = zlib.crc32(np.ascontiguousarray(ids, dtype="<i8").data)
    w = None if weight is None else np.asarray(weight, np.float64)
    if w is not None and np.any(w != 1.0):
        crc = zlib.crc32(np.ascontiguousarray(w, dtype="<f8").data, crc)
    return int(crc)


def ckpt_path(run_dir: _PathLike, round: int) -> Path:
    """Path of the checkpoint taken before ``round``: ``run_dir/ckpt/round-000120.h5``."""
    return Path(run_dir) / "ckpt" / f"round-{round:06d}.h5"


def list_checkpoints(run_dir: _PathLike) -> list[Path]:
    """Checkpoint files of a run, oldest round first; temp files of unfinished writes are never listed."""
    folder = Path(run_dir) / "ckpt"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME_RE.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).data)


def _put(f: h5py.File, name: str, data: np.ndarray) -> None:
    ds = f.create_dataset(name, data=data)
    ds.attrs["crc32"] = np.uint32(_crc(data))


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # libyaml's emitter where present: far faster
    """Block-style mappings with lists on one line (``hidden: [64, 32]``), as a user writes a config."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


_YAML_CACHE: dict[str, str] = {}


def _yaml(tree: dict[str, Any]) -> str:
    """YAML text of the config; cached, since a run saves the same config at every checkpoint."""
    key = json.dumps(tree, sort_keys=True, default=str)
    if key not in _YAML_CACHE:
        _YAML_CACHE[key] = yaml.dump(tree, Dumper=_Dumper, sort_keys=False)
    return _YAML_CACHE[key]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _inconsistency(s: Snapshot) -> str | None:
    """Return what makes the snapshot self-contradictory, or None. Shared by :func:`save` and :func:`load`."""
    sizes = np.asarray(s.sizes)
    if sizes.ndim != 1 or len(sizes) < 2 or sizes.min() < 1:
        return f"sizes {sizes.tolist()} is not [d, (hidden...,) k] with positive entries"
    n = np.size(s.params) if s.model else layer_slices(sizes)[-1][2].stop
    if np.shape(s.params) != (n,):
        return f"params has shape {np.shape(s.params)} but sizes {sizes.tolist()} need ({n},)"
    bad = int(np.size(s.params) - np.count_nonzero(np.isfinite(s.params)))
    if bad:  # a model that diverged is never a checkpoint: the last finite one stays the newest
        return f"params hold {bad} value(s) that are not finite (NaN/Inf)"
    if np.shape(s.optim["m"]) != (n,):
        return f"optimizer m has shape {np.shape(s.optim['m'])}, expected ({n},)"
    if s.bcast is not None and np.shape(s.bcast) != (n,):
        return f"model bcast has shape {np.shape(s.bcast)}, expected ({n},)"
    for rank, ws in (s.workers or {}).items():
        if np.shape(ws["m"]) not in ((0,), (n,)) or np.shape(ws["v"]) not in ((0,), (n,)) \
                or np.shape(ws["residual"]) not in ((0,), (n,)):
            return f"the state of worker {rank} does not match the model's {n} parameters"
    if np.shape(s.optim["v"]) not in ((0,), (n,)):
        return f"optimizer v has shape {np.shape(s.optim['v'])}, expected (0,) or ({n},)"
    owner, dropped = np.asarray(s.owner), np.asarray(s.dropped)
    if owner.ndim != 1 or owner.shape != dropped.shape:
        return f"ownership: owner has shape {owner.shape} but dropped has {dropped.shape}"
    if owner.size and owner.min() < -1:
        return "ownership: owner holds ranks below -1"
    both = int(np.count_nonzero((owner >= 0) & dropped.astype(bool)))
    if both:
        return f"ownership: {both} id(s) are both owned and dropped"
    if s.weight is not None:
        w = np.asarray(s.weight)
        if w.shape != owner.shape or not np.all(np.isfinite(w)) or (w.size and w.min() <= 0):
            return f"ownership: weight must be {owner.shape} positive numbers, got shape {w.shape}"
    for rank, ids in s.representative.items():
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= owner.size)):
            return f"representative ids of worker {rank} fall outside [0, {owner.size})"
    if np.size(s.per_class_acc) not in (0, s.n_classes):
        return f"per_class_acc has {np.size(s.per_class_acc)} entries for {s.n_classes} classes"
    both_ways = sorted(set(s.members) & set(s.dead))
    if both_ways:
        return f"rank(s) {both_ways} are listed as both alive and dead"
    return None


def save(path: _PathLike, snap: Snapshot) -> Path:
    """Write ``snap`` atomically to ``path`` (usually :func:`ckpt_path`; folders are created); return it.

    Raises:
        ValueError: If the snapshot contradicts itself (e.g. params do not match sizes); nothing is written.
        Exception: Whatever the write raised; the destination is then untouched and the temp file removed.
    """
    dest = Path(path)
    problem = _inconsistency(snap)
    if problem:
        raise ValueError(f"{dest}: refusing to save an inconsistent snapshot: {problem}")
    texts = {"config": _yaml(snap.config),  # fail before touching the disk
             "failures": json.dumps(snap.failures), "rng": json.dumps(snap.rng)}
    if snap.screen:
        texts["screen"] = json.dumps(snap.screen)
    dest.parent.mkdir(parents=True, exist_ok=True)
    arrays = _arrays(snap)
    need = 256 + sum(len(name) + 64 for name in arrays)  # manifest: name, offset, nbytes, crc per dataset
    fd, tmp = temp_beside(dest)
    os.close(fd)  # h5py opens it by name; the name is ours alone (O_EXCL, random)
    try:
        try:
            _write_file(tmp, snap, texts, arrays, max(512, 1 << (need - 1).bit_length()))
        except OSError as exc:  # one line that names the checkpoint, not the temp file; errno kept
            raise write_error(exc, dest, "checkpoint") from None
        _fsync(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)  # make the rename itself durable, where the filesystem allows it
    return dest


def _write_file(tmp: Path, snap: Snapshot, texts: dict[str, str], arrays: dict[str, np.ndarray], block: int) -> None:
    """Build the HDF5 file in memory, then write its bytes to ``tmp`` ourselves.

    HDF5 writing to a full disk fails in its flushes and close, keeps the file open inside the library
    (its space is then never given back, even after the temp file is deleted) and prints a traceback from
    h5py's finalizers later on (measured on a full tmpfs). Built in memory, HDF5 never touches the disk:
    a full disk is one ``OSError(ENOSPC)`` from ``os.write`` here. A checkpoint is small (the model, its
    optimizer state, a few integers per training row).
    """
    buf = io.BytesIO()  # h5py's file-object driver; the core driver's file image would lack the user block
    with h5py.File(buf, "w", userblock_size=block) as f:
        _write(f, snap, texts, arrays)
        f.flush()  # raw data has its final place once written: the manifest is built from the image in memory
        regions = {f"/{name}": _region(f[name]) for name in arrays}  # (no re-open and re-read of the file)
    image = buf.getbuffer()
    image[:block] = _manifest(image, block, regions)
    fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        while image:
            image = image[os.write(fd, image):]
    finally:
        os.close(fd)


def _arrays(s: Snapshot) -> dict[str, np.ndarray]:
    """Every dataset of the file, by path, with its stored dtype."""
    sizes, params = np.asarray(s.sizes, np.int64), np.asarray(s.params, np.float32)
    arrays: dict[str, np.ndarray] = {"model/sizes": sizes}
    if s.model:
        arrays["model/params"] = params
    for i, (w_sl, shape, b_sl) in enumerate([] if s.model else layer_slices(sizes)):
        arrays[f"model/layer{i}/W"], arrays[f"model/layer{i}/b"] = params[w_sl].reshape(shape), params[b_sl]
    arrays |= {"optimizer/m": np.asarray(s.optim["m"], np.float32),
               "optimizer/v": np.asarray(s.optim["v"], np.float32),
               "membership/alive": np.asarray(s.members, np.int32).reshape(-1),
               "membership/dead": np.asarray(s.dead, np.int32).reshape(-1),
               "ownership/owner": np.asarray(s.owner, np.int32),
               "ownership/dropped": np.asarray(s.dropped, bool).astype(np.uint8),
               "metrics/per_class_acc": np.asarray(s.per_class_acc, np.float64).reshape(-1)}
    if s.weight is not None and np.any(np.asarray(s.weight) != 1.0):
        arrays["ownership/weight"] = np.asarray(s.weight, np.float64)
    if s.bcast is not None:
        arrays["model/bcast"] = np.asarray(s.bcast, np.float32)
    for r, ws in sorted((s.workers or {}).items()):
        for key in ("m", "v", "residual"):
            arrays[f"workers/worker-{int(r):04d}/{key}"] = np.asarray(ws[key], np.float32).reshape(-1)
    return arrays | {f"representative/worker-{int(r):04d}": np.asarray(ids, np.int64)
                     for r, ids in sorted(s.representative.items())}


def _write(f: h5py.File, s: Snapshot, texts: dict[str, str], arrays: dict[str, np.ndarray]) -> None:
    a = f.attrs
    a["format"], a["format_version"] = FORMAT, FORMAT_VERSION
    for key in _INT_ATTRS:
        a[key] = int(getattr(s, key))
    for key in _FLOAT_ATTRS:
        a[key] = float(getattr(s, key))
    a["switched_at"] = -1 if s.switched_at is None else int(s.switched_at)
    a["term"] = int(s.term)
    a["coverage"] = s.coverage
    a["dataset"] = str(s.dataset)
    a["created_iso"] = _iso(s.created)
    if s.labels is not None:
        a["labels"] = json.dumps([int(v) for v in np.asarray(s.labels).reshape(-1)])
    for key, text in texts.items():
        a[key] = text
    f.require_group("representative")  # present even when no worker has representative ids yet
    for name, data in arrays.items():  # intermediate groups are created on the way
        _put(f, name, data)
    f["optimizer"].attrs["name"], f["optimizer"].attrs["step"] = str(s.optim["name"]), int(s.optim["step"])
    for r, ws in sorted((s.workers or {}).items()):
        g = f[f"workers/worker-{int(r):04d}"]
        g.attrs["round"], g.attrs["step"], g.attrs["shard"] = int(ws["round"]), int(ws["step"]), int(ws["shard"])
    if s.model:
        f["model"].attrs["spec"] = s.model


def _crc_range(fh: BinaryIO, start: int, stop: int, crc: int = 0) -> int:
    """crc32 of bytes ``[start, stop)`` of an open file, continuing from ``crc``."""
    fh.seek(start)
    while start < stop:
        chunk = fh.read(min(stop - start, 1 << 24))
        if not chunk:
            break
        crc, start = zlib.crc32(chunk, crc), start + len(chunk)
    return crc


def _region(ds: h5py.Dataset) -> list[int]:
    return [ds.id.get_offset() or 0, ds.id.get_storage_size()]


def _seal(path: Path) -> None:
    """Write the integrity manifest into the user block of a closed, complete checkpoint file (a file that
    :func:`save` did not build: e.g. one a tool edited with h5py)."""
    regions: dict[str, list[int]] = {}
    with h5py.File(path, "r") as f:
        block = f.userblock_size
        f.visititems(lambda name, obj: regions.__setitem__(obj.name, _region(obj))
                     if isinstance(obj, h5py.Dataset) else None)
    with open(path, "r+b") as fh:
        header = _manifest(memoryview(fh.read()), block, regions)
        fh.seek(0)
        fh.write(header)


def _manifest(image: memoryview, block: int, regions: dict[str, list[int]]) -> bytes:
    """The user block of a complete file ``image``: its manifest (``regions``: dataset -> [offset, nbytes],
    each given its crc32 here), padded to ``block`` bytes."""
    size, pos, meta = len(image), block, 0
    for name, (off, n) in sorted(regions.items(), key=lambda kv: kv[1][0]):
        meta = zlib.crc32(image[pos:off], meta) if n else meta
        regions[name].append(zlib.crc32(image[off:off + n]))
        pos = off + n if n else pos
    manifest = {"format_version": FORMAT_VERSION, "size": size, "datasets": regions,
                "meta_crc32": zlib.crc32(image[pos:size], meta)}
    text = _MAGIC + f"{block}\n".encode() + json.dumps(manifest, separators=(",", ":")).encode()
    if len(text) > block:
        raise ValueError(f"a {len(text)}-byte manifest does not fit the {block}-byte user block")
    return text.ljust(block, b"\0")


def _wrong_version(version: Any) -> str:
    return f"checkpoint format version {version} found; this ftmpi reads version {FORMAT_VERSION} only"


def _verify(fh: BinaryIO, size: int) -> None:
    """Check a file that starts with the manifest magic against its manifest, without parsing HDF5."""
    try:
        line = fh.readline(24)
        block = int(line)
        if not 512 <= block <= 1 << 20:
            raise ValueError(f"user block of {block} bytes")
        if size < block:
            raise _Invalid(f"truncated file: {size} bytes on disk, shorter than its {block}-byte user block")
        manifest = json.loads(fh.read(block - len(_MAGIC) - len(line)).split(b"\0", 1)[0])
        version, written = manifest["format_version"], int(manifest["size"])
        meta_crc = int(manifest["meta_crc32"])
        regions = sorted((int(off), int(n), int(crc), str(name))
                         for name, (off, n, crc) in manifest["datasets"].items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _Invalid("the integrity manifest in the user block is damaged") from None
    if version != FORMAT_VERSION:
        raise _Invalid(_wrong_version(version))
    if size < written:
        raise _Invalid(f"truncated file: {size} bytes on disk, {written} written")
    if size > written:
        raise _Invalid(f"the file changed after it was saved ({size} bytes on disk, {written} written)")
    pos, meta = block, 0
    for off, n, crc, name in regions:
        if n == 0:
            continue
        if off < pos or off + n > size:
            raise _Invalid("the integrity manifest in the user block is damaged (bad dataset regions)")
        meta = _crc_range(fh, pos, off, meta)
        actual = _crc_range(fh, off, off + n)
        if actual != crc:
            raise _Invalid(f"checksum mismatch in dataset {name} (stored crc32 {crc:08x}, data gives "
                           f"{actual:08x}): the file is corrupt")
        pos = off + n
    if _crc_range(fh, pos, size, meta) != meta_crc:
        raise _Invalid("checksum mismatch in the HDF5 metadata (structure, attributes): the file is corrupt")


def _attr(obj: h5py.HLObject, name: str, kind: type) -> Any:
    if name not in obj.attrs:
        raise _Invalid(f"missing attribute '{name}' on {obj.name}")
    value = obj.attrs[name]
    value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    value = value.item() if isinstance(value, np.generic) else value
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}[kind]
    if not ok(value):
        raise _Invalid(f"attribute '{name}' on {obj.name} is not a {kind.__name__}: {value!r:.60}")
    return kind(value)


def _text(f: h5py.File, name: str, parse: Any, kind: type) -> Any:
    try:
        value = parse(_attr(f, name, str))
    except (ValueError, yaml.YAMLError) as exc:
        raise _Invalid(f"attribute '{name}' does not parse: {_one_line(exc)}") from None
    if not isinstance(value, kind):
        raise _Invalid(f"attribute '{name}' is not a {kind.__name__}")
    return value


def _group(f: h5py.File, name: str) -> h5py.Group:
    obj = f.get(name)
    if not isinstance(obj, h5py.Group):
        raise _Invalid(f"missing group /{name}")
    return obj


def _get(f: h5py.File, name: str, dtype: type, ndim: int) -> np.ndarray:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise _Invalid(f"missing dataset /{name}")
    if obj.dtype != np.dtype(dtype) or obj.ndim != ndim:
        raise _Invalid(f"dataset /{name} is {obj.dtype} with {obj.ndim} dim(s), expected "
                       f"{np.dtype(dtype)} with {ndim}")
    if "crc32" not in obj.attrs:
        raise _Invalid(f"dataset /{name} has no crc32 attribute")
    data = obj[()]
    stored, actual = int(obj.attrs["crc32"]), _crc(data)
    if stored != actual:
        raise _Invalid(f"checksum mismatch in dataset /{name} (stored crc32 {stored:08x}, data gives "
                       f"{actual:08x}): the file is corrupt")
    return data


def _read(f: h5py.File, sealed: bool) -> tuple[Snapshot, float]:
    fmt = f.attrs.get("format")
    fmt = fmt.decode("utf-8", "replace") if isinstance(fmt, bytes) else fmt
    if fmt is None:
        raise _Invalid("not an ftmpi checkpoint (no 'format' attribute)")
    if fmt != FORMAT:
        raise _Invalid(f"not an ftmpi checkpoint (format {fmt!r:.60}, expected {FORMAT!r})")
    version = _attr(f, "format_version", int)
    if version != FORMAT_VERSION:
        raise _Invalid(_wrong_version(version))
    if not sealed:  # the rest may be damaged, and HDF5 must not parse damaged metadata
        raise _Invalid("no integrity manifest at the start of the file (damaged, or not written by ftmpi)")
    sizes = _get(f, "model/sizes", np.int64, 1)
    if len(sizes) < 2 or sizes.min() < 1:
        raise _Invalid(f"/model/sizes {sizes.tolist()} is not [d, (hidden...,) k] with positive entries")
    spec = _attr(_group(f, "model"), "spec", str) if "spec" in _group(f, "model").attrs else ""
    slices = [] if spec else layer_slices(sizes)
    n_layers = sum(1 for k in _group(f, "model") if _LAYER_RE.match(k))
    if n_layers != len(slices):
        raise _Invalid(f"/model holds {n_layers} layer group(s) but sizes {sizes.tolist()} describe "
                       f"{len(slices)}")
    params = _get(f, "model/params", np.float32, 1) if spec else np.empty(slices[-1][2].stop, np.float32)
    for i, (w_sl, shape, b_sl) in enumerate(slices):
        W, b = _get(f, f"model/layer{i}/W", np.float32, 2), _get(f, f"model/layer{i}/b", np.float32, 1)
        if W.shape != shape or b.shape != (shape[1],):
            raise _Invalid(f"/model/layer{i} holds W {W.shape} and b {b.shape} but sizes {sizes.tolist()} "
                           f"imply {shape} and ({shape[1]},)")
        params[w_sl], params[b_sl] = W.ravel(), b
    opt = _group(f, "optimizer")
    optim = {"name": _attr(opt, "name", str), "m": _get(f, "optimizer/m", np.float32, 1),
             "v": _get(f, "optimizer/v", np.float32, 1), "step": _attr(opt, "step", int)}
    dropped = _get(f, "ownership/dropped", np.uint8, 1)
    if dropped.size and dropped.max() > 1:
        raise _Invalid("/ownership/dropped holds values other than 0 and 1")
    weight = None
    if "weight" in _group(f, "ownership"):
        weight = _get(f, "ownership/weight", np.float64, 1)
        if weight.size and not (np.all(np.isfinite(weight)) and weight.min() > 0):
            raise _Invalid("/ownership/weight holds weights that are not positive numbers")
    representative = {}
    for key, obj in _group(f, "representative").items():
        m = _WORKER_RE.match(key)
        if m is None or not isinstance(obj, h5py.Dataset):
            raise _Invalid(f"unexpected object /representative/{key} (expected worker-NNNN datasets)")
        representative[int(m.group(1))] = _get(f, f"representative/{key}", np.int64, 1)
    switched_at = _attr(f, "switched_at", int)
    workers = {}
    for key, obj in (f["workers"].items() if isinstance(f.get("workers"), h5py.Group) else []):
        m = _WORKER_RE.match(key)
        if m is None or not isinstance(obj, h5py.Group):
            raise _Invalid(f"unexpected object /workers/{key} (expected worker-NNNN groups)")
        workers[int(m.group(1))] = {"round": _attr(obj, "round", int), "step": _attr(obj, "step", int),
                                    "shard": _attr(obj, "shard", int),
                                    **{k: _get(f, f"workers/{key}/{k}", np.float32, 1) for k in ("m", "v", "residual")}}
    snap = Snapshot(
        **{k: _attr(f, k, int) for k in _INT_ATTRS}, **{k: _attr(f, k, float) for k in _FLOAT_ATTRS},
        switched_at=None if switched_at < 0 else switched_at, params=params, sizes=sizes, optim=optim,
        members=_get(f, "membership/alive", np.int32, 1).tolist(),
        dead=_get(f, "membership/dead", np.int32, 1).tolist(),
        owner=_get(f, "ownership/owner", np.int32, 1), dropped=dropped.astype(bool),
        representative=representative, rng=_text(f, "rng", json.loads, dict),
        config=_text(f, "config", yaml.safe_load, dict),
        per_class_acc=_get(f, "metrics/per_class_acc", np.float64, 1),
        failures=_text(f, "failures", json.loads, list), dataset=_attr(f, "dataset", str), weight=weight,
        term=_attr(f, "term", int) if "term" in f.attrs else 0, model=spec,
        labels=np.asarray(_text(f, "labels", json.loads, list), np.int64) if "labels" in f.attrs else None,
        bcast=_get(f, "model/bcast", np.float32, 1) if "bcast" in _group(f, "model") else None,
        workers=workers or None, screen=_text(f, "screen", json.loads, dict) if "screen" in f.attrs else None)
    return snap, _attr(f, "coverage", float)


def _load(path: Path) -> Snapshot:
    if not path.exists():
        raise _Invalid("no such checkpoint file")
    if not path.is_file():
        raise _Invalid("not a regular file")
    try:
        with open(path, "rb") as fh:
            sealed = fh.read(len(_MAGIC)) == _MAGIC
            if sealed:
                _verify(fh, os.fstat(fh.fileno()).st_size)
    except OSError as exc:
        raise _Invalid(f"cannot read: {_one_line(exc)}") from None
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _Invalid(f"not a readable HDF5 file, or truncated ({_one_line(exc)})") from None
    with f:
        try:
            snap, stored_coverage = _read(f, sealed)
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise _Invalid(f"unreadable ({_one_line(exc)})") from None
    problem = _inconsistency(snap)
    if problem:
        raise _Invalid(f"inconsistent contents: {problem}")
    if not math.isclose(stored_coverage, snap.coverage, abs_tol=1e-9):
        raise _Invalid(f"attribute coverage={stored_coverage} disagrees with /ownership/owner "
                       f"({snap.coverage})")
    return snap


def load(path: _PathLike) -> Snapshot:
    """Read and validate a checkpoint; ``params`` of the :class:`Snapshot` are back in the flat layout.

    Raises:
        CheckpointError: One line, ``"<file>: <what is wrong>"``: missing file, not HDF5 or truncated, not an
            ftmpi checkpoint, another format version, a missing group/dataset/attribute, a checksum
            mismatch (naming the dataset), or contents that contradict each other.
    """
    try:
        return _load(Path(path))
    except _Invalid as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def newest_valid(run_dir: _PathLike) -> tuple[Path, Snapshot, list[str]]:
    """The newest checkpoint of the highest coordinator term in ``run_dir/ckpt`` that loads, as
    ``(path, snapshot, warnings)``: ordered by (term, round), so that a later round written by a coordinator
    that had already been replaced is never resumed from.

    ``warnings`` holds one ``"skipping <file>: <reason>"`` per checkpoint ordered before the one returned that
    does not load.

    Raises:
        CheckpointError: If the folder holds no checkpoint, or none of them loads (names the folder).
    """
    folder = Path(run_dir) / "ckpt"
    paths = list_checkpoints(run_dir)
    if not paths:
        raise CheckpointError(f"{folder}: no checkpoint found (expected round-NNNNNN.h5 files)")
    warnings: list[str] = []
    terms = {q: term_of(q) for q in paths}
    top = max((t for t in terms.values() if t is not None), default=0)
    # a file whose term cannot be read is ordered with the highest term: its load then says what is wrong
    order = sorted(paths, key=lambda q: (top if terms[q] is None else terms[q], _round_of(q)), reverse=True)
    for p in order:
        try:
            return p, _load(p), warnings
        except _Invalid as exc:
            warnings.append(f"skipping {p}: {exc}")
    raise CheckpointError(f"{folder}: none of the {len(paths)} checkpoint(s) is valid; newest "
                          f"{warnings[0].removeprefix('skipping ')}")


def term_of(path: _PathLike) -> int | None:
    """The coordinator term recorded in a checkpoint's attributes: 0 when it has none (written before terms
    existed), None when the file cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs.get("term", 0))
    except (OSError, ValueError, TypeError):
        return None


def _round_of(p: Path) -> int:
    m = _NAME_RE.match(p.name)
    return int(m.group(1)) if m else -1


_VERIFIED: dict[tuple[int, int, int, int], None] = {}  # (device, inode, size, mtime_ns) of files found intact


def intact(path: _PathLike) -> bool:
    """True when a checkpoint file passes the integrity manifest check (no HDF5 parsing: fast and safe).

    A file this process already found intact, unchanged since (same device, inode, size and modification
    time), is not read again: :func:`prune` asks about every kept checkpoint after each write, and the
    re-reads were most of its cost (measured: docs/NOTES.md). A file replaced or rewritten has another key."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            key = identity(st)
            if key in _VERIFIED:
                return True
            if fh.read(len(_MAGIC)) != _MAGIC:
                return False
            _verify(fh, st.st_size)
    except (OSError, _Invalid):
        return False
    if len(_VERIFIED) >= 64:
        _VERIFIED.pop(next(iter(_VERIFIED)))
    _VERIFIED[key] = None
    return True


def _set_aside(p: Path) -> Path | None:
    """Move a checkpoint out of the resume path into ``ckpt/set-aside/``, keeping it; None if that failed."""
    folder = p.parent / SET_ASIDE
    try:
        folder.mkdir(exist_ok=True)
        dest = folder / f"{p.stem}-{p.stat().st_mtime_ns}{p.suffix}"
        os.replace(p, dest)
    except OSError:
        return None
    return dest


def prune(run_dir: _PathLike, keep: int, newest: _PathLike | None = None) -> list[Path]:
    """Keep the newest ``keep`` valid checkpoints of this run's lineage; delete older ones and stale temps.

    ``newest`` is the checkpoint just written (default: the most recently modified one). Checkpoints with
    a higher round than it were written by an earlier launch that got further and was then resumed from an
    older point (their round is in this run's future): they are moved into ``ckpt/set-aside/``, as are
    damaged ones met on the way, never kept in preference to valid ones and never deleted. Older valid
    checkpoints are deleted only once ``keep`` valid ones remain, so the only valid checkpoint is never
    deleted. Temp files older than ``newest`` belong to a writer that was killed (rank 0 writes one
    checkpoint at a time) and are deleted.

    Returns:
        The files deleted (files set aside are not deleted and not listed).

    Raises:
        ValueError: If ``keep < 1``.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    paths = list_checkpoints(run_dir)
    if not paths:
        return []
    try:
        current = Path(newest) if newest is not None else max(
            paths, key=lambda p: (p.stat().st_mtime_ns, _round_of(p)))
    except OSError:
        return []
    top = _round_of(current)
    for p in paths:
        if _round_of(p) > top:
            _set_aside(p)
    lineage = sorted((p for p in paths if _round_of(p) <= top), key=_round_of, reverse=True)
    kept: list[Path] = []
    doomed: list[Path] = []
    damaged: list[Path] = []
    for p in lineage:
        if len(kept) >= keep:
            doomed.append(p)
        elif intact(p):
            kept.append(p)
        else:
            damaged.append(p)
    if not kept:  # nothing valid here: touch nothing (newest_valid will say what is wrong with each)
        doomed = []
    else:
        for p in damaged:
            _set_aside(p)
    try:
        t_newest = current.stat().st_mtime
        doomed += [p for p in current.parent.iterdir()
                   if (_TMP_RE.match(p.name) or ((m := TEMP_RE.match(p.name)) and _NAME_RE.match(m["name"])))
                   and p.stat().st_mtime < t_newest]
    except OSError:
        pass
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def summarize(path: _PathLike) -> dict[str, Any]:
    """Validate a checkpoint and describe it as a JSON-able dict (what ``ftmpi inspect`` shows).

    Raises:
        CheckpointError: As :func:`load`.
    """
    s = load(path)
    p = Path(path)
    tensors = [{"name": f"layer{i}/{t}", "shape": list(shape) if t == "W" else [shape[1]],
                "norm": float(np.linalg.norm(s.params[sl].astype(np.float64)))}
               for i, (w_sl, shape, b_sl) in enumerate([] if s.model else layer_slices(s.sizes))
               for t, sl in (("W", w_sl), ("b", b_sl))] or \
        [{"name": "params", "shape": [int(s.params.size)], "norm": float(np.linalg.norm(s.params.astype(np.float64)))}]
    ranks, counts = np.unique(s.owner[s.owner >= 0], return_counts=True)
    return {
        "file": str(p), "format_version": FORMAT_VERSION, "file_size": p.stat().st_size,
        "created": _iso(s.created), "round": s.round, "epoch": s.epoch, "iters_done": s.iters_done,
        "period": s.period, "switched_at": s.switched_at, "members": s.members, "dead": s.dead,
        "coverage": s.coverage, "n_samples": int(s.owner.size), "n_owned": int(counts.sum()),
        "n_dropped": int(s.dropped.sum()),
        "weighted_rows": 0 if s.weight is None else int(np.count_nonzero(s.weight[s.owner >= 0] != 1.0)),
        "owned_weight": float(counts.sum()) if s.weight is None else float(s.weight[s.owner >= 0].sum()),
        "owned_per_worker": {int(r): int(c) for r, c in zip(ranks, counts, strict=True)},
        "test_acc": _finite(s.test_acc), "train_loss": _finite(s.train_loss),
        "per_class_acc": [_finite(x) for x in s.per_class_acc], "sizes": s.sizes.tolist(), "model": s.model,
        "n_params": int(s.params.size), "tensors": tensors,
        "optimizer": {"name": s.optim["name"], "step": s.optim["step"]},
        "representative": {r: int(ids.size) for r, ids in sorted(s.representative.items())},
        "dataset": s.dataset, "n_classes": s.n_classes, "failures": s.failures,
        "labels": None if s.labels is None else s.labels.tolist(),
        "stale_dropped": s.stale_dropped, "rows_handed": s.rows_handed, "wall_seconds": s.wall_seconds,
        "bytes_total": s.bytes_total, "rng": s.rng, "config": s.config,
        "worker_states": {r: {"round": ws["round"], "step": ws["step"]} for r, ws in sorted((s.workers or {}).items())},
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _per_rank(d: dict[int, int]) -> str:
    return "  ".join(f"w{r}={n}" for r, n in d.items()) or "none"


def format_summary(d: dict[str, Any]) -> str:
    """Render :func:`summarize`'s dict as readable text: header, aligned facts, tensor table, config."""
    period = f"{d['period']}" + (f" (every iteration since round {d['switched_at']})"
                                 if d["switched_at"] is not None else "")
    failures = [f"rank {x.get('rank', '?')} at round {x.get('round', '?')} ({x.get('how', '?')})"
                for x in d["failures"]]
    rows = [
        ("format version", d["format_version"]), ("file size", _size(d["file_size"])),
        ("created", d["created"]),
        ("round", f"{d['round']} (next to run)"), ("epoch", d["epoch"]), ("iterations done", d["iters_done"]),
        ("comm period", period), ("members", " ".join(map(str, d["members"])) or "none"),
        ("dead", " ".join(map(str, d["dead"])) or "none"),
        ("coverage", f"{100 * d['coverage']:.2f} % ({d['n_owned']} of {d['n_samples']} owned, "
                     + f"{d['n_dropped']} dropped)"),
        ("rows per worker", _per_rank(d["owned_per_worker"])),
        *([("row weights", f"{d['weighted_rows']} handed representative rows weigh more than 1; owned rows "
                            f"stand for {d['owned_weight']:.0f} training rows")] if d.get("weighted_rows") else []),
        ("test accuracy", _num(d["test_acc"])), ("train loss", _num(d["train_loss"])),
        ("per-class acc", " ".join(_num(x, ".3f") for x in d["per_class_acc"]) or "n/a"),
        ("optimizer", f"{d['optimizer']['name']}, step {d['optimizer']['step']}"),
        ("representative", _per_rank(d["representative"])),
        ("worker states", "  ".join(f"w{r}=round {w['round']}" for r, w in d.get("worker_states", {}).items())
         or "none (a resume restarts the workers' optimizers)"),
        ("dataset", f"{d['dataset']}, {d['n_classes']} classes"),
        *([("labels", "  ".join(f"{c}={v}" for c, v in enumerate(d["labels"])) + " (class=label in the file)")]
          if d.get("labels") is not None else []),
        ("failures", f"{len(failures)}" + (": " + "; ".join(failures) if failures else "")),
        ("rows handed", d["rows_handed"]), ("stale dropped", d["stale_dropped"]),
        ("traffic", f"{_size(d['bytes_total'])} in {d['wall_seconds']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"ftmpi checkpoint {d['file']}"] + [f"  {k:<{width}} : {v}" for k, v in rows]
    lines.append(f"tensors ({d['n_params']} parameters, sizes {d['sizes']}"
                 + (f", plug-in model {d['model']})" if d.get("model") else ")"))
    shapes = [" x ".join(map(str, t["shape"])) for t in d["tensors"]]
    name_w = max(4, *(len(t["name"]) for t in d["tensors"]))
    shape_w = max(5, *(len(s) for s in shapes))
    lines.append(f"  {'name':<{name_w}}  {'shape':>{shape_w}}  {'L2 norm':>12}")
    lines += [f"  {t['name']:<{name_w}}  {s:>{shape_w}}  {t['norm']:>12.6g}"
              for t, s in zip(d["tensors"], shapes, strict=True)]
    lines.append("config")
    lines += ["  " + line for line in _yaml(d["config"]).splitlines()]
    return "\n".join(lines)
