"""Bad input is one line naming what is wrong, in one process: the launcher's config as passed to the ranks,
the run name, the FTMPI_* variables, partition keys a training set cannot satisfy, a hostfile short of slots."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ftmpi.config import PASSED, config_to_dict, load_config, pass_on
from ftmpi.errors import EXIT_BAD_INPUT, ConfigError


class _Planted:
    """Unpickling this creates a file: proof that a payload was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_the_passed_config_is_never_unpickled(tmp_path):
    """FTMPI_RESOLVED_CONFIG comes from the environment: whatever it holds, loading a config runs none of it,
    and a value that is not the launcher's for these arguments is ignored (the file is read)."""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_iterations: 30\n")
    planted = tmp_path / "unpickled"
    for payload in (pickle.dumps((("any",), _Planted(str(planted)))).hex(),
                    pickle.dumps(_Planted(str(planted))).hex()):
        cfg = load_config(path, env={PASSED: payload})
        assert not planted.exists(), "the environment's payload was unpickled"
        assert cfg.model.n_iterations == 30


def test_a_passed_config_is_taken_only_for_its_own_identity_and_values_that_pass_their_checks(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_iterations: 30\nexecutor:\n  timeout: 7.0\n")
    over = ["faults=['slow:1@3:0.123456789', 'kill:2@4']", "optimizer.n_most_rep=50"]
    cfg = load_config(path, over, env={})
    value = pass_on(cfg, path, over, env={})
    assert load_config(path, over, env={PASSED: value}) == cfg
    forged = value.replace('"n_iterations":30', '"n_iterations":-5')  # same identity, a value no file may hold
    assert forged != value
    assert load_config(path, over, env={PASSED: forged}) == cfg  # read from the file instead
    other = value.replace('"n_iterations":30', '"n_iterations":31')
    assert load_config(path, over, env={PASSED: other}).model.n_iterations == 31  # a valid value: the launcher's
    assert load_config(path, over[:1], env={PASSED: other}).model.n_iterations == 30  # not made for these args
    assert config_to_dict(load_config(path, over, env={PASSED: value})) == config_to_dict(cfg)


@pytest.mark.parametrize("name", ["../x", "../../etc", "/abs/run", "a/b", "..", "."])
def test_a_run_name_that_leads_out_of_the_run_folder_is_refused(tmp_path, name):
    for kwargs in ({"overrides": [f"name={name!r}"], "env": {}}, {"env": {"FTMPI_NAME": repr(name)}}):
        with pytest.raises(ConfigError) as info:
            load_config(None, **kwargs)
        msg = str(info.value)
        assert "\n" not in msg and ": name: expected a plain name for the run dir" in msg, msg
    (tmp_path / "c.yaml").write_text(f"name: {name!r}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: name: expected a plain name"):
        load_config(tmp_path / "c.yaml", env={})


def test_a_run_name_from_the_file_name_is_checked_too(tmp_path):
    (tmp_path / "..yaml").write_text("model:\n  n_iterations: 30\n")  # its stem is "."
    with pytest.raises(ConfigError, match=r"\.\.yaml \(its file name\): name: expected a plain name"):
        load_config(tmp_path / "..yaml", env={})
    assert load_config(None, ["name=ok..fine"], env={}).run_dir == Path("runs/ok..fine")


@pytest.mark.parametrize("var,value,words", [
    ("FTMPI_JOB_TIMEOUT", "abc", "a number of seconds > 0"),
    ("FTMPI_JOB_TIMEOUT", "-1", "a number of seconds > 0"),
    ("FTMPI_START_TIMEOUT", "2m", "a number of seconds > 0"),
    ("FTMPI_START_TIMEOUT", "inf", "a number of seconds > 0"),
    ("FTMPI_NO_ULFM", "yes", "0 or 1"),
    ("FTMPI_DRY_RUN", "true", "0 or 1"),
    ("FTMPI_MPI_TRANSPORT", "ucx", "ob1 or default"),
    ("FTMPI_REQUEUE_SIGNALS", "SIGUSR1,USR2", "SIGTERM, SIGUSR1, SIGINT"),
    ("FTMPI_SHARED_DATA", "yes", "0 or 1 or auto"),
    ("FTMPI_TEST_SLOW", "checkpoint:soon", "KIND:SECONDS"),
])
def test_a_bad_ftmpi_variable_is_one_line_naming_it(var, value, words):
    from ftmpi.launch.environ import check_launch_env

    with pytest.raises(ConfigError) as info:
        check_launch_env({var: value})
    msg = str(info.value)
    assert msg == f"environment variable {var}={value!r}: expected {msg.split(': expected ', 1)[1]}"
    assert words in msg and "\n" not in msg and info.value.exit_code == EXIT_BAD_INPUT


def test_good_ftmpi_variables_pass_and_numbers_are_read():
    from ftmpi.launch.environ import check_launch_env, check_rank_env, seconds
    from ftmpi.launch.launcher import _start_limit

    env = {"FTMPI_JOB_TIMEOUT": "50", "FTMPI_START_TIMEOUT": "0.5", "FTMPI_NO_ULFM": "1", "FTMPI_DRY_RUN": "",
           "FTMPI_MPI_TRANSPORT": "default", "FTMPI_REQUEUE_SIGNALS": "SIGUSR1, SIGTERM", "FTMPI_SHARED_DATA": "0",
           "FTMPI_TEST_SLOW": "checkpoint:1.6,handoff:2"}
    check_launch_env(env)
    check_rank_env(env)
    assert seconds(env, "FTMPI_JOB_TIMEOUT", 3600.0) == 50.0 and seconds({}, "FTMPI_JOB_TIMEOUT", 3600.0) == 3600.0
    assert _start_limit(env) == 1.0 and _start_limit({}) == 120.0


def _labels(n_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes), per_class)


