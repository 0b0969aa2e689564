"""Rank 0's sharding step with the training rows on disk (no MPI: a recording channel stands in).

Checks the [scale] edit of ``Coordinator._shard``: shards by reference when every worker is on rank 0's
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
from ftmpi.data import load_dataset
from ftmpi.rows import RowStore
from ftmpi.shards import read_shard, shard_path
from tests.test_rows import _mnist


class _Channel:
    size = 4
    detector = None

    def send(self, dest: int, tag: int, obj: dict) -> int:
        return 0


@pytest.fixture
def coordinator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mpi4py = pytest.importorskip("mpi4py")
    mpi4py.rc.initialize = False  # import ftmpi.comm without MPI_Init: nothing here talks MPI
    from ftmpi.comm import Detector
    from ftmpi.config import load_config
    from ftmpi.coordinator import Coordinator
    from ftmpi.metrics import Progress

    monkeypatch.setenv("FTMPI_PREPARED", str(tmp_path / "prepared"))
    monkeypatch.delenv("FTMPI_SHARED_DATA", raising=False)
    folder = _mnist(tmp_path / "m", n=90)

    def make(hosts: list[str]) -> Coordinator:
        cfg = load_config(None, ["data.dataset=mnist", f"data.path={folder}"], env={})
        ch = _Channel()
        ch.detector = Detector.TIMEOUT
        c = Coordinator(ch, cfg, tmp_path / "run", Progress(False), 0.0)
        c.data = load_dataset(cfg.data, 0)
        for r, h in zip(sorted(c.members), hosts, strict=True):
            c.members[r].host = h
        return c

    make.folder = folder  # type: ignore[attr-defined]
    return make


@pytest.mark.parametrize("same_host", [True, False])
def test_shards_by_reference_or_uint8_and_not_written_twice(coordinator, same_host: bool) -> None:
    me = socket.gethostname()
    c = coordinator([me] * 3 if same_host else [me, "elsewhere", me])
    assert isinstance(c.data.X_train, RowStore)
    c._shard()
    assert c.shard_bytes > 0
    eager = load_dataset(DataConfig(dataset="mnist", path=str(coordinator.folder)), 0, lazy=False)
    for r in c.alive:
        p = shard_path(c.run_dir, r)
        with h5py.File(p, "r") as f:
            assert ("X" in f) != same_host
            if not same_host:
                assert f["X"].dtype == np.uint8
        s = read_shard(p)  # what Worker._setup reads
        assert np.array_equal(s.X, eager.X_train[s.ids]) and np.array_equal(s.y, eager.y_train[s.ids])
    stamps = {r: shard_path(c.run_dir, r).stat().st_mtime_ns for r in c.alive}
    c._shard()  # the same ownership again (a resume that kept its workers): nothing written
    assert c.shard_bytes == 0
    assert stamps == {r: shard_path(c.run_dir, r).stat().st_mtime_ns for r in c.alive}
