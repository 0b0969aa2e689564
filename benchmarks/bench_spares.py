"""Hot spares (issue 24): one worker killed at round 32 with and without a spare, on real Fashion-MNIST.

    nice python benchmarks/bench_spares.py [--repeats 3] [--partitions iid,label-skew] [--cpu-iterations 8000]

4 workers, logistic regression (configs/fashion_mnist.yaml, 80 rounds, evaluated every 4). Per partition
(``iid``, ``label-skew``), in interleaved runs (one of each per repeat): fault-free without a spare;
fault-free with ``executor.spares=1`` (the spare waits the whole run: what it costs); ``--inject kill:2@32``
with one spare (it takes world rank 2's whole shard); the same kill without a spare under ``remap: full``
and under ``remap: representative``; repeat k runs every variant with ``model.seed=k``, in an order rotated
by k (repeat k starts with variant k mod 5), so that each variant runs in each place of the sequence equally
often: measured here, of three identical fault-free runs in a row the second and third ran their rounds ~4 %
slower than the first (20 repeats), so a fixed order (fault-free always first) charged every other variant a
few percent that had nothing to do with it. Time to target: rank
0's wall clock (``metrics.csv`` ``wall``, as ``executor.target_accuracy`` would stop) at the first evaluated
row at or above 0.84 (0.82 on label-skew, where the fault-free run ends near 0.83); training time to target:
the same less the wall clock of round 0's row (start-up differs by tenths of a second between identical runs
and has nothing to do with the fault); its ratio to the fault-free run of the same repeat (median of the
per-repeat ratios) is the goal's measure. Final accuracy after all 80 rounds, coverage, rows handed to the
survivors (sum of ``failures[].rows_handed``), the round the spare first trained
(``failures[].recovered_round``), the median round time; on label-skew, the accuracy of the lost worker's
classes (those of which world rank 2 holds the most rows at the deal).

The spare's cost, per repeat: a longer fault-free run with one spare (``model.n_iterations`` from
``--cpu-iterations``, so that it lasts 20 s or more), watched from outside: every rank's process (a python
process descended from this job whose environment has ``OMPI_COMM_WORLD_RANK``/``PMIX_RANK``), its
utime+stime (``/proc/PID/stat``) from the first metrics row (training starts) to the last sample taken
while fewer than all rounds were written (shortly before the end), as % of one core; and its resident
memory (``VmRSS``, ``VmHWM`` of ``/proc/PID/status``, and ``RssAnon``: the private part, without the mapped
files whose pages the page cache shares) at that last sample.

Writes benchmarks/results/spares.{json,md} (``--tag T``: spares-T.{json,md}). ``--config``, ``--target`` and
``--set`` run the same comparison on another config, e.g. the MLP, whose rounds are ~4x longer: a loss's fixed
cost (detection, the spare's wake-up and setup) weighs less against them.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import ROOT, held_classes, machine, rotated, run, write  # noqa: E402

CONFIG = "configs/fashion_mnist.yaml"
WORKERS = 4
KILL = ["--inject", "kill:2@32"]
SPARE = ["--set", "executor.spares=1"]
TARGET = {"iid": 0.84, "label-skew": 0.82}  # a linear model on label-skew shards ends near 0.83: its target is 82 %
EXTRA: list[str] = []  # --set options for every run
VARIANTS = [("fault-free", []), ("fault-free, 1 spare", SPARE), ("kill:2@32, 1 spare", [*KILL, *SPARE]),
            ("kill:2@32, no spare, remap full", [*KILL, "--set", "executor.remap=full"]),
            ("kill:2@32, no spare, remap representative", [*KILL, "--set", "executor.remap=representative"])]
TICK = os.sysconf("SC_CLK_TCK")
ACC_ROUNDS = (28, 32, 36, 40, 44, 48, 52, 56)  # evaluated rows (eval_every 4) around the kill at round 32


def measure(run_dir: Path, summary: dict, target: float) -> dict:
    try:
        with open(run_dir / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        rows = []
    hit = next((r for r in rows if float(r["test_acc"]) >= target), None)
    mine = held_classes(summary)  # world rank 2's classes
    per_class = summary.get("per_class_acc") or []
    fails = summary.get("failures") or []
    sp = summary.get("spares") or {}
    used = sp.get("used") or []
    spare_from = next((f.get("recovered_round") for f in fails if f.get("spare") is not None), None)
    if spare_from is None and used:
        spare_from = used[0]["round"] + 1
    return {"status": summary.get("status"), "rc": summary.get("rc"), "run_dir": str(run_dir),
            "lost": [f["rank"] for f in fails], "final_acc": summary.get("final_test_acc"), "target": target,
            "t84": float(hit["wall"]) if hit else None,
            "t84_train": float(hit["wall"]) - float(rows[0]["wall"]) if hit else None,
            "round84": int(hit["round"]) if hit else None,
            "wall": summary.get("wall_seconds"), "outer_wall": summary.get("outer_wall"),
            "coverage": summary.get("coverage"), "rows_handed": sum(int(f.get("rows_handed") or 0) for f in fails),
            "rows_to_spare": sum(int(f.get("rows_to_spare") or 0) for f in fails),
            "recovered_round": next((f.get("recovered_round") for f in fails), None),
            "spare_from": spare_from, "spares_used": used, "spares_idle": sp.get("idle"),
            "lost_classes": mine,
            "lost_class_acc": statistics.mean(per_class[c] for c in mine) if mine and per_class else None,
            "median_round_ms": 1000 * statistics.median(float(r["round_time"]) for r in rows[1:]) if len(rows) > 1
            else None, "load1": None,
            # deterministic diagnostics: the test accuracy around the loss, and round 33 (the spare's first): the
            # largest update norm over the median (the screen's norm_ratio) and the round's time
            "acc_at": {int(r["round"]): float(r["test_acc"]) for r in rows if int(r["round"]) in ACC_ROUNDS},
            "norm_ratio_33": next((float(r["norm_ratio"]) for r in rows if r["round"] == "33" and r.get("norm_ratio")),
                                  None),
            "round_ms_33": next((1000 * float(r["round_time"]) for r in rows if r["round"] == "33"), None),
            "loss_cost": loss_cost(rows)}


LOSS_ROUNDS = range(32, 36)  # the round of the loss (32) and the three after it


def loss_cost(rows: list[dict]) -> float | None:
    """Seconds the rounds 32-35 took beyond the run's own median round before the loss (rounds 1-31): what the
    loss cost this run, free of how fast this run's rounds were overall (identical runs differ by ±10 % in
    round time on this machine, more than a loss costs a run of 36 rounds). In a fault-free run: the noise."""
    t = {int(r["round"]): float(r["round_time"]) for r in rows}
    before = [t[n] for n in range(1, 32) if n in t]
    if not before or any(n not in t for n in LOSS_ROUNDS):
        return None
    base = statistics.median(before)
    return sum(t[n] - base for n in LOSS_ROUNDS)


def series(tmp: Path, partitions: list[str], repeats: int, cpu_iters: int) -> tuple[list[dict], list[dict]]:
    out, cpu = [], []
    for rep in range(repeats):  # interleaved: one run of each variant, then again
        for part in partitions:
            for i, (label, args) in rotated(VARIANTS, rep):
                d = tmp / f"{part}-{i}-{rep}"
                load = os.getloadavg()[0]
                s = run(WORKERS, CONFIG, d, "--set", f"data.partition={part}", "--set", f"model.seed={rep}", *EXTRA,
                        *args)
                row = {"partition": part, "variant": label, "repeat": rep, **measure(d, s, TARGET[part]),
                       "load1": load}
                out.append(row)
                print({k: v for k, v in row.items() if k not in ("spares_used",)}, flush=True)
        if cpu_iters > 0:
            c = watched(tmp / f"cpu-{rep}", cpu_iters)
            c["repeat"] = rep
            cpu.append(c)
            print(c, flush=True)
    return out, cpu


# ------------------------------------------------------------------------------------- the spare's cost
def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for kv in env:
        for key in (b"OMPI_COMM_WORLD_RANK=", b"PMIX_RANK="):
            if kv.startswith(key):
                return int(kv[len(key):])
    return None


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _ranks(root_pid: int) -> dict[int, int]:
    """World rank -> pid of this job's python ranks (processes descended from ``root_pid``)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid, p = int(entry), int(entry)
        for _ in range(12):  # walk up to the job's launcher
            p = _parent(p)
            if p is None or p <= 1 or p == root_pid:
                break
        if p != root_pid:
            continue
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        rank = _rank_of(pid)
        if rank is not None and "python" in Path(exe).name:
            found[rank] = pid
    return found