@pytest.mark.parametrize("n,workers,kwargs,key", [
    (_labels(4, 2), 9, {"kind": "iid"}, "data.partition: cannot give 9 workers a row each from the 8 training rows"),
    (_labels(4, 2), 9, {"kind": "contiguous"}, "data.partition: cannot give 9 workers"),
    (_labels(4, 2), 9, {"kind": "unbalanced"}, "data.partition: cannot give 9 workers"),
    (_labels(4, 2), 9, {"kind": "label-skew"}, "data.partition: cannot give 9 workers"),
    (_labels(4, 50), 2, {"kind": "label-skew", "classes_per_worker": 5}, "data.classes_per_worker: 5, but the training "
                                                                         "set holds only 4 classes"),
    (_labels(4, 50), 2, {"kind": "label-skew", "classes_per_worker": 1}, "data.classes_per_worker: 2 workers x 1 "
                                                                         "classes each cannot cover all 4 classes"),
    (_labels(8, 1), 9, {"kind": "label-skew", "classes_per_worker": 1}, "data.partition: cannot give 9 workers"),
    (_labels(8, 2)[:10], 5, {"kind": "label-skew", "classes_per_worker": 3}, "data.classes_per_worker: 1 of 5 workers "
                                                                             "would get no rows"),
    (_labels(4, 50), 3, {"kind": "unbalanced", "power": 0.0}, "data.power: expected a number > 0"),
    (_labels(4, 50), 3, {"kind": "label-skew", "alpha": -1.0}, "data.alpha: expected a number > 0"),
    (_labels(4, 50), 3, {"kind": "label-skew", "classes_per_worker": -1}, "data.classes_per_worker: expected an "
                                                                          "integer >= 0"),
])
def test_partition_keys_the_training_set_cannot_satisfy_are_a_config_error_naming_the_key(n, workers, kwargs, key):
    """What the coordinator's deal raises is a ConfigError (job.py: one line, exit 2 on every rank), still a
    ValueError for callers of the maths."""
    from ftmpi.core.partition import partition

    with pytest.raises(ConfigError) as info:
        partition(n, workers, seed=0, **kwargs)
    assert key in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.exit_code == EXIT_BAD_INPUT


def test_a_hostfile_short_of_slots_is_named_with_the_slots_offered_and_needed(tmp_path):
    from ftmpi.launch.hosts import Host, short_of_slots

    hosts = [Host("nodeA", 2), Host("nodeB", 1)]
    msg = short_of_slots(hosts, 5, f"hostfile {tmp_path / 'h'}")
    assert msg == (f"hostfile {tmp_path / 'h'} offers 3 slot(s) on 2 host(s), but the launch needs 5 (1 coordinator + "
                   "4 worker(s)): the hosts will run more ranks than they have slots")
    assert short_of_slots(hosts, 3, "x") is None and short_of_slots(None, 9, "x") is None


def test_the_launcher_refuses_a_bad_variable_before_anything_runs(tmp_path):
    """A real launcher process: one line naming the variable, exit 2, no traceback, no mpirun started."""
    import subprocess
    import sys

    config = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
    env = dict(os.environ, FTMPI_DRY_RUN="1", FTMPI_JOB_TIMEOUT="one hour")
    p = subprocess.run([sys.executable, "-m", "ftmpi", "launch", "-n", "2", str(config), "--run-dir",
                        str(tmp_path / "r")], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == "", p.stdout
    assert p.stderr == "ftmpi: error: environment variable FTMPI_JOB_TIMEOUT='one hour': expected a number of " \
                       "seconds > 0\n"
    assert not (tmp_path / "r").exists()
