"""The one-process baseline of benchmarks/bench_e2e.py: numpy Adam minibatch SGD of the same softmax regression
on the same rows (ftmpi's own loader, same scaling), run until its test accuracy reaches a target.

    python benchmarks/numpy_sgd.py [--lr 0.005] [--target 0.84] [--config configs/fashion_mnist.yaml]

As a fresh process it prints one JSON line whose ``process_seconds`` runs from the interpreter's start (the
process's start time, read from /proc) to the target, so it includes start-up, imports, data loading and
training; ``seconds`` runs from the data loading on (what :func:`numpy_sgd` measures when called in a
running Python). The test accuracy is checked every ``eval_every`` steps and that check is timed too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOGREG = str(ROOT / "configs" / "fashion_mnist.yaml")


def numpy_sgd(lr: float, target: float = 0.84, batch: int = 128, max_epochs: int = 5, seed: int = 0,
              eval_every: int = 200, config: str = LOGREG) -> dict:
    """Numpy Adam minibatch SGD of softmax regression, timed from loading the data until the test accuracy
    (checked every ``eval_every`` steps) reaches ``target``."""
    from ftmpi.config import load_config
    from ftmpi.storage.data import load_dataset

    t0 = time.monotonic()
    d = load_dataset(load_config(config).data, 0, lazy=False)
    X, y, Xt, yt = d.X_train, d.y_train, d.X_test, d.y_test
    n, dim = X.shape
    k = d.n_classes
    rng = np.random.default_rng(seed)
    params = [np.zeros((dim, k), np.float32), np.zeros(k, np.float32)]
    m = [np.zeros_like(q) for q in params]
    v = [np.zeros_like(q) for q in params]
    eye = np.eye(k, dtype=np.float32)
    step, acc = 0, 0.0
    for _ in range(max_epochs):
        order = rng.permutation(n)
        for s in range(0, n - batch + 1, batch):
            idx = order[s:s + batch]
            xb = X[idx]
            z = xb @ params[0] + params[1]
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            g = (p - eye[y[idx]]) / batch
            step += 1
            for i, gr in enumerate((xb.T @ g, g.sum(axis=0))):
                m[i] = 0.9 * m[i] + 0.1 * gr
                v[i] = 0.999 * v[i] + 0.001 * gr * gr
                params[i] -= lr * (m[i] / (1 - 0.9 ** step)) / (np.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
            if step % eval_every == 0:
                acc = float(((Xt @ params[0] + params[1]).argmax(axis=1) == yt).mean())
                if acc >= target:
                    return {"lr": lr, "seconds": time.monotonic() - t0, "test_acc": acc, "steps": step,
                            "reached": True}
    return {"lr": lr, "seconds": time.monotonic() - t0, "test_acc": acc, "steps": step, "reached": False}


def process_age() -> float:
    """Seconds since this process started (Linux: /proc/self/stat's start time against the boot clock)."""
    with open("/proc/self/stat") as fh:
        start_ticks = int(fh.read().rpartition(")")[2].split()[19])
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--target", type=float, default=0.84)
    ap.add_argument("--config", default=LOGREG)
    a = ap.parse_args(argv)
    out = numpy_sgd(a.lr, a.target, config=a.config)
    out["process_seconds"] = process_age()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
