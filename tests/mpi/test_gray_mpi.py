"""Slow is not dead (gray failures), in real mpirun jobs under the timeout detector.

Stalls shorter than ``executor.timeout`` (here 2 s) on rank 0, its deputy (rank 1) and other workers, alone
and in overlapping pairs, must declare no one lost and replace no coordinator: the run completes with every
worker, coverage 1.0, one metrics row per round, exit 0. A rank 0 that is silent for longer than the timeout
is replaced, and, once it wakes up, writes nothing: the checkpoints' terms only grow.
"""
from __future__ import annotations

import h5py
import pytest

from tests.mpirun import ROOT, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"
ARGS = ("--set", "executor.timeout=2", "--set", "executor.failure_detector=timeout", "--set", "executor.remap=full")

# (name, the injected stalls): every stall 0.75-0.95 x the 2 s timeout
SCHEDULES = [
    ("rank 0", ["slow:0@8:1.9"]),
    ("deputy", ["slow:1@8:1.9"]),
    ("worker", ["slow:3@8:1.9"]),
    ("deputy, then rank 0 (the issue's pair)", ["slow:1@8:1.5", "slow:0@9:1.9"]),
    ("worker, then rank 0", ["slow:2@8:1.7", "slow:0@9:1.9"]),
    ("rank 0, then the deputy", ["slow:0@8:1.9", "slow:1@9:1.9"]),
    ("two workers in one round", ["slow:2@8:1.9", "slow:3@8:1.9"]),
    ("rank 0 at the first round", ["slow:0@0:1.9"]),
]


@pytest.mark.parametrize("name,stalls", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_stalls_shorter_than_the_timeout_lose_no_one(tmp_path, name, stalls):
    inject = [a for s in stalls for a in ("--inject", s)]
    job = run_job(4, SMOKE, tmp_path / "run", *inject, *ARGS, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["exit_code"] == 0, s
    assert s["failures"] == [], f"{name}: healthy ranks declared lost: {s['failures']}"
    assert not s.get("coordinator_changes"), f"{name}: a live coordinator was replaced"
    assert s["coverage"] == 1.0 and s["alive_workers"] == 4
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(20)], "one row per round"


def test_a_coordinator_silent_past_the_timeout_is_replaced_and_writes_nothing_after(tmp_path):
    """Rank 0 stopped for 5 s (SIGSTOP, then SIGCONT): the deputy takes over under term 2; rank 0 wakes up,
    finds the higher term and leaves without writing. Every checkpoint on disk was written by a coordinator
    whose term was current: ordered by round, their terms never go down."""
    job = run_job(3, SMOKE, tmp_path / "run", "--inject", "pause:0@8:5", *ARGS, "--set", "executor.checkpoint_every=1",
                  "--set", "executor.keep=50", limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    assert s["status"] == "completed" and s["coordinator"] == 1, s
    (c,) = s["coordinator_changes"]
    assert (c["lost"], c["new"]) == (0, 1)
    assert s.get("term") == 2, "the first coordinator held term 1, the takeover claimed 2"
    terms = []
    for p in sorted((tmp_path / "run" / "ckpt").glob("round-*.h5")):
        with h5py.File(p, "r") as f:
            terms.append((int(f.attrs["round"]), int(f.attrs["term"])))
    assert terms and terms == sorted(terms) and {t for _, t in terms} <= {1, 2}, terms
    assert terms[-1][1] == 2
    assert sorted(p.name for p in (tmp_path / "run" / "terms").iterdir()) == ["term-000001.json", "term-000002.json"]
    assert [r["round"] for r in job.metrics()] == [str(r) for r in range(20)]
