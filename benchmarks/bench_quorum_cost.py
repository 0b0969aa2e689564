"""What quorum rounds cost a fault-free round when they are off (issue 25: quorum 1.0, the default, at most 2 %).

    nice python benchmarks/bench_quorum_cost.py [--runs 3]

With ``executor.quorum: 1.0`` no round closes early and nothing is folded, but rank 0 still keeps the
workers' pace (:class:`ftmpi.core.quorum.Stragglers`: what each was given at the round's start, each reply's
compute time, who was late at the round's close) and asks :func:`ftmpi.core.quorum.close_time` at each poll
of the collection. A 2 % effect is below what interleaved wall-clock runs resolve on this 2-core machine
(identical runs differ by ±10 % in round time), so the work is timed in process, exactly as the driver calls
it for 4 workers (the median over 2000 rounds, best of 5 repeats, with 20 polls per round: more than a 12 ms
round makes), and set against the median round time of real fault-free Fashion-MNIST runs (4 workers,
configs/fashion_mnist.yaml, ``metrics.csv`` ``round_time``, round 0 left out). Writes
benchmarks/results/quorum_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _runs import machine, round_ms, run, write  # noqa: E402

from ftmpi.core.quorum import Rules, Stragglers, close_time  # noqa: E402

WORKERS = 4
POLLS = 20
CONFIG = "configs/fashion_mnist.yaml"


def bookkeeping_us(rounds: int = 2000, repeats: int = 5) -> float:
    """Median microseconds per round of the pace bookkeeping at quorum 1.0, best of ``repeats``."""
    rules = Rules()  # the defaults: quorum 1.0
    assert not rules.active
    alive = list(range(1, WORKERS + 1))
    best = float("inf")
    for _ in range(repeats):
        st = Stragglers(rules)
        times = []
        for rnd in range(rounds):
            t0 = time.perf_counter()
            st.begin(rnd, 0, 10)
            arrivals: list[float] = []
            for p in range(POLLS):
                if p % (POLLS // WORKERS) == 0 and len(arrivals) < WORKERS:
                    r = alive[len(arrivals)]
                    arrivals.append(0.001 * (p + 1))
                    st.heard(r, rnd, 0.004 + 0.0001 * r)
                close_time(rules, WORKERS, arrivals, final=False)
            st.close(rnd, alive, alive)
            times.append(time.perf_counter() - t0)
        best = min(best, statistics.median(times))
    return best * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    t0, load0 = time.time(), os.getloadavg()[0]
    cost = bookkeeping_us()
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-quorumcost-"))
    runs = []
    for i in range(a.runs):
        d = tmp / f"ff-{i}"
        s = run(WORKERS, CONFIG, d)
        runs.append({"run": i, "rc": s.get("rc"), "final_acc": s.get("final_test_acc"), "round_ms": round_ms(d)})
        print(runs[-1], flush=True)
    med = statistics.median(r["round_ms"] for r in runs if r["round_ms"])
    share = cost / 1000 / med
    md = [f"`nice python benchmarks/bench_quorum_cost.py --runs {a.runs}` (issue 25), {machine()['date']}, "
          f"{os.cpu_count()} cores, {(time.time() - t0) / 60:.1f} min, load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end.", "",
          "| quorum | pace bookkeeping per round (µs, in process, 4 workers, 20 polls) | median fault-free round (ms) "
          "| cost / round | final acc |", "|---|---|---|---|---|",
          f"| 1.0 (default) | {cost:.1f} | {med:.1f} | {100 * share:.2f} % | "
          f"{', '.join(format(r['final_acc'], '.4f') for r in runs)} |"]
    write("quorum_cost", {"machine": machine(), "cost_us": cost, "round_ms": med, "share": share, "runs": runs},
          "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
