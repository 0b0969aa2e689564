"""Quorum rounds, late replies and chronic stragglers: the decisions, with no MPI, no I/O and no clock
(times come in as arguments, in seconds since the round went out).

- :func:`close_time`: when a round may close: once ``executor.quorum`` of the alive workers replied and
  ``executor.straggler_wait`` passed since the quorum's last reply (seconds, or ``"Nx"``: N times the median
  reply time of the round), or once every alive worker replied (the driver's own test). Quorum 1.0 never
  closes early: every round waits for every alive worker, as before.
- :class:`Stragglers`: what rank 0 knows of the workers' pace, held by
  :class:`~ftmpi.core.cluster.ClusterState` (in its snapshot): which rounds each worker was late in, its
  measured time per local step, its share of the round's iterations once rebalanced, and which rounds a
  late reply may still be folded into.

**Late replies are folded, not dropped.** A reply for round ``m`` that arrives after ``m`` closed, while round
``r`` runs, is aggregated in ``r`` with staleness ``s = r - m`` (at most ``executor.max_staleness``; a later one is
dropped and counted). Its update (a delta from the model of round ``m``'s broadcast) is added at the weight it
would have had in round ``m``: while a quorum round runs without a worker, that worker's share of the average
stays in the denominator (its mass of its newest reply), so the model moves by the others' shares only, and
its own share arrives with its reply. ``executor.late_weight`` scales it: ``full`` (1, the default: the slow
worker's data keeps its full weight), ``inverse`` (1/(1+s), as FedAsync's polynomial staleness), ``drop``
(0: late replies dropped, as a first-K-of-N quorum; for comparison). The measurement behind the default is in
``benchmarks/results/straggler.md``.

**Chronic stragglers are rebalanced.** A worker late in most of the last ``executor.straggler_window`` rounds
whose time per local step is more than :attr:`Rules.recover` times the median of the others' is given
``iters x median/its own`` local iterations per round (at least one). Its update is normalized by the work it did
(times ``iters / its iters``, as FedNova's normalized averaging), so that its shard keeps its weight in the
objective while it does less per round; rank 0 warns. Once its (smoothed) step time is back within
:attr:`Rules.recover` of the others' median for :attr:`Rules.calm` rounds in a row it gets the full round back.
Rebalancing is decided on the step time, not on lateness, so a rebalanced worker that keeps up is not given its
work back until it is really faster.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftmpi.config import wait_parts

__all__ = ["Folding", "Rules", "Stragglers", "close_time"]


@dataclass(frozen=True)
class Rules:
    """The executor keys that govern quorum rounds (:meth:`of`)."""

    quorum: float = 1.0  # fraction of the alive workers a round waits for
    wait: float = 0.5  # how long past the quorum's arrival: seconds, or a multiple of the median reply time
    relative: bool = True  # ``wait`` is a multiple of the median reply time
    max_staleness: int = 2  # rounds a late reply may be folded after its own
    late_weight: str = "full"  # full | inverse | drop
    window: int = 5  # rounds of lateness looked at (k)
    recover: float = 1.25  # step time over the others' median under which a worker is not slow
    min_share: float = 0.05  # the least share of a round's iterations a worker is given
    calm: int = 3  # rounds in a row a rebalanced worker's step time must be back within ``recover`` to recover

    @classmethod
    def of(cls, ex: Any) -> Rules:
        """From an :class:`~ftmpi.config.ExecutorConfig` (its keys already validated)."""
        wait, relative = wait_parts(ex.straggler_wait)
        return cls(float(ex.quorum), wait, relative, int(ex.max_staleness), str(ex.late_weight),
                   int(ex.straggler_window))

    @property
    def active(self) -> bool:
        """Rounds may close before every alive worker replied (quorum < 1)."""
        return self.quorum < 1.0

    def needed(self, alive: int) -> int:
        """Replies that make a quorum of ``alive`` workers: ceil(quorum x alive), at least one."""
        return max(1, math.ceil(self.quorum * alive - 1e-9)) if alive else 0

    def weight(self, staleness: int) -> float:
        """The factor of a reply folded ``staleness`` rounds late (1 for a fresh one)."""
        if staleness <= 0 or self.late_weight == "full":
            return 1.0
        return 1.0 / (1.0 + staleness) if self.late_weight == "inverse" else 0.0


def close_time(rules: Rules, alive: int, arrivals: Iterable[float], final: bool = False) -> float | None:
    """When the round may close, in seconds since it went out, given the times of the replies so far; None
    while no quorum replied (the round then waits for everyone, bounded by the silence limit as always), and
    always None for quorum 1.0 and for the run's ``final`` round (nothing can be folded after it)."""
    if not rules.active or final:
        return None
    t = sorted(arrivals)
    need = rules.needed(alive)
    if need == 0 or len(t) < need:
        return None
    wait = rules.wait * _median(t) if rules.relative else rules.wait
    return t[need - 1] + wait


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return 0.0 if n == 0 else (s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2]))


