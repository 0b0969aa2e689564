"""The run dir's copy of the data a deputy takes over with (ftmpi/storage/rundata.py): shards, handoff and standby files
written by the real writers, read back by global row id and compared bit for bit with an in-memory load of
the source; the test set written once; rows in no file named in one line."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest

from ftmpi.config import DataConfig, load_config
from ftmpi.coordinator.files import shards_by_reference, write_handoff_file, write_shards
from ftmpi.coordinator.saver import BackgroundWriter
from ftmpi.coordinator.staging import Standby
from ftmpi.core.cluster import WriteHandoff
from ftmpi.core.partition import Ownership
from ftmpi.errors import DataError
from ftmpi.launch.rundir import clear_for
from ftmpi.storage.data import Dataset, load_dataset
from ftmpi.storage.rundata import (
    DatasetAhead,
    RunData,
    RunRows,
    eval_set_path,
    open_run_data,
    takeover_dataset,
    write_eval_set,
)
from ftmpi.storage.shards import ensure_shard, handoff_path, read_shard, shard_path, standby_path
from tests.unit.test_rows import _mnist

N = 90


@pytest.fixture
def src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Dataset, Dataset, Path]:
    """(the lazy dataset rank 0 loads, an in-memory load of the same source, the folder of source and copy)."""
    hidden = tmp_path / "hidden"
    monkeypatch.setenv("FTMPI_PREPARED", str(hidden / "prepared"))
    monkeypatch.delenv("FTMPI_SHARED_DATA", raising=False)
    cfg = DataConfig(dataset="mnist", path=str(_mnist(hidden / "m", n=N)))
    return load_dataset(cfg, 0), load_dataset(cfg, 0, lazy=False), hidden


def _take(run: Path, owner: np.ndarray, rd: RunData | None = None) -> Dataset:
    """A takeover's dataset, from what was read ahead (``rd``) or read now."""
    return takeover_dataset(DatasetAhead(lambda: rd if rd is not None else open_run_data(run)), run, owner)


def _parts() -> dict[int, np.ndarray]:
    ids = np.arange(N, dtype=np.int64)
    return {r: ids[r - 1::3] for r in (1, 2, 3)}


def _run(tmp_path: Path, data: Dataset, by_ref: bool) -> Path:
    """A run dir as rank 0 leaves it: shards, the test set, and one handoff file (worker 2's rows to 1 and 3)."""
    run = tmp_path / "run"
    parts = _parts()
    write_shards(run, data, parts, np.ones(N), by_ref)
    assert write_eval_set(run, data) > 0
    two = parts[2][:20]
    write_handoff_file(WriteHandoff(1, str(handoff_path(run, 1)), {3: two[::2], 1: two[1::2]},
                                    {3: np.full(len(two[::2]), 2.0), 1: np.ones(len(two[1::2]))}), data)
    return run


