"""A second stop signal, of either kind, ends the job (README, "Stop signals"): in a rank (ftmpi/signals.py)
and in the launcher (ftmpi/launch/launcher.py). Real processes and real signals; no MPI (the launcher runs a
stand-in for mpirun)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.mpirun import ROOT

# A rank's stop handling: it prints each change of the request it has recorded and lives for argv[2] s.
_RANK = r"""
import sys, time
from ftmpi import signals
signals.REPEAT_WINDOW = float(sys.argv[1])
signals.install()
print("ready", flush=True)
seen, t0 = None, time.monotonic()
while time.monotonic() - t0 < float(sys.argv[2]):
    if signals.stop_requested() != seen:
        seen = signals.stop_requested()
        print("stop", seen, flush=True)
    time.sleep(0.005)
print("lived", flush=True)
"""


def _rank(window: float, life: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _RANK, str(window), str(life)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_a_second_stop_signal_of_the_other_kind_ends_a_rank():
    for first, second in ((signal.SIGTERM, signal.SIGUSR1), (signal.SIGUSR1, signal.SIGTERM)):
        p = _rank(0.3, 20)
        try:
            p.send_signal(first)
            assert p.stdout.readline().split() == ["stop", first.name]  # checkpoint and stop at the round's end
            time.sleep(0.5)  # after the window: a new request
            p.send_signal(second)
            assert p.wait(timeout=10) == -second, "the second signal must end the process"
            assert "lived" not in p.stdout.read()
        finally:
            p.kill()
            p.wait()


def test_the_other_kind_within_the_window_is_the_same_request():
    """``scontrol requeue`` SIGTERMs every process while the launcher passes the same request on as SIGUSR1: a
    rank that gets both within milliseconds checkpoints once and stops, it is not killed."""
    p = _rank(30.0, 1.5)
    try:
        p.send_signal(signal.SIGTERM)
        assert p.stdout.readline().split() == ["stop", "SIGTERM"]
        p.send_signal(signal.SIGUSR1)
        assert p.wait(timeout=10) == 0
        assert p.stdout.read().split() == ["lived"]
    finally:
        p.kill()
        p.wait()


def _fake_mpirun(tmp_path) -> str:
    """Stands in for mpirun: says every rank is up, records the SIGUSR1 the launcher passes on and keeps
    running (as a job checkpointing its round would) for 30 s."""
    fake = tmp_path / "mpirun"
    fake.write_text(f"""#!/usr/bin/env bash
trap 'echo usr1 >> {tmp_path}/seen' USR1
echo running > "$FTMPI_STATUS_FILE"
touch {tmp_path}/up
for i in $(seq 300); do sleep 0.1; done
""")
    fake.chmod(0o755)
    return str(fake)


def test_a_second_stop_signal_of_another_kind_to_the_launcher_ends_the_job(tmp_path):
    """SIGTERM asks rank 0 to checkpoint and stop (passed on as SIGUSR1); a Ctrl-C after it ends the job at
    once, as a second SIGTERM does."""
    env = dict(os.environ, FTMPI_MPIRUN=_fake_mpirun(tmp_path), FTMPI_JOB_TIMEOUT="60")
    p = subprocess.Popen([sys.executable, "-m", "ftmpi", "launch", "-n", "2", "--mpi", "openmpi",
                          str(ROOT / "configs" / "smoke.yaml"), "--run-dir", str(tmp_path / "r")],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "up").exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.02)
        assert (tmp_path / "up").exists(), p.communicate(timeout=30)[1]
        p.send_signal(signal.SIGTERM)
        while not (tmp_path / "seen").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (tmp_path / "seen").read_text().split() == ["usr1"], "the first signal is passed on as SIGUSR1"
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        try:
            err = p.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            raise AssertionError("a second stop signal of another kind did not end the job") from None
        assert time.monotonic() - t0 < 10
        assert "SIGTERM: asking rank 0 to checkpoint this round and stop" in err
        assert "SIGINT after SIGTERM: ending the job now" in err, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
