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

ROOT = Path(__file__).resolve().parents[2]

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


# ------------------------------------------------------------------------ a real run on a full disk
def _mount(path: Path, size: str) -> str | None:
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "mounting a tmpfs needs root and mount(8)"
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    return None if p.returncode == 0 else f"cannot mount a tmpfs here: {p.stderr.strip()}"


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@needs_mpi
@pytest.mark.mpi
def test_real_run_on_a_full_disk_keeps_its_checkpoint_and_resumes(tmp_path):
    """A run whose run dir (a real tmpfs) fills up: its checkpoints fail with ENOSPC. The previous checkpoint
    stays valid, no temp file is left, the run goes on with a warning per failed checkpoint (it resumed from a
    valid one) and exits 0, and once there is room again ``--resume`` continues it to the end."""
    from tests.mpirun import run_job

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    why = _mount(mnt, "64m")
    if why:
        pytest.skip(why)
    try:
        run = mnt / "run"
        smoke = ROOT / "configs" / "smoke.yaml"
        base = ("--set", "executor.keep=1", "--set", "executor.checkpoint_every=5")
        job = run_job(2, smoke, run, *base, "--set", "model.n_iterations=100", limit=120)
        assert job.rc == 0, job.err[-2000:]
        ck = run / "ckpt" / "round-000010.h5"
        assert ck.exists()
        # leave room for metrics rows and summary.json's temp file, not for another 37 KB checkpoint
        room = 8 * 4096
        r = subprocess.run(["mount", "-o", f"remount,size={_used(mnt) + room}", str(mnt)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot shrink the tmpfs: {r.stderr.strip()}")
        job = run_job(2, smoke, run, *base, "--set", "model.n_iterations=400", "--resume", str(run), limit=120)
        # resumed from a valid checkpoint: a failed one is a warning, the run goes on to the end
        assert job.rc == 0, f"rc {job.rc}:\n{job.err[-3000:]}"
        warned = [x for x in job.err.splitlines() if "checkpoint write failed" in x]
        assert warned and all("No space left" in x and "still valid" in x for x in warned), job.err[-3000:]
        assert "Traceback" not in job.err
        assert json.loads((run / "summary.json").read_text())["write_errors"]["checkpoint"]["count"] >= 1
        from ftmpi.storage.checkpoint import list_checkpoints, newest_valid

        assert [p.name for p in (run / "ckpt").iterdir() if p.name.endswith(".tmp")] == [], "no temp file left"
        path, snap, skipped = newest_valid(run)
        assert path == ck and snap.round == 10 and skipped == [], "the previous checkpoint stays valid"
        r = subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        job = run_job(2, smoke, run, *base, "--set", "model.n_iterations=400", "--resume", str(run), limit=120)
        assert job.rc == 0, job.err[-3000:]
        s = job.summary
        assert s["status"] == "completed" and s["rounds"] == 40 and s["resumed_from"]["round"] == 10
        assert [p.name for p in list_checkpoints(run)] == ["round-000040.h5"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
