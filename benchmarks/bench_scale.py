"""How ftmpi's cost grows: with the number of workers, and with the size of the training set.

    python benchmarks/bench_scale.py [--quick]

(a) Workers W = 1, 2, 4, 8, 16 (oversubscribed on a small machine: look at rank 0's time per round and per
    worker, not at wall time), logreg and MLP on Fashion-MNIST: rank 0's median time per round, that time
    divided by W, bytes per round (both ways, summed over workers), the workers' throughput (training
    samples a second, all workers together).
(b) Training sets of 1x, 4x and 16x Fashion-MNIST (the real set, then its training images tiled into plain
    IDX files), 4 workers, logreg: start-up time, peak resident memory (VmHWM) of rank 0 and of the largest
    worker, bytes rank 0 wrote (shard files, and everything through write()) per launch and per resume.
    The resume is a ``--resume`` of the finished run (it does the whole start-up, then stops at once).
    The 1x set is also run with FTMPI_SHARED_DATA=0 (rank 0 writes every worker's rows, as uint8) to show
    the cost of the fallback for hosts that do not share the prepared copy.
(c) A user's 1 GB HDF5 file (``data.dataset: hdf5``; float32 Gaussian blobs, 256 features, 10 classes with labels
    3, 13, ..., 93, made in a temp dir a block at a time and removed after), 4 workers, logreg: rank 0's peak
    memory against a worker's (the goal: rank 0 <= 1.2x a worker; it reads rows by id, never the matrix).
    Twice: with a test set of its own, stored contiguous (read where it lies), and without one (split by
    data.test_fraction into a prepared copy, made during that launch, in a temp FTMPI_PREPARED).

Peak memory and bytes are read from outside, by polling /proc/PID/{status,io} of every rank of the job
(the ranks leave with os._exit, so they cannot report at exit): VmHWM is a high-water mark, so the last
value read before a rank exits is its peak up to ~0.1 s before the end. --quick: W up to 4, logreg only,
1x and 4x. --only workers|data|userdata: that grid alone (the others kept from the last results file).
Writes benchmarks/results/scale.{json,md}.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import ROOT, machine, run, write  # noqa: E402

LOGREG = "configs/fashion_mnist.yaml"
MLP = "configs/fashion_mnist_mlp.yaml"


class Watch(threading.Thread):
    """Polls /proc for the ranks of one job (found by a tag in their environment): per rank, the latest
    VmHWM (kB) and the bytes it wrote (``wchar``: every write() call; ``write_bytes``: to storage)."""

    def __init__(self, tag: str, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.tag, self.period = tag.encode(), period
        self.stop = threading.Event()
        self.seen: dict[int, dict] = {}  # pid -> {"rank", "hwm_kb", "wchar", "write_bytes"}

    def run(self) -> None:
        while not self.stop.is_set():
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    self._look(int(entry.name))
            self.stop.wait(self.period)

    def _look(self, pid: int) -> None:
        try:
            if pid not in self.seen:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if b"FTMPI_BENCH_TAG=" + self.tag not in env:
                    return
                rank = next((int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"OMPI_COMM_WORLD_RANK=")), None)
                if rank is None:
                    return
                self.seen[pid] = {"rank": rank, "hwm_kb": 0, "wchar": 0, "write_bytes": 0}
            rec = self.seen[pid]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    rec["hwm_kb"] = max(rec["hwm_kb"], int(line.split()[1]))
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                key, _, val = line.partition(":")
                if key in ("wchar", "write_bytes"):
                    rec[key] = int(val)
        except (OSError, ValueError):
            pass

    def ranks(self) -> dict[int, dict]:
        """Per rank, the largest values over its processes (a launcher's child may carry the rank's
        environment before it execs Python)."""
        out: dict[int, dict] = {}
        for rec in self.seen.values():
            cur = out.setdefault(rec["rank"], {"hwm_kb": 0, "wchar": 0, "write_bytes": 0})
            for k in cur:
                cur[k] = max(cur[k], rec[k])
        return out


def watched(workers: int, config: str, run_dir: Path, *args: str, env: dict | None = None,
            keep: bool = False) -> dict:
    """One job through jobs/local.sh, watched; its summary plus per-round times, memory and bytes written."""
    tag = uuid.uuid4().hex
    saved = {k: os.environ.get(k) for k in ("FTMPI_BENCH_TAG", *(env or {}))}
    os.environ.update({"FTMPI_BENCH_TAG": tag, **(env or {})})
    w = Watch(tag)
    w.start()
    t_launch = time.time()
    try:
        if keep:  # a resume: run() would delete the run dir first
            import _runs

            real = _runs.shutil.rmtree
            _runs.shutil.rmtree = lambda *a, **k: None
            try:
                s = run(workers, config, run_dir, *args)
            finally:
                _runs.shutil.rmtree = real
        else:
            s = run(workers, config, run_dir, *args)
    finally:
        w.stop.set()
        w.join()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    ranks = w.ranks()
    rows = _metrics(run_dir / "metrics.csv")
    times = [float(r["round_time"]) for r in rows]
    shards = [p for p in (run_dir / "shards").glob("*.h5") if p.stat().st_mtime >= t_launch]
    r0 = ranks.get(0, {})
    wk = [rec for r, rec in ranks.items() if r != 0]
    s.update({
        "round_times": times,
        "round_time_median": statistics.median(times[1:]) if len(times) > 1 else None,
        "startup_rank0": float(rows[0]["wall"]) - float(rows[0]["round_time"]) if rows else None,
        "rank0_hwm_mb": r0.get("hwm_kb", 0) / 1024,
        "worker_hwm_mb": max((rec["hwm_kb"] for rec in wk), default=0) / 1024,
        "rank0_wchar_mb": r0.get("wchar", 0) / 1e6,
        "shard_files_mb": sum(p.stat().st_size for p in shards if p.name.startswith("worker-")) / 1e6,
        "other_shard_files_mb": sum(p.stat().st_size for p in shards
                                    if not p.name.startswith("worker-") and p.name != "test.h5") / 1e6,
        "test_set_mb": sum(p.stat().st_size for p in shards if p.name == "test.h5") / 1e6,
        "ranks_seen": len(ranks),
    })
    return s


def _metrics(path: Path) -> list[dict]:
    try:
        with open(path) as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def tiled(k: int, dest: Path) -> Path:
    """Fashion-MNIST with its training set repeated ``k`` times, as plain IDX files (test set unchanged)."""
    from ftmpi.storage.data import IDX_FILES, find_dataset_dir, read_idx

    _, files = find_dataset_dir("fashion-mnist", IDX_FILES)
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in zip(IDX_FILES, files, strict=True):
        arr = read_idx(src)
        reps = k if name.startswith("train") else 1
        dims = (arr.shape[0] * reps, *arr.shape[1:])
        with open(dest / name, "wb") as fh:
            fh.write(bytes([0, 0, 8, arr.ndim]) + __import__("numpy").array(dims, ">u4").tobytes())
            for _ in range(reps):
                fh.write(arr.tobytes())
    return dest


def grid_workers(tmp: Path, quick: bool) -> list[dict]:
    out = []
    models = [("logreg", LOGREG)] + ([] if quick else [("mlp", MLP)])
    for model, cfg in models:
        for W in ([1, 2, 4] if quick else [1, 2, 4, 8, 16]):
            iters = 200 if model == "logreg" else 100
            s = watched(W, cfg, tmp / f"{model}-w{W}", "--set", f"model.n_iterations={iters}",
                        "--set", "executor.checkpoint_every=0", "--set", "executor.startup_timeout=600",
                        "--set", "executor.timeout=60")
            period, bs = 10, 128
            med = s["round_time_median"]
            out.append({"model": model, "workers": W, "status": s.get("status"), "rounds": s.get("rounds"),
                        "round_ms": None if med is None else 1e3 * med,
                        "round_ms_per_worker": None if med is None else 1e3 * med / W,
                        "bytes_per_round": s.get("bytes_total", 0) / max(s.get("rounds") or 1, 1),
                        "samples_per_s": None if not med else W * period * bs / med,
                        "test_acc": s.get("final_test_acc"), "outer_wall": s["outer_wall"],
                        "rank0_hwm_mb": s["rank0_hwm_mb"], "worker_hwm_mb": s["worker_hwm_mb"]})
            print(out[-1], flush=True)
    return out


def grid_data(tmp: Path, quick: bool) -> list[dict]:
    out = []
    for k in ([1, 4] if quick else [1, 4, 16]):
        path = None if k == 1 else tiled(k, tmp / f"fmnist-x{k}")
        extra = [] if path is None else ["--set", f"data.path={path}"]
        common = ["--set", "model.n_iterations=100", "--set", "executor.startup_timeout=600",
                  "--set", "executor.timeout=60", "--set", "executor.checkpoint_every=5", *extra]
        rows = {"FTMPI_SHARED_DATA": "0"}
        plain = ["--set", "data.compress_shards=false"]
        modes = [("shared", {}, [])] + ([("rows", rows, []), ("rows, plain", rows, plain)] if k == 1 or not quick
                                        else [])
        for mode, env, more in modes:
            rd = tmp / f"data-x{k}-{mode.replace(', ', '-')}"
            first = watched(4, LOGREG, rd, *common, *more, env=env)
            again = watched(4, LOGREG, rd, "--resume", str(rd), *common, *more, env=env, keep=True)
            n = 60000 * k
            out.append({"scale": k, "mode": mode, "train_rows": n, "dataset_mb": n * 784 / 1e6,
                        "status": first.get("status"), "resume_status": again.get("status"),
                        "startup_s": first["startup_rank0"], "outer_wall": first["outer_wall"],
                        "rank0_hwm_mb": first["rank0_hwm_mb"], "worker_hwm_mb": first["worker_hwm_mb"],
                        "launch_shards_mb": first["shard_files_mb"], "launch_other_mb": first["other_shard_files_mb"],
                        "launch_test_set_mb": first["test_set_mb"], "resume_test_set_mb": again["test_set_mb"],
                        "launch_rank0_wchar_mb": first["rank0_wchar_mb"],
                        "resume_shards_mb": again["shard_files_mb"], "resume_rank0_wchar_mb": again["rank0_wchar_mb"],
                        "resume_outer_wall": again["outer_wall"], "test_acc": first.get("final_test_acc")})
            print(out[-1], flush=True)
    return out


USER_FEATURES, USER_CLASSES = 256, 10


def user_h5(dest: Path, gb: float = 1.0, own_test: bool = True, rows: int = 16384) -> tuple[Path, int, int]:
    """A float32 HDF5 file of ``gb`` GB (X and y, and X_test/y_test: a tenth of the rows, if ``own_test``),
    written a block at a time; returns (path, train rows, test rows)."""
    import h5py
    import numpy as np

    d, k = USER_FEATURES, USER_CLASSES
    n = int(gb * 1e9) // (d * 4)
    n_test = n // 10 if own_test else 0
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    centres *= 2.2 / np.linalg.norm(centres, axis=1, keepdims=True)
    labels = 10 * np.arange(k) + 3
    with h5py.File(dest, "w") as f:
        for name, m in (("", n - n_test), ("_test", n_test)):
            if not m:
                continue
            X, y = f.create_dataset(f"X{name}", (m, d), np.float32), f.create_dataset(f"y{name}", (m,), np.int64)
            for a in range(0, m, rows):
                b = min(m, a + rows)
                cls = rng.integers(0, k, b - a)
                X[a:b] = centres[cls] + rng.standard_normal((b - a, d), np.float32)
                y[a:b] = labels[cls]
    return dest, n - n_test, n_test


def grid_userdata(tmp: Path) -> list[dict]:
    out = []
    for own_test in (True, False):
        path, n_train, n_test = user_h5(tmp / "user-1g.h5", 1.0, own_test)
        size = path.stat().st_size
        cfg = tmp / "user-1g.yaml"
        cfg.write_text(f"name: user1g\nmodel: {{type: logreg, n_iterations: 100, batch_size: 128, seed: 0}}\n"
                       f"optimizer: {{name: sgd, learning_rate: 0.05}}\n"
                       f"executor: {{comm_period: 10, timeout: 60, startup_timeout: 600, checkpoint_every: 5}}\n"
                       f"data: {{dataset: hdf5, path: {path}, test_fraction: 0.1}}\n")
        prepared = tmp / "prepared"
        s = watched(4, str(cfg), tmp / "user-1g-run", env={"FTMPI_PREPARED": str(prepared)})
        copy = sum(p.stat().st_size for p in prepared.glob("*.h5")) if prepared.exists() else 0
        if not own_test:  # the rows data.test_fraction leaves for training (ftmpi.storage.userdata.split_test)
            n_train -= min(max(round(n_train * 0.1), 1), n_train - 1)
        out.append({"file_mb": size / 1e6, "test_set": "own, in place" if own_test else "test_fraction, prepared copy",
                    "train_rows": n_train, "features": USER_FEATURES,
                    "classes": USER_CLASSES, "status": s.get("status"), "startup_s": s["startup_rank0"],
                    "outer_wall": s["outer_wall"], "rank0_hwm_mb": s["rank0_hwm_mb"],
                    "worker_hwm_mb": s["worker_hwm_mb"], "prepared_copy_mb": copy / 1e6,
                    "launch_shards_mb": s["shard_files_mb"], "test_acc": s.get("final_test_acc")})
        print(out[-1], flush=True)
        path.unlink(missing_ok=True)
        import shutil

        shutil.rmtree(prepared, ignore_errors=True)
    return out


def _f(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def markdown(res: dict) -> str:
    mk = ["# Scaling (this machine; oversubscribed beyond its cores)", "", f"{res['machine']}", "",
          "## (a) Workers", "",
          "| model | W | rank 0 ms/round | ms/round/worker | KB/round | samples/s (all workers) | test acc |"
          " rank 0 / worker peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for r in res["workers"]:
        mk.append(f"| {r['model']} | {r['workers']} | {_f(r['round_ms'], '.1f')} | "
                  f"{_f(r['round_ms_per_worker'], '.1f')}"
                  f" | {r['bytes_per_round'] / 1e3:.0f} | {_f(r['samples_per_s'], '.0f')} | {_f(r['test_acc'], '.4f')}"
                  f" | {r['rank0_hwm_mb']:.0f} / {r['worker_hwm_mb']:.0f} |")
    mk += ["", "## (b) Training set size (4 workers, logreg)", "",
           "| train rows | uint8 MB | shards | start-up s | rank 0 peak MB | worker peak MB | rank 0 / worker |"
           " shard MB per launch | other MB (standby) | test set MB | rank 0 write() MB | shard MB per resume |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["data"]:
        ratio = r["rank0_hwm_mb"] / r["worker_hwm_mb"] if r["worker_hwm_mb"] else float("nan")
        mk.append(f"| {r['train_rows']} | {r['dataset_mb']:.0f} | {r['mode']} | {_f(r['startup_s'], '.2f')} | "
                  f"{r['rank0_hwm_mb']:.0f} | {r['worker_hwm_mb']:.0f} | {ratio:.2f} | {r['launch_shards_mb']:.1f} | "
                  f"{r['launch_other_mb']:.1f} | {_f(r.get('launch_test_set_mb'), '.1f')} | "
                  f"{r['launch_rank0_wchar_mb']:.1f} | {r['resume_shards_mb']:.1f} |")
    mk += ["", "`shared`: workers read their rows from the prepared copy by id (all ranks on one host, or "
           "FTMPI_SHARED_DATA=1); `rows`: rank 0 writes each worker's rows as uint8 (FTMPI_SHARED_DATA=0), "
           "deflate-compressed (`data.compress_shards`, the default), `rows, plain`: the same uncompressed. "
           "Shard MB per resume counts the shard files a `--resume` of the finished run wrote (ownership unchanged: "
           "the launcher keeps `shards/worker-*.h5` and rank 0 reuses every shard that holds the same rows). "
           "Test set MB: `shards/test.h5`, written once per run dir when a deputy may take over (0 on resume). "
           "Other MB: standby and handoff files; rank 0 write() MB: every byte rank 0 wrote (/proc wchar), "
           "checkpoints and outputs included. "
           "Peak RSS is VmHWM polled from /proc. Command: `python benchmarks/bench_scale.py"
           f"{' --quick' if res['quick'] else ''}`.", ""]
    if res.get("userdata"):
        mk += ["## (c) A user's 1 GB HDF5 file (4 workers, logreg)", "",
               "| file MB | test set | start-up s | rank 0 peak MB | worker peak MB | rank 0 / worker | "
               "prepared copy MB | shard MB per launch | test acc | status |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["userdata"]:
            ratio = r["rank0_hwm_mb"] / r["worker_hwm_mb"] if r["worker_hwm_mb"] else float("nan")
            mk.append(f"| {r['file_mb']:.0f} | {r['test_set']} | {_f(r['startup_s'], '.2f')} | "
                      f"{r['rank0_hwm_mb']:.0f} | {r['worker_hwm_mb']:.0f} | {ratio:.2f} | "
                      f"{r['prepared_copy_mb']:.0f} | {r['launch_shards_mb']:.1f} | {_f(r['test_acc'], '.4f')} | "
                      f"{r['status']} |")
        mk += ["", f"float32 Gaussian blobs, {USER_FEATURES} features, {USER_CLASSES} classes (labels 3, 13, ..., 93), "
               "made in a temp dir and removed after. `own, in place`: X/y and X_test/y_test stored contiguous, read "
               "where they lie (nothing copied; rank 0 checks the rows for NaN a block at a time); `test_fraction, "
               "prepared copy`: X/y only, split into a prepared copy (in a temp FTMPI_PREPARED) during the launch, "
               "whose start-up includes writing it. Command: `python benchmarks/bench_scale.py --only userdata`.", ""]
    return "\n".join(mk)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="W up to 4, logreg only, 1x and 4x data")
    ap.add_argument("--only", choices=["workers", "data", "userdata"], help="run one grid only")
    args = ap.parse_args()
    os.chdir(ROOT)
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-scale-"))
    res: dict = {"machine": machine(), "quick": args.quick, "workers": [], "data": [], "userdata": []}
    if args.only is not None:  # keep the other grid of the last results file
        import json

        try:
            old = json.loads((ROOT / "benchmarks" / "results" / "scale.json").read_text())
            res.update({k: old.get(k, []) for k in ("workers", "data", "userdata")})
        except (OSError, ValueError):
            pass
    if args.only in (None, "workers"):
        res["workers"] = grid_workers(tmp, args.quick)
    if args.only in (None, "data"):
        res["data"] = grid_data(tmp, args.quick)
    if args.only in (None, "userdata"):
        res["userdata"] = grid_userdata(tmp)
    write("scale", res, markdown(res))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
