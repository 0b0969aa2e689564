"""A user's data file under the launcher: an HDF5 file and a CSV file made with numpy (Gaussian blobs with labels
3, 7 and 42) train to within 1 point of scikit-learn's LogisticRegression on the same split; a bad file ends
every rank with one line and exit 2. Each job runs under a hard time limit (tests/mpirun.py)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from ftmpi.config import load_config
from ftmpi.storage.data import load_dataset
from tests.mpirun import needs_mpi, run_job
from tests.unit.test_userdata import blobs, write_csv

pytestmark = needs_mpi

CONFIG = """\
name: userdata
model: {{type: logreg, n_iterations: 300, batch_size: 64, seed: 0}}
optimizer: {{name: sgd, learning_rate: 0.1}}
executor: {{comm_period: 10, timeout: 10.0, startup_timeout: 60.0, checkpoint_every: 10}}
data: {{dataset: {kind}, path: {path}, test_fraction: 0.2}}
"""


def _config(tmp_path, kind: str, path) -> object:
    cfg = tmp_path / f"{kind}.yaml"
    cfg.write_text(CONFIG.format(kind=kind, path=path))
    return cfg


def _reference(cfg_path, env: dict) -> float:
    """scikit-learn's LogisticRegression (well converged) on the very split the run trains and tests on."""
    from sklearn.linear_model import LogisticRegression

    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        d = load_dataset(load_config(cfg_path, env={}).data, 0)
    model = LogisticRegression(max_iter=2000).fit(np.asarray(d.X_train), d.y_train)
    return float((model.predict(np.asarray(d.X_test)) == d.y_test).mean())


@pytest.mark.parametrize("kind", ["hdf5", "csv"])
def test_a_user_file_trains_to_within_a_point_of_scikit_learn(tmp_path, kind):
    X, y = blobs(n=6000, d=20)
    if kind == "hdf5":
        path = tmp_path / "blobs.h5"
        with h5py.File(path, "w") as f:
            f["X"], f["y"] = X, y
    else:
        path = write_csv(tmp_path / "blobs.csv", X, y)
    cfg = _config(tmp_path, kind, path)
    env = {"FTMPI_PREPARED": str(tmp_path / "prepared")}
    job = run_job(3, cfg, tmp_path / "run", env=env, limit=120)
    assert job.rc == 0, job.err[-3000:]
    s = job.summary
    ref = _reference(cfg, env)
    assert s["status"] == "completed" and s["dataset"] == path.name
    assert abs(s["final_test_acc"] - ref) <= 0.01, (s["final_test_acc"], ref)
    assert len(s["per_class_acc"]) == 3


def test_a_bad_file_is_one_line_and_exit_2_on_every_rank(tmp_path):
    X, y = blobs(n=200, d=4)
    X[17, 2] = np.nan
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["X"], f["y"], f["X_test"], f["y_test"] = X, y, X[:10], y[:10]
    job = run_job(2, _config(tmp_path, "hdf5", path), tmp_path / "run",
                  env={"FTMPI_PREPARED": str(tmp_path / "prepared")}, limit=60)
    assert job.rc == 2, job.err[-3000:]
    assert "Traceback" not in job.err and job.err.count("error") == 1, job.err
    assert f"error: {path}: array 'X' row 17 column 2 is nan; expected finite features" in job.err
    s = job.summary
    assert s["status"] == "failed" and s["exit_code"] == 2 and "row 17 column 2 is nan" in s["error"]


def test_a_deputy_that_takes_over_keeps_the_label_mapping(tmp_path):
    """Rank 0 killed: the deputy coordinates from the run dir's copy (shards/test.h5 carries the mapping) and
    its checkpoints keep the file's labels."""
    from ftmpi.storage.checkpoint import newest_valid

    X, y = blobs(n=3000, d=10)
    path = tmp_path / "blobs.h5"
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = X, y
    job = run_job(3, _config(tmp_path, "hdf5", path), tmp_path / "run", "--inject", "kill:0@10",
                  env={"FTMPI_PREPARED": str(tmp_path / "prepared")}, limit=120)
    assert job.rc == 0, job.err[-3000:]
    assert job.summary["coordinator"] != 0 and job.summary["status"] == "completed"
    _, snap, _ = newest_valid(tmp_path / "run")
    assert snap.labels.tolist() == [3, 7, 42] and snap.dataset == "blobs.h5"
