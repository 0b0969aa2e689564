"""Plug-in models under the launcher: a model file outside the package (the README's example, copied into a
folder of the user's) trains with a worker killed, completes, and its checkpoint holds the model; a resume with
other options is refused; a model that breaks the contract ends every rank with one line and exit 2 before any
worker trains. Each job runs under a hard time limit (tests/mpirun.py)."""
from __future__ import annotations

import json
import shutil

from ftmpi.observe.timeline import read as read_timeline
from tests.mpirun import ROOT, needs_mpi, run_launch

pytestmark = needs_mpi

CONFIG = """\
name: mine
model:
  type: my_model.py:TinyMLP
  options: {hidden: 16}
  n_iterations: 150
  batch_size: 32
optimizer:
  name: adam
  learning_rate: 0.01
executor:
  comm_period: 10
  timeout: 10.0
  checkpoint_every: 5
data:
  dataset: synthetic
  n_samples: 3000
  n_features: 12
  n_classes: 3
"""


def users_folder(tmp_path, model_extra: str = ""):
    """A folder of the user's, outside the checkout: the README's model file and a config naming it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "my_model.py").write_text((ROOT / "examples" / "tiny_mlp.py").read_text() + model_extra)
    (home / "mine.yaml").write_text(CONFIG)
    return home


def test_a_users_model_file_trains_through_a_kill_and_its_checkpoint_holds_it(tmp_path):
    from ftmpi.model.plugin import load
    from ftmpi.storage.checkpoint import newest_valid

    home = users_folder(tmp_path)
    p = run_launch("-n", "4", "mine.yaml", "--quiet", "--inject", "kill:2@6", cwd=home, limit=120)
    assert p.returncode == 0, p.stderr[-3000:]
    run = home / "runs" / "mine"
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["rounds"] == 15
    assert [(f["rank"], f["round"]) for f in s["failures"]] == [(2, 6)] and s["points_handed"] > 0
    assert s["final_test_acc"] > 0.6  # three separable blobs: far above chance (1/3)
    path, snap, _ = newest_valid(run)
    assert path.name == "round-000015.h5"
    spec = f"{home / 'my_model.py'}:TinyMLP"
    assert json.loads(snap.model) == {"type": spec, "options": {"hidden": 16}}
    assert snap.config["model"]["type"] == spec and snap.sizes.tolist() == [12, 3]
    # the checkpoint's parameters are the model's: the user's class reproduces the final accuracy
    from ftmpi.config import load_config
    from ftmpi.storage.data import load_dataset

    cfg = load_config(home / "mine.yaml", env={})
    d = load_dataset(cfg.data, cfg.model.seed)
    model = load(spec, {"hidden": 16}, 12, 3)
    assert snap.params.shape == (model.n_params,) == (12 * 16 + 16 + 16 * 3 + 3,)
    assert abs(model.evaluate(snap.params, d.X_test, d.y_test, 3)[0] - s["final_test_acc"]) < 1e-6

    # resuming with other options is refused in one line, before anything in the run dir changes
    before = sorted(q.name for q in (run / "ckpt").iterdir())
    summary_before = (run / "summary.json").read_text()
    p = run_launch("-n", "2", "mine.yaml", "--quiet", "--resume", str(run), "--set", "model.options={hidden: 8}",
                   cwd=home, limit=60)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and p.stderr.count("error") == 1, p.stderr
    assert "model.options={'hidden': 16}" in p.stderr and "{'hidden': 8}" in p.stderr, p.stderr
    assert sorted(q.name for q in (run / "ckpt").iterdir()) == before
    assert (run / "summary.json").read_text() == summary_before, "the finished run's summary is kept"


def test_a_model_that_breaks_the_contract_ends_every_rank_with_one_line_before_training(tmp_path):
    home = users_folder(tmp_path, """

class Broken(TinyMLP):
    def init(self, seed):
        return super().init(seed).astype(np.float64)
""")
    (home / "mine.yaml").write_text(CONFIG.replace("TinyMLP", "Broken"))
    timeline = tmp_path / "timeline.txt"
    p = run_launch("-n", "3", "mine.yaml", "--quiet", cwd=home, limit=60, env={"FTMPI_TIMELINE": str(timeline)})
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and p.stderr.count("error") == 1, p.stderr
    assert p.stderr.count("\n") == 1, p.stderr
    assert (f"ftmpi: rank 0: error: model.type {home / 'my_model.py'}:Broken: Broken.init(seed) returned float64 "
            "(259,); expected a float32 vector of shape (n_params,) = (259,)") in p.stderr
    phases: dict[str, list[str]] = {}
    for _, who, phase, _ in read_timeline(timeline):
        phases.setdefault(who, []).append(phase)
    assert set(phases) == {"L", "0", "1", "2", "3"}
    for rank in ("0", "1", "2", "3"):  # every rank ended (exit 2: rank 0 told the workers its code) ...
        assert phases[rank][-1] == "exit", phases
    for rank in ("1", "2", "3"):  # ... and no worker received a shard or trained a step
        assert "shard" not in phases[rank] and "first-reply" not in phases[rank], phases
    s = json.loads((home / "runs" / "mine" / "summary.json").read_text())
    assert s["status"] == "failed" and s["exit_code"] == 2 and "Broken.init(seed) returned float64" in s["error"]
    assert not (home / "runs" / "mine" / "ckpt").exists() or not any((home / "runs" / "mine" / "ckpt").iterdir())
    shutil.rmtree(home / "runs")
    # a model file that does not import: the same, naming the file and the error
    (home / "my_model.py").write_text("import numpy as np\nimport no_such_module\n")
    p = run_launch("-n", "2", "mine.yaml", "--quiet", cwd=home, limit=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert (f"model.type {home / 'my_model.py'}:Broken: importing {home / 'my_model.py'} raised "
            "ModuleNotFoundError: No module named 'no_such_module'") in p.stderr
