"""The deputy on another host than the coordinator (two simulated hosts, see tests/mpi/test_hosts.py): rank 0 and
rank 1 share nodeA, ranks 2 and 3 are on nodeB, so rank 2 is named the deputy, not rank 1 (a lost node
then does not take the coordinator and its deputy together). Rank 0 SIGKILLed: rank 2 takes over."""
from __future__ import annotations

import json

import pytest

from tests.mpirun import ROOT, needs_mpi, run_launch

from .test_hosts import AGENT, why_no_hosts

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"


def test_the_deputy_is_on_another_host_and_takes_over(tmp_path):
    why = why_no_hosts()
    if why:
        pytest.skip(why)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("nodeA slots=2\nnodeB slots=2\n")
    run_dir = tmp_path / "r"
    p = run_launch("-n", "3", str(SMOKE), "--hostfile", str(hostfile), "--quiet", "--run-dir", str(run_dir),
                   "--inject", "kill:0@8", "--set", "executor.timeout=2", "--set", "executor.remap=full",
                   env={"FTMPI_MPIRUN_ARGS": f"--mca plm_rsh_agent {AGENT}"}, limit=120)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["coordinator"] == 2, s.get("coordinator_changes")
    (c,) = s["coordinator_changes"]
    assert (c["lost"], c["new"], c["how"]) == (0, 2, "ulfm")
    assert s["coverage"] == 1.0 and s["alive_workers"] == 3 and s["iterations"] == 200
