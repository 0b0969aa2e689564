"""The run dir's lock under contention and across a coordinator change (ftmpi/launch/rundir.py): real
processes, real files."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ftmpi.errors import ConfigError
from ftmpi.launch.rundir import LOCK, acquire, read_lock, release, take_from
from ftmpi.procs import start_time

# One launch's rank 0: it judges the lock, and its liveness check of the holder takes 0.3 s + 0.15 s x its index,
# so that every racer has judged the stale lock before the first of them acts on it, and they act in turn.
_RACER = r"""
import sys, time
from pathlib import Path
import ftmpi.launch.rundir as rd

index = int(sys.argv[2])
real = rd.running

def slow(pid, started=0):
    alive = real(pid, started)
    time.sleep(0.3 + 0.15 * index)
    return alive

rd.running = slow
print("ready", flush=True)
sys.stdin.readline()
try:
    rd.acquire(Path(sys.argv[1]))
    print("won", flush=True)
except Exception as exc:
    print("refused", type(exc).__name__, exc, flush=True)
sys.stdin.read()  # a live holder until the test is done
"""


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_of_launches_racing_for_a_stale_lock_exactly_one_takes_it_over(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "x"}))
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(run), str(i)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for i in range(4)]
    try:
        for r in racers:
            assert r.stdout.readline().strip() == "ready"
        for r in racers:  # go, all at once
            r.stdin.write("go\n")
            r.stdin.flush()
        outcome = {r.pid: r.stdout.readline().strip() for r in racers}
        won = [pid for pid, line in outcome.items() if line == "won"]
        assert len(won) == 1, outcome
        assert read_lock(run / LOCK)["pid"] == won[0]
        refused = [line for line in outcome.values() if line != "won"]
        assert all(line.startswith("refused ConfigError") and f"in use by pid {won[0]}" in line for line in refused)
        assert sorted(p.name for p in run.iterdir()) == [LOCK], "no marker or temp file is left behind"
    finally:
        for r in racers:
            r.stdin.close()
            r.wait(timeout=30)


def test_the_coordinator_that_took_over_holds_the_lock_and_releases_it(tmp_path):
    """A deputy that became the coordinator takes the lock over from the lost coordinator (named by host, pid
    and start time), so that the lock names a live process and the end of the run releases it; a lock that
    names anyone else means another job has the run dir."""
    run = tmp_path / "r"
    lost = subprocess.Popen([sys.executable, "-c", "import sys, ftmpi.launch.rundir as rd, pathlib; "
                             f"rd.acquire(pathlib.Path({str(run)!r})); print('locked', flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert lost.stdout.readline().strip() == "locked"
        held = read_lock(run / LOCK)
        assert held["pid"] == lost.pid
        ident = (socket.gethostname(), lost.pid, start_time(lost.pid))
        with pytest.raises(ConfigError, match=f"names pid {lost.pid} on .*, not the lost coordinator"):
            take_from(run, (ident[0], lost.pid + 100000, ident[2]))
        assert read_lock(run / LOCK) == held, "a refused takeover changes nothing"
        take_from(run, ident)  # the lost coordinator may still exist (hung, or replaced): the lock is ours now
        mine = read_lock(run / LOCK)
        assert (mine["pid"], mine["start_time"], mine["host"]) == (os.getpid(), start_time(os.getpid()),
                                                                   socket.gethostname())
        with pytest.raises(ConfigError, match=f"in use by pid {os.getpid()}"):
            acquire(run)  # another launch: refused while the new coordinator lives
        release(run)
        assert not (run / LOCK).exists()
    finally:
        lost.stdin.close()
        lost.wait(timeout=30)
