"""``executor.spares: N`` in the launcher (issue 24): ``ftmpi launch -n W`` and ``jobs/local.sh W`` start 1 + W + N
ranks (FTMPI_DRY_RUN=1 prints the mpirun command instead of running it), a bad value is one line and exit 2,
the slots check and the "every rank left" count take the spares in; and the relaunch's probe of the hosts
(``hosts.answering``) with plain commands standing in for mpirun. No MPI is started."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ftmpi.launch.hosts import Host, answering, ranks_on, short_of_slots
from ftmpi.launch.launcher import Launcher, parse
from ftmpi.launch.mpicmd import probe
from ftmpi.launch.record import note_left

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _dry(*args: str, tmp: Path, local: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, FTMPI_DRY_RUN="1", PYTHON=sys.executable, FTMPI_JOB_TIMEOUT="60")
    e.pop("FTMPI_EXECUTOR_SPARES", None)
    e.update(env or {})
    if local:
        cmd = ["bash", str(ROOT / "jobs" / "local.sh"), *args]
    else:
        cmd = [sys.executable, "-m", "ftmpi", "launch", *args]
    return subprocess.run([*cmd, "--run-dir", str(tmp / "r")], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=120)


def _ranks(out: str) -> int:
    (line,) = [ln for ln in out.splitlines() if " -m ftmpi train " in ln]
    return int(re.search(r" -n (\d+) ", line).group(1))


def _spares_config(tmp: Path, n: int) -> Path:
    cfg = tmp / "spares.yaml"
    cfg.write_text(SMOKE.read_text().replace("executor:\n", f"executor:\n  spares: {n}\n", 1))
    return cfg


def test_spares_from_set_widen_the_mpirun_command(tmp_path):
    assert _ranks(_dry("-n", "4", str(SMOKE), tmp=tmp_path).stdout) == 5
    p = _dry("-n", "4", str(SMOKE), "--set", "executor.spares=1", tmp=tmp_path)
    assert p.returncode == 0, p.stderr
    assert _ranks(p.stdout) == 6


def test_spares_from_the_config_file_and_the_environment(tmp_path):
    cfg = _spares_config(tmp_path, 1)
    p = _dry("-n", "4", str(cfg), tmp=tmp_path)
    assert p.returncode == 0 and _ranks(p.stdout) == 6, p.stderr
    p = _dry("-n", "4", str(cfg), "--set", "executor.spares=3", tmp=tmp_path)  # --set over the file
    assert _ranks(p.stdout) == 8
    p = _dry("-n", "2", str(SMOKE), tmp=tmp_path, env={"FTMPI_EXECUTOR_SPARES": "2"})
    assert _ranks(p.stdout) == 5


def test_jobs_local_sh_runs_one_plus_w_plus_n_ranks(tmp_path):
    p = _dry("4", str(SMOKE), "--set", "executor.spares=1", tmp=tmp_path, local=True)
    assert p.returncode == 0, p.stderr
    assert _ranks(p.stdout) == 6


@pytest.mark.parametrize("value, said", [("-1", "got -1"), ("two", "got 'two'"), ("1.5", "got 1.5")])
def test_a_bad_spares_value_is_one_line_and_exit_2(tmp_path, value, said):
    for local in (False, True):
        width = ["4"] if local else ["-n", "4"]
        p = _dry(*width, str(SMOKE), "--set", f"executor.spares={value}", tmp=tmp_path, local=local)
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert p.stdout == ""  # nothing launched
        (line,) = p.stderr.strip().splitlines()
        assert "executor.spares" in line and "integer >= 0" in line and said in line, line


def test_the_slots_check_counts_the_spares(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("nodeA slots=3\nnodeB slots=2\n")
    p = _dry("-n", "4", str(SMOKE), "--hostfile", str(hostfile), tmp=tmp_path)
    assert p.returncode == 0 and "slot" not in p.stderr, p.stderr  # 5 ranks on 5 slots
    p = _dry("-n", "4", str(SMOKE), "--hostfile", str(hostfile), "--set", "executor.spares=1", tmp=tmp_path)
    assert p.returncode == 0 and _ranks(p.stdout) == 6
    assert "offers 5 slot(s) on 2 host(s), but the launch needs 6 (1 coordinator + 4 worker(s) + 1 spare(s))" \
        in p.stderr, p.stderr
    assert short_of_slots([Host("a", 6)], 6, "x", spares=1) is None
    assert ranks_on([Host("a", 3), Host("b", 3)], 6) == {"a": [0, 1, 2], "b": [3, 4, 5]}


def test_usage_names_the_spares(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ftmpi", "launch", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert "executor.spares" in p.stdout and "W+1..W+N" in p.stdout
    p = subprocess.run(["bash", str(ROOT / "jobs" / "local.sh")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "executor.spares" in p.stderr


def test_options_carry_the_spares(tmp_path):
    o = parse(["-n", "3", str(SMOKE), "--set", "executor.spares=2", "--run-dir", str(tmp_path / "r")])
    assert (o.workers, o.spares, o.ranks(), o.ranks(1)) == (3, 2, 6, 4)


def test_every_rank_left_counts_workers_and_spares(tmp_path):
    """The launcher ends a job whose coordinator is gone once every worker *and* spare said it left
    (each writes run_dir/left/rank-N.json); records of an earlier launch of the same launcher do not count."""
    o = parse(["-n", "2", str(SMOKE), "--set", "executor.spares=1", "--run-dir", str(tmp_path / "r")])
    o.run_dir.mkdir(parents=True)
    lr = Launcher(o, env={"FTMPI_LAUNCH_ID": "L1"})
    note_left(o.run_dir, 1, 4, "coordinator lost", "L1")
    note_left(o.run_dir, 2, 4, "coordinator lost", "L1")
    note_left(o.run_dir, 9, 4, "coordinator lost", "another launch")
    assert not lr._all_left(1.0), "2 workers left, the spare (rank 3) has not"
    note_left(o.run_dir, 3, 4, "coordinator lost", "L1")
    assert lr._all_left(2.0)
    lr._forget_left()  # before the next launch of this launcher
    assert not lr._all_left(3.0)
    assert (o.run_dir / "left" / "rank-0009.json").exists(), "another launch's record is not ours to drop"


def test_probe_says_which_hosts_answer_with_a_deadline():
    """``answering`` runs one command per host at once: exit 0 answers; a failure says why in one line; a hang
    is ended at the limit; a command that cannot be started tells nothing (every host kept)."""
    hosts = [Host("up", 2), Host("down", 1), Host("hung", 1)]
    cmds = {"up": ["true"], "down": ["bash", "-c", "echo 'ssh: connect to host down: No route to host' >&2; exit 255"],
            "hung": ["sleep", "60"]}
    up, why = answering(hosts, lambda h: cmds[h], os.environ, limit=1.0, tries=1)
    assert up == [Host("up", 2)]
    assert why == {"down": "exit 255: ssh: connect to host down: No route to host", "hung": "no answer within 1s"}
    up, why = answering(hosts, lambda h: ["/nonexistent/mpirun"], os.environ, limit=1.0)
    assert up == hosts and why == {}


def test_probe_tries_a_failed_host_again(tmp_path):
    """A host whose first probe fails (mpirun's start can fail under load) is tried once more."""
    flag = tmp_path / "once"
    script = f"if [ -e {flag} ]; then exit 0; else touch {flag}; exit 1; fi"
    up, why = answering([Host("a", 1)], lambda h: ["bash", "-c", script], os.environ, limit=10.0)
    assert up == [Host("a", 1)] and why == {}


def test_the_probe_starts_true_on_one_host_the_way_the_job_does():
    agent = ["--mca", "plm_rsh_agent", "/x/agent.sh"]
    cmd = probe("openmpi", "mpirun", "nodeB", agent)
    assert cmd[0] == "mpirun" and cmd[-3:] == ["-n", "1", "true"] and "nodeB:1" in cmd and agent[2] in cmd
    assert probe("mpich", "mpiexec", "nodeB", []) == ["mpiexec", "-n", "1", "-hosts", "nodeB", "true"]


def test_a_relaunch_reads_the_hostfile_again_and_keeps_every_host_that_answers(tmp_path):
    """``Launcher._regain`` with a stand-in mpirun that fails (like ssh) for the hosts named in a file: the
    hostfile edited since the launch is what counts, a lost host that answers is regained, one that does not
    is left out and named, and a hostfile that no longer reads falls back to the hosts of the launch."""
    down = tmp_path / "down"
    fake = tmp_path / "mpirun"
    fake.write_text("#!/bin/bash\nwhile [ $# -gt 0 ]; do [ \"$1\" = --host ] && host=${2%%:*}; shift; done\n"
                    f"grep -qx \"$host\" {down} 2>/dev/null && {{ echo \"ssh: connect to host $host: No route to host\""
                    " >&2; exit 255; }\nexit 0\n")
    fake.chmod(0o755)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("nodeA slots=3\nnodeB slots=2\n")
    o = parse(["-n", "4", str(SMOKE), "--hostfile", str(hostfile), "--run-dir", str(tmp_path / "r")])
    lr = Launcher(o, env=dict(os.environ))
    before = [Host("nodeA", 3)]  # the launch that ended ran on nodeA alone
    hostfile.write_text("nodeA slots=3\nnodeB slots=2\nnodeC slots=4\n")
    down.write_text("nodeC\n")
    rec: dict = {}
    hosts, words = lr._regain("openmpi", str(fake), before, ["nodeA"], rec)
    assert hosts == [Host("nodeA", 3), Host("nodeB", 2)]
    assert rec["regained"] == ["nodeA", "nodeB"]  # nodeA lost and answering again; nodeB not in that launch
    assert rec["not_answering"] == {"nodeC": "exit 255: ssh: connect to host nodeC: No route to host"}
    assert words == ("nodeA, nodeB (5 slot(s)), regained nodeA, nodeB; not answering: nodeC (exit 255: ssh: connect "
                     "to host nodeC: No route to host)")
    hostfile.write_text("nodeA slots=x\n")  # edited badly: the hosts of the launch that ended are probed
    rec = {}
    hosts, words = lr._regain("openmpi", str(fake), before, [], rec)
    assert hosts == before and rec == {"regained": []} and words == "nodeA (3 slot(s))"