@dataclass
class Folding:
    """What a quorum round's aggregate needs beyond its fresh replies (:meth:`Stragglers.folding`):
    ``scale``: rank -> factor of its fresh update (its work normalization, only where not 1); ``late``: rank ->
    the late replies it sent, each with its factor (staleness weight x work normalization); ``absent``: rank ->
    (mass, loss) of its newest reply, for the alive workers with no fresh reply this round (their share stays in
    the denominator)."""

    scale: dict[int, float] = field(default_factory=dict)
    late: dict[int, list[tuple[Any, float]]] = field(default_factory=dict)
    absent: dict[int, tuple[float, float]] = field(default_factory=dict)


class Stragglers:
    """Rank 0's record of the workers' pace (see the module docstring). Plain data throughout (:meth:`snapshot`).

    Attributes:
        rules: The quorum keys in force.
        late: rank -> late flags of its newest rounds (at most ``rules.window``; newest last).
        step: rank -> smoothed seconds per local iteration, from its replies' ``t_compute``.
        share: rank -> its share of a round's iterations; only rebalanced workers are in it.
        basis: rank -> (mass, loss) of its newest reply.
        rounds: round -> (epoch it began in, its iterations, {rank: iterations} of the rebalanced workers), for
            the rounds a late reply may still belong to.
        last: rank -> the newest round it replied to (fresh or late).
        folded, dropped: late replies folded, and dropped (later than ``max_staleness``).
        rebalances: rebalancing decisions logged (a worker slowed down or recovered).
    """

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules()
        self.late: dict[int, list[bool]] = {}
        self.step: dict[int, float] = {}
        self.share: dict[int, float] = {}
        self.basis: dict[int, tuple[float, float]] = {}
        self.rounds: dict[int, tuple[int, int, dict[int, int]]] = {}
        self.last: dict[int, int] = {}
        self.calm: dict[int, int] = {}  # rebalanced rank -> rounds in a row its step time was back to the others'
        self.folded = 0
        self.dropped = 0
        self.rebalances = 0

    # ------------------------------------------------------------------------------------------ rounds
    def iters_for(self, rank: int, iters: int) -> int:
        """Local iterations of ``rank`` in a round of ``iters``: all of them unless it was rebalanced."""
        share = self.share.get(rank)
        return iters if share is None else max(1, min(iters, int(iters * share + 0.5)))

    def begin(self, rnd: int, epoch: int, iters: int) -> None:
        """Round ``rnd`` goes out with ``iters`` iterations: remember what each worker was given, for its late
        reply; forget rounds no reply may be folded from any more."""
        self.rounds[rnd] = (epoch, iters, {r: self.iters_for(r, iters) for r in self.share})
        for old in [m for m in self.rounds if m < rnd - self.rules.max_staleness - self.rules.window]:
            del self.rounds[old]  # kept a window longer than foldable: a reply too late still tells its pace

    def assigned(self, rank: int, rnd: int) -> tuple[int, int]:
        """(the round's iterations, those ``rank`` was given) for round ``rnd`` (both 0 when forgotten)."""
        epoch, iters, given = self.rounds.get(rnd, (0, 0, {}))
        return iters, given.get(rank, iters)

    def can_fold(self, rank: int, rnd: int, epoch: int, now_round: int) -> bool:
        """A reply of ``rank`` for the closed round ``rnd`` may be folded into round ``now_round``: at most
        ``max_staleness`` late, for a round it has not answered yet, of that round's epoch or later, and the rule
        is not ``drop``."""
        s = now_round - rnd
        return (0 < s <= self.rules.max_staleness and rnd in self.rounds and rnd > self.last.get(rank, -1)
                and epoch >= self.rounds[rnd][0] and self.rules.weight(s) > 0)

    def heard(self, rank: int, rnd: int, t_compute: float, mass: float | None = None, loss: float = 0.0) -> None:
        """A reply of ``rank`` for round ``rnd`` came (fresh, late, or too late: ``mass`` None, not folded): its
        pace, and, when folded, its basis."""
        self.last[rank] = max(rnd, self.last.get(rank, -1))
        if mass is not None:
            self.basis[rank] = (float(mass), float(loss))
        _, given = self.assigned(rank, rnd)
        if given > 0 and t_compute > 0:
            per = t_compute / given
            old = self.step.get(rank)
            self.step[rank] = per if old is None else 0.5 * old + 0.5 * per

    def close(self, rnd: int, alive: Sequence[int], replied: Iterable[int]) -> list[str]:
        """Round ``rnd`` closed with fresh replies from ``replied``: note who was late; rebalance a worker late in
        most of the last ``window`` rounds and slower than the others, give a recovered one its work back.
        Returns the lines to log (a rebalancing is a warning: shown even without a progress stream)."""
        got, w = set(replied), self.rules.window
        for r in list(self.late):
            if r not in alive:  # lost: forgotten
                for d in (self.late, self.step, self.share, self.basis, self.last, self.calm):
                    d.pop(r, None)
        lines = []
        for r in alive:
            flags = self.late.setdefault(r, [])
            flags.append(r not in got)
            del flags[:-w]
            others = [self.step[o] for o in alive if o != r and o in self.step]
            if r not in self.step or not others:
                continue
            ratio = self.step[r] / max(_median(others), 1e-12)
            if r in self.share:
                self.calm[r] = self.calm.get(r, 0) + 1 if ratio <= self.rules.recover else 0
                if self.calm[r] >= self.rules.calm:  # in a row: one quick round on a busy node is not a recovery
                    del self.share[r], self.calm[r]
                    flags.clear()
                    self.rebalances += 1
                    lines.append(f"worker {r} recovered ({ratio:.1f}x the median step time): the full round's "
                                 f"iterations again from round {rnd + 1}")
                else:
                    self.share[r] = max(self.rules.min_share, min(1.0, 1.0 / ratio))
            elif 2 * sum(flags) > w and ratio > self.rules.recover:
                self.share[r] = max(self.rules.min_share, min(1.0, 1.0 / ratio))
                self.rebalances += 1
                lines.append(f"warning: worker {r} is a chronic straggler (late in {sum(flags)} of its last "
                             f"{len(flags)} rounds, {ratio:.1f}x the median step time): {self.share[r]:.0%} of "
                             f"each round's local iterations from round {rnd + 1}, its update weighed as a full "
                             "round's")
                flags.clear()
        return lines

    def folding(self, fresh: dict[int, Any], late: Sequence[Any], rnd: int, alive: Sequence[int],
                send_gradients: bool) -> Folding:
        """The :class:`Folding` of round ``rnd``: ``fresh`` its accepted replies by rank, ``late`` the late replies
        accepted during it (each with ``.rank`` and ``.round``). Under ``send_gradients`` a reply is a mean gradient
        and needs no work normalization."""
        f = Folding()
        for r, reply in fresh.items():
            c = 1.0 if send_gradients else self._work(r, reply.round)
            if c != 1.0:
                f.scale[r] = c
        for reply in late:
            c = 1.0 if send_gradients else self._work(reply.rank, reply.round)
            f.late.setdefault(reply.rank, []).append((reply, self.rules.weight(rnd - reply.round) * c))
        self.folded += len(late)
        f.absent = {r: self.basis[r] for r in alive if r not in fresh and r in self.basis}
        return f

    def _work(self, rank: int, rnd: int) -> float:
        iters, given = self.assigned(rank, rnd)
        return iters / given if given > 0 and iters > 0 else 1.0

    # ---------------------------------------------------------------------------------------- snapshot
    def snapshot(self) -> dict[str, Any]:
        """Everything, as plain values (the rules included: a deputy that restores it runs the same rounds)."""
        r = self.rules
        return {"rules": [r.quorum, r.wait, r.relative, r.max_staleness, r.late_weight, r.window, r.recover,
                          r.min_share, r.calm],
                "late": {k: list(v) for k, v in self.late.items()}, "step": dict(self.step),
                "share": dict(self.share), "basis": {k: list(v) for k, v in self.basis.items()},
                "rounds": {m: [e, i, dict(g)] for m, (e, i, g) in self.rounds.items()}, "last": dict(self.last),
                "calm": dict(self.calm),
                "counts": [self.folded, self.dropped, self.rebalances]}

    @classmethod
    def restore(cls, snap: dict[str, Any] | None) -> Stragglers:
        """The object :meth:`snapshot` described (None: a snapshot from before quorum rounds, the defaults)."""
        if not snap:
            return cls()
        q, wait, rel, stale, lw, win, rec, mn, calm = snap["rules"]
        s = cls(Rules(float(q), float(wait), bool(rel), int(stale), str(lw), int(win), float(rec), float(mn),
                      int(calm)))
        s.late = {int(k): [bool(x) for x in v] for k, v in snap["late"].items()}
        s.step = {int(k): float(v) for k, v in snap["step"].items()}
        s.share = {int(k): float(v) for k, v in snap["share"].items()}
        s.basis = {int(k): (float(v[0]), float(v[1])) for k, v in snap["basis"].items()}
        s.rounds = {int(m): (int(e), int(i), {int(k): int(n) for k, n in g.items()})
                    for m, (e, i, g) in snap["rounds"].items()}
        s.last = {int(k): int(v) for k, v in snap["last"].items()}
        s.calm = {int(k): int(v) for k, v in snap["calm"].items()}
        s.folded, s.dropped, s.rebalances = (int(x) for x in snap["counts"])
        return s
