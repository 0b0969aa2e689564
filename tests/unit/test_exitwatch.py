"""The coordinator's watch on the processes of its own host (``procs.ExitWatch``): a process that ends (killed,
or exiting by itself with any code) is reported once, without waiting; a stopped one is not (it may resume:
the deadlines decide); a pid that is no longer the process that said hello is never watched."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from ftmpi.procs import ExitWatch, start_time

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfd is Linux's")


def _child(code: str = "import time; time.sleep(60)") -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(200):  # until /proc shows it
        if start_time(p.pid):
            break
        time.sleep(0.005)
    return p


def _ended_within(w: ExitWatch, seconds: float) -> list[int]:
    limit = time.monotonic() + seconds
    while time.monotonic() < limit:
        got = w.ended()
        if got:
            return got
        time.sleep(0.002)
    return []


def test_a_killed_and_an_exiting_process_are_each_reported_once_and_a_stopped_one_not():
    w = ExitWatch()
    killed, stopped, exits = _child(), _child(), _child("import os, time; time.sleep(0.3); os._exit(3)")
    try:
        for key, p in ((1, killed), (2, stopped), (3, exits)):
            assert w.watch(key, p.pid, start_time(p.pid)) and key in w
        assert w.ended() == []
        stopped.send_signal(signal.SIGSTOP)
        killed.kill()
        assert _ended_within(w, 10) == [1]
        assert _ended_within(w, 10) == [3], "an exit by itself, whatever its code"
        assert _ended_within(w, 0.3) == [], "stopped is not ended, and each end is said once"
    finally:
        stopped.send_signal(signal.SIGCONT)
        for p in (killed, stopped, exits):
            p.kill()
            p.wait()
        w.close()


def test_a_pid_whose_start_time_differs_or_that_is_gone_is_not_watched():
    w = ExitWatch()
    p = _child()
    try:
        assert not w.watch(1, p.pid, start_time(p.pid) + 1), "another process by now (a reused pid)"
        assert 1 in w, "looked at once: not retried every poll"
        assert not w.watch(2, 0, 0) and not w.watch(3, p.pid, 0)
    finally:
        p.kill()
        p.wait()
    assert not w.watch(4, p.pid, 12345), "gone"
    assert w.ended() == []
