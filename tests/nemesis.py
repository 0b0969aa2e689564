"""The nemesis (issue 22, item 8): random fault schedules against real mpirun jobs, each run checked against
the invariants that the README promises, whatever happened.

Three parts, each usable alone:

- :func:`generate` (pure, seeded by ``random.Random(seed)``): a :class:`Schedule` of 1-4 faults (``kill``,
  ``exit``, ``hang``, ``pause`` = SIGSTOP then SIGCONT, ``slow`` = sleep, and start-up delays = ``slow`` or
  ``pause`` at ``start``) on any rank, rank 0 and the deputy included, at a round or at a named point
  (``start``, ``deal``, ``finish``), on one host or on two simulated hosts.
- :func:`expect` (pure): what the README's rules say must happen, by replaying the schedule on a model of
  the run: who coordinates each term, who is the deputy, which faults fire (a fault fires the first time its
  rank reaches its round, in whatever role it then has: a deputy that took over fires its later faults as the
  coordinator), which workers are lost, the exit code and a bound on the wall time. Stall lengths are drawn
  outside the ambiguous band around the silence limit: either at most 0.75 x ``executor.timeout`` (nobody may
  be lost) or at least twice the silence limit (the rank must be lost or replaced); a schedule whose outcome
  the README does not decide raises :class:`Ambiguous` and the generator draws again.
- :func:`run` and :func:`check`: launch the schedule (``jobs/local.sh``, or ``ftmpi launch --hostfile`` on the
  simulated hosts of tests/hosts/rsh_agent.sh) and list every violated invariant of the finished run, each
  with its explanation.

The rules the model encodes (README, *What can go wrong*, *Slow is not dead*, *Exit codes*, and the code
where the README is silent):

- A rank is lost only if it died (kill, exit, hang) or was silent past the silence limit (``timeout`` plus
  two beats); a stall shorter than the timeout costs time and nothing else.
- A fault on rank R at round N fires when R starts round N: the coordinator before it broadcasts the round,
  a worker when the round's message arrives. A lost coordinator's round N is never sent, so the workers'
  faults of round N fire in the successor's round N. Faults fire once (a redone round does not replay them).
- The deputy (``choose_deputy``: the lowest alive worker on another host than the coordinator's, else the
  lowest) takes over a coordinator lost at round >= 1 or at ``finish`` (it holds a replica from round 0 on);
  it redoes the round in flight, so it has named and replicated to its own deputy before its own next fault
  can fire. A coordinator lost at ``start``, ``deal`` or round 0 has no deputy with a replica: the workers
  leave, exit 4. The deputy that takes over keeps training its own rows (``executor.deputy_keeps_rows``,
  the default): it stays among the alive workers, and when it is lost in turn its successor declares it lost
  like a worker (at the replica's round: the fault's round or the one before). A coordinator whose last
  worker is lost ends with exit 3 (the rows of the last worker are kept orphaned).
- A worker that never says hello within ``executor.startup_timeout`` is dropped (``never-joined``); faults
  at ``finish`` on workers come after the verdict and change nothing in summary.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "jobs" / "local.sh"
SMOKE = ROOT / "configs" / "smoke.yaml"
AGENT = ROOT / "tests" / "hosts" / "rsh_agent.sh"

ROUNDS = 20  # configs/smoke.yaml: 200 iterations at comm_period 10
TRAIN_ROWS = 3200  # configs/smoke.yaml: 4000 samples, test_fraction 0.2
# FTMPI_START_TIMEOUT for the runs: mpirun that hangs before rank 0 is through MPI_Init (seen under load) is
# killed and launched again by the launcher (README), at most twice; that time is not the schedule's
START_TIMEOUT = 20.0
KINDS = ("kill", "exit", "hang", "pause", "slow")
POINTS = ("start", "deal", "finish")
TIMED = ("pause", "slow")
LOST_HOW_AT_START = {"never-joined", "ulfm", "timeout", "exited"}


class Ambiguous(Exception):  # noqa: N818 (not an error: the generator draws again)
    """The README does not decide what this schedule must do (e.g. a stall in the band near the limit)."""


# --------------------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int
    at: int | str  # a round, or one of POINTS
    seconds: float = 0.0

    def spec(self) -> str:
        base = f"{self.kind}:{self.rank}@{self.at}"
        return f"{base}:{self.seconds:g}" if self.kind in TIMED else base

    @property
    def pos(self) -> int:
        return position(self.at)


def position(at: int | str) -> int:
    """Order of the points a rank goes through: start, deal, rounds 0..ROUNDS-1, finish."""
    return {"start": -2, "deal": -1, "finish": ROUNDS}.get(at, at)  # type: ignore[arg-type]


def at_of(pos: int) -> int | str:
    return {-2: "start", -1: "deal", ROUNDS: "finish"}.get(pos, pos)


@dataclass(frozen=True)
class Schedule:
    seed: int
    hosts: int  # 1, or 2 simulated hosts (nodeA: ranks 0, 1; nodeB: ranks 2, 3)
    workers: int
    timeout: float
    startup_timeout: float
    detector: str  # ulfm or timeout
    faults: tuple[Fault, ...]

    @property
    def limit(self) -> float:
        """The silence limit: timeout plus two beats (a beat is min(0.25, timeout / 4))."""
        return self.timeout + 2 * min(0.25, self.timeout / 4)

    @property
    def grace(self) -> float:
        """FTMPI_FINISH_GRACE for the run: longer than rank 0's own end (goodbyes: min(timeout, 10) s, a
        second of flushing), so that it only ends a job whose verdict is written and whose ranks hang."""
        return self.timeout + 4.0

    def train_args(self) -> list[str]:
        args = ["--set", f"executor.timeout={self.timeout:g}",
                "--set", f"executor.startup_timeout={self.startup_timeout:g}",
                "--set", f"executor.failure_detector={self.detector}", "--set", "executor.remap=full",
                "--set", "executor.checkpoint_every=2", "--set", "executor.keep=100"]
        for f in self.faults:
            args += ["--inject", f.spec()]
        return args

    def describe(self) -> str:
        where = "one host" if self.hosts == 1 else "two hosts (nodeA: 0 1, nodeB: 2 3)"
        faults = " ".join(f.spec() for f in self.faults)
        return (f"seed {self.seed}, {where}, {self.workers} workers, timeout {self.timeout:g} (silence limit "
                f"{self.limit:g}), startup_timeout {self.startup_timeout:g}, detector {self.detector}: {faults}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["faults"] = [f.spec() for f in self.faults]
        return d


def hosts_of(s: Schedule) -> dict[int, str]:
    if s.hosts == 1:
        return {r: "node" for r in range(s.workers + 1)}
    return {r: ("nodeA" if r < 2 else "nodeB") for r in range(s.workers + 1)}


def choose_deputy(alive: list[int], hosts: dict[int, str], coordinator: int) -> int:
    """README: the lowest alive worker on another host than the coordinator's where there is one, else the
    lowest alive worker (never the coordinator itself, which may train rows); -1 for none."""
    alive = [r for r in alive if r != coordinator]
    away = [r for r in alive if hosts[r] != hosts[coordinator]]
    pool = away or alive
    return min(pool) if pool else -1


def _stall(rng: random.Random, s_short: float, s_long: tuple[float, float]) -> float:
    if rng.random() < 0.5:
        return round(rng.uniform(0.3, s_short), 1)
    return round(rng.uniform(*s_long), 1)


def _draw_fault(rng: random.Random, sched: Schedule) -> Fault:
    deputy = 1 if sched.hosts == 1 else 2  # the first deputy: rank 0 and it are hit more often
    rank = rng.choice(range(sched.workers + 1)) if rng.random() < 0.75 else rng.choice((0, deputy))
    u = rng.random()
    at: int | str = "start" if u < 0.1 else "deal" if u < 0.15 else "finish" if u < 0.25 else rng.randrange(ROUNDS)
    kind = rng.choice(KINDS)
    secs = 0.0
    if kind in TIMED:
        L = sched.limit
        if at == "start" or (rank == 0 and position(at) <= 0):
            # before the first round the wait is startup_timeout: a start-up delay well within it, or (a
            # worker only) well past it
            secs = round(rng.uniform(0.5, 0.4 * sched.startup_timeout), 1) if rng.random() < 0.6 or rank == 0 \
                else round(rng.uniform(sched.startup_timeout + 2 * L, sched.startup_timeout + 2 * L + 2), 1)
        else:
            secs = _stall(rng, 0.75 * sched.timeout, (2 * L, 2 * L + 2))
    return Fault(kind, rank, at, secs)


def generate(seed: int, hosts: int = 1) -> Schedule:
    """A random schedule, the same for the same (seed, hosts); never one :func:`expect` finds ambiguous."""
    rng = random.Random(seed * 10 + hosts)
    workers = 4 if hosts == 1 else 3
    base = Schedule(seed, hosts, workers, rng.choice((2.0, 3.0)), 8.0, rng.choice(("ulfm", "timeout")), ())
    n = rng.choice((1, 2, 2, 3, 3, 4))
    faults: list[Fault] = []
    tries = 0
    while len(faults) < n and tries < 200:
        tries += 1
        f = _draw_fault(rng, base)
        if any((g.rank, g.pos) == (f.rank, f.pos) for g in faults):
            continue  # one fault per rank and point (only the first of several due at once fires)
        cand = Schedule(**{**asdict(base), "faults": tuple(faults + [f])})
        try:
            expect(cand)
        except Ambiguous:
            continue
        faults.append(f)
    faults.sort(key=lambda f: (f.pos, f.rank))
    return Schedule(**{**asdict(base), "faults": tuple(faults)})


# ------------------------------------------------------------------------------------------------ model
@dataclass
class Expect:
    code: int
    lost: dict[int, int] = field(default_factory=dict)  # worker rank -> round it is lost at (0 for start, deal)
    never_joined: set[int] = field(default_factory=set)  # of ``lost``: dropped at start-up
    coord_lost: set[int] = field(default_factory=set)  # of ``lost``: coordinators that trained rows (a deputy
    # that took over keeps its rows): declared lost by their successor at the replica's round, ``pos`` or one before
    changes: list[tuple[int, int]] = field(default_factory=list)  # (lost coordinator, new coordinator)
    coordinators: list[int] = field(default_factory=lambda: [0])  # the holder of term 1, 2, ...
    alive: list[int] = field(default_factory=list)  # workers alive at the end
    fired: list[Fault] = field(default_factory=list)
    last_round: int | None = None  # code 3: the round the last worker was lost at
    bound: float = 0.0  # seconds the job must end within
    notes: list[str] = field(default_factory=list)


def _effect(s: Schedule, f: Fault, coordinator: bool) -> str:
    """``lost`` or ``none`` for a fault that fires on a rank in the given role (Ambiguous otherwise)."""
    if f.kind not in TIMED:
        return "lost"
    T, L, ST = s.timeout, s.limit, s.startup_timeout
    early = f.pos <= (0 if coordinator else -2)  # the others wait startup_timeout, not the silence limit
    if early:
        if f.seconds <= 0.5 * ST:
            return "none"
        if not coordinator and f.seconds >= ST + 2 * L:
            return "lost"
        raise Ambiguous(f"{f.spec()}: a stall of rank 0 before round 1 (or a start-up delay) near startup_timeout")
    if f.seconds <= 0.75 * T:
        return "none"
    if f.seconds >= 2 * L:
        return "lost"
    raise Ambiguous(f"{f.spec()}: {f.seconds:g}s is in the band between 0.75 x timeout and 2 x the silence limit")


def expect(s: Schedule) -> Expect:
    """Replay ``s`` on the README's model of the run (see the module docstring)."""
    hosts = hosts_of(s)
    T, L, ST = s.timeout, s.limit, s.startup_timeout
    pending: dict[tuple[int, int], Fault] = {}
    for f in s.faults:
        if (f.rank, f.pos) in pending:
            raise Ambiguous(f"two faults on rank {f.rank} at {f.at}")
        pending[(f.rank, f.pos)] = f
    e = Expect(code=0)
    alive = list(range(1, s.workers + 1))
    coord = 0
    bound = 30.0 + (8.0 if s.hosts == 2 else 0.0)  # start-up, 20 rounds and the end on a busy 2-core machine
    lingering = False  # a rank that may keep mpirun running after the verdict (stopped, hung, on a host)
    code: int | None = None

    def fire(rank: int, pos: int) -> Fault | None:
        f = pending.pop((rank, pos), None)
        if f is not None:
            e.fired.append(f)
        return f

    for pos in range(-2, ROUNDS + 1):
        # the coordinator's fault first (before it broadcasts the round); a deputy that took over fires its own
        # fault of this point as the coordinator, after the redone round has named its own deputy
        while (f := fire(coord, pos)) is not None:
            eff = _effect(s, f, True)
            if eff == "none":
                bound += f.seconds
                continue
            lingering |= f.kind in ("hang", "pause", "slow", "exit")
            if pos <= 0:  # no deputy holds a replica yet: the workers leave
                e.notes.append(f"coordinator {coord} lost at {f.at}: no replica yet, exit 4")
                bound += max(ST, 2 * T + 10) + L + s.grace + 5
                code = 4
                break
            if coord in alive:  # a deputy that took over trains its rows still (deputy_keeps_rows): lost as a worker
                alive.remove(coord)
                e.lost[coord] = max(pos, 0)
                e.coord_lost.add(coord)
            deputy = choose_deputy(alive, hosts, coord)
            if deputy < 0:
                raise Ambiguous(f"coordinator {coord}, training alone, lost at {f.at}: nobody left to take over")
            e.changes.append((coord, deputy))
            e.coordinators.append(deputy)
            coord = deputy  # it keeps its rows and goes on training them (executor.deputy_keeps_rows)
            bound += 3 * L + 3
        if code is not None:
            break
        if pos == ROUNDS:  # the workers' faults at finish: told to stop, after the verdict
            for w in list(alive):
                f = fire(w, pos)
                if f is not None and f.kind != "slow":
                    lingering = True
                    bound += min(T, 10) + 2
                elif f is not None:
                    bound += min(f.seconds, min(T, 10))
            break
        for w in [w for w in alive if w != coord]:  # the coordinator's own faults fired above
            f = fire(w, pos)
            if f is None:
                continue
            eff = _effect(s, f, False)
            if eff == "none":
                bound += f.seconds
                continue
            lingering |= f.kind in ("hang", "pause", "slow", "exit")
            alive.remove(w)
            e.lost[w] = max(pos, 0)
            if pos == -2:
                e.never_joined.add(w)
                bound += ST
            else:
                bound += 2 * L
        if not alive and pos == -2:  # nothing was dealt: the README says nothing of coverage or rows then
            raise Ambiguous("no worker said hello")
        if not alive:
            e.notes.append("every worker lost: exit 3")
            code = 3
            e.last_round = max(pos, 0)
            break
    e.code = 0 if code is None else code
    e.alive = alive
    if lingering or s.hosts == 2:
        bound += s.grace + min(T, 10) + 2
    e.bound = bound
    return e


