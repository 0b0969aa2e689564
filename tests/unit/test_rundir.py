"""The run dir policy in one process: resolve, decide, lock (ftmpi/launch/rundir.py)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from ftmpi.errors import ConfigError
from ftmpi.launch.rundir import LOCK, acquire, clear_for, decide, read_lock, release, resolve, worker_resuming


def _ckpt(run_dir):
    (run_dir / "ckpt").mkdir(parents=True)
    (run_dir / "ckpt" / "round-000005.h5").write_bytes(b"x")


def test_resolve_is_absolute_and_names_the_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve(None, "r", tmp_path / "cfg") == (tmp_path / "r", "fresh")
    assert resolve(None, None, tmp_path / "cfg") == (tmp_path / "cfg", "fresh")
    assert resolve("auto", "r", tmp_path / "cfg") == (tmp_path / "r", "auto")
    assert resolve("x", "r", tmp_path / "cfg") == (tmp_path / "x", "resume")
    assert resolve(None, "r", tmp_path / "cfg", overwrite=True) == (tmp_path / "r", "overwrite")
    with pytest.raises(ConfigError, match="contradict"):
        resolve("auto", None, tmp_path, overwrite=True)
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        resolve(None, "f", tmp_path)


def test_decide_refuses_a_fresh_start_over_checkpoints(tmp_path):
    assert decide(tmp_path, "fresh") == "fresh" and decide(tmp_path, "auto") == "fresh"
    with pytest.raises(ConfigError, match="no checkpoint"):
        decide(tmp_path, "resume")
    _ckpt(tmp_path)
    with pytest.raises(ConfigError, match="--overwrite"):
        decide(tmp_path, "fresh")
    assert decide(tmp_path, "auto") == "resume" and decide(tmp_path, "resume") == "resume"
    assert worker_resuming(tmp_path, "auto") and not worker_resuming(tmp_path, "fresh")
    clear_for(tmp_path, "resume")
    assert (tmp_path / "ckpt" / "round-000005.h5").exists()
    clear_for(tmp_path, "overwrite")
    assert not (tmp_path / "ckpt").exists()


def test_lock_refuses_a_live_job_and_takes_over_a_dead_ones(tmp_path):
    path = acquire(tmp_path / "r")
    assert read_lock(path)["pid"] == os.getpid()
    with pytest.raises(ConfigError, match=f"in use by pid {os.getpid()}"):
        acquire(tmp_path / "r")
    release(tmp_path / "r")
    assert not path.exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    acquire(tmp_path / "r")  # a dead pid on this host: taken over
    assert read_lock(tmp_path / "r" / LOCK)["pid"] == os.getpid()
    path.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere", "started": "x"}))
    with pytest.raises(ConfigError, match="on elsewhere"):  # another host's job: cannot tell, refuse
        acquire(tmp_path / "r")


def test_lock_of_an_earlier_attempt_of_the_same_launch_is_taken_over(tmp_path, monkeypatch):
    # rank 0 of the first attempt ran on a host that is gone: only the launch id tells it is ours
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "lost-node", "started": "x", "launch": "slurm-7"}))
    monkeypatch.setenv("FTMPI_LAUNCH_ID", "slurm-8")
    with pytest.raises(ConfigError, match="on lost-node"):
        acquire(tmp_path)
    monkeypatch.setenv("FTMPI_LAUNCH_ID", "slurm-7")
    acquire(tmp_path)
    assert read_lock(tmp_path / LOCK)["pid"] == os.getpid()


def test_slurm_tasks_per_node_and_hostfiles():
    from ftmpi.launch.hosts import Host, lost_hosts, ranks_on, tasks_per_node

    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1] and tasks_per_node("5") == [5]
    hosts = [Host("nodeA", 3), Host("nodeB", 2)]
    assert ranks_on(hosts, 5) == {"nodeA": [0, 1, 2], "nodeB": [3, 4]}
    msg = "PRTE has lost communication with a remote daemon.\n  HNP daemon   : [prterun-vm-1@0,0] on node vm\n" \
          "  Remote daemon: [prterun-vm-1@0,2] on node nodeB\n"
    assert lost_hosts(msg, hosts) == ["nodeB"] and lost_hosts("all fine", hosts) == []


def test_lock_of_a_killed_job_not_yet_reaped_or_of_a_reused_pid_is_taken_over(tmp_path):
    """A job SIGKILLed a moment ago can leave rank 0 a zombie (its pid still answers kill(0)), and a pid can be
    reused by an unrelated process: neither is the job that took the lock."""
    from ftmpi.procs import start_time

    run = tmp_path / "r"
    zombie = subprocess.Popen(["sleep", "30"])
    zombie.kill()
    for _ in range(100):  # killed, not reaped: a zombie until wait()
        if open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    acquire(run)
    (run / LOCK).write_text(json.dumps({"pid": zombie.pid, "host": socket.gethostname(), "started": "x",
                                        "start_time": start_time(zombie.pid)}))
    acquire(run)  # taken over
    assert read_lock(run / LOCK)["pid"] == os.getpid()
    zombie.wait()
    # this very process, but with another start time: a reused pid, not the lock's job
    (run / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "x",
                                        "start_time": start_time(os.getpid()) + 1, "launch": "other"}))
    acquire(run)
    assert read_lock(run / LOCK)["start_time"] == start_time(os.getpid())
