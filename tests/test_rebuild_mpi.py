"""The alive-communicator rebuild under real ULFM: one rank SIGKILLed, the survivors rebuild twice in a row,
with rank 0 joining the first rebuild only after the workers' own waits have run out (as in the round loop:
rank 0 starts after the last reply). Every survivor must end with the same, agreed result both times.

tests/mpirun.py:run_job launches the trainer only, so this test starts mpirun itself with the flags of
jobs/local.sh and the same kind of hard limit (``timeout --kill-after``, and subprocess's timeout).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mpirun import needs_mpi

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, os, signal, sys, time
from mpi4py import MPI
from ftmpi.comm import Channel, Detector, TAG_REPLY
out = sys.argv[1]
ch = Channel(MPI.COMM_WORLD, Detector.ULFM)
rank, size = ch.rank, ch.size
victim = size - 1
if rank == victim:
    os.kill(os.getpid(), signal.SIGKILL)
# wait (bounded) until ULFM reports the victim failed
o = ch.poll([victim], TAG_REPLY, time.monotonic() + 30, until=lambda o: False)
members = [r for r in range(size) if r != victim]
rec = {"rank": rank, "seen_failed": sorted(o.failed), "thread_level": MPI.Query_thread()}
if rank == 0:
    time.sleep(1.0)  # rank 0 starts after the workers gave up waiting
    rec["first_wait"] = ch.rebuild_alive(members, 1, 20.0)
else:
    rec["first_wait"] = ch.rebuild_alive(members, 1, 0.05)  # gives up at once, as the old workers did
rec["second"] = ch.rebuild_alive(members, 2, 20.0)  # every rank waits: the next rebuild must not stall
rec["status"] = ch.rebuild_status() if hasattr(ch, "rebuild_status") else None
rec["notes"] = ch.take_notes() if hasattr(ch, "take_notes") else []
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump(rec, fh)
sys.stdout.flush()
os._exit(0)
"""


@needs_mpi
@pytest.mark.mpi
def test_survivors_rebuild_twice_and_agree(tmp_path):
    script = tmp_path / "rebuild.py"
    script.write_text(SCRIPT)
    flags = ["--oversubscribe", "--runtime-options", "error-nonzero-status=false", "--with-ft", "ulfm",
             "--mca", "pml", "ob1", "--mca", "btl", "self,sm,tcp", "-x", "PYTHONPATH"]
    if os.geteuid() == 0:
        flags.append("--allow-run-as-root")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMPI_MCA_mpi_ft_enable": "1"}
    cmd = ["timeout", "--kill-after=10", "90", os.environ.get("MPIRUN", "mpirun"), *flags, "-n", "4",
           sys.executable, str(script), str(tmp_path)]
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mpirun overran its hard limit: {exc.stderr}")
    recs = {}
    for r in range(3):
        f = tmp_path / f"rank{r}.json"
        assert f.exists(), f"survivor {r} wrote no result (rc {p.returncode}):\n{p.stderr[-3000:]}"
        recs[r] = json.loads(f.read_text())
    if any(rec["thread_level"] < 3 for rec in recs.values()):
        pytest.skip("MPI_THREAD_MULTIPLE is not provided here")
    assert all(rec["seen_failed"] == [3] for rec in recs.values()), recs
    assert recs[0]["first_wait"] is True, "rank 0 completed the first rebuild with the workers' helpers"
    assert all(rec["second"] is True for rec in recs.values()), recs
    assert {json.dumps({k: v for k, v in rec["status"].items() if k != "seconds"}, sort_keys=True)
            for rec in recs.values()} == {json.dumps({"agreed": True, "epoch": 2, "error": None, "members": [0, 1, 2],
                                                      "pending": False, "queued": 0}, sort_keys=True)}
