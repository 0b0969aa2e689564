"""Config loading: defaults, per-key validation, precedence, legacy keys, faults, shipped configs."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ftmpi.config import Config, FaultSpec, config_to_dict, dump_config, load_config, parse_fault
from ftmpi.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(*args, **kwargs) -> str:
    kwargs.setdefault("env", NO_ENV)
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, "errors must be one line"
    return msg


def test_defaults():
    cfg = load_config(None, env=NO_ENV)
    assert cfg.name == "default" and cfg.source is None and cfg.warnings == () and cfg.faults == ()
    assert cfg.model.type == "logreg" and cfg.model.hidden == (128,) and cfg.model.n_iterations == 300
    assert cfg.model.batch_size == 128 and cfg.model.shuffle is True and cfg.model.seed == 0
    o = cfg.optimizer
    assert (o.name, o.learning_rate, o.mu_g, o.n_most_rep, o.rep_selection) == ("sgd", 0.05, 0.0, 0.05, "random")
    assert o.rep_weight == "classmix"  # measured best (benchmarks/results/handoff_value.md)
    assert (o.clip_norm, o.clip_val, o.momentum, o.beta1, o.beta2, o.eps) == (0, 0, 0, 0.9, 0.999, 1e-8)
    e = cfg.executor
    assert (e.comm_period, e.delta_switch, e.send_gradients, e.aggregate) == (10, 0.0, False, "uniform")
    assert (e.quantize, e.stochastic_rounding, e.timeout, e.startup_timeout) == (0, False, 10.0, 120.0)
    assert (e.failure_detector, e.remap, e.checkpoint_every, e.keep) == ("auto", "representative", 0, 3)
    assert (e.tensorboard, e.shared_folder, e.eval_every, e.scenario, e.progress) == (
        False, "runs/{name}", 1, "", True)
    assert e.target_accuracy is None  # off: every round of model.n_iterations runs
    d = cfg.data
    assert (d.dataset, d.path, d.partition, d.alpha, d.classes_per_worker, d.power) == (
        "fashion-mnist", None, "iid", 0.3, 0, 1.5)
    assert (d.n_samples, d.n_features, d.n_classes, d.test_fraction) == (4000, 20, 4, 0.2)
    assert cfg.run_dir == Path("runs/default")


def test_name_from_file_stem_and_run_dir(tmp_path):
    cfg = load_config(write(tmp_path, "model: {type: mlp}\n", "my_run.yaml"), env=NO_ENV)
    assert cfg.name == "my_run" and cfg.run_dir == Path("runs/my_run")
    assert cfg.source == str(tmp_path / "my_run.yaml")
    renamed = dataclasses.replace(cfg, name="other")
    assert renamed.run_dir == Path("runs/other")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "x"  # type: ignore[misc]


def test_empty_file_is_refused_and_empty_section_gives_defaults(tmp_path):
    # issue 14, item 14: an empty file used to run on the defaults without a word
    for text in ("", "\n  \n", "# only a comment\n"):
        path = write(tmp_path, text)
        msg = error_of(path)
        assert msg.startswith(f"{path}: the config file is empty") and "\n" not in msg
    assert load_config(write(tmp_path, "model:\n"), env=NO_ENV).model.batch_size == 128


BAD_VALUES = [
    ("model.type", "cnn"), ("model.hidden", "[0]"), ("model.hidden", "[1.5]"), ("model.hidden", "abc"),
    ("model.n_iterations", "0"), ("model.batch_size", "2.5"), ("model.shuffle", "1"), ("model.seed", "-1"),
    ("optimizer.name", "rmsprop"), ("optimizer.learning_rate", "0"), ("optimizer.learning_rate", "abc"),
    ("optimizer.mu_g", "-0.1"), ("optimizer.n_most_rep", "1.5"), ("optimizer.n_most_rep", "-1"),
    ("optimizer.n_most_rep", "1.0"), ("optimizer.rep_selection", "best"), ("optimizer.rep_weight", "2"),
    ("optimizer.clip_norm", "-1"),
    ("optimizer.clip_val", "x"), ("optimizer.momentum", "1"), ("optimizer.beta1", "1.0"),
    ("optimizer.beta2", "-0.5"), ("optimizer.eps", "0"), ("optimizer.learning_rate", ".nan"),
    ("executor.comm_period", "0"), ("executor.delta_switch", "-1"), ("executor.send_gradients", "yes please"),
    ("executor.aggregate", "median"), ("executor.quantize", "9"), ("executor.quantize", "-1"),
    ("executor.stochastic_rounding", "0"), ("executor.timeout", "0"), ("executor.timeout", "abc"),
    ("executor.startup_timeout", "-5"), ("executor.failure_detector", "heartbeat"),
    ("executor.remap", "some"),
    ("executor.checkpoint_every", "-1"), ("executor.keep", "0"), ("executor.tensorboard", "2"),
    ("executor.shared_folder", "''"), ("executor.eval_every", "0"), ("executor.scenario", "[1]"),
    ("executor.progress", "null"), ("executor.target_accuracy", "0"), ("executor.target_accuracy", "1.5"),
    ("executor.target_accuracy", "'high'"), ("executor.target_accuracy", "true"), ("data.dataset", "cifar"),
    ("data.path", "3"),
    ("data.partition", "noniid"),
    ("data.alpha", "0"), ("data.classes_per_worker", "-1"), ("data.power", "0"), ("data.n_samples", "9"),
    ("data.n_features", "0"), ("data.n_classes", "1"), ("data.test_fraction", "1"),
    ("data.test_fraction", "0"),
    ("name", "''"), ("name", "12"),
]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_every_key_is_validated(key, value):
    msg = error_of(None, [f"{key}={value}"])
    assert msg.startswith(f"--set: {key}: expected "), msg
    assert "got" in msg


def test_file_error_names_file_and_key(tmp_path):
    p = write(tmp_path, "executor:\n  timeout: abc\n")
    assert error_of(p) == f"{p}: executor.timeout: expected a number > 0, got 'abc'"


@pytest.mark.parametrize("key", ["model.batch_size", "model.n_iterations", "executor.quantize", "model.seed"])
def test_bool_is_not_an_int(key):
    assert "expected an integer" in error_of(None, [f"{key}=true"])


def test_bool_is_not_a_number():
    assert "got True" in error_of(None, ["executor.timeout=true"])


def test_ints_are_accepted_as_floats_and_floats_kept():
    overrides = ["executor.timeout=5", "optimizer.n_most_rep=0.25", "optimizer.eps=1e-6"]
    cfg = load_config(None, overrides, env=NO_ENV)
    assert cfg.executor.timeout == 5.0 and isinstance(cfg.executor.timeout, float)
    assert cfg.optimizer.n_most_rep == 0.25 and cfg.optimizer.eps == 1e-6
    assert load_config(None, ["optimizer.n_most_rep=0"], env=NO_ENV).optimizer.n_most_rep == 0
    for given, kept in (("1", 1.0), ("0.84", 0.84), ("null", None)):
        target = load_config(None, [f"executor.target_accuracy={given}"], env=NO_ENV).executor.target_accuracy
        assert target == kept and (kept is None or isinstance(target, float))


@pytest.mark.parametrize("text,fragment", [
    ("model:\n  batchsize: 3\n", "model.batchsize: unknown key (did you mean 'model.batch_size'?)"),
    ("executor:\n  timout: 3\n", "executor.timout: unknown key (did you mean 'executor.timeout'?)"),
    ("model:\n  learning_rate: 0.1\n",
     "model.learning_rate: unknown key (did you mean 'optimizer.learning_rate'?)"),
    ("optimiser:\n  name: sgd\n", "optimiser: unknown section (did you mean 'optimizer'?)"),
    ("model:\n  zzzzzz: 1\n", "model.zzzzzz: unknown key"),
])
def test_unknown_keys_are_named_with_a_suggestion(tmp_path, text, fragment):
    p = write(tmp_path, text)
    assert error_of(p) == f"{p}: {fragment}"


def test_unknown_override_key():
    assert error_of(None, ["model.lr=0.1"]) == (
        "--set: model.lr: unknown key (did you mean 'optimizer.learning_rate'?)")


def test_missing_file_and_yaml_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert str(missing) in error_of(missing) and "not found" in error_of(missing)
    p = write(tmp_path, "model:\n  type: logreg\n  hidden: [1, 2\n")
    msg = error_of(p)
    assert msg.startswith(f"{p}:") and "YAML syntax error" in msg
    assert msg.split(":")[1].isdigit(), "the line number is reported"
    assert "duplicate key 'type'" in error_of(write(tmp_path, "model:\n  type: mlp\n  type: logreg\n"))
    assert "top level" in error_of(write(tmp_path, "- a\n- b\n"))
    assert "model: expected a mapping" in error_of(write(tmp_path, "model: 3\n"))


def test_mlp_needs_a_hidden_layer():
    assert "model.hidden" in error_of(None, ["model.type=mlp", "model.hidden=[]"])
    cfg = load_config(None, ["model.type=mlp", "model.hidden=[64, 32]"], env=NO_ENV)
    assert cfg.model.hidden == (64, 32)
    assert load_config(None, ["model.hidden=16"], env=NO_ENV).model.hidden == (16,)


def test_the_handoff_rules_and_their_combinations():
    for sel in ("random", "coreset", "loss", "stratified"):
        for rule in ("one", "shard", "damped", "sqrt", "classmix"):
            o = load_config(None, [f"optimizer.rep_selection={sel}", f"optimizer.rep_weight={rule}"], env=NO_ENV)
            assert (o.optimizer.rep_selection, o.optimizer.rep_weight) == (sel, rule)
    assert load_config(None, ["optimizer.rep_weight=shard-legacy"], env=NO_ENV).optimizer.rep_weight == "shard-legacy"
    msg = error_of(None, ["optimizer.rep_selection=coreset", "optimizer.rep_weight=shard-legacy"])
    assert msg.startswith("--set: optimizer.rep_weight:") and "rep_selection: random" in msg
    assert "optimizer.rep_selection: expected one of random, coreset, loss, stratified" in error_of(
        None, ["optimizer.rep_selection=kcenter"])


def test_override_parsing_errors():
    assert "expected section.key=value" in error_of(None, ["model.type"])
    assert "--set model.hidden" in error_of(None, ["model.hidden=[1,"])


def test_precedence_override_file_env_default(tmp_path):
    p = write(tmp_path, "executor:\n  timeout: 3\n  comm_period: 4\n")
    env = {"FTMPI_EXECUTOR_TIMEOUT": "7", "FTMPI_EXECUTOR_KEEP": "9", "FTMPI_EXECUTOR_COMM_PERIOD": "8",
           "FTMPI_MODEL_HIDDEN": "[32, 16]"}
    cfg = load_config(p, ["executor.comm_period=5"], env=env)
    assert cfg.executor.comm_period == 5          # --set beats file and env
    assert cfg.executor.timeout == 3.0            # file beats env
    assert cfg.executor.keep == 9                 # env beats default
    assert cfg.model.hidden == (32, 16)           # env lists are YAML
    assert cfg.executor.eval_every == 1           # default
    assert load_config(None, ["executor.keep=2", "executor.keep=4"], env=NO_ENV).executor.keep == 4


def test_env_is_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("FTMPI_EXECUTOR_TIMEOUT", "5")
    monkeypatch.setenv("FTMPI_NAME", "from-env")
    cfg = load_config(None)
    assert cfg.executor.timeout == 5.0 and cfg.name == "from-env"


def test_env_error_names_the_variable():
    msg = error_of(None, env={"FTMPI_EXECUTOR_TIMEOUT": "abc"})
    assert msg == "FTMPI_EXECUTOR_TIMEOUT: executor.timeout: expected a number > 0, got 'abc'"


def test_shared_folder_substitutes_name():
    cfg = load_config(None, ["name=exp1", "executor.shared_folder=/tmp/ft/{name}/out"], env=NO_ENV)
    assert cfg.run_dir == Path("/tmp/ft/exp1/out")


def test_legacy_keys_are_mapped_with_one_warning_each(tmp_path):
    p = write(tmp_path, "executor:\n  strategy: mw\n  aggregate_mode: 2\n  remap: 1\n  scenario: 2\n"
                        "optimizer:\n  clip_norm: 1.5\n  clip_val: 0.5\n")
    cfg = load_config(p, env=NO_ENV)
    assert cfg.executor.aggregate == "loss" and cfg.executor.remap == "full" and cfg.executor.scenario == "2"
    assert (cfg.optimizer.clip_norm, cfg.optimizer.clip_val) == (1.5, 0.5)
    assert len(cfg.warnings) == 4
    for key in ("executor.strategy", "executor.aggregate_mode", "executor.remap", "executor.scenario"):
        assert sum(w.startswith(f"{p}: {key}: ") for w in cfg.warnings) == 1, key
    modes = {0: "uniform", 1: "samples", 2: "loss"}
    for mode, name in modes.items():
        assert load_config(None, [f"executor.aggregate_mode={mode}"], env=NO_ENV).executor.aggregate == name
    assert load_config(None, ["executor.remap=0"], env=NO_ENV).executor.remap == "representative"


def test_legacy_errors_and_conflicts(tmp_path):
    assert "executor.strategy: expected 'mw'" in error_of(None, ["executor.strategy=ps"])
    assert "executor.aggregate_mode: expected 0, 1 or 2" in error_of(None, ["executor.aggregate_mode=3"])
    assert "executor.aggregate_mode" in error_of(None, ["executor.aggregate_mode=true"])
    assert "executor.remap" in error_of(None, ["executor.remap=2"])
    p = write(tmp_path, "executor:\n  aggregate_mode: 1\n  aggregate: loss\n")
    msg = error_of(p)
    assert msg.startswith(f"{p}: executor.aggregate_mode") and "'loss'" in msg
    same = write(tmp_path, "executor:\n  aggregate_mode: 1\n  aggregate: samples\n", "same.yaml")
    assert load_config(same, env=NO_ENV).executor.aggregate == "samples"
    # different sources do not conflict: the override simply wins
    assert load_config(p.with_name("same.yaml"), ["executor.aggregate=uniform"],
                       env=NO_ENV).executor.aggregate == "uniform"


def test_parse_fault():
    assert parse_fault("kill:1@3") == FaultSpec("kill", 1, 3)
    assert parse_fault(" exit:2@0 ") == FaultSpec("exit", 2, 0, 0.0)
    assert parse_fault("hang:4@10").kind == "hang"
    assert parse_fault("slow:2@5:0.5") == FaultSpec("slow", 2, 5, 0.5)
    assert str(parse_fault("slow:2@5:0.5")) == "slow:2@5:0.5" and str(parse_fault("kill:1@3")) == "kill:1@3"


@pytest.mark.parametrize("spec", ["kil:1@3", "pause:1@2", "kill:1", "kill:-1@3", "kill:1@-2",
                                  "kill:1@3:2",
                                  "slow:1@3", "slow:1@3:0", "slow:1@3:abc", "slow:1@3:inf", "", "kill:a@b"])
def test_parse_fault_errors(spec):
    with pytest.raises(ConfigError, match="fault"):
        parse_fault(spec)


def test_faults_in_config(tmp_path):
    p = write(tmp_path, "faults:\n  - kill:1@3\n  - slow:2@0:1.5\n")
    assert load_config(p, env=NO_ENV).faults == (FaultSpec("kill", 1, 3), FaultSpec("slow", 2, 0, 1.5))
    # a coordinator that stalls and wakes up is a case of its own since failover (issue 12): allowed on rank 0
    p = write(tmp_path, "faults:\n  - kill:1@3\n  - pause:0@3:2\n  - slow:0@3:1\n")
    assert load_config(p, env=NO_ENV).faults[1:] == (FaultSpec("pause", 0, 3, 2.0), FaultSpec("slow", 0, 3, 1.0))
    p = write(tmp_path, "faults:\n  - kill:0@3\n  - pause:2@1:2.5\n")
    assert load_config(p, env=NO_ENV).faults == (FaultSpec("kill", 0, 3), FaultSpec("pause", 2, 1, 2.5))
    assert "faults: expected a list" in error_of(None, ["faults=3"])
    env = {"FTMPI_FAULTS": "kill:1@3, hang:2@4"}
    assert [str(f) for f in load_config(None, env=env).faults] == ["kill:1@3", "hang:2@4"]


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["model.type=mlp", "model.hidden=[8,4]", "optimizer.n_most_rep=0.1",
                             "faults=['kill:1@2', 'slow:2@1:0.25']", "name=rt", "data.path=/data"],
                      env=NO_ENV)
    out = dump_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(out, env=NO_ENV)
    assert dataclasses.replace(again, source=None) == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    assert config_to_dict(cfg)["model"]["hidden"] == [8, 4]
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]


def test_config_is_replace_friendly():
    cfg = load_config(None, env=NO_ENV)
    cfg2 = dataclasses.replace(cfg, executor=dataclasses.replace(cfg.executor, timeout=1.0))
    assert isinstance(cfg2, Config) and cfg2.executor.timeout == 1.0 and cfg.executor.timeout == 10.0


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"smoke.yaml", "fashion_mnist.yaml", "fashion_mnist_mlp.yaml", "mnist.yaml",
            "occupancy.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    cfg = load_config(path, env=NO_ENV)
    assert cfg.warnings == ()
    assert cfg.model.n_iterations >= cfg.executor.comm_period


_RANK = """
import json, sys
from ftmpi.config import config_to_dict, load_config
cfg = load_config(sys.argv[1], sys.argv[2:])
print(json.dumps({"yaml": "yaml" in sys.modules, "cfg": config_to_dict(cfg)}, default=str))
"""


def _as_rank(env: dict, path: Path, *overrides: str) -> dict:
    import json
    import os
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", _RANK, str(path), *overrides], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=60, check=True)
    return json.loads(p.stdout)


def test_a_rank_takes_the_launchers_checked_config_and_reads_no_yaml(tmp_path):
    """The launcher exports the config it checked (ftmpi.launch.launcher.parse -> pass_on); a rank started with the same
    file, overrides and FTMPI_* keys takes it without importing yaml; anything different is read afresh."""
    import os

    from ftmpi.config import PASSED
    from ftmpi.launch.launcher import parse

    path = write(tmp_path, "model:\n  n_iterations: 30\nexecutor:\n  timeout: 7.0\n")
    opts = parse(["-n", "2", str(path), "--set", "optimizer.learning_rate=0.5", "--run-dir", str(tmp_path / "r")])
    env = {PASSED: opts.config_passed}
    want = config_to_dict(load_config(path, ["optimizer.learning_rate=0.5"]))
    got = _as_rank(env, path, "optimizer.learning_rate=0.5")
    assert got == {"yaml": False, "cfg": want}
    other = _as_rank(env, path, "optimizer.learning_rate=0.25")  # other overrides: read, and they count
    assert other["yaml"] and other["cfg"]["optimizer"]["learning_rate"] == 0.25
    keyed = _as_rank({**env, "FTMPI_EXECUTOR_COMM_PERIOD": "3"}, path, "optimizer.learning_rate=0.5")
    assert keyed["yaml"] and keyed["cfg"]["executor"]["comm_period"] == 3
    assert _as_rank({PASSED: "not hex"}, path, "optimizer.learning_rate=0.5") == {"yaml": True, "cfg": want}
    path.write_text("model:\n  n_iterations: 31\nexecutor:\n  timeout: 7.0\n")  # edited since the launcher read it
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    edited = _as_rank(env, path, "optimizer.learning_rate=0.5")
    assert edited["yaml"] and edited["cfg"]["model"]["n_iterations"] == 31
