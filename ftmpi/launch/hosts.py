"""Hosts of a launch: Open MPI hostfiles, which host a failed job lost, and which ranks were on it. No MPI.

Open MPI 5.0.x survives a dead *process* (ULFM) but not a dead *daemon*: when a host's ``prted`` is lost,
mpirun prints "PRTE has lost communication with a remote daemon" (naming the host) and ends the job. The
launcher then relaunches; this module holds the bookkeeping for that: the hostfile or SLURM allocation, read
again at each relaunch, which of its hosts answer (:func:`answering`), which ranks were on a lost host.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ftmpi.errors import ConfigError

#: mpirun's words for a lost or unreachable host (PRRTE 3.x in Open MPI 5.0.x)
LOST_DAEMON = re.compile(r"lost communication with a remote daemon|unable to reliably start one or more daemons|"
                         r"daemon failed to report back|daemon on node .* failed to start", re.I)
#: the line of a failed probe's output that says why (ssh's own words, or mpirun's)
_UNREACHABLE = re.compile(r"ssh:|no route|refused|denied|timed out|could not resolve|unknown host|"
                          r"daemon failed|daemon exit status", re.I)
_NODE = re.compile(r"(?:Remote daemon[^\n]*?\bon node|Remote host:)\s+([\w.\-]+)", re.I)


@dataclass(frozen=True)
class Host:
    name: str
    slots: int


def read_hostfile(path: str | Path) -> list[Host]:
    """Parse an Open MPI hostfile (``name [slots=N] ...``; ``#`` comments; a name without slots has 1).

    Raises:
        ConfigError: a missing or empty file, or a malformed line (names the file and line).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"hostfile {p}: cannot read it ({exc.strerror or exc})") from None
    hosts: list[Host] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *opts = line.split()
        slots = 1
        for o in opts:
            key, _, val = o.partition("=")
            if key in ("slots", "max_slots", "max-slots"):
                if not val.isdigit() or int(val) < 1:
                    raise ConfigError(f"hostfile {p} line {n}: {o!r}: expected slots=N with N >= 1")
                if key == "slots":
                    slots = int(val)
        hosts.append(Host(name, slots))
    if not hosts:
        raise ConfigError(f"hostfile {p}: no hosts in it (expected lines like 'nodeA slots=4')")
    return hosts


def short_of_slots(hosts: list[Host] | None, ranks: int, where: str, spares: int = 0) -> str | None:
    """A warning when ``hosts`` (from ``where``: a hostfile, the SLURM allocation) offer fewer slots than the
    ``ranks`` of a launch (its full width: 1 coordinator, the workers and ``spares`` spares; mpirun then runs
    more ranks than slots on them: ``--oversubscribe``); None when they suffice or nothing is known of the
    hosts."""
    if not hosts:
        return None
    offered = sum(h.slots for h in hosts)
    if offered >= ranks:
        return None
    extra = f" + {spares} spare(s)" if spares else ""
    return (f"{where} offers {offered} slot(s) on {len(hosts)} host(s), but the launch needs {ranks} (1 coordinator + "
            f"{ranks - 1 - spares} worker(s){extra}): the hosts will run more ranks than they have slots")


def write_hostfile(path: Path, hosts: list[Host], kind: str = "openmpi") -> Path:
    """Open MPI's format (``name slots=N``), or hydra's (``name:N``) for MPICH."""
    fmt = "{0}:{1}\n" if kind == "mpich" else "{0} slots={1}\n"
    path.write_text("".join(fmt.format(h.name, h.slots) for h in hosts))
    return path


def lost_hosts(stderr: str, hosts: list[Host]) -> list[str]:
    """The hosts mpirun's output names as lost (empty when it reported no daemon loss)."""
    if not LOST_DAEMON.search(stderr):
        return []
    names = {h.name for h in hosts}
    named = [m.group(1) for m in _NODE.finditer(stderr)]
    return sorted({n for n in named if n in names} | {n.split(".")[0] for n in named if n.split(".")[0] in names})


def ranks_on(hosts: list[Host], n_ranks: int) -> dict[str, list[int]]:
    """Ranks per host under ``--map-by slot`` (hosts filled in order); oversubscribed ranks wrap around."""
    out: dict[str, list[int]] = {h.name: [] for h in hosts}
    order = [h.name for h in hosts for _ in range(h.slots)]
    for r in range(n_ranks):
        out[order[r % len(order)]].append(r)
    return out


def answering(hosts: list[Host], command: Callable[[str], list[str]], env: Mapping[str, str], limit: float,
              tries: int = 2) -> tuple[list[Host], dict[str, str]]:
    """Which of ``hosts`` answer now: ``command(name)`` (a cheap start on that host the way the job starts its
    daemons: ``mpicmd.probe``) runs for every host at once (at most 16 at a time), each in its own session and
    ended with everything it started after ``limit`` seconds; a host answers when its command exits 0. A host
    that did not answer is tried again after a second (``tries`` in all: one failed start of mpirun under load
    does not drop a host). A command that cannot be run at all tells nothing of the hosts: every host is then
    taken as answering.

    Returns:
        The hosts that answered, in their order, and for each other host why not (one line).
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str) -> str | None:  # None: it answered
        with tempfile.TemporaryFile("w+", errors="replace") as log:  # a file, not a pipe: a daemon left
            try:  # behind holding it open cannot keep the probe waiting
                p = subprocess.Popen(command(name), env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
            except OSError:
                return None
            try:
                rc = p.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _end(p)
                return f"no answer within {limit:g}s"
            if rc == 0:
                return None
            log.seek(0)
            lines = [ln.strip() for ln in log.read()[-20000:].splitlines()]
        said = [ln for ln in lines if ln and set(ln) != {"-"}]
        line = next((ln for ln in said if _UNREACHABLE.search(ln)), said[0] if said else "")
        return f"exit {rc}" + (f": {line[:200]}" if line else "")

    why: dict[str, str] = {}
    todo = [h.name for h in hosts]
    for attempt in range(max(1, tries)):
        if attempt:
            time.sleep(1.0)
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(todo)))) as pool:
            said = dict(zip(todo, pool.map(one, todo), strict=True))
        why.update({n: w for n, w in said.items() if w is not None})
        for n, w in said.items():
            if w is None:
                why.pop(n, None)
        todo = [n for n in todo if n in why]
        if not todo:
            break
    return [h for h in hosts if h.name not in why], why


def _end(p: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL a second later, to a probe's session (mpirun and the agent it started)."""
    import os
    import signal

    for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def tasks_per_node(spec: str) -> list[int]:
    """SLURM's ``SLURM_TASKS_PER_NODE`` (e.g. ``2(x3),1``) as one count per node."""
    out: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ValueError(f"SLURM_TASKS_PER_NODE: cannot read {spec!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def slurm_hosts(env: Mapping[str, str]) -> list[Host] | None:
    """The hosts of a multi-node SLURM allocation with their task counts, or None (not in SLURM, one node,
    or ``scontrol`` unavailable): the launcher then leaves the hosts to mpirun."""
    nodelist, tasks = env.get("SLURM_JOB_NODELIST"), env.get("SLURM_TASKS_PER_NODE")
    if not nodelist or not tasks:
        return None
    try:
        names = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               timeout=30, check=True).stdout.split()
        counts = tasks_per_node(tasks)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if len(names) < 2 or len(names) != len(counts):
        return None
    return [Host(n, c) for n, c in zip(names, counts, strict=True)]
