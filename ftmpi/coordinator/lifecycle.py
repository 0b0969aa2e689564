"""The start and the end of a coordinator's run, as a mixin of :class:`ftmpi.coordinator.driver.Coordinator`: the join
handshake, dealing the rows and writing the shards, checkpoints, and finishing (outputs first, then the
workers are stopped and hung ones reaped). The round loop stays in :mod:`ftmpi.coordinator.driver`.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from ftmpi.comm import TAG_CTRL, TAG_REPLY
from ftmpi.config import config_to_dict
from ftmpi.coordinator.files import save_and_prune, shards_by_reference, write_shards
from ftmpi.coordinator.outputs import summary
from ftmpi.core import protocol as P
from ftmpi.core.cluster import Lost
from ftmpi.core.partition import class_histogram, partition
from ftmpi.errors import EXIT_DISK, CheckpointError, WriteFailed
from ftmpi.observe.metrics import write_json_atomic, write_status
from ftmpi.procs import hostname, kill_if_same
from ftmpi.storage.checkpoint import Snapshot, ckpt_path
from ftmpi.storage.rundata import EvalSetWrite


class Lifecycle:
    """Mixed into the Coordinator (whose attributes it uses: ch, cfg, state, gm, out, writer, ...)."""

    ch: Any
    cfg: Any
    state: Any
    gm: Any
    out: Any
    data: Any
    writer: Any
    standby: Any
    resume: Any
    run_dir: Any
    me: int
    spare: int
    deputy: int
    sender: Any
    replica_bytes: int
    replica_seconds: float
    histogram: np.ndarray | None
    initial_shards: dict[int, int] | None
    shard_bytes: int
    _test_write: EvalSetWrite | None = None
    test_set_bytes = 0  # bytes of the test set written into the run dir at this launch (0: kept or not needed)
    target_stop: bool
    target_model: tuple[np.ndarray, float, np.ndarray] | None
    _evaluate: Any

    def _join(self) -> None:
        ex = self.cfg.executor
        if ex.deputy or ex.standby_coordinator:  # a takeover reads the test set from the run dir
            self._test_write = EvalSetWrite(self.run_dir, self.data)
        ranks = list(self.state.members)
        # startup_timeout, not timeout: a worker says hello once its kernels are loaded (or compiled, on a
        # cold numba cache: seconds) so that round 0 is as quick as any other
        out = self.ch.poll(ranks, TAG_REPLY, time.monotonic() + self.cfg.executor.startup_timeout,
                           until=lambda o: all(r in o.messages or r in o.failed for r in ranks))
        events: list[Any] = [self._heard(r, m) for r, ms in out.messages.items() for m in ms]
        for r in ranks:
            if not any(isinstance(P.coerce(m), P.Hello) for m in out.messages.get(r, [])):
                events.append(Lost(r, "ulfm" if r in out.failed else "never-joined",
                                   "no hello within executor.startup_timeout", self._mark(r)))
        self._apply(self.state.apply(events, time.time()), {})

    def _deal(self) -> None:
        """Deal the rows (fresh run) or spread the checkpoint's (resume), and write the shards."""
        cfg, d, s = self.cfg, self.data, self.state
        snap = self.resume
        if snap is None:
            parts = partition(d.y_train, len(s.alive), cfg.data.partition, cfg.model.seed, alpha=cfg.data.alpha,
                              classes_per_worker=cfg.data.classes_per_worker, power=cfg.data.power)
            s.deal(dict(zip(s.alive, parts, strict=True)))
        else:
            self.gm.restore(snap)
            if len(snap.owner) != len(d.y_train):
                raise CheckpointError(f"checkpoint holds ownership of {len(snap.owner)} samples but the dataset "
                                      f"{d.name} has {len(d.y_train)} training rows")
            moved = s.resume({"owner": snap.owner, "dropped": snap.dropped, "weight": snap.weight,
                              "epoch": snap.epoch, "round": snap.round, "stale": snap.stale_dropped,
                              "rows_handed": snap.rows_handed, "failures": snap.failures,
                              "representative": snap.representative})
            self.bytes_before, self.wall_before = snap.bytes_total, snap.wall_seconds
            self.out.progress.event(f"resumed at round {snap.round} (epoch {snap.epoch}): {moved} rows spread "
                                    f"over {s.alive}; coverage {s.ownership.coverage():.4f}")
        parts = {r: s.ownership.owned(r) for r in s.alive}
        self.histogram = class_histogram(d.y_train, list(parts.values()), d.n_classes)
        by_ref = shards_by_reference(d, [s.members[r].host for r in s.alive])
        self.standby.by_ref = by_ref  # standby files likewise: ids only, or uint8 rows
        self.shard_bytes = write_shards(self.run_dir, d, parts, s.weight, by_ref, cfg.data.compress_shards)
        self.initial_shards = {r: int(len(ids)) for r, ids in parts.items()}
        if self._test_write is not None:  # before the first round message names a deputy
            self.test_set_bytes, why = self._test_write.result()
            if why:
                self.out.progress.warn(f"warning: {why}; a deputy could not take over if rank 0 were lost")
        self.dealt = True

    def _checkpoint(self, wait: bool = False) -> None:
        """Take a consistent snapshot (after the round's row is written) and have it saved in the background
        (old ones pruned); ``wait``: until it is on disk. Rank 0 pings the workers while it waits."""
        self.out.write_row(self._evaluate)
        t0 = time.monotonic()
        snap = self._snapshot()
        self._wait_writer()  # one checkpoint in flight at a time; raises a write that failed
        self.writer.submit("checkpoint", save_and_prune, ckpt_path(self.run_dir, self.state.round), snap,
                           self.run_dir, self.cfg.executor.keep)
        if wait:
            self._wait_writer()
        self.ckpt_seconds += time.monotonic() - t0

    def _snapshot(self) -> Snapshot:
        st, tr, out = self.state.snapshot(), self.ch.traffic, self.out
        weight = st["weight"]
        return Snapshot(  # copies of everything the next rounds change in place (W); the rest is rebuilt
            round=st["round"], epoch=st["epoch"], **self.gm.checkpoint_fields(), members=self.state.alive,
            dead=[r for r, m in st["members"].items() if not m["alive"]], owner=st["owner"], dropped=st["dropped"],
            representative=st["representative"], rng={"seed": self.cfg.model.seed},
            config=config_to_dict(self.cfg), test_acc=out.last_acc,
            per_class_acc=np.asarray(out.last_per_class, np.float64), train_loss=out.last_loss,
            failures=st["failures"], stale_dropped=st["stale"], rows_handed=st["rows_handed"],
            wall_seconds=self.wall_before + time.monotonic() - self.t_start,
            bytes_total=self.bytes_before + tr.bytes_sent + tr.bytes_recv, dataset=self.data.name,
            n_classes=self.data.n_classes, created=time.time(), weight=weight if np.any(weight != 1.0) else None)

    def _finish(self, code: int) -> int:
        """Write every output first, then stop the workers: without ULFM, prterun kills the whole job as soon
        as any rank leaves without MPI_Finalize, and rank 0 must have said everything by then. Returns the
        exit code (EXIT_DISK when the final checkpoint or summary.json could not be written)."""
        ex, s = self.cfg.executor, self.state
        self._wait_busy(lambda: bool(self._writes))
        self._check_replaced()
        self.out.write_row(self.gm.evaluate, last=True)
        if self.target_stop and self.target_model is not None:
            # stopped by executor.target_accuracy: the run ends on the model that reached it, not on the one
            # of the round trained while it was evaluated (that round's row keeps its own accuracy)
            self.gm.W[...], self.out.last_acc, self.out.last_per_class = self.target_model
        if self.dealt:
            if not np.isfinite(self.out.last_acc):  # e.g. resumed a run that had finished
                self.out.last_acc, self.out.last_per_class = self.gm.evaluate()
            try:
                self._checkpoint(wait=True)
            except WriteFailed as exc:
                if code != EXIT_DISK:  # said already otherwise
                    sys.stderr.write(f"ftmpi: rank 0: error: {exc}\n")
                code = EXIT_DISK
        self.out.close()
        s.finish()
        tr = self.ch.traffic
        run = {"wall_seconds": self.wall_before + time.monotonic() - self.t_start, "iterations": self.gm.iters_done,
               "bytes_sent": tr.bytes_sent, "bytes_recv": tr.bytes_recv,
               "bytes_total": self.bytes_before + tr.bytes_sent + tr.bytes_recv, "ranks": self.ch.size,
               "resumed_from": self.resumed_from,
               "checkpoint_seconds": self.ckpt_seconds,
               "checkpoint_write_seconds": self.writer.seconds["checkpoint"],
               "staging": {"files": self.writer.done["stage"], "seconds": self.writer.seconds["stage"]},
               "alive_comm": self.alive_comm, "preempted": self.preempted, "detector": self.ch.detector.value,
               "switched_at": self.gm.switched_at, "dataset": self.data.name, "dealt": self.dealt,
               "class_histogram": None if self.histogram is None else self.histogram.tolist(),
               "initial_shards": self.initial_shards, "shard_bytes": self.shard_bytes,
               "target_stop": self.target_stop}
        doc = summary(code, self.cfg, s, self.out, run)
        doc["write_errors"] = self.writer.error_summary()
        doc["coordinator"] = self.me
        doc["test_set_bytes_written"] = self.test_set_bytes
        if self.cfg.executor.standby_coordinator and self.ch.size >= 3:  # rank 1 never trained
            doc["workers"], doc["standby_coordinator"] = self.ch.size - 2, 1
        doc["deputy"] = {"rank": self.deputy, "replicas": self.sender.sent, "bytes": self.replica_bytes,
                         "seconds": self.replica_seconds}
        doc["coordinator_changes"] = self._all_changes()
        try:
            write_json_atomic(self.run_dir / "summary.json", doc)
        except OSError as exc:
            sys.stderr.write(f"ftmpi: rank 0: error: cannot write {self.run_dir / 'summary.json'}: "
                             f"{' '.join(str(exc).split())}\n")
            code = EXIT_DISK
        write_status(code)
        alive = s.alive
        for r in alive + ([self.spare] if self.spare >= 0 else []):
            self.ch.send(r, TAG_CTRL, P.Stop(s.epoch, s.round))
        if alive:
            self.ch.poll(alive, TAG_REPLY, time.monotonic() + min(ex.timeout, 10.0),
                         until=lambda o: all(any(isinstance(m, P.Bye) for m in o.messages.get(r, []))
                                             or r in o.failed for r in alive))
        self.ch.flush(time.monotonic() + 1.0)
        self._reap_hung()
        return code

    def _reap_hung(self) -> None:
        """SIGKILL ranks declared dead by deadline that still exist on this host (a stopped or hung process
        keeps mpirun from ever returning), but only the very process that said hello: a pid reused since by
        another process is left alone (the start time recorded at hello must match)."""
        me = hostname()
        for r in sorted(self.state.suspects):
            m = self.state.members[r]
            if m.host == me:
                kill_if_same(m.pid, m.start_time)
        self._end_lost_coordinators()