def _ticks(pid: int) -> int | None:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(f[11]) + int(f[12])  # utime, stime (fields 14 and 15)


def _rss(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:", "RssShmem:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return out


def _rows(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return max(0, sum(1 for _ in fh) - 1)
    except OSError:
        return 0


def watched(run_dir: Path, iterations: int, limit: float = 900) -> dict:
    """A fault-free iid run with one spare, lasting ``iterations`` local iterations; every rank's CPU
    while training and its memory, read from /proc while the job runs."""
    shutil.rmtree(run_dir, ignore_errors=True)
    rounds = iterations // 10  # comm_period 10 in configs/fashion_mnist.yaml
    env = dict(os.environ, PYTHON=sys.executable, FTMPI_JOB_TIMEOUT=str(int(limit)))
    cmd = ["bash", str(ROOT / "jobs" / "local.sh"), str(WORKERS), CONFIG, "--run-dir", str(run_dir), "--quiet",
           *SPARE, "--set", f"model.n_iterations={iterations}"]
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: dict[int, int] = {}
    start = end = None  # (monotonic, {rank: ticks}, {rank: rss}), at training start and the last sample before the end
    metrics = run_dir / "metrics.csv"
    while p.poll() is None and time.monotonic() - t0 < limit:
        n = _rows(metrics)
        if n >= 1 and start is None:
            pids = _ranks(p.pid)
            start = (time.monotonic(), {r: _ticks(q) for r, q in pids.items()}, {})
        elif start is not None and n < rounds - 1:
            ticks = {r: _ticks(q) for r, q in pids.items()}
            if all(v is not None for v in ticks.values()):
                end = (time.monotonic(), ticks, {r: _rss(q) for r, q in pids.items()})
        time.sleep(0.25)
    _, err = p.communicate()
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {"status": "missing"}
    res = {"run_dir": str(run_dir), "rc": p.returncode, "status": summary.get("status"), "iterations": iterations,
           "wall": summary.get("wall_seconds"), "final_acc": summary.get("final_test_acc"),
           "spares": summary.get("spares"), "load1": load, "pids": pids, "ranks": {}}
    if p.returncode != 0:
        sys.stderr.write(f"run {' '.join(cmd)} -> rc {p.returncode}\n{err[-2000:]}\n")
    if start is None or end is None:
        res["error"] = "no samples (the run ended before its first metrics row, or ranks were not found)"
        return res
    res["seconds"] = end[0] - start[0]
    for r in sorted(pids):
        a, b = start[1].get(r), end[1].get(r)
        cpu = (b - a) / TICK if a is not None and b is not None else None
        res["ranks"][r] = {"cpu_s": cpu, "cpu_pct": 100 * cpu / res["seconds"] if cpu is not None else None,
                           "rss_mib": end[2].get(r, {}).get("VmRSS"), "hwm_mib": end[2].get(r, {}).get("VmHWM"),
                           "anon_mib": end[2].get(r, {}).get("RssAnon")}
    return res


# ---------------------------------------------------------------------------------------------- tables
def med(rows: list, key: str | None = None) -> float | None:
    v = [r[key] if key else r for r in rows]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def fmt(x, f: str) -> str:
    return "—" if x is None else format(x, f)


def ratios(rows: list[dict], part: str, label: str, ref_label: str = VARIANTS[0][0]) -> list[float]:
    """Training time to target (from rank 0's round-0 row: start-up, which varies by tenths of a second between
    identical runs, left out) over the fault-free run's (``ref_label``'s) in the same repeat (same seed), one per
    repeat where both reached it."""
    out = []
    for r in rows:
        if r["partition"] != part or r["variant"] != label or r["t84_train"] is None:
            continue
        ref = next((x for x in rows if x["partition"] == part and x["variant"] == ref_label
                    and x["repeat"] == r["repeat"]), None)
        if ref and ref["t84_train"]:
            out.append(r["t84_train"] / ref["t84_train"])
    return out


def table(rows: list[dict], partitions: list[str]) -> list[str]:
    md = ["| partition (target) | run | exit (runs) | time to target (s, median) | "
          "training time to target (s, median) | "
          "vs fault-free (median of ratios) | "
          "rounds to target | final acc | Δ acc (pts) | lost worker's classes acc | Δ (pts) | coverage | "
          "rows handed to survivors | spare trained from round | median round (ms) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for part in partitions:
        ref = [r for r in rows if r["partition"] == part and r["variant"] == VARIANTS[0][0]]
        a0, c0 = med(ref, "final_acc"), med(ref, "lost_class_acc")
        for label, _ in VARIANTS:
            rs = [r for r in rows if r["partition"] == part and r["variant"] == label]
            if not rs:
                continue
            a, c = med(rs, "final_acc"), med(rs, "lost_class_acc")
            exits = ",".join(sorted({str(r["rc"]) for r in rs}))
            spare_from = sorted({r["spare_from"] for r in rs if r["spare_from"] is not None})
            md.append(f"| {part} ({TARGET[part]:.0%}) | {label} | {exits} ({len(rs)}) | {fmt(med(rs, 't84'), '.2f')} "
                      f"| {fmt(med(rs, 't84_train'), '.2f')} | {fmt(med(ratios(rows, part, label)), '.2f')}× | "
                      f"{fmt(med(rs, 'round84'), '.0f')} | "
                      f"{fmt(a, '.4f')} | "
                      f"{fmt(100 * (a - a0) if a is not None and a0 is not None else None, '+.2f')} | "
                      f"{fmt(c, '.4f')} | {fmt(100 * (c - c0) if c is not None and c0 is not None else None, '+.2f')} "
                      f"| {fmt(med(rs, 'coverage'), '.3f')} | {fmt(med(rs, 'rows_handed'), '.0f')} | "
                      f"{'/'.join(map(str, spare_from)) or '—'} | {fmt(med(rs, 'median_round_ms'), '.1f')} |")
    return md


def goals(rows: list[dict], partitions: list[str]) -> list[str]:
    md = ["| goal | measured (every repeat) | met |", "|---|---|---|"]

    def pick(part: str, label: str) -> list[dict]:
        return sorted((r for r in rows if r["partition"] == part and r["variant"] == label), key=lambda r: r["repeat"])

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    def within(d: list[float], tol: float) -> str:
        m = med(d)
        if m is None:
            return "—"
        if abs(m) <= tol:
            return "yes"
        return f"**no** (higher than fault-free: not lower by more than {tol} pt)" if m > 0 else "**no** (lower)"
    for part in partitions:
        ff, sp = pick(part, VARIANTS[0][0]), pick(part, VARIANTS[2][0])
        if not ff or not sp:
            continue
        by_rep = {r["repeat"]: r for r in ff}
        pairs = [(r, by_rep.get(r["repeat"])) for r in sp]
        md.append(f"| {part}: kill + spare exits 0 | exit {[r['rc'] for r in sp]}, status "
                  f"{sorted({r['status'] for r in sp})} | {yes(all(r['rc'] == 0 for r in sp))} |")
        d = [100 * (r["final_acc"] - f["final_acc"]) for r, f in pairs if f and r["final_acc"] is not None
             and f["final_acc"] is not None]
        md.append(f"| {part}: final acc within 0.1 pt of fault-free | Δ {', '.join(f'{x:+.2f}' for x in d)} pts "
                  f"(median {fmt(med(d), '+.2f')}) | {within(d, 0.1)} |")
        cov = [r["coverage"] for r in sp]
        md.append(f"| {part}: coverage 1.0 | {cov} | {yes(all(c == 1.0 for c in cov))} |")
        hand = [r["rows_handed"] for r in sp]
        md.append(f"| {part}: no rows handed to survivors | {hand} (rows to the spare: "
                  f"{[r['rows_to_spare'] for r in sp]}) | {yes(all(h == 0 for h in hand))} |")
        sf = [r["spare_from"] for r in sp]
        md.append(f"| {part}: the spare trained from round 33 or 34 (32: the round of the loss itself, in the lost "
                  f"worker's place) | {sf} | {yes(all(x in (32, 33, 34) for x in sf))} |")
        r84 = [(r["round84"], f["round84"]) for r, f in pairs if f and r["round84"] and f["round84"]]
        md.append(f"| {part}: rounds to {TARGET[part]:.0%} (deterministic) | "
                  f"{', '.join(f'{a} vs {b}' for a, b in r84)} fault-free | "
                  f"{yes(bool(r84) and all(a <= 1.05 * b for a, b in r84))} |")
        rt = ratios(rows, part, VARIANTS[2][0])
        md.append(f"| {part}: time to {TARGET[part]:.0%} ≤ 1.05× fault-free | {', '.join(f'{x:.2f}' for x in rt)}× "
                  f"(median {fmt(med(rt), '.2f')}×) | {yes(bool(rt) and med(rt) <= 1.05)} |")
        rw = ratios(rows, part, VARIANTS[2][0], VARIANTS[1][0])
        md.append(f"| {part}: the same against the fault-free run with the spare waiting (the same ranks, no fault: "
                  f"what the kill alone costs) | {', '.join(f'{x:.2f}' for x in rw)}× (median {fmt(med(rw), '.2f')}×) "
                  f"| {yes(bool(rw) and med(rw) <= 1.05)} |")
        lc = [(r["loss_cost"], f["loss_cost"], f["t84_train"]) for r, f in pairs
              if f and r["loss_cost"] is not None and f["loss_cost"] is not None and f["t84_train"]]
        est = [1 + c / t for c, _, t in lc]
        md.append(f"| {part}: the loss's cost within its run (rounds 32-35 beyond the run's median round before "
                  f"the loss; the fault-free run's same sum in brackets: the noise), and 1 + that cost over the "
                  f"fault-free training time | "
                  f"{', '.join(f'{1000 * c:.0f} ms ({1000 * n:+.0f})' for c, n, _ in lc)}; "
                  f"{', '.join(f'{x:.2f}' for x in est)}× (median {fmt(med(est), '.2f')}×) | "
                  f"{yes(bool(est) and med(est) <= 1.05)} |")
        if part == "label-skew":
            d = [100 * (r["lost_class_acc"] - f["lost_class_acc"]) for r, f in pairs
                 if f and r["lost_class_acc"] is not None and f["lost_class_acc"] is not None]
            md.append(f"| label-skew: the lost worker's classes {sp[0]['lost_classes']} within 0.5 pt of fault-free | "
                      f"Δ {', '.join(f'{x:+.2f}' for x in d)} pts (median {fmt(med(d), '+.2f')}) | {within(d, 0.5)} |")
    return md


def trajectory(rows: list[dict], partitions: list[str]) -> list[str]:
    md = ["| partition | run | " + " | ".join(f"r{n}" for n in ACC_ROUNDS) + " | round 33 norm ratio | round 33 (ms) |",
          "|---|---|" + "---|" * (len(ACC_ROUNDS) + 2)]
    for part in partitions:
        for label, _ in VARIANTS:
            rs = [r for r in rows if r["partition"] == part and r["variant"] == label]
            if rs:
                acc = [med([r["acc_at"].get(n) for r in rs]) for n in ACC_ROUNDS]
                md.append(f"| {part} | {label} | " + " | ".join(fmt(a, ".4f") for a in acc)
                          + f" | {fmt(med(rs, 'norm_ratio_33'), '.2f')} | {fmt(med(rs, 'round_ms_33'), '.0f')} |")
    return md


def cpu_table(cpu: list[dict]) -> list[str]:
    ok = [c for c in cpu if c.get("ranks")]
    if not ok:
        return ["(no CPU measurement: " + "; ".join(c.get("error", "?") for c in cpu) + ")"]
    role = {0: "coordinator", 1: "worker (deputy)", 5: "**spare** (waits the whole run)"}
    md = [f"Fault-free iid runs with 1 spare, `model.n_iterations={ok[0]['iterations']}` "
          f"({ok[0]['iterations'] // 10} rounds), watched from outside; CPU from the first metrics row to the last "
          f"sample before the last rounds ({', '.join(format(c['seconds'], '.1f') for c in ok)} s), medians over "
          f"{len(ok)} run(s); exit {[c['rc'] for c in cpu]}, spares used "
          f"{[len((c.get('spares') or {}).get('used') or []) for c in cpu]}.",
          "", "| world rank | role | CPU (% of a core) | per run | RSS (MiB) | of which private (`RssAnon`, MiB; the "
          "rest: mapped files, the dataset's pages among them, shared with the page cache) | peak RSS (MiB) |",
          "|---|---|---|---|---|---|---|"]
    for r in sorted({int(k) for c in ok for k in c["ranks"]}):
        per = [c["ranks"].get(r) or c["ranks"].get(str(r)) for c in ok]
        per = [x for x in per if x]
        md.append(f"| {r} | {role.get(r, 'worker')} | {fmt(med([x['cpu_pct'] for x in per]), '.2f')} | "
                  f"{', '.join(fmt(x['cpu_pct'], '.2f') for x in per)} | "
                  f"{fmt(med([x['rss_mib'] for x in per]), '.0f')} "
                  f"| {fmt(med([x.get('anon_mib') for x in per if x.get('anon_mib') is not None]), '.0f')} "
                  f"| {fmt(med([x['hwm_mib'] for x in per]), '.0f')} |")
    return md


def main() -> int:
    global CONFIG
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--partitions", default="iid,label-skew")
    ap.add_argument("--cpu-iterations", type=int, default=8000, help="local iterations of the CPU run (0: none)")
    ap.add_argument("--config", default=CONFIG, help="another config (e.g. the MLP's, whose rounds are longer)")
    ap.add_argument("--target", type=float, help="the target accuracy of every partition")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run (e.g. executor.eval_every=2)")
    ap.add_argument("--tag", default="", help="results go to benchmarks/results/spares-TAG.{json,md}")
    a = ap.parse_args()
    CONFIG = a.config
    EXTRA.extend(x for kv in a.set for x in ("--set", kv))
    if a.target is not None:
        TARGET.update({p: a.target for p in a.partitions.split(",")})
    parts = a.partitions.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="ftmpi-spares-"))
    print(f"run dirs under {tmp}", flush=True)
    load0, t0 = os.getloadavg(), time.time()
    rows, cpu = series(tmp, parts, a.repeats, a.cpu_iterations)
    load1 = os.getloadavg()
    loads = [r["load1"] for r in rows] + [c["load1"] for c in cpu]
    ff = [r["t84"] for r in rows if r["variant"] == VARIANTS[0][0] and r["partition"] == parts[0] and r["t84"]]
    with_spare = {label for label, args in VARIANTS if SPARE[1] in args}
    odd = [r for r in rows if r["rc"] != 0 or r["status"] != "completed"
           or (r["variant"] in with_spare and r["lost"] and not r["spares_used"])
           or (r["variant"] in with_spare and not r["lost"] and r["spares_idle"] != [WORKERS + 1])]
    cmd = " ".join(["nice python benchmarks/bench_spares.py", f"--repeats {a.repeats}",
                    *([f"--config {a.config}"] if a.config != "configs/fashion_mnist.yaml" else []),
                    *([f"--target {a.target}"] if a.target is not None else []),
                    *([f"--partitions {a.partitions}"] if a.partitions != "iid,label-skew" else []),
                    *(f"--set {kv}" for kv in a.set), *([f"--tag {a.tag}"] if a.tag else [])])
    md = [f"`{cmd}` (issue 24; config {CONFIG}), {machine()['date']}, "
          f"{os.cpu_count()} cores, {(time.time() - t0) / 60:.1f} min. Load average (1 min) "
          f"{load0[0]:.1f} at the start, {min(loads):.1f}-{max(loads):.1f} before the runs, {load1[0]:.1f} at the end: "
          f"the same fault-free {parts[0]} run took {fmt(min(ff) if ff else None, '.2f')}-"
          f"{fmt(max(ff) if ff else None, '.2f')} s to {TARGET[parts[0]]:.0%}. Times and ratios on a loaded "
          "2-core machine are noise at the level of several tens of percent; accuracies, rounds to target, coverage, "
          "rows handed and the spare's round are not.", "",
          f"Main comparison (4 workers, Fashion-MNIST, {CONFIG}{' ' + ' '.join(a.set) if a.set else ''}; medians "
          "over the repeats, repeat k with model.seed=k, every run interleaved):", "", *table(rows, parts), "",
          "Goals (a kill at round 32 with one spare against the fault-free run of the same repeat):", "",
          *goals(rows, parts), "", "Test accuracy around the loss (rank 0's evaluations, median over the repeats, "
          "each repeat its own `model.seed`), and round 33 (the spare's first): the largest update's norm over the "
          "median of the others' (the screen's `norm_ratio`) and the round's time:", "", *trajectory(rows, parts), "",
          "What a waiting spare costs:", "", *cpu_table(cpu)]
    if odd:
        md += ["", "Odd runs:", ""] + [f"- {r['variant']} ({r['partition']}, repeat {r['repeat']}): exit {r['rc']}, "
                                      f"status {r['status']}, spares used {r['spares_used']}, run dir {r['run_dir']}"
                                      for r in odd]
    write("spares" + (f"-{a.tag}" if a.tag else ""), {"machine": machine(), "config": CONFIG, "workers": WORKERS,
                                                     "target": TARGET,
                     "repeats": a.repeats, "minutes": (time.time() - t0) / 60,
                     "load": {"start": load0, "end": load1, "before_runs": loads}, "runs": rows, "cpu": cpu},
          "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
