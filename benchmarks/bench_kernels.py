"""Benchmark of the ftmpi numba kernels against plain numpy, single-threaded.

Usage: ``python benchmarks/bench_kernels.py [--out benchmarks/results] [--quick]``

Writes ``kernels.json`` and ``kernels.md`` to ``--out``. Targets: numba's ``loss_grad`` (kernels/model.py; a
training run's softmax regression uses the numpy one of kernels/softmax.py, see there) at least as fast as
the numpy reference (batch of 128 rows and a full shard of 15000 rows, softmax regression 784x10 and
MLP 784-256-128-10); ``quantize_pack`` / ``unpack_dequantize`` at >= 0.40x the bandwidth of
``np.copyto`` on the same float32 vector (bandwidth = float32 bytes of the tensor / time).
Exits 1 if a target fails.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # numba and numpy both single-threaded: a fair comparison

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np

try:
    from ftmpi import kernels as K
except ImportError:  # not installed: the kernels folder is importable as a package on its own
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import kernels as K  # type: ignore[no-redef]

GRAD_TARGET = 1.0
BANDWIDTH_TARGET = 0.40


def numpy_loss_grad(params, sizes, X, y, grad_out):
    """Plain numpy float32 reference of ``K.loss_grad`` (no input gradient)."""
    layers = [(params[w].reshape(shape), params[b]) for w, shape, b in K.layer_slices(sizes)]
    acts = [X]
    for W, b in layers[:-1]:
        acts.append(np.maximum(acts[-1] @ W + b, 0.0))
    z = acts[-1] @ layers[-1][0] + layers[-1][1]
    z -= z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(len(y))
    loss = float(np.mean(lse - z[rows, y]))
    g = np.exp(z - lse[:, None])
    g[rows, y] -= 1.0
    g /= len(y)
    slices = K.layer_slices(sizes)
    for layer in range(len(layers) - 1, -1, -1):
        w_sl, _, b_sl = slices[layer]
        grad_out[w_sl] = (acts[layer].T @ g).ravel()
        grad_out[b_sl] = g.sum(axis=0)
        if layer:
            g = (g @ layers[layer][0].T) * (acts[layer] > 0)
    return loss


def interleaved_medians(fns, repeats):
    """Median seconds of each callable, runs interleaved so machine-load drift hits all alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times, strict=False):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def bench_grad(quick):
    rows = []
    for name, sizes in (("logreg 784x10", [784, 10]), ("mlp 784-256-128-10", [784, 256, 128, 10])):
        sizes = np.array(sizes, np.int64)
        params = K.init_params(sizes, seed=0)
        for n in (128, 15000):
            rng = np.random.default_rng(n)
            X = rng.standard_normal((n, sizes[0]), dtype=np.float32)
            y = rng.integers(0, sizes[-1], n).astype(np.int32)
            g_nb, g_np = np.empty_like(params), np.empty_like(params)
            # the numba kernel itself (K.loss_grad runs a softmax regression in numpy: kernels/softmax.py)
            loss_nb = K.model.loss_grad(params, sizes, X, y, g_nb)  # also compiles
            loss_np = numpy_loss_grad(params, sizes, X, y, g_np)
            assert abs(loss_nb - loss_np) <= 1e-4 * abs(loss_np), (loss_nb, loss_np)
            assert np.allclose(g_nb, g_np, rtol=1e-3, atol=1e-5 * np.abs(g_np).max())
            repeats = (50 if n == 128 else 5) if quick else (400 if n == 128 else 15)
            t_nb, t_np = interleaved_medians([functools.partial(K.model.loss_grad, params, sizes, X, y, g_nb),
                                              functools.partial(numpy_loss_grad, params, sizes, X, y, g_np)],
                                             repeats)
            rows.append({"kernel": "loss_grad", "case": f"{name}, n={n}", "kernel_ms": t_nb * 1e3,
                         "numpy_ms": t_np * 1e3, "ratio": t_np / t_nb, "target": GRAD_TARGET})
    return rows


def bench_quant(quick):
    n = 4_000_000
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    dst = np.empty_like(x)
    repeats = 15 if quick else 60

    def gbs(seconds):
        return x.nbytes / seconds / 1e9

    rows = []
    for bits in (8, 4):
        for stochastic in (False, True):
            packed, lo, hi = K.quantize_pack(x, bits, stochastic, 1)  # also compiles
            K.unpack_dequantize(packed, bits, lo, hi, n, dst)
            t_copy, t_q, t_d = interleaved_medians(
                [functools.partial(np.copyto, dst, x),
                 functools.partial(K.quantize_pack, x, bits, stochastic, 1),
                 functools.partial(K.unpack_dequantize, packed, bits, lo, hi, n, dst)], repeats)
            timed = [("quantize_pack", f"{bits} bits, {'stochastic' if stochastic else 'nearest'}", t_q)]
            if not stochastic:  # decoding does not depend on the rounding mode
                timed.append(("unpack_dequantize", f"{bits} bits", t_d))
            for kernel, case, t in timed:
                rows.append({"kernel": kernel, "case": f"{case}, n=4e6", "ms": t * 1e3, "gb_s": gbs(t),
                             "memcpy_gb_s": gbs(t_copy), "ratio": t_copy / t, "target": BANDWIDTH_TARGET})
    return rows


def write_results(rows, out_dir):
    for row in rows:
        row["pass"] = bool(row["ratio"] >= row["target"])
    meta = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "machine": platform.machine(), "processor": platform.processor() or "unknown",
            "cpu_count": os.cpu_count(),
            "threads": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kernels.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    lines = ["# Kernel benchmark", "",
             (f"numpy {meta['numpy']}, numba {meta['numba']}, Python {meta['python']}, "
              f"{meta['cpu_count']} cores; numba and numpy single-threaded (OPENBLAS_NUM_THREADS=1). "
              "Median of interleaved repeats."), "",
             "| kernel | case | ftmpi.kernels | baseline | ratio | target | result |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "numpy_ms" in r:
            ours, base = f"{r['kernel_ms']:.3f} ms", f"numpy {r['numpy_ms']:.3f} ms"
        else:
            ours, base = f"{r['gb_s']:.1f} GB/s", f"memcpy {r['memcpy_gb_s']:.1f} GB/s"
        lines.append(f"| {r['kernel']} | {r['case']} | {ours} | {base} | {r['ratio']:.2f}x "
                     f"| >= {r['target']:.2f}x | {'PASS' if r['pass'] else 'FAIL'} |")
    lines += ["", ("ratio: numpy time / kernel time for loss_grad (baseline: a plain float32 numpy "
                   "implementation; both use numpy's BLAS for the products); kernel bandwidth / memcpy "
                   "bandwidth otherwise (bandwidth = float32 bytes of the tensor / time).")]
    (out_dir / "kernels.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    args = parser.parse_args(argv)
    rows = bench_grad(args.quick) + bench_quant(args.quick)
    print(write_results(rows, args.out))
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
