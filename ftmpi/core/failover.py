"""Coordinator failover, the parts without MPI: who the deputy is, what the coordinator replicates to it, what
the deputy keeps, and the cluster state it coordinates from when it takes over.

The coordinator names a deputy every round (the lowest alive worker, announced in ``Round.deputy``) and sends
it, after the next round's broadcast, a :class:`ftmpi.core.protocol.Replica`: the exact global model and optimizer
state, the counters, the metrics row not written yet and the output counters, plus the ``ClusterState``
snapshot whenever it changed (or the deputy did). The deputy keeps only the newest complete replica
(:class:`ReplicaKeeper`). When the coordinator is lost, the announced deputy takes over in its own process:
:func:`takeover_state` restores the state and hands the deputy's own rows to the survivors like a lost
worker's (under ``executor.remap``); every other worker waits, bounded, for the deputy's first round message.

Who takes over is decided by the announcement, not by a vote: a ULFM ``Agree`` on a communicator that still
holds a *hung* coordinator never completes (the alive-communicator rebuild waits for it the same way), and the
rule must also hold without ULFM, where only the deadline detects a lost coordinator.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftmpi.core import protocol as P
from ftmpi.core.cluster import ClusterState, Effect, Lost
from ftmpi.core.handoff import Policy
from ftmpi.core.kinds import How

__all__ = ["Change", "Promoted", "ReplicaKeeper", "ReplicaSender", "beat_period", "choose_deputy", "majority",
           "silence_limit", "spare_ranks", "state_key", "takeover_state"]


class Promoted(Exception):  # noqa: N818 (not an error: control goes to the coordinator's code in cli.py)
    """Raised by a deputy's worker loop when it is to become the coordinator: cli.py then runs
    ``coordinator.take_over`` in the same process (a worker never imports the coordinator's modules)."""

    def __init__(self, replica: P.Replica, change: Change, data: Any, worker: Any = None) -> None:
        super().__init__(f"rank {change.new} takes over from rank {change.lost}")
        self.replica, self.change, self.data = replica, change, data
        self.worker = worker  # the deputy's worker (its shard and optimizer state), when it trained


def spare_ranks(size: int, spares: int) -> list[int]:
    """The world ranks of the hot spares (``executor.spares``) in a job of ``size`` ranks: the highest ones.

    Raises:
        ConfigError: No worker would be left (rank 0 coordinates, every other rank would be a spare).
    """
    if spares and size - 1 - spares < 1:
        from ftmpi.errors import ConfigError

        raise ConfigError(f"executor.spares: {spares} spare(s) leave no worker in a job of {size} ranks (expected "
                          f"at most {max(0, size - 2)}; ftmpi launch -n W starts 1 + W + spares ranks)")
    return list(range(size - spares, size)) if spares else []


def beat_period(timeout: float) -> float:
    """How often a rank that is waiting or training tells the other side it is alive: the coordinator pings
    every alive worker, a worker in a round sends a beat between two steps. A quarter of the timeout, at
    most 0.25 s, so that a lost rank is noticed within ``timeout + 0.5 s``."""
    return min(0.25, timeout / 4)


def silence_limit(timeout: float) -> float:
    """How long a rank may be silent before it is lost (suspected, for the coordinator): the timeout plus
    two beat periods. A rank that stalls for less than ``timeout`` is then never lost: the other side last
    heard it at most one beat (plus a little work) before the stall began."""
    return timeout + 2 * beat_period(timeout)


def write_stall_limit(timeout: float) -> float:
    """How long a write in the run dir may go without coming back before it is given up on as stalled (a
    failed write; its thread is left behind): the timeout, and never less than 10 s. A timeout tuned small to
    detect lost ranks quickly says nothing of how long a healthy but busy disk takes."""
    return max(timeout, 10.0)


def majority(reports: int, alive: int) -> bool:
    """True when ``reports`` distinct workers are more than half of the ``alive`` workers."""
    return alive > 0 and 2 * reports > alive


def choose_deputy(alive: list[int], hosts: dict[int, str] | None = None, coordinator_host: str | None = None) -> int:
    """The deputy: the lowest alive worker rank on another host than the coordinator's, where there is one
    (a lost node then does not take the coordinator and its deputy together), else the lowest alive worker;
    -1 when there is none."""
    away = [r for r in alive if hosts is not None and hosts.get(r) not in (None, "?", coordinator_host)]
    pool = away or alive
    return min(pool) if pool else -1


def state_key(s: ClusterState) -> tuple:
    """Changes whenever the parts of the state a takeover needs change: membership (epoch), the failure log,
    the recovery bookkeeping and the rows dropped since. Representative ids chosen by the workers' scores are
    refreshed with the next snapshot only (a takeover in between uses the previous ones)."""
    return (s.epoch, len(s.failures), len(s._awaiting), sum(f.recovery_time is not None for f in s.failures),
            s.rows_unreadable, s.rows_unwritten, s.phase.value, tuple(sorted(s.spares)), len(s.spare_log),
            tuple(sorted(s.adopting)), s.stragglers.rebalances)


_BIG = ("owner", "dropped", "weight", "sent_ids")  # a snapshot's per-row arrays (60 000 rows: ~280 KB in all)


@dataclass(frozen=True)
class Unchanged:
    """In a replica's snapshot, in place of a per-row array the deputy already holds from the snapshot before
    (same fingerprint): after a loss the state changes three or four times in a round or two (the loss, a
    spare's adoption, the end of its recovery, new standby files), and only the first change moves rows."""

    fp: tuple


def _fingerprint(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a)
    return a.dtype.str, a.shape, zlib.crc32(memoryview(a).cast("B"))


class ReplicaSender:
    """Builds the replicas; the state snapshot goes out only when it changed or the deputy changed, and in it
    the per-row arrays only when they changed since the snapshot this deputy got last (:class:`Unchanged`)."""

    def __init__(self) -> None:
        self._sent: tuple[int, tuple] | None = None  # (deputy, state key) of the last snapshot sent
        self._held: tuple[int, dict[str, tuple]] = (-1, {})  # (deputy, its arrays' fingerprints)
        self.sent = 0  # replicas built

    def build(self, deputy: int, state: ClusterState, model: dict[str, Any], pending: dict[str, Any] | None,
              outputs: dict[str, Any], coord: tuple[int, str, int, int], now: float,
              staged: dict[int, tuple[Any, Any, str]] | None = None) -> P.Replica:
        """``staged``: the coordinator's standby files (rank -> ids, hits, path), sent with the snapshot and
        whenever they change (in the snapshot's ``"staged"``)."""
        staged = staged or {}
        key = (*state_key(state), tuple(sorted((int(r), str(v[2]), len(v[0])) for r, v in staged.items())))
        self.sent += 1
        snap = None
        if self._sent != (deputy, key):
            snap, self._sent = compact(state.snapshot()), (deputy, key)
            snap["staged"] = dict(staged)
            held = self._held[1] if self._held[0] == deputy else {}
            fps = {}
            for name in _BIG:
                a = snap.get(name)
                if isinstance(a, np.ndarray):
                    fps[name] = _fingerprint(a)
                    if held.get(name) == fps[name]:
                        snap[name] = Unchanged(fps[name])
            snap["fingerprints"] = fps
            self._held = (deputy, fps)
        return P.Replica(state.round, state.epoch, model, snap, key, pending, outputs, coord, now, state.term)


def compact(snap: dict[str, Any]) -> dict[str, Any]:
    """A :meth:`ClusterState.snapshot` as a replica sends it, a third of the bytes for a fresh run: the row
    weights left out when every one is 1 (:meth:`ClusterState.restore` puts the ones back) and the owners in
    16 bits when every rank fits (restored as int32)."""
    out = dict(snap)
    w = out.get("weight")
    if w is not None and not np.any(w != 1.0):
        out["weight"] = None
    owner = out["owner"]
    if len(owner) and int(owner.max(initial=-1)) < np.iinfo(np.int16).max:
        out["owner"] = owner.astype(np.int16)
    return out


class ReplicaKeeper:
    """The deputy's side: the newest replica whose state snapshot it holds (a replica that refers to a
    snapshot it never got is ignored, the previous complete one is kept)."""

    def __init__(self) -> None:
        self._state: dict[str, Any] | None = None
        self._key: tuple | None = None
        self._newest: P.Replica | None = None
        self.received = 0

    def offer(self, r: P.Replica) -> None:
        self.received += 1
        if r.state is not None:
            state = dict(r.state)
            for name, v in r.state.items():  # arrays left out as unchanged: from the snapshot held
                if isinstance(v, Unchanged):
                    old = self._state or {}
                    if old.get("fingerprints", {}).get(name) != v.fp:
                        return  # not the one held (cannot happen in order): keep the previous complete one
                    state[name] = old[name]
            self._state, self._key = state, tuple(r.state_key)
            self._newest = r
        elif self._key == tuple(r.state_key) and (self._newest is None or r.round >= self._newest.round):
            self._newest = r

    def complete(self) -> P.Replica | None:
        """The newest complete replica (its ``state`` filled in), or None."""
        if self._newest is None or self._state is None:
            return None
        return dataclasses.replace(self._newest, state=self._state)


@dataclass
class Change:
    """One coordinator change, as recorded in summary.json (``coordinator_changes``) and the failure lines.
    ``how`` the loss was noticed (ulfm, timeout, or error: it abdicated) is made a :class:`How` on
    construction; :meth:`record` gives the plain dict."""

    lost: int  # the coordinator rank lost
    how: How
    new: int  # the rank that took over
    round: int  # the round redone first (the replica's)
    rounds_redone: int  # rounds the lost coordinator had started that are run again
    detected_at: float  # wall clock: the deputy noticed the loss
    injected_at: float | None = None  # wall clock of an injected fault on the lost coordinator
    kind: str | None = None
    first_round_at: float | None = None  # wall clock: the new coordinator's first round message went out
    detection_latency: float | None = None  # fault -> detection (when the fault was injected)
    takeover_time: float | None = None  # fault (or detection) -> the first round message
    replica_age: float = 0.0  # seconds between the replica being sent and the detection
    reason: str = ""
    lost_id: tuple[str, int, int] = ("?", 0, 0)  # host, pid, start time of the lost coordinator
    killed: bool = False  # a hung lost coordinator on this host was ended
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.how = How(self.how)

    def record(self) -> dict[str, Any]:
        """The fields as a dict of plain values (``how`` its string), as summary.json and the replica hold
        them."""
        return {**dataclasses.asdict(self), "how": self.how.value}

    def started(self, now: float) -> None:
        """The new coordinator's first round message went out at ``now``."""
        self.first_round_at = now
        base = self.injected_at if self.injected_at is not None else self.detected_at
        self.takeover_time = max(0.0, now - base)

    def line(self) -> str:
        lat = f", {self.detection_latency:.2f}s after the {self.kind}" if self.detection_latency is not None else ""
        took = f"; takeover {self.takeover_time:.2f}s" if self.takeover_time is not None else ""
        return (f"coordinator rank {self.lost} lost ({self.how}{lat}); rank {self.new} took over from its replica "
                f"of round {self.round - 1}: round {self.round} is redone ({self.rounds_redone} round(s) redone)"
                f"{took}")


def takeover_state(rep: P.Replica, me: int, policy: Policy, seed: int, launch_time: float, now: float,
                   handoff_file: Callable[[int], str] = lambda e: f"handoff-e{e:04d}.h5", keep: bool = False,
                   how: How | str = How.TIMEOUT) -> tuple[ClusterState, list[Effect]]:
    """The state the deputy ``me`` coordinates from: the replica's snapshot, with ``me`` as the coordinator.
    ``keep``: the deputy goes on training its own rows in its own process (a member still, so the training
    workers are those of the run before the takeover); else its rows are handed to the other workers like a
    lost worker's (one new epoch). A lost coordinator that itself trained rows (a deputy that kept them) is
    lost like a worker, noticed ``how``. Returns the state and the effects to carry out (handoff write and
    messages, log lines)."""
    if rep.state is None:
        raise ValueError("a replica without its state snapshot cannot be taken over from")
    s = ClusterState.restore(rep.state, policy, seed, launch_time, handoff_file)
    s.coordinator = me
    s.term = int(rep.term) + 1  # at least: the run dir may hold a higher claim (storage.term)
    s.round = int(rep.round)
    lost: list[Lost] = []
    old = int(rep.coord[0])
    if old != me and old in s.members and s.members[old].alive:
        lost.append(Lost(old, how, "the coordinator, which trained its own rows, was lost"))
    if not keep and me in s.members and s.members[me].alive:
        lost.append(Lost(me, How.PROMOTED, f"became the coordinator (rank {old} lost)"))
    return s, (s.apply(lost, now) if lost else [])
