"""The handoff study's job plumbing (benchmarks/handoff_value.py): waiting until no other ftmpi job, test or
benchmark is busy, watching for one that starts meanwhile, the code's version, keeping a run's small files."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from _runs import ROOT

KEEP_FILES = ("summary.json", "metrics.csv", "config.yaml")


def code_version() -> dict:
    """The commit, whether the tree has uncommitted changes, and a digest of the code the jobs run."""
    import hashlib
    import subprocess

    h = hashlib.sha1()
    for p in sorted([*ROOT.glob("ftmpi/*.py"), *ROOT.glob("kernels/*.py"), ROOT / "jobs" / "local.sh"]):
        h.update(p.name.encode() + p.read_bytes())
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "ftmpi", "kernels", "jobs"], capture_output=True,
                           text=True).stdout.strip()
    return {"commit": head or "?", "uncommitted": bool(dirty), "digest": h.hexdigest()[:12]}


_OTHERS = ("ftmpi", "pytest", "benchmarks/", "sweep.sh")
_TICK = float(os.sysconf("SC_CLK_TCK"))  # clock ticks per second of /proc/<pid>/stat


def _others(mine: Path) -> dict[int, tuple[str, float]]:
    """Other ftmpi jobs, tests or benchmarks on this machine (not this study's own jobs): pid -> (command line,
    CPU seconds so far)."""
    me = {os.getpid(), os.getppid()}
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if not cmd or str(mine) in cmd or not any(k in cmd for k in _OTHERS):
                continue
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(d.name)] = (cmd[:100], (int(fields[11]) + int(fields[12])) / _TICK)
    return found


def _busy(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], dt: float) -> list[str]:
    """The processes of ``after`` that used more than 10% of a core since ``before`` (sleeping shells don't)."""
    return [f"{pid}: {cmd}" for pid, (cmd, cpu) in after.items() if cpu - before.get(pid, ("", 0.0))[1] > 0.1 * dt]


class Watch:
    """Samples the other busy jobs every half second while a job of the study runs: their CPU time would be
    taken from the study's 2 cores and inflate the times it measures."""

    def __init__(self, mine: Path) -> None:
        import threading

        self.mine, self.seen, self._stop = mine, [], threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        prev, t = _others(self.mine), time.monotonic()
        while not self._stop.wait(0.5):
            cur, now = _others(self.mine), time.monotonic()
            self.seen += [c for c in _busy(prev, cur, now - t) if c not in self.seen]
            prev, t = cur, now

    def __enter__(self) -> Watch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def wait_alone(mine: Path, limit: float) -> float:
    """Wait (up to ``limit`` s) until no other ftmpi job, test or benchmark is busy; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        before = _others(mine)
        time.sleep(1.0)
        if not _busy(before, _others(mine), 1.0):
            break
        time.sleep(4.0)
    return time.monotonic() - t0


def keep(run_dir: Path, dest: Path) -> None:
    """Keep the small files of a run (for the plot); drop its shards and checkpoints (~190 MB a run)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEEP_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dest / name)
    shutil.rmtree(run_dir, ignore_errors=True)