@pytest.mark.parametrize("same_host,packed", [(True, False), (False, False), (False, True)])
def test_rows_by_id_equal_the_source_once_it_is_gone(src, tmp_path: Path, same_host: bool, packed: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards by reference (one host: the prepared copy is shared, and read) or holding uint8 rows (the source
    and its prepared copy then need not be readable at all), stored plainly or deflate-compressed in chunks
    of 7 rows (data.compress_shards; the threshold lowered so that these small shards are compressed)."""
    import ftmpi.storage.h5zip

    monkeypatch.setattr(ftmpi.storage.h5zip, "MIN_BYTES", 0 if packed else 1 << 40)
    monkeypatch.setattr(ftmpi.storage.h5zip, "CHUNK_BYTES", 7 * 784)
    data, eager, hidden = src
    by_ref = shards_by_reference(data, [socket.gethostname()] * 3 if same_host else ["elsewhere"])
    assert by_ref == same_host
    run = _run(tmp_path, data, by_ref)
    with h5py.File(shard_path(run, 2), "r") as f:
        assert same_host or (f["X"].compression == "gzip") == packed
    with h5py.File(eval_set_path(run), "r") as f:
        assert f["X"].dtype == np.uint8 and f.attrs["n_train"] == N  # the source's own type
    if not same_host:
        shutil.rmtree(hidden)  # what a deputy on another host sees of them: nothing
    rd = open_run_data(run)
    assert np.array_equal(rd.X_test, eager.X_test) and np.array_equal(rd.y_test, eager.y_test)
    assert rd.X_test.dtype == np.float32 and rd.classes == eager.classes and rd.n_classes == 10
    owner = np.zeros(N, np.int32)
    d = _take(run, rd=rd, owner=owner)
    assert isinstance(d.X_train, RunRows), "rows stay in the files, read by id"
    assert d.name == "mnist" and d.X_train.shape == (N, 784) and len(d.X_train) == N and d.n_features == 784
    ids = np.array([89, 0, 7, 7, 12, 38, 1, 50])
    assert np.array_equal(d.X_train[ids], eager.X_train[ids])  # bit for bit, in the order asked, duplicates kept
    assert np.array_equal(d.X_train[np.arange(N)], eager.X_train) and np.array_equal(d.y_train, eager.y_train)
    assert np.array_equal(d.X_train[5], eager.X_train[5]) and np.array_equal(d.X_train[10:20:3], eager.X_train[10:20:3])
    assert d.X_train[np.array([], np.int64)].shape == (0, 784)
    if not same_host:  # uint8 files: raw rows for the standby files the new coordinator writes
        assert d.X_train.raw(ids).dtype == np.uint8 and d.X_train.scale == pytest.approx(1 / 255)
        assert np.array_equal(d.X_train.raw(ids) * np.float32(d.X_train.scale), eager.X_train[ids])


def test_rows_only_in_handoff_and_standby_files_are_found_and_held(src, tmp_path: Path) -> None:
    """Worker 2's shard is gone: its rows are found in the handoff file (the part handed) and in a standby
    file (the rest); a standby file deleted after it was indexed still reads; a row in no file is named."""
    data, eager, hidden = src
    run = _run(tmp_path, data, by_ref=False)
    shard_path(run, 2).unlink()
    two = _parts()[2]
    handed = np.concatenate([two[:20:2], two[1:20:2]])
    standby = standby_path(run, 0, 2)  # the rest, as rank 0 stages them (Standby._write)
    ensure_shard(standby, data.X_train, data.y_train, two[:19:-1], {"n_classes": 10, "dataset": "mnist", "rank": 2,
                                                                 "staged": "representative"})
    shutil.rmtree(hidden)
    rd = open_run_data(run)
    owner = np.full(N, 1, np.int32)
    assert not rd.rows.has(two).any(), "at read-ahead only the shards are indexed"
    d = _take(run, rd=rd, owner=owner)
    assert np.array_equal(d.X_train[two], eager.X_train[two]) and np.array_equal(d.y_train[two], eager.y_train[two])
    # held open: a file deleted (or replaced) after it was indexed reads as it was
    standby.unlink()
    handoff_path(run, 1).rename(standby)  # another file under its name now
    assert np.array_equal(d.X_train[two[::-1]], eager.X_train[two[::-1]])
    assert np.array_equal(d.X_train[handed], eager.X_train[handed])
    # a row in no file: the takeover names it and its owner
    standby.unlink()
    with pytest.raises(DataError) as e:
        _take(run, owner)
    msg = str(e.value)
    assert f"{len(two)} training row(s) owned by worker(s) [1]" in msg and "\n" not in msg
    assert f"e.g. row {int(two[0])}" in msg and str(run / "shards") in msg
    dropped = owner.copy()
    dropped[two] = -1  # rows nobody owns are not needed
    assert _take(run, dropped).X_train.has(np.arange(N)).sum() == N - len(two)


def test_a_file_of_another_dataset_or_a_missing_test_set_is_said(src, tmp_path: Path) -> None:
    data, _, _ = src
    run = _run(tmp_path, data, by_ref=False)
    with h5py.File(shard_path(run, 3), "r+") as f:
        f.attrs["dataset"] = "fashion-mnist"
    rd = open_run_data(run)
    with pytest.raises(DataError, match="written for dataset 'fashion-mnist'"):
        _take(run, rd=rd, owner=np.full(N, 1, np.int32))
    with pytest.raises(DataError, match="replica's state has 5"):
        _take(run, rd=rd, owner=np.zeros(5, np.int32))
    eval_set_path(run).unlink()
    with pytest.raises(DataError, match=r"test\.h5: no test set in the run dir"):
        open_run_data(run)


def test_the_test_set_is_written_once_and_kept_on_resume(src, tmp_path: Path) -> None:
    data, eager, _ = src
    run = _run(tmp_path, data, by_ref=False)
    stamp = eval_set_path(run).stat().st_mtime_ns
    assert write_eval_set(run, data) == 0, "the same test set: not written again"
    clear_for(run, "resume")
    assert eval_set_path(run).stat().st_mtime_ns == stamp and not handoff_path(run, 1).exists()
    clear_for(run, "overwrite")
    assert not eval_set_path(run).exists()


def test_a_float32_test_set_stays_float32(tmp_path: Path) -> None:
    """Synthetic data (standardised features): no lossless uint8 form, stored as float32 and read back exactly."""
    cfg = load_config(None, ["data.dataset=synthetic"], env={})
    data = load_dataset(cfg.data, 0)
    run = tmp_path / "run"
    parts = {1: np.arange(len(data.y_train))}
    write_shards(run, data, parts, np.ones(len(data.y_train)), False)
    write_eval_set(run, data)
    with h5py.File(eval_set_path(run), "r") as f:
        assert f["X"].dtype == np.float32
    d = _take(run, np.ones(len(data.y_train), np.int32))
    assert np.array_equal(d.X_test, data.X_test) and np.array_equal(d.X_train[parts[1]], data.X_train)


def test_the_new_coordinators_standby_files_are_uint8_and_read_back(src, tmp_path: Path) -> None:
    """What a new coordinator stages from the run dir's rows: uint8 rows again, the same as the source."""
    data, eager, hidden = src
    run = _run(tmp_path, data, by_ref=False)
    shutil.rmtree(hidden)
    d = _take(run, np.full(N, 1, np.int32))
    cfg = load_config(None, ["data.dataset=mnist", "optimizer.n_most_rep=0.5"], env={})
    writer = BackgroundWriter()
    sb = Standby(cfg, run, writer)
    own = Ownership(N)
    own.assign(3, _parts()[3])
    sb.stage([3], 4, own, np.ones(N), d)
    writer.wait()
    ids, _, path = sb.get(3)
    with h5py.File(path, "r") as f:
        assert f["X"].dtype == np.uint8
    s = read_shard(path)
    assert np.array_equal(s.ids, ids) and np.array_equal(s.X, eager.X_train[ids])
    assert os.path.basename(path).startswith("standby-e0004")


def test_read_ahead_before_the_files_exist_is_read_again_at_the_takeover(src, tmp_path: Path) -> None:
    """A deputy named before rank 0 wrote the files (it should not be) reads them again when it takes over."""
    data, eager, _ = src
    run = tmp_path / "run"
    early = DatasetAhead(lambda: open_run_data(run))
    with pytest.raises(DataError):
        early.get()
    run = _run(tmp_path, data, by_ref=False)
    d = takeover_dataset(early, run, np.ones(N, np.int32))
    assert np.array_equal(d.X_train[np.arange(N)], eager.X_train)