# ------------------------------------------------------------------------------------------------- run
@dataclass
class Outcome:
    rc: int
    wall: float
    out: str
    err: str
    run_dir: Path
    leftovers: list[str] = field(default_factory=list)  # processes of the run still there after the launcher


def why_no_hosts() -> str | None:
    """None when two simulated hosts can run here, else why not (tests/mpi/test_hosts.py decides)."""
    from tests.mpi.test_hosts import why_no_hosts as why

    return why()


def command(s: Schedule, run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The launch command of ``s`` and the environment it adds."""
    e = expect(s)
    env = {"FTMPI_JOB_TIMEOUT": str(int(e.bound + 20 + 2 * (START_TIMEOUT + 2))), "FTMPI_FINISH_GRACE": f"{s.grace:g}",
           "FTMPI_START_TIMEOUT": f"{START_TIMEOUT:g}"}
    common = [str(SMOKE), "--run-dir", str(run_dir), "--quiet", *s.train_args()]
    if s.hosts == 1:
        return ["bash", str(LOCAL), str(s.workers), *common], env
    hostfile = Path(run_dir).parent / (Path(run_dir).name + ".hosts")
    env["FTMPI_MPIRUN_ARGS"] = f"--mca plm_rsh_agent {AGENT}"
    return [sys.executable, "-m", "ftmpi", "launch", "-n", str(s.workers), *common[:1], "--hostfile", str(hostfile),
            *common[1:]], env


def reproduce(s: Schedule, run_dir: Path | str = "/tmp/nemesis-run") -> str:
    """The exact commands that reproduce ``s`` by hand (and through this module)."""
    cmd, env = command(s, Path(run_dir))
    pre = ""
    if s.hosts == 2:
        pre = f"printf 'nodeA slots=2\\nnodeB slots=2\\n' > {shlex.quote(str(Path(run_dir)) + '.hosts')}; "
    envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (f"cd {ROOT} && rm -rf {run_dir} && {pre}{envs} PYTHON={sys.executable} {shlex.join(cmd)}\n"
            + (f"  or: python -m tests.nemesis --seed {s.seed} --hosts {s.hosts}" if s.seed >= 0 else
               f"  or: python -m tests.nemesis --hosts {s.hosts} --timeout {s.timeout:g} --detector {s.detector} "
               f"--faults {shlex.quote(' '.join(f.spec() for f in s.faults))}"))


def _leftovers(run_dir: Path) -> list[str]:
    """Processes whose command line names the run dir (ranks, mpirun, daemons' children)."""
    out = []
    key = str(run_dir)
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cl = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if key in cl:
            out.append(f"{p.name} {cl[:200]}")
    return out


def _kill_leftovers(run_dir: Path) -> None:
    for line in _leftovers(run_dir):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except OSError:
            pass


def run(s: Schedule, run_dir: Path, nice: int = 0) -> Outcome:
    """Launch ``s`` into ``run_dir`` (which must not exist) under a hard limit; never raises for the job's own
    outcome."""
    run_dir = Path(run_dir)
    cmd, add = command(s, run_dir)
    if s.hosts == 2:
        (run_dir.parent / (run_dir.name + ".hosts")).write_text("nodeA slots=2\nnodeB slots=2\n")
    env = dict(os.environ, PYTHON=sys.executable, **add)
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    hard = float(add["FTMPI_JOB_TIMEOUT"]) + 60
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=hard)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -1, str(exc.stdout or ""), str(exc.stderr or "") + f"\n[nemesis] killed after {hard:g}s"
    wall = time.monotonic() - t0
    left: list[str] = []
    for _ in range(20):  # the launcher is gone; its job's processes must go too (a paused rank's helper aside)
        left = _leftovers(run_dir)
        if not left:
            break
        time.sleep(0.25)
    _kill_leftovers(run_dir)
    return Outcome(rc, wall, out, err, run_dir, left)


# ----------------------------------------------------------------------------------------------- check
def _read_metrics(run_dir: Path) -> list[dict] | None:
    try:
        with open(run_dir / "metrics.csv") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return None


def _checkpoints(run_dir: Path) -> list[tuple[int, int, str]]:
    import h5py

    out = []
    for p in sorted((run_dir / "ckpt").glob("round-*.h5")):
        try:
            with h5py.File(p, "r") as f:
                out.append((int(f.attrs["round"]), int(f.attrs["term"]), p.name))
        except (OSError, KeyError) as exc:
            out.append((-1, -1, f"{p.name}: unreadable ({exc})"))
    return out


def _terms(run_dir: Path) -> dict[int, dict]:
    out = {}
    d = run_dir / "terms"
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith("term-") and p.name.endswith(".json"):
                try:
                    out[int(p.name[5:-5])] = json.loads(p.read_text())
                except ValueError:
                    out[int(p.name[5:-5])] = {}
    return out


def check(s: Schedule, o: Outcome) -> list[str]:
    """Every invariant the finished run ``o`` of ``s`` violates, one explanation each (empty: it passed)."""
    e = expect(s)
    bad: list[str] = []
    run_dir = o.run_dir

    def fail(name: str, why: str) -> None:
        bad.append(f"[{name}] {why}")

    # -- the run ends within its bound, whole, with the README's exit code
    restarts = o.err.count("launching again")  # mpirun failed or hung before rank 0 ran: not the schedule's time
    bound = e.bound + restarts * (START_TIMEOUT + 2)
    if o.wall > bound:
        fail("bound", f"the job took {o.wall:.1f}s, more than the schedule's bound of {bound:.1f}s"
             + (f" ({restarts} start-up relaunches included)" if restarts else ""))
    if o.leftovers:
        fail("bound", f"processes of the run outlived the launcher: {o.leftovers[:3]}")
    if o.rc != e.code:
        fail("exit code", f"launcher exited {o.rc}, the README says {e.code} for this schedule "
             f"({'; '.join(e.notes) or 'the run completes'})")
    try:
        summ = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        fail("summary", f"no readable summary.json ({exc})")
        summ = {}
    if summ.get("status") == "running":
        fail("summary", "summary.json was left 'running' by a launch that ended")
    if summ and summ.get("exit_code") != o.rc:
        fail("summary", f"summary.json exit_code {summ.get('exit_code')} but the launcher exited {o.rc}")
    status = {0: "completed", 3: "no-workers"}.get(e.code, "failed")
    if summ and summ.get("status") != status:
        fail("summary", f"status {summ.get('status')!r}, expected {status!r} (exit {e.code})")

    # -- at most one coordinator per term: claims 1..K, one holder each, the chain of the model
    terms = _terms(run_dir)
    K = len(e.coordinators)
    if sorted(terms) != list(range(1, K + 1)):
        fail("one coordinator per term", f"terms claimed {sorted(terms)}, expected 1..{K} "
             f"(coordinators {e.coordinators})")
    holders = [terms.get(t, {}).get("rank") for t in range(1, K + 1)]
    if holders != e.coordinators[:len(holders)]:
        fail("one coordinator per term", f"term holders {holders}, expected {e.coordinators}")
    pids = [(v.get("host"), v.get("pid")) for v in terms.values()]
    if len(set(pids)) != len(pids):
        fail("one coordinator per term", f"one process claimed two terms: {pids}")

    # -- metrics: rows 0..last exactly once each, terms non-decreasing and claimed
    rows = _read_metrics(run_dir)
    if rows is None:
        if e.code != 4:
            fail("metrics", "no metrics.csv")
        rows = []
    rounds = [int(r["round"]) for r in rows]
    if rounds != list(range(len(rounds))):
        dup = sorted({r for r in rounds if rounds.count(r) > 1})
        fail("one row per round", f"metrics rounds are not 0..{len(rounds) - 1} once each: duplicates {dup}, "
             f"sequence {rounds}")
    if e.code == 0 and rounds != list(range(ROUNDS)):
        fail("one row per round", f"a completed run has rows {rounds[:3]}..{rounds[-3:]} ({len(rounds)}), "
             f"not 0..{ROUNDS - 1}")
    if e.code == 3 and e.last_round is not None and rounds and rounds[-1] < e.last_round - 1:
        fail("one row per round", f"rows end at round {rounds[-1]}, the last worker was lost at round {e.last_round}")
    mterms = [int(r["term"]) for r in rows if r.get("term")]
    if mterms != sorted(mterms):
        fail("terms only grow", f"metrics terms go down: {mterms}")
    if set(mterms) - set(terms):
        fail("one coordinator per term", f"metrics rows of unclaimed terms {sorted(set(mterms) - set(terms))}")

    # -- checkpoints: ordered by round, terms never go down; a resume takes the highest-term newest
    cks = _checkpoints(run_dir)
    if any(r < 0 for r, _, _ in cks):
        fail("checkpoints", f"unreadable checkpoints: {[n for r, _, n in cks if r < 0]}")
    cks = [c for c in cks if c[0] >= 0]
    by_round = sorted(cks)
    if [t for _, t, _ in by_round] != sorted(t for _, t, _ in by_round):
        fail("terms only grow", f"checkpoint (round, term) by round: {[(r, t) for r, t, _ in by_round]}")
    if {t for _, t, _ in cks} - set(terms):
        fail("one coordinator per term", f"checkpoints of unclaimed terms: {[(r, t) for r, t, _ in by_round]}")
    if cks:
        from ftmpi.storage.checkpoint import newest_valid

        try:
            path, _, _ = newest_valid(run_dir)
            best = max(cks, key=lambda c: (c[1], c[0]))
            if path.name != best[2]:
                fail("terms only grow", f"a resume would take {path.name}, not the newest of the highest term "
                     f"{best[2]}")
        except Exception as exc:  # noqa: BLE001 (reported as a violation)
            fail("checkpoints", f"no valid checkpoint to resume from: {exc}")
    if e.code == 0:
        if not cks or max(cks)[0] != ROUNDS or max(cks)[1] != K:
            fail("checkpoints", f"a completed run's newest checkpoint is {max(cks)[:2] if cks else None}, expected "
                 f"(round {ROUNDS}, term {K})")

    # -- nobody lost but the ranks the schedule killed, stopped or stalled past the limit; all of them lost
    if summ and e.code in (0, 3):
        if summ.get("term") != K:
            fail("one coordinator per term", f"summary term {summ.get('term')}, expected {K}")
        if summ.get("coordinator") != e.coordinators[-1]:
            fail("one coordinator per term", f"summary coordinator {summ.get('coordinator')}, expected "
                 f"{e.coordinators[-1]}")
        changes = [(c.get("lost"), c.get("new")) for c in summ.get("coordinator_changes") or []]
        if changes != e.changes:
            fail("no false loss", f"coordinator changes {changes}, expected {e.changes}")
        fails = summ.get("failures") or []
        promoted = [f["rank"] for f in fails if f.get("how") == "promoted"]
        if promoted:
            fail("no false loss", f"deputies {promoted} gave their rows up, but a deputy that takes over keeps them")
        lost = [(f["rank"], f.get("round"), f.get("how")) for f in fails if f.get("how") != "promoted"]
        ranks = [r for r, _, _ in lost]
        if sorted(ranks) != sorted(e.lost):
            extra = sorted(set(ranks) - set(e.lost))
            missing = sorted(set(e.lost) - set(ranks))
            twice = sorted({r for r in ranks if ranks.count(r) > 1})
            fail("no false loss", f"workers declared lost {lost}; expected {sorted(e.lost.items())}"
                 + (f"; lost without cause: {extra}" if extra else "")
                 + (f"; never declared: {missing}" if missing else "")
                 + (f"; declared twice: {twice}" if twice else ""))
        for r, rnd, how in lost:
            if r in e.coord_lost and rnd in (e.lost[r], e.lost[r] - 1):
                continue
            if r in e.lost and rnd != e.lost[r]:
                fail("no false loss", f"worker {r} declared lost at round {rnd} ({how}); its fault fired at round "
                     f"{e.lost[r]}")
            if r in e.never_joined and how not in LOST_HOW_AT_START:
                fail("no false loss", f"worker {r} stopped before its hello was lost as {how!r}")
        if summ.get("alive_workers") != len(e.alive):
            fail("coverage", f"alive_workers {summ.get('alive_workers')}, expected {len(e.alive)} ({e.alive})")
        # -- coverage: every row owned (remap full) unless the last worker's rows were orphaned
        cov, orph = summ.get("coverage"), int(summ.get("rows_orphaned") or 0)
        if e.code == 0 and (cov != 1.0 or orph):
            fail("coverage", f"coverage {cov} with {orph} rows orphaned under remap full, expected 1.0")
        if e.code == 3 and (cov is None or abs(cov * TRAIN_ROWS + orph - TRAIN_ROWS) > 0.5):
            fail("coverage", f"coverage {cov} and {orph} rows orphaned do not account for the {TRAIN_ROWS} rows")
        for key in ("rows_unreadable", "rows_unwritten"):
            if summ.get(key):
                fail("coverage", f"{key} = {summ.get(key)} with no disk fault")
        dropped = sum(int(f.get("rows_dropped") or 0) for f in fails)
        if dropped:
            fail("coverage", f"{dropped} rows dropped under remap full")
        if e.code == 0 and (summ.get("rounds") != ROUNDS or summ.get("iterations") != 200):
            fail("summary", f"rounds {summ.get('rounds')} iterations {summ.get('iterations')}, expected {ROUNDS}, 200")
    if e.code == 4 and summ and summ.get("written_by") != "ftmpi launch":
        fail("summary", f"exit 4 (nobody took over) but summary.json was written by {summ.get('written_by')!r}")

    # -- the model's own check: the faults it says fired left their mark, the others did not
    marks = {}
    fdir = run_dir / "faults"
    if fdir.is_dir():
        for p in fdir.glob("rank-*.json"):
            try:
                m = json.loads(p.read_text())
                marks[int(m["rank"])] = m
            except (ValueError, KeyError, OSError):
                pass
    fired_ranks = {f.rank for f in e.fired}
    if set(marks) != fired_ranks and e.code != 4:
        fail("model", f"faults fired on ranks {sorted(marks)}, the model says {sorted(fired_ranks)} "
             "(a wrong expectation or a fault that fired when it should not)")
    return bad


def parse(specs: str, hosts: int = 1, timeout: float = 2.0, detector: str = "ulfm", seed: int = -1) -> Schedule:
    """A hand-made schedule: ``"kill:0@5 slow:2@3:1.5 hang:3@start"`` (as ``--inject``)."""
    faults = []
    for sp in specs.split():
        kind, rest = sp.split(":", 1)
        rank, at = rest.split("@")
        at, _, secs = at.partition(":")
        faults.append(Fault(kind, int(rank), at if at in POINTS else int(at), float(secs or 0)))
    return Schedule(seed, hosts, 4 if hosts == 1 else 3, timeout, 8.0, detector, tuple(faults))


def report(s: Schedule, o: Outcome, violations: list[str]) -> str:
    """The failure message of one schedule: what ran, what went wrong, how to run it again."""
    e = expect(s)
    tail = "\n".join(o.err.strip().splitlines()[-25:])
    return (f"nemesis schedule: {s.describe()}\n"
            f"expected: exit {e.code}, lost {sorted(e.lost.items())}, coordinators {e.coordinators}, bound "
            f"{e.bound:.0f}s; got exit {o.rc} in {o.wall:.1f}s\n"
            "violated:\n  " + "\n  ".join(violations) + "\n"
            f"reproduce:\n  {reproduce(s, o.run_dir)}\n"
            f"stderr (last lines):\n{tail}")


# ------------------------------------------------------------------------------------------ campaign CLI
def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run nemesis schedules and check them")
    ap.add_argument("--seed", type=int, action="append", default=[], help="one seed (repeatable)")
    ap.add_argument("--seeds", default="", help="a range A-B of seeds")
    ap.add_argument("--hosts", type=int, default=1, choices=(1, 2))
    ap.add_argument("--out", default="", help="append one JSON line per schedule to this file")
    ap.add_argument("--dir", default="/tmp/nemesis", help="run dirs go here")
    ap.add_argument("--keep", action="store_true", help="keep the run dirs of passing schedules")
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--dry", action="store_true", help="print the schedules and expectations only")
    ap.add_argument("--faults", default="", help="a hand-made schedule instead of seeds, e.g. 'kill:0@5 slow:2@3:1.5'")
    ap.add_argument("--timeout", type=float, default=2.0, help="with --faults")
    ap.add_argument("--detector", default="ulfm", help="with --faults")
    args = ap.parse_args(argv)
    seeds = list(args.seed)
    if args.seeds:
        a, b = (int(x) for x in args.seeds.split("-"))
        seeds += list(range(a, b + 1))
    if args.hosts == 2 and not args.dry and (why := why_no_hosts()):
        print(f"skipped: {why}")
        return 0
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    failed = 0
    todo = [generate(seed, args.hosts) for seed in seeds]
    if args.faults:
        todo = [parse(args.faults, args.hosts, args.timeout, args.detector)]
    for s in todo:
        seed = s.seed
        e = expect(s)
        if args.dry:
            print(f"{s.describe()}\n   -> exit {e.code}, lost {sorted(e.lost.items())}, changes {e.changes}, "
                  f"bound {e.bound:.0f}s")
            continue
        run_dir = base / (f"h{args.hosts}-s{seed}" if not args.faults else "custom")
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        o = run(s, run_dir, nice=args.nice)
        v = check(s, o)
        (base / f"{run_dir.name}.err").write_text(o.err)
        failed += bool(v)
        line = {"seed": seed, "hosts": args.hosts, "schedule": s.to_json(), "expected": e.code, "rc": o.rc,
                "wall": round(o.wall, 1), "bound": round(e.bound, 1), "violations": v}
        print(("PASS " if not v else "FAIL ") + json.dumps(line), flush=True)
        if v:
            print(report(s, o, v), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        if not v and not args.keep:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_main())
