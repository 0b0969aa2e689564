"""Rank 0's sharding step with the training rows on disk (no MPI: a recording channel stands in).

Checks ``files.write_shards``: shards by reference when every worker is on rank 0's
host, uint8 rows otherwise, and a second sharding with the same ownership writes nothing; and what a worker
then reads (``read_shard``, as ``Worker._setup`` does) equals the rows of an in-memory load.
"""
from __future__ import annotations

import socket
from pathlib import Path

import h5py
import numpy as np
import pytest

from ftmpi.config import DataConfig
from ftmpi.storage.data import load_dataset
from ftmpi.storage.rows import RowStore
from ftmpi.storage.shards import read_shard, shard_path
from tests.unit.test_rows import _mnist


def _parts(n: int) -> dict[int, np.ndarray]:
    ids = np.arange(n, dtype=np.int64)
    return {r: ids[r - 1::3] for r in (1, 2, 3)}


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FTMPI_PREPARED", str(tmp_path / "prepared"))
    monkeypatch.delenv("FTMPI_SHARED_DATA", raising=False)
    folder = _mnist(tmp_path / "m", n=90)
    d = load_dataset(DataConfig(dataset="mnist", path=str(folder)), 0)
    d.folder = folder  # type: ignore[attr-defined]
    return d


@pytest.mark.parametrize("same_host", [True, False])
def test_shards_by_reference_or_uint8_and_not_written_twice(data, tmp_path: Path, same_host: bool) -> None:
    from ftmpi.coordinator.files import shards_by_reference, write_shards

    me = socket.gethostname()
    hosts = [me] * 3 if same_host else [me, "elsewhere", me]
    assert isinstance(data.X_train, RowStore)
    run = tmp_path / "run"
    parts = _parts(len(data.y_train))
    weight = np.ones(len(data.y_train))
    by_ref = shards_by_reference(data, hosts)
    assert by_ref == same_host
    assert write_shards(run, data, parts, weight, by_ref) > 0
    eager = load_dataset(DataConfig(dataset="mnist", path=str(data.folder)), 0, lazy=False)
    for r in parts:
        p = shard_path(run, r)
        with h5py.File(p, "r") as f:
            assert ("X" in f) != same_host
            if not same_host:
                assert f["X"].dtype == np.uint8
        s = read_shard(p)  # what Worker._load_shard reads
        assert np.array_equal(s.X, eager.X_train[s.ids]) and np.array_equal(s.y, eager.y_train[s.ids])
    stamps = {r: shard_path(run, r).stat().st_mtime_ns for r in parts}
    # the same ownership again (a resume that kept its workers): nothing written
    assert write_shards(run, data, parts, weight, by_ref) == 0
    assert stamps == {r: shard_path(run, r).stat().st_mtime_ns for r in parts}


@pytest.mark.parametrize("by_ref", [True, False])
def test_standby_files_by_reference_or_uint8_read_back_by_slice(data, tmp_path: Path, by_ref: bool) -> None:
    """Rank 0's standby files follow the shards: ids only (rows read from the prepared copy) or uint8 rows;
    a survivor's slice of one reads back the very rows of an in-memory load."""
    from ftmpi.config import load_config
    from ftmpi.coordinator.saver import BackgroundWriter
    from ftmpi.coordinator.staging import Standby
    from ftmpi.core.partition import Ownership

    cfg = load_config(None, ["data.dataset=mnist", f"data.path={data.folder}", "optimizer.n_most_rep=0.5"], env={})
    writer = BackgroundWriter()
    sb = Standby(cfg, tmp_path / "run", writer)
    sb.by_ref = by_ref
    own = Ownership(len(data.y_train))
    for r, ids in _parts(len(data.y_train)).items():
        own.assign(r, ids)
    chosen = sb.stage([1, 2], 0, own, np.ones(len(data.y_train)), data)
    writer.wait()
    eager = load_dataset(DataConfig(dataset="mnist", path=str(data.folder)), 0, lazy=False)
    for r in (1, 2):
        ids, _, path = sb.get(r)
        assert np.array_equal(np.sort(ids), np.sort(chosen[r]))
        with h5py.File(path, "r") as f:
            assert ("X" in f) != by_ref
            if not by_ref:
                assert f["X"].dtype == np.uint8
        s = read_shard(path, (1, 4))
        assert np.array_equal(s.ids, ids[1:4]) and np.array_equal(s.X, eager.X_train[s.ids])
