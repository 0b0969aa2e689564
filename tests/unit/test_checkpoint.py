"""Checkpoint files: round trip, HDF5 layout, atomic writes (a writer really SIGKILLed midway), damaged files,
choosing the newest valid checkpoint, pruning, and the ``inspect`` summary."""
from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from ftmpi.config import Config, config_to_dict
from ftmpi.errors import EXIT_BAD_INPUT, CheckpointError
from ftmpi.storage import checkpoint as ck
from ftmpi.storage.checkpoint import (
    FORMAT_VERSION,
    Snapshot,
    ckpt_path,
    format_summary,
    list_checkpoints,
    load,
    newest_valid,
    prune,
    save,
    summarize,
)
from ftmpi.storage.shards import write_shard

ROOT = Path(__file__).resolve().parents[2]


def n_params(sizes) -> int:
    """Weights and biases of layer widths ``sizes`` (reference for the flat vector's length)."""
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


def make_snapshot(sizes=(5, 4, 3), round=12, optimizer="adam", n_ids=40, seed=0) -> Snapshot:
    """A snapshot with random contents, consistent with itself (as rank 0 would produce it)."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes, np.int64)
    n, k = n_params(sizes), int(sizes[-1])
    owner = rng.choice(np.array([1, 2, 4, -1], np.int32), n_ids)
    dropped = (owner == -1) & (rng.random(n_ids) < 0.5)
    return Snapshot(
        round=round, epoch=2, iters_done=round * 10, period=10 if optimizer == "sgd" else 1,
        switched_at=None if optimizer == "sgd" else 7,
        params=rng.normal(size=n).astype(np.float32), sizes=sizes,
        optim={"name": optimizer, "m": rng.normal(size=n).astype(np.float32),
               "v": rng.random(n).astype(np.float32) if optimizer == "adam" else np.zeros(0, np.float32),
               "step": 3 * round},
        members=[1, 2, 4], dead=[3], owner=owner, dropped=dropped,
        representative={r: np.sort(rng.choice(ids, min(2, ids.size), replace=False)).astype(np.int64)
                        for r in (1, 2, 4) if (ids := np.flatnonzero(owner == r)).size},
        rng={"seed": seed, "state": [int(x) for x in rng.integers(0, 2**62, 2)]},
        config=config_to_dict(Config()), test_acc=float(rng.random()), per_class_acc=rng.random(k),
        train_loss=float(rng.random() * 2),
        failures=[{"rank": 3, "round": 5, "how": "ulfm", "detected_at": 1.5e9, "injected_at": None,
                   "reason": "killed"}],
        stale_dropped=2, rows_handed=17, wall_seconds=12.5, bytes_total=123456789, dataset="synthetic",
        n_classes=k, created=time.time())


def assert_same(a: Snapshot, b: Snapshot) -> None:
    for f in fields(Snapshot):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f.name
        elif f.name == "optim":
            assert x.keys() == y.keys() and x["name"] == y["name"] and x["step"] == y["step"]
            for key in ("m", "v"):
                assert x[key].dtype == y[key].dtype == np.float32 and np.array_equal(x[key], y[key]), key
        elif f.name == "representative":
            assert sorted(x) == sorted(y)
            assert all(x[r].dtype == np.int64 and np.array_equal(x[r], y[r]) for r in x)
        elif isinstance(x, float) and math.isnan(x):
            assert math.isnan(y), f.name
        else:
            assert x == y and type(x) is type(y), f.name


def expect_error(path: Path, *fragments: str) -> str:
    """Load ``path``, expect a one-line CheckpointError naming the file and containing ``fragments``."""
    with pytest.raises(CheckpointError) as err:
        load(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    for frag in fragments:
        assert frag in msg, msg
    assert err.value.exit_code == EXIT_BAD_INPUT
    return msg


def flip_byte(path: Path, dataset: str) -> None:
    """Invert one byte in the middle of ``dataset``'s raw data, found through its file offset."""
    with h5py.File(path, "r") as f:
        offset, size = f[dataset].id.get_offset(), f[dataset].id.get_storage_size()
    assert offset is not None and size > 0
    with open(path, "r+b") as fh:
        fh.seek(offset + size // 2)
        byte = fh.read(1)[0]
        fh.seek(offset + size // 2)
        fh.write(bytes([byte ^ 0xFF]))


@contextmanager
def edit(path: Path) -> Iterator[h5py.File]:
    """Change a checkpoint with h5py, then rewrite its integrity manifest, as a tool that knows the format
    would: what remains wrong is then only what the edit made wrong."""
    with h5py.File(path, "r+") as f:
        yield f
    ck._seal(path)


def rewrite(path: Path, dataset: str, data: np.ndarray) -> None:
    """Replace a dataset with ``data`` and a correct crc32 (computed here from the documented rule)."""
    data = np.ascontiguousarray(data)
    with edit(path) as f:
        del f[dataset]
        f.create_dataset(dataset, data=data).attrs["crc32"] = np.uint32(
            zlib.crc32(data.astype(data.dtype.newbyteorder("<")).tobytes()))


# ----------------------------------------------------------------------------------- names and round trip
def test_paths_and_listing(tmp_path):
    assert ckpt_path(tmp_path, 120) == tmp_path / "ckpt" / "round-000120.h5"
    assert ckpt_path("runs/x", 1234567).name == "round-1234567.h5"
    assert list_checkpoints(tmp_path) == []
    for r in (1000000, 7, 120):
        save(ckpt_path(tmp_path, r), make_snapshot(round=r))
    folder = tmp_path / "ckpt"
    (folder / ".round-000130.h5.tmp-4242").write_bytes(b"half written")
    (folder / "notes.txt").write_text("not a checkpoint")
    (folder / "round-000140.h5").mkdir()  # a folder with a checkpoint's name is not a checkpoint
    assert list_checkpoints(tmp_path) == [ckpt_path(tmp_path, r) for r in (7, 120, 1000000)]


@pytest.mark.parametrize("sizes, optimizer", [((5, 3), "sgd"), ((5, 4, 3), "adam")], ids=["logreg", "mlp"])
def test_round_trip(tmp_path, sizes, optimizer):
    snap = make_snapshot(sizes, optimizer=optimizer)
    path = save(ckpt_path(tmp_path, snap.round), snap)
    assert path == ckpt_path(tmp_path, snap.round)
    back = load(path)
    assert_same(snap, back)
    assert back.params.shape == (n_params(snap.sizes),) and back.sizes.dtype == np.int64
    assert back.coverage == pytest.approx(np.mean(snap.owner >= 0))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_row_weights_round_trip_and_are_absent_when_all_one(tmp_path):
    snap = make_snapshot()
    w = np.ones(len(snap.owner))
    w[np.flatnonzero(snap.owner == 1)[:3]] = 13.5  # representative rows handed over under rep_weight: shard
    heavy = Snapshot(**{**snap.__dict__, "weight": w})
    assert_same(heavy, load(save(tmp_path / "a.h5", heavy)))
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["ownership/weight"].dtype == np.float64
    d = summarize(tmp_path / "a.h5")
    assert d["weighted_rows"] == 3 and d["owned_weight"] == pytest.approx((snap.owner >= 0).sum() + 3 * 12.5)
    assert "3 handed representative rows weigh more than 1" in format_summary(d)
    light = Snapshot(**{**snap.__dict__, "weight": np.ones(len(snap.owner))})
    assert load(save(tmp_path / "b.h5", light)).weight is None
    with pytest.raises(ValueError, match="weight must be"):
        save(tmp_path / "c.h5", Snapshot(**{**snap.__dict__, "weight": np.zeros(len(snap.owner))}))


def test_round_trip_before_first_evaluation(tmp_path):
    snap = make_snapshot((5, 3), optimizer="sgd")
    snap.test_acc, snap.per_class_acc, snap.representative, snap.failures = math.nan, np.zeros(0), {}, []
    snap.dead, snap.owner, snap.dropped = [], np.zeros(0, np.int32), np.zeros(0, bool)
    back = load(save(tmp_path / "c.h5", snap))
    assert_same(snap, back)
    assert back.coverage == 1.0


def test_layout_seen_by_a_user(tmp_path):
    snap = make_snapshot((5, 4, 3))
    path = save(ckpt_path(tmp_path, 12), snap)
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visit(names.append)
        assert sorted(names) == sorted([
            "metrics", "metrics/per_class_acc", "membership", "membership/alive", "membership/dead",
            "model", "model/sizes", "model/layer0", "model/layer0/W", "model/layer0/b", "model/layer1",
            "model/layer1/W", "model/layer1/b", "optimizer", "optimizer/m", "optimizer/v", "ownership",
            "ownership/owner", "ownership/dropped", "representative", "representative/worker-0001",
            "representative/worker-0002", "representative/worker-0004"])
        a = f.attrs
        assert a["format"] == "ftmpi-checkpoint" and a["format_version"] == FORMAT_VERSION
        assert (a["round"], a["epoch"], a["iters_done"], a["period"], a["switched_at"]) == (12, 2, 120, 1, 7)
        assert a["coverage"] == pytest.approx(snap.coverage) and a["dataset"] == "synthetic"
        assert a["test_acc"] == snap.test_acc and a["n_classes"] == 3 and a["bytes_total"] == 123456789
        assert time.mktime(time.strptime(a["created_iso"][:19], "%Y-%m-%dT%H:%M:%S")) == \
            pytest.approx(snap.created, abs=1)
        assert yaml.safe_load(a["config"]) == snap.config
        assert json.loads(a["failures"]) == snap.failures and json.loads(a["rng"]) == snap.rng
        assert f["model/layer0/W"].shape == (5, 4) and f["model/layer1/W"].shape == (4, 3)
        assert np.array_equal(f["model/layer0/W"][()].ravel(), snap.params[:20])
        assert np.array_equal(f["model/layer0/b"][()], snap.params[20:24])
        assert f["ownership/owner"].dtype == np.int32 and f["ownership/dropped"].dtype == np.uint8
        assert f["representative/worker-0002"].dtype == np.int64
        assert f["optimizer"].attrs["name"] == "adam" and f["optimizer"].attrs["step"] == 36
        assert f["membership/alive"][()].tolist() == [1, 2, 4] and f["membership/dead"][()].tolist() == [3]

        def has_crc(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                assert obj.attrs["crc32"] == zlib.crc32(data.astype(data.dtype.newbyteorder("<")).tobytes())
        f.visititems(has_crc)


# ------------------------------------------------------------------------------------------- atomicity
def test_inconsistent_snapshot_is_refused_before_writing(tmp_path):
    snap = make_snapshot()
    snap.params = snap.params[:-1]
    with pytest.raises(ValueError, match="params"):
        save(ckpt_path(tmp_path, 1), snap)
    snap = make_snapshot()
    snap.dropped = snap.owner >= 0  # owned and dropped at once breaks invariant 4
    with pytest.raises(ValueError, match="both owned and dropped"):
        save(ckpt_path(tmp_path, 1), snap)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_failed_write_keeps_previous_and_removes_temp(tmp_path, monkeypatch):
    old = save(ckpt_path(tmp_path, 1), make_snapshot(round=1))
    real_put, calls = ck._put, []

    def failing_put(f, name, data):
        calls.append(name)
        if len(calls) == 4:
            raise OSError("disk full (simulated)")
        real_put(f, name, data)
    monkeypatch.setattr(ck, "_put", failing_put)
    with pytest.raises(OSError, match="disk full"):
        save(ckpt_path(tmp_path, 2), make_snapshot(round=2))
    assert sorted(p.name for p in old.parent.iterdir()) == [old.name]
    assert load(old).round == 1


_WRITER = """
import sys
import numpy as np
from tests.unit.test_checkpoint import make_snapshot
from ftmpi.storage.checkpoint import save
snap = make_snapshot((5, 3), round=2, optimizer="sgd")
snap.sizes = np.array([5000, 10000], np.int64)  # 50M weights: 200 MB for params, as much for momentum
snap.params = np.ones(5000 * 10000 + 10000, np.float32)
snap.optim["m"] = np.full_like(snap.params, 0.5)
save(sys.argv[1], snap)
"""


def test_writer_killed_mid_write_leaves_previous_checkpoint(tmp_path):
    first = make_snapshot(round=1)
    old = save(ckpt_path(tmp_path, 1), first)
    new = ckpt_path(tmp_path, 2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(new)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tmp = new  # the writer's temp file: .round-000002.h5.<random>.tmp (mkstemp)

    def temp_size() -> int:
        nonlocal tmp
        found = sorted(new.parent.glob(f".{new.name}.*.tmp"))
        if not found:
            return 0
        tmp = found[0]
        try:
            return tmp.stat().st_size
        except FileNotFoundError:
            return 0
    try:
        deadline = time.monotonic() + 60
        while temp_size() <= 1 << 20:  # the data is being written
            assert proc.poll() is None, f"writer ended early: {proc.communicate()[1].decode()[-2000:]}"
            assert time.monotonic() < deadline, "writer never started writing"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "writer finished before the kill"
        assert tmp.exists() and not new.exists()
        assert list_checkpoints(tmp_path) == [old]  # the leftover temp file is ignored
        assert_same(load(old), first)
        path, snap, warnings = newest_valid(tmp_path)
        assert (path, snap.round, warnings) == (old, 1, [])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if tmp != new:
            tmp.unlink(missing_ok=True)  # 400 MB


# ------------------------------------------------------------------------------------------ damaged files
@pytest.mark.parametrize("dataset", ["model/layer0/W", "model/layer1/b", "optimizer/m", "ownership/owner",
                                     "ownership/dropped", "representative/worker-0002",
                                     "metrics/per_class_acc"])
def test_flipped_byte_is_a_checksum_error_naming_the_dataset(tmp_path, dataset):
    path = save(ckpt_path(tmp_path, 3), make_snapshot())
    flip_byte(path, dataset)
    expect_error(path, "checksum mismatch", f"/{dataset} ")


def test_truncated_file(tmp_path):
    path = save(ckpt_path(tmp_path, 3), make_snapshot())
    os.truncate(path, path.stat().st_size // 2)
    expect_error(path, "truncated file: ", f"{path.stat().st_size} bytes on disk")
    os.truncate(path, 100)
    expect_error(path, "truncated file: 100 bytes on disk, shorter than its")


def test_missing_file_directory_and_non_hdf5(tmp_path):
    expect_error(tmp_path / "round-000001.h5", "no such checkpoint file")
    expect_error(tmp_path, "not a regular file")
    text = tmp_path / "round-000002.h5"
    text.write_text("round: 2\nparams: [1, 2, 3]\n")
    expect_error(text, "not a readable HDF5 file", "signature")
    empty = tmp_path / "empty.h5"
    empty.touch()
    expect_error(empty, "not a readable HDF5 file")


def test_hdf5_files_that_are_not_checkpoints(tmp_path):
    shard = write_shard(tmp_path / "worker-0001.h5", np.zeros((3, 2)), np.zeros(3), np.arange(3))
    expect_error(shard, "not an ftmpi checkpoint", "'ftmpi-shard'")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.arange(3)
    expect_error(tmp_path / "plain.h5", "not an ftmpi checkpoint (no 'format' attribute)")


def test_wrong_format_version_is_reported_before_anything_else(tmp_path, monkeypatch):
    with monkeypatch.context() as m:  # a checkpoint from a later ftmpi
        m.setattr(ck, "FORMAT_VERSION", 99)
        path = save(ckpt_path(tmp_path, 3), make_snapshot())
    expect_error(path, "checkpoint format version 99 found", f"reads version {FORMAT_VERSION} only")
    path = save(ckpt_path(tmp_path, 4), make_snapshot())
    with edit(path) as f:
        f.attrs["format_version"] = 7
        del f["model"]  # a later format may lay things out differently
    msg = expect_error(path, "checkpoint format version 7 found", f"reads version {FORMAT_VERSION} only")
    assert "missing" not in msg


def test_missing_pieces(tmp_path):
    path = save(ckpt_path(tmp_path, 3), make_snapshot())
    with edit(path) as f:
        del f["optimizer/v"]
    expect_error(path, "missing dataset /optimizer/v")
    path = save(ckpt_path(tmp_path, 4), make_snapshot())
    with edit(path) as f:
        del f["representative"]
    expect_error(path, "missing group /representative")
    path = save(ckpt_path(tmp_path, 5), make_snapshot())
    with edit(path) as f:
        del f.attrs["epoch"]
        del f["model/layer1/b"].attrs["crc32"]
    expect_error(path, "/model/layer1/b has no crc32")
    with edit(path) as f:
        f["model/layer1/b"].attrs["crc32"] = np.uint32(0)
    expect_error(path, "checksum mismatch in dataset /model/layer1/b")
    path = save(ckpt_path(tmp_path, 6), make_snapshot())
    with edit(path) as f:
        del f.attrs["epoch"]
    expect_error(path, "missing attribute 'epoch' on /")


def test_contents_that_contradict_each_other(tmp_path):
    snap = make_snapshot()
    path = save(ckpt_path(tmp_path, 3), snap)
    rewrite(path, "ownership/dropped", snap.dropped[:10].astype(np.uint8))
    expect_error(path, "owner has shape (40,) but dropped has (10,)")

    path = save(ckpt_path(tmp_path, 4), snap)
    rewrite(path, "model/sizes", np.array([5, 2, 3], np.int64))
    expect_error(path, "/model/layer0 holds W (5, 4)", "imply (5, 2)")

    path = save(ckpt_path(tmp_path, 5), snap)
    rewrite(path, "model/sizes", np.array([5, 3], np.int64))
    expect_error(path, "/model holds 2 layer group(s) but sizes [5, 3] describe 1")

    path = save(ckpt_path(tmp_path, 6), snap)
    rewrite(path, "optimizer/m", np.zeros(7, np.float32))
    expect_error(path, "optimizer m has shape (7,)")

    path = save(ckpt_path(tmp_path, 7), snap)
    rewrite(path, "model/layer0/W", np.zeros((5, 4), np.float64))
    expect_error(path, "/model/layer0/W is float64", "expected float32")

    path = save(ckpt_path(tmp_path, 8), snap)
    with edit(path) as f:
        f.attrs["round"] = "twelve"
        f.attrs["config"] = "model: [unclosed"
    expect_error(path, "attribute 'round' on / is not a int")
    with edit(path) as f:
        f.attrs["round"] = 12
    expect_error(path, "attribute 'config' does not parse")


def test_integrity_manifest(tmp_path):
    snap = make_snapshot()
    path = save(ckpt_path(tmp_path, 3), snap)
    head = path.read_bytes()[:4096]
    assert head.startswith(b"FTMPI-CKPT ")
    block = int(head.split(b"\n", 1)[0].split()[1])
    manifest = json.loads(head[:block].split(b"\n", 1)[1].rstrip(b"\0"))
    assert manifest["size"] == path.stat().st_size and manifest["format_version"] == FORMAT_VERSION
    with h5py.File(path, "r") as f:
        assert f.userblock_size == block
        assert manifest["datasets"]["/model/layer0/W"] == [f["model/layer0/W"].id.get_offset(), 80,
                                                          int(f["model/layer0/W"].attrs["crc32"])]

    with h5py.File(path, "r+") as f:  # any change made without rewriting the manifest is caught
        f["model/layer0/b"][0] = 5.0
    expect_error(path, "checksum mismatch in dataset /model/layer0/b")
    path = save(ckpt_path(tmp_path, 3), snap)  # an attribute changed in place: metadata checksum or size
    with h5py.File(path, "r+") as f:
        f.attrs["epoch"] = 3
    msg = expect_error(path)
    assert "the file changed after it was saved (" in msg or "checksum mismatch in the HDF5 metadata" in msg, msg

    path = save(ckpt_path(tmp_path, 4), snap)
    with open(path, "r+b") as fh:  # the superblock, just after the user block
        fh.seek(block + 3)
        fh.write(b"?")
    expect_error(path, "checksum mismatch in the HDF5 metadata")
    path = save(ckpt_path(tmp_path, 4), snap)
    with open(path, "ab") as fh:
        fh.write(b"tail")
    expect_error(path, "the file changed after it was saved (")

    path = save(ckpt_path(tmp_path, 5), snap)
    with open(path, "r+b") as fh:  # damage the manifest's JSON
        fh.seek(head.index(b'"datasets"'))
        fh.write(b"}")
    expect_error(path, "the integrity manifest in the user block is damaged")

    path = save(ckpt_path(tmp_path, 6), snap)
    with open(path, "r+b") as fh:  # damage the magic: HDF5 still opens it, but it is not trusted
        fh.write(b"X")
    expect_error(path, "no integrity manifest at the start of the file")


_FUZZ = r"""
import sys
from pathlib import Path
from tests.unit.test_checkpoint import assert_same, make_snapshot
from ftmpi.storage.checkpoint import load, save
from ftmpi.errors import CheckpointError
snap = make_snapshot((5, 4, 3), n_ids=30)
src = save(Path(sys.argv[1]) / "ref.h5", snap)
data, work = src.read_bytes(), Path(sys.argv[1]) / "work.h5"
manifest_end = data.index(b"\0")
errors = same = 0
for i in range(int(sys.argv[2]), len(data), int(sys.argv[3])):
    damaged = bytearray(data)
    damaged[i] ^= 0xFF
    work.write_bytes(damaged)
    try:
        back = load(work)
    except CheckpointError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(work)), exc
        errors += 1
        continue
    assert i >= manifest_end, f"byte {i}: a damaged file loaded"  # only the manifest's padding is inert
    assert_same(back, snap)
    same += 1
print(errors, same)
"""


def test_flipped_bytes_anywhere_never_crash_hang_or_load_wrong_data(tmp_path):
    # HDF5 segfaults or loops on some damaged metadata bytes; the manifest check must stop them first.
    # This runs in a child process with a deadline so a regression fails the test instead of the run.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _FUZZ, str(tmp_path), "0", "7"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-3000:]}"
    errors, same = map(int, out.stdout.split())
    assert errors > 2500 and same < errors / 4


# --------------------------------------------------------------------------------- newest valid and prune
def test_newest_valid_skips_broken_newer_checkpoints(tmp_path):
    snaps = {r: make_snapshot(round=r, seed=r) for r in (1, 2, 3)}
    for r, snap in snaps.items():
        save(ckpt_path(tmp_path, r), snap)
    flip_byte(ckpt_path(tmp_path, 3), "model/layer0/W")
    (tmp_path / "ckpt" / ".round-000004.h5.tmp-77").write_bytes(b"\0" * 100)
    path, snap, warnings = newest_valid(tmp_path)
    assert path == ckpt_path(tmp_path, 2)
    assert_same(snap, snaps[2])
    assert len(warnings) == 1
    assert warnings[0].startswith(f"skipping {ckpt_path(tmp_path, 3)}: checksum mismatch in dataset "
                                  "/model/layer0/W ")

    os.truncate(ckpt_path(tmp_path, 2), 100)
    ckpt_path(tmp_path, 1).write_text("garbage")
    with pytest.raises(CheckpointError) as err:
        newest_valid(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'ckpt'}: none of the 3 checkpoint(s) is valid")
    assert "round-000003.h5" in msg


def test_newest_valid_without_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found") as err:
        newest_valid(tmp_path)
    assert str(tmp_path / "ckpt") in str(err.value)


def test_prune_keeps_the_newest(tmp_path):
    assert prune(tmp_path, 2) == []
    for r in (1, 2, 3, 4, 5):
        save(ckpt_path(tmp_path, r), make_snapshot(round=r))
    folder = tmp_path / "ckpt"
    stale, live = folder / ".round-000003.h5.tmp-11", folder / ".round-000006.h5.tmp-12"
    for p, age in ((stale, -3600), (live, 3600)):
        p.write_bytes(b"x")
        os.utime(p, (time.time() + age, time.time() + age))
    deleted = prune(tmp_path, 2)
    assert sorted(deleted) == sorted([ckpt_path(tmp_path, r) for r in (1, 2, 3)] + [stale])
    assert list_checkpoints(tmp_path) == [ckpt_path(tmp_path, 4), ckpt_path(tmp_path, 5)]
    assert live.exists() and not stale.exists()
    assert prune(tmp_path, 1) == [ckpt_path(tmp_path, 4)]
    assert list_checkpoints(tmp_path) == [ckpt_path(tmp_path, 5)]
    assert prune(tmp_path, 3) == []
    with pytest.raises(ValueError, match="keep"):
        prune(tmp_path, 0)


def test_intact_reads_a_file_once_until_it_changes(tmp_path, monkeypatch):
    """prune asks about every kept checkpoint after each write: a file already verified and unchanged is
    not read again, and one changed in place (new modification time) or replaced is verified anew."""
    path = save(ckpt_path(tmp_path, 1), make_snapshot(round=1))
    calls = []
    real = ck._verify
    monkeypatch.setattr(ck, "_verify", lambda fh, size: calls.append(size) or real(fh, size))
    assert ck.intact(path) and ck.intact(path) and len(calls) == 1
    flip_byte(path, "optimizer/m")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert not ck.intact(path) and len(calls) == 2
    save(path, make_snapshot(round=1))  # replaced: another inode
    assert ck.intact(path) and len(calls) == 3


# -------------------------------------------------------------------------------------------- inspect
def test_summarize_and_format_summary(tmp_path):
    snap = make_snapshot((5, 4, 3))
    path = save(ckpt_path(tmp_path, 12), snap)
    d = summarize(path)
    assert json.loads(json.dumps(d)) is not None  # what `inspect --json` prints
    assert (d["round"], d["epoch"], d["members"], d["dead"]) == (12, 2, [1, 2, 4], [3])
    assert d["coverage"] == pytest.approx(snap.coverage) and d["n_samples"] == 40
    assert d["n_owned"] == int((snap.owner >= 0).sum()) and d["n_dropped"] == int(snap.dropped.sum())
    assert d["test_acc"] == pytest.approx(snap.test_acc)
    assert d["per_class_acc"] == pytest.approx(snap.per_class_acc)
    assert d["optimizer"] == {"name": "adam", "step": 36} and d["representative"] == {1: 2, 2: 2, 4: 2}
    assert d["format_version"] == FORMAT_VERSION and d["file_size"] == path.stat().st_size
    assert d["dataset"] == "synthetic" and d["config"] == snap.config and d["sizes"] == [5, 4, 3]
    w0 = snap.params[:20]
    assert d["tensors"][0] == {"name": "layer0/W", "shape": [5, 4],
                               "norm": pytest.approx(float(np.linalg.norm(w0)), rel=1e-6)}
    assert [t["name"] for t in d["tensors"]] == ["layer0/W", "layer0/b", "layer1/W", "layer1/b"]
    assert [t["shape"] for t in d["tensors"]] == [[5, 4], [4], [4, 3], [3]]

    text = format_summary(d)
    lines = text.splitlines()
    assert lines[0] == f"ftmpi checkpoint {path}"
    for fact in ("round           : 12 (next to run)", "epoch           : 2", "members         : 1 2 4",
                 "dead            : 3", f"coverage        : {100 * snap.coverage:.2f} %",
                 f"test accuracy   : {snap.test_acc:.4f}", "optimizer       : adam, step 36",
                 "comm period     : 1 (every iteration since round 7)",
                 "failures        : 1: rank 3 at round 5",
                 "representative  : w1=2  w2=2  w4=2", "dataset         : synthetic, 3 classes"):
        assert any(line.strip().startswith(fact) for line in lines), fact
    assert any(line.split()[:4] == ["layer0/W", "5", "x", "4"] for line in lines)
    assert "config" in lines and "  optimizer:" in lines
    assert yaml.safe_load("\n".join(lines[lines.index("config") + 1:])) == snap.config


def test_summary_before_first_evaluation_is_strict_json(tmp_path):
    snap = make_snapshot((5, 3), optimizer="sgd")
    snap.test_acc, snap.per_class_acc = math.nan, np.array([0.5, math.nan, 1.0])
    d = summarize(save(tmp_path / "c.h5", snap))
    json.dumps(d, allow_nan=False)
    assert d["test_acc"] is None and d["per_class_acc"] == [0.5, None, 1.0] and d["switched_at"] is None
    text = format_summary(d)
    assert "test accuracy   : n/a" in text and "0.500 n/a 1.000" in text and "comm period     : 10\n" in text


def test_summarize_reports_broken_files_like_load(tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(CheckpointError) as err:
        summarize(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_background_writer_runs_jobs_in_order_and_reports_a_failed_write(tmp_path):
    """Checkpoints written behind the training: jobs run one at a time in submission order, ``wait`` blocks
    until they are done, and a write that failed raises in the caller (once); later jobs still run."""
    from ftmpi.coordinator.saver import BackgroundWriter

    w = BackgroundWriter()
    order = []

    def save_and_note(r: int, snap: Snapshot) -> None:
        save(ckpt_path(tmp_path, r), snap)
        prune(tmp_path, 2)
        order.append(r)

    snaps = {r: make_snapshot(round=r) for r in (10, 20, 30)}
    for r, snap in snaps.items():
        w.submit("checkpoint", save_and_note, r, snap)
    w.wait()
    assert order == [10, 20, 30] and w.pending == 0 and w.done["checkpoint"] == 3
    assert list_checkpoints(tmp_path) == [ckpt_path(tmp_path, 20), ckpt_path(tmp_path, 30)]
    assert_same(load(ckpt_path(tmp_path, 30)), snaps[30])
    assert w.seconds["checkpoint"] > 0
    bad = make_snapshot(round=40)
    bad.params = bad.params[:-1]  # does not match the model's sizes: save refuses it
    w.submit("checkpoint", save_and_note, 40, bad)
    w.submit("checkpoint", save_and_note, 50, make_snapshot(round=50))
    assert w.wait() is True  # an earlier checkpoint is valid: a warning, not an error (issue 14, item 8)
    warnings = w.take_warnings()
    assert len(warnings) == 1 and "inconsistent snapshot" in warnings[0] and "still valid" in warnings[0]
    assert w.take_warnings() == []  # reported once
    assert w.error_summary()["checkpoint"]["count"] == 1
    assert order == [10, 20, 30, 50] and list_checkpoints(tmp_path)[-1] == ckpt_path(tmp_path, 50)


def test_resume_takes_the_newest_checkpoint_of_the_highest_term(tmp_path):
    """A deposed coordinator's later round (term 1, round 15) is never resumed from when the coordinator that
    replaced it (term 2) wrote round 12: ordering is by (term, round)."""
    run = tmp_path / "run"
    for rnd, term in ((10, 1), (12, 2), (15, 1)):
        s = make_snapshot()
        s.round, s.term = rnd, term
        ck.save(ck.ckpt_path(run, rnd), s)
    path, snap, warnings = newest_valid(run)
    assert (snap.round, snap.term) == (12, 2) and path.name == "round-000012.h5" and warnings == []
    assert ck.term_of(ck.ckpt_path(run, 15)) == 1

