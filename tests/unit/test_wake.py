"""A napping hot spare is woken by a signal (issue 24): rank 0 sends SIGUSR2 to a spare on its own host
right after the spare's first round, so that it looks at once instead of at the end of its nap. Each case
runs in a subprocess (``wakeable`` sets the process's signal wakeup fd)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ftmpi.comm import Backoff
from ftmpi.procs import kill_if_same, start_time
from tests.mpirun import ROOT

NAPPER = """
import sys, time
from ftmpi import signals
if sys.argv[1] == "wakeable":
    signals.wakeable()
print("ready", flush=True)
t0 = time.monotonic()
woken = signals.nap(float(sys.argv[2]))
print(f"{time.monotonic() - t0:.3f}", flush=True)
print("woken" if woken else "slept", flush=True)
"""


def _nap(mode: str, seconds: float, signal_after: float | None) -> tuple[int, float, bool]:
    p = subprocess.Popen([sys.executable, "-c", NAPPER, mode, str(seconds)], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    if signal_after is not None:
        time.sleep(signal_after)
        assert kill_if_same(p.pid, start_time(p.pid), signal.SIGUSR2)
    out, _ = p.communicate(timeout=60)
    lines = out.split()
    return p.returncode, float(lines[0] if lines else "nan"), lines[1:] == ["woken"]


def test_a_wakeable_nap_ends_when_the_signal_comes_and_the_process_lives_on():
    rc, slept, woken = _nap("wakeable", 20.0, 0.3)
    assert rc == 0 and slept < 10.0 and woken, slept  # woken, not the 20 s nap


def test_without_a_signal_the_nap_is_its_full_length():
    rc, slept, woken = _nap("wakeable", 0.4, None)
    assert rc == 0 and slept >= 0.39 and not woken


def test_the_signal_ends_a_process_that_did_not_make_itself_wakeable():
    """The same signal to a process that did not ask for it ends it (SIGUSR2's default): rank 0 only ever
    sends it to a spare, which makes itself wakeable before its hello."""
    rc, _, _ = _nap("plain", 20.0, 0.3)
    assert rc == -signal.SIGUSR2


def test_kill_if_same_refuses_a_pid_whose_start_time_differs():
    assert not kill_if_same(os.getpid(), start_time(os.getpid()) + 1, signal.SIGUSR2)
    assert not kill_if_same(os.getpid(), 0, signal.SIGUSR2)


def test_a_nap_ended_by_the_signal_makes_the_next_looks_quick_again():
    """Rank 0 signals a spare after sending it its round; the spare may look before the message is there.
    The nap after that look must be short (the message is coming), not one more nap of the cap (50 ms: the
    spare then started its round 50 ms late)."""
    slept: list[float] = []
    woken = iter([False, False, False, True, False])

    def sleep(d: float) -> bool:
        slept.append(d)
        return next(woken)

    back = Backoff(first=1e-4, cap=0.05, sleep=sleep)
    for _ in range(5):
        back.sleep()
    assert slept[:4] == [1e-4, 2e-4, 4e-4, 8e-4] and slept[4] == 1e-4, slept
