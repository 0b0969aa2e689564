"""A relaunch regains capacity (issue 24, item 4): it reads the hostfile again, probes every host in it and
runs at the launch's full width on every host that answers, a host lost earlier included.

Two simulated hosts (tests/mpi/test_hosts.py: each a UTS namespace with its own ``prted``, started through
tests/hosts/rsh_agent.sh); SIGKILL of a host's ``prted`` is a node loss. The agent refuses a host named in the
file ``$FTMPI_TEST_DOWN_FILE``, read at each call: the test takes nodeB down and brings it back by editing it.
Where each launch put its ranks is read from the processes themselves (each ``ftmpi train`` rank's host name
in its UTS namespace), and from the launcher's relaunch records.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.mpi.test_hosts import (
    AGENT,
    SMOKE,
    _descendants,
    _host_of,
    hosts,  # noqa: F401 (its autouse fixture: skips with the reason when no hosts)
    kill_host,
)
from tests.mpirun import ended, launched, metrics_rows, needs_mpi

pytestmark = needs_mpi


def ranks_by_host(launcher: int) -> dict[str, int]:
    """How many ``ftmpi train`` ranks of the job of ``launcher`` run on each simulated host (each rank's host
    name, read in its own UTS namespace)."""
    out: dict[str, int] = {}
    for pid in _descendants(launcher):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[1:4] == [b"-m", b"ftmpi", b"train"]:
            host = _host_of(pid)
            if host:
                out[host] = out.get(host, 0) + 1
    return out


def relaunches(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "relaunches.json").read_text())
    except (OSError, ValueError):
        return []


def wait_for(what: str, ok, p, deadline: float):
    """Poll ``ok()`` until it returns something true; fail when the job ends or the deadline passes first."""
    while time.monotonic() < deadline:
        got = ok()
        if got:
            return got
        assert p.poll() is None, f"the job ended before {what}: {p.stderr.read()[-3000:] if p.stderr else ''}"
        time.sleep(0.05)
    pytest.fail(f"no {what} within the deadline")


def placed(p, want: dict[str, int], deadline: float) -> dict[str, int]:
    """Wait until the ranks run as ``want`` (host -> ranks) under the current launch of ``p``."""
    return wait_for(f"ranks placed as {want}", lambda: (lambda got: got if got == want else None)(ranks_by_host(p.pid)),
                    p, deadline)


def _launch(tmp_path: Path, total: int, restarts: int):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("nodeA slots=3\nnodeB slots=2\n")
    down = tmp_path / "down"
    run_dir = tmp_path / "r"
    job = launched("-n", "4", str(SMOKE), "--hostfile", str(hostfile), "--max-restarts", str(restarts), "--quiet",
                   "--run-dir", str(run_dir), "--set", f"model.n_iterations={total * 10}",
                   "--set", "executor.checkpoint_every=100",
                   env={"FTMPI_MPIRUN_ARGS": f"--mca plm_rsh_agent {AGENT}", "FTMPI_TEST_DOWN_FILE": str(down),
                        "FTMPI_PROBE_TIMEOUT": "30"}, limit=300)
    return job, run_dir, down


def test_a_lost_host_that_answers_again_is_used_at_full_width(tmp_path):
    """nodeB's daemon is SIGKILLed mid-run; nodeB still answers (its agent works), so the relaunch runs the
    launch's full width, 3 ranks on nodeA and 2 on nodeB, as the first launch did (before issue 24 the
    relaunch went to nodeA alone with 2 workers)."""
    total = 3000
    job, run_dir, _ = _launch(tmp_path, total, restarts=2)
    with job as p:
        deadline = time.monotonic() + 200
        assert placed(p, {"nodeA": 3, "nodeB": 2}, deadline)
        wait_for("40 % of the rounds", lambda: metrics_rows(run_dir) >= total * 2 // 5, p, deadline)
        assert kill_host(p.pid, "nodeB"), "no daemon of nodeB to kill"
        wait_for("a relaunch record", lambda: relaunches(run_dir), p, deadline)
        again = placed(p, {"nodeA": 3, "nodeB": 2}, deadline)  # the relaunch's own ranks, on both hosts
        err = ended(p, timeout=200)
    assert p.returncode == 0, err[-3000:]
    assert again == {"nodeA": 3, "nodeB": 2}
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["rounds"] == total, s
    assert s["workers"] == 4 and s["ranks"] == 5, "the relaunch ran at the launch's full width"
    (rel,) = s["relaunches"]
    assert rel["lost_hosts"] == ["nodeB"] and rel["lost_ranks"] == [3, 4], rel
    assert rel["hosts_before"] == ["nodeA", "nodeB"] and rel["hosts"] == ["nodeA", "nodeB"], rel
    assert rel["regained"] == ["nodeB"] and "not_answering" not in rel and rel["workers"] == 4, rel
    assert "restart 1 of 2 with 4 worker(s) on nodeA, nodeB (5 slot(s)), regained nodeB" in err, err[-3000:]


def test_a_host_down_at_the_relaunch_is_left_out_and_used_again_once_it_answers(tmp_path):
    """nodeB lost and down (its agent refuses it): the relaunch runs on nodeA alone (2 workers) and says
    nodeB does not answer. nodeB comes back; nodeA's daemon is then lost: the next relaunch reads the
    hostfile again, both hosts answer, and it runs 3 ranks on nodeA and 2 on nodeB (4 workers)."""
    total = 4000
    job, run_dir, down = _launch(tmp_path, total, restarts=3)
    with job as p:
        deadline = time.monotonic() + 260
        assert placed(p, {"nodeA": 3, "nodeB": 2}, deadline)
        wait_for("25 % of the rounds", lambda: metrics_rows(run_dir) >= total // 4, p, deadline)
        down.write_text("nodeB\n")
        assert kill_host(p.pid, "nodeB"), "no daemon of nodeB to kill"
        wait_for("the first relaunch", lambda: len(relaunches(run_dir)) == 1, p, deadline)
        alone = placed(p, {"nodeA": 3}, deadline)
        at = metrics_rows(run_dir)
        wait_for("rounds of the relaunch on nodeA", lambda: metrics_rows(run_dir) >= at + 200, p, deadline)
        down.unlink()  # nodeB answers again
        assert kill_host(p.pid, "nodeA"), "no daemon of nodeA to kill"
        wait_for("the second relaunch", lambda: len(relaunches(run_dir)) == 2, p, deadline)
        both = placed(p, {"nodeA": 3, "nodeB": 2}, deadline)
        err = ended(p, timeout=250)
    assert p.returncode == 0, err[-3000:]
    assert alone == {"nodeA": 3} and both == {"nodeA": 3, "nodeB": 2}
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["rounds"] == total, s
    assert s["workers"] == 4 and s["ranks"] == 5, "the last launch ran at the full width again"
    first, second = s["relaunches"]
    assert first["lost_hosts"] == ["nodeB"] and first["hosts"] == ["nodeA"] and first["workers"] == 2, first
    assert list(first["not_answering"]) == ["nodeB"] and "No route to host" in first["not_answering"]["nodeB"]
    assert first["regained"] == []
    assert second["lost_hosts"] == ["nodeA"] and second["lost_ranks"] == [0, 1, 2], second
    assert second["hosts_before"] == ["nodeA"] and second["hosts"] == ["nodeA", "nodeB"], second
    assert second["regained"] == ["nodeA", "nodeB"] and second["workers"] == 4, second
    assert "restart 1 of 3 with 2 worker(s) on nodeA (3 slot(s)); not answering: nodeB (exit 255: ssh:" in err
    assert "restart 2 of 3 with 4 worker(s) on nodeA, nodeB (5 slot(s)), regained nodeA, nodeB" in err
