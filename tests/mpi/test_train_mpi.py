"""Real mpirun runs of the trainer (issue 2): 3 and 5 ranks, quantization, determinism, bad input."""
from __future__ import annotations

import pytest
import yaml

from ftmpi.observe.timeline import read as read_timeline
from tests.mpirun import ROOT, needs_mpi, run_job

pytestmark = [pytest.mark.mpi, needs_mpi]
SMOKE = ROOT / "configs" / "smoke.yaml"


def test_three_ranks_train_and_write_outputs(tmp_path):
    job = run_job(2, SMOKE, tmp_path / "run")
    assert job.rc == 0, job.err
    s = job.summary
    assert s["status"] == "completed" and s["exit_code"] == 0
    assert s["workers"] == 2 and s["alive_workers"] == 2 and s["failures"] == []
    assert s["final_test_acc"] > 0.75  # 4 synthetic classes: chance is 0.25
    rows = job.metrics()
    assert len(rows) == s["rounds"] == 20
    assert [int(r["round"]) for r in rows] == list(range(20))
    assert float(rows[-1]["test_acc"]) == pytest.approx(s["final_test_acc"])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert int(rows[-1]["bytes_sent"]) > 0 and int(rows[-1]["bytes_recv"]) > 0
    on_wire = int(rows[-1]["bytes_sent"]) + int(rows[-1]["bytes_recv"])
    assert on_wire <= s["bytes_total"] < on_wire + 2000  # + the stop/bye messages
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["executor"]["comm_period"] == 10 and resolved["data"]["dataset"] == "synthetic"
    assert s["coverage"] == 1.0
    assert s["stopped_by"] == "rounds" and s["target_accuracy"] is None and s["target_reached"] is None


def test_target_accuracy_stops_the_run_once_an_evaluated_round_reaches_it(tmp_path):
    """executor.target_accuracy: the rounds end after the round during which rank 0 evaluated (one round late,
    while the next trained) the first model at or above the target; summary.json says why and when, and the
    run ends on that model (final accuracy and final checkpoint), not on the one trained one round later."""
    from ftmpi.config import load_config
    from ftmpi.model.models import Model
    from ftmpi.storage.checkpoint import newest_valid
    from ftmpi.storage.data import load_dataset

    timeline = tmp_path / "timeline.txt"
    job = run_job(2, SMOKE, tmp_path / "t", "--set", "executor.target_accuracy=0.8",
                  "--set", "executor.checkpoint_every=0", env={"FTMPI_TIMELINE": str(timeline)}, limit=60)
    assert job.rc == 0, job.err
    s = job.summary
    rows = job.metrics()
    accs = [float(r["test_acc"]) for r in rows]
    first = next(i for i, a in enumerate(accs) if a >= 0.8)
    assert s["status"] == "completed" and s["exit_code"] == 0 and s["stopped_by"] == "target_accuracy"
    assert s["target_accuracy"] == 0.8
    assert s["target_reached"]["round"] == first
    assert s["target_reached"]["test_acc"] == pytest.approx(accs[first], rel=1e-5)
    # metrics.csv keeps 6 significant digits
    assert s["target_reached"]["wall_seconds"] == pytest.approx(float(rows[first]["wall"]), rel=1e-5)
    assert s["rounds"] == len(rows) == first + 2 < 20  # the round it was evaluated in, then stop
    assert s["iterations"] == 10 * s["rounds"]
    # the run ends on the model that reached the target: the summary's accuracy and the final checkpoint's
    # model are those of round `first` (the last row keeps the accuracy of the round trained meanwhile)
    assert s["final_test_acc"] == s["target_reached"]["test_acc"] >= 0.8
    cfg = load_config(SMOKE)
    d = load_dataset(cfg.data, cfg.model.seed)
    model = Model.build(cfg.model.type, cfg.model.hidden, d.X_train.shape[1], d.n_classes)
    params = newest_valid(tmp_path / "t")[1].params
    assert model.evaluate(params, d.X_test, d.y_test, d.n_classes)[0] == pytest.approx(accs[first], rel=1e-5)
    # FTMPI_TIMELINE: every process wrote its phases, in order
    phases: dict[str, list[str]] = {}
    for _, who, phase, _ in read_timeline(timeline):
        phases.setdefault(who, []).append(phase)
    retries = job.err.count("mpirun failed before rank 0 started")  # the launcher's start retry (launch.py)
    assert phases["L"] == ["start"] + ["mpirun", "mpirun-exit"] * (1 + retries)
    assert phases["0"] == ["start", "mpi-init", "config", "data", "joined", "dealt", "round-0", "rounds-done",
                           "finished", "exit"]
    for w in ("1", "2"):
        assert phases[w] == ["start", "mpi-init", "config", "imports", "kernels", "shard", "first-reply", "exit"]
    # evaluated every 4 rounds only: the first evaluated round at or above the target stops it
    every4 = run_job(2, SMOKE, tmp_path / "e4", "--set", "executor.target_accuracy=0.8",
                     "--set", "executor.checkpoint_every=0", "--set", "executor.eval_every=4", limit=60)
    assert every4.rc == 0, every4.err
    r4 = every4.summary["target_reached"]
    assert r4["round"] % 4 == 0 and r4["round"] >= first and every4.summary["rounds"] == r4["round"] + 2


def test_same_seed_same_result(tmp_path):
    a = run_job(2, SMOKE, tmp_path / "a", "--set", "model.n_iterations=60")
    b = run_job(2, SMOKE, tmp_path / "b", "--set", "model.n_iterations=60")
    assert a.rc == 0 and b.rc == 0, a.err + b.err
    assert [r["train_loss"] for r in a.metrics()] == [r["train_loss"] for r in b.metrics()]
    assert a.summary["final_test_acc"] == b.summary["final_test_acc"]


def test_five_ranks_quantized_gradients_and_options(tmp_path):
    """4 workers, 4-bit quantization both ways, loss-weighted aggregation, mu_g pull, delta_switch."""
    job = run_job(4, SMOKE, tmp_path / "q", "--set", "executor.quantize=4", "--set", "executor.aggregate=loss",
                  "--set", "optimizer.mu_g=0.01", "--set", "executor.delta_switch=0.05",
                  "--set", "optimizer.name=adam", "--set", "optimizer.learning_rate=0.02")
    assert job.rc == 0, job.err
    s = job.summary
    assert s["status"] == "completed" and s["workers"] == 4
    assert s["final_test_acc"] > 0.75
    assert s["iterations"] == 200
    # delta_switch: once the global model moves less than 0.05, rounds become one iteration long
    assert s["switched_to_every_iteration_at"] is not None
    assert s["rounds"] > 20
    grads = run_job(4, SMOKE, tmp_path / "g", "--set", "executor.send_gradients=true",
                    "--set", "executor.comm_period=1", "--set", "model.n_iterations=60",
                    "--set", "optimizer.learning_rate=0.5")
    assert grads.rc == 0, grads.err
    assert grads.summary["final_test_acc"] > 0.75 and grads.summary["rounds"] == 60


def test_quantization_shrinks_the_wire(tmp_path):
    # no periodic checkpoints: the workers' states that go with the reply before one (a residual only under
    # quantization) are not the training traffic this compares
    mlp = ("--set", "model.type=mlp", "--set", "model.hidden=[64]", "--set", "model.n_iterations=50",
           "--set", "executor.checkpoint_every=0")
    raw = run_job(2, SMOKE, tmp_path / "raw", *mlp)
    q8 = run_job(2, SMOKE, tmp_path / "q8", *mlp, "--set", "executor.quantize=8")
    assert raw.rc == 0 and q8.rc == 0, raw.err + q8.err
    # 8-bit codes instead of float32 for ~1.6k parameters: well under half the bytes
    assert q8.summary["bytes_total"] < 0.5 * raw.summary["bytes_total"]
    assert abs(q8.summary["final_test_acc"] - raw.summary["final_test_acc"]) < 0.03


@pytest.mark.parametrize("bad, expect", [
    (["--set", "executor.timeout=-1"], "executor.timeout"),
    (["--set", "model.typo=3"], "model.typo"),
    (["--set", "executor.target_accuracy=84"], "executor.target_accuracy: expected null (off) or a test accuracy"),
])
def test_bad_config_one_line_exit_2_on_every_rank(tmp_path, bad, expect):
    job = run_job(2, SMOKE, tmp_path / "bad", *bad, limit=60)
    assert job.rc == 2
    lines = [ln for ln in job.err.splitlines() if ln.startswith("ftmpi:")]
    assert len(lines) == 1 and expect in lines[0], job.err
    assert "Traceback" not in job.err
    assert not (tmp_path / "bad" / "summary.json").exists()


def test_missing_dataset_is_one_clear_line(tmp_path):
    job = run_job(2, SMOKE, tmp_path / "nodata", "--set", "data.dataset=mnist",
                  "--set", f"data.path={tmp_path}/nowhere", limit=60,
                  env={"FTMPI_DATA": str(tmp_path / "nothing-here"), "HOME": str(tmp_path)})
    assert job.rc == 2, job.err
    assert "Traceback" not in job.err
    assert any("mnist" in ln for ln in job.err.splitlines() if ln.startswith("ftmpi: rank 0"))
