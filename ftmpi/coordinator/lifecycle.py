"""The start and the end of a coordinator's run (a part the driver owns, :class:`Lifecycle`): the join
handshake, dealing the rows and writing the shards, checkpoints, and finishing (outputs first, then the
workers are stopped and hung ones reaped). The round loop is :mod:`ftmpi.coordinator.driver`'s.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ftmpi.comm import TAG_CTRL, TAG_REPLY
from ftmpi.config import config_to_dict
from ftmpi.coordinator.context import Context, Driver
from ftmpi.coordinator.deputy import Replication
from ftmpi.coordinator.files import save_and_prune, shards_by_reference, write_shards
from ftmpi.coordinator.outputs import summary
from ftmpi.core import protocol as P
from ftmpi.core.cluster import Chosen, Heard, Lost
from ftmpi.core.failover import beat_period, write_stall_limit
from ftmpi.core.kinds import How
from ftmpi.core.partition import class_histogram, partition
from ftmpi.errors import EXIT_DISK, EXIT_PREEMPTED, CheckpointError, WriteFailed
from ftmpi.observe.metrics import write_json_atomic, write_status
from ftmpi.procs import hostname, kill_if_same
from ftmpi.storage.checkpoint import Snapshot, ckpt_path, intact, list_checkpoints, shard_key
from ftmpi.storage.rundata import EvalSetWrite


def valid_checkpoint_in(run_dir: Path) -> bool:
    """Whether ``run_dir/ckpt`` holds a checkpoint that passes its integrity check (one a resume can start
    from), whoever wrote it."""
    return any(intact(p) for p in reversed(list_checkpoints(run_dir)))


class Lifecycle:
    """Join, deal, checkpoint and finish for the driver that owns it.

    Args:
        ctx: What the coordinator's parts share.
        driver: The round driver (carries out effects; waits for writes, pinging meanwhile).
        replication: The coordinator's replication part (the fence, the deputy, coordinator changes).
        resume: The checkpoint this run resumes from, or None.

    Attributes:
        target_model: (parameters, test accuracy, per-class accuracy) of the first model evaluated at or
            above ``executor.target_accuracy``, or None.
        exact_resume: For a resumed run, ``{"round", "exact", "why"}``: whether every worker continues from
            the state it had at the checkpoint, and if not why; None for a fresh run.
        given_back: For a resumed run, ``{"spare", "to", "round"}`` per place a spare held that went back to
            the lost worker's rank (:func:`give_places_back`).
    """

    def __init__(self, ctx: Context, driver: Driver, replication: Replication, resume: Snapshot | None) -> None:
        self.ctx, self.driver, self.replication, self.resume = ctx, driver, replication, resume
        self.target_model: tuple[np.ndarray, float, np.ndarray] | None = None
        self.exact_resume: dict | None = None
        self.given_back: list[dict[str, int]] = []
        self._test_write: EvalSetWrite | None = None
        # a failed checkpoint write ends the run (EXIT_DISK) only when no valid checkpoint is in the run dir:
        # one written by this process, by the coordinator a deputy took over from, or resumed from
        ctx.writer.valid_elsewhere("checkpoint", lambda: valid_checkpoint_in(ctx.run_dir))

    def evaluate(self) -> tuple[float, np.ndarray]:
        """The global model's test accuracy; the first model at or above ``executor.target_accuracy`` is kept,
        so that a run stopped by the target ends on it (it is evaluated while the next round trains)."""
        gm = self.ctx.gm
        acc, per = gm.evaluate()
        target = self.ctx.cfg.executor.target_accuracy
        if target is not None and self.target_model is None and acc >= target:
            self.target_model = (gm.W.copy(), acc, np.asarray(per).copy())
        return acc, per

    def join(self) -> None:
        """Wait for every worker's hello (``executor.startup_timeout``); a worker that sends none is lost."""
        ctx = self.ctx
        ex = ctx.cfg.executor
        if ex.deputy or ex.standby_coordinator:  # a takeover reads the test set from the run dir
            self._test_write = EvalSetWrite(ctx.run_dir, ctx.data)
        ranks = list(ctx.state.members) + sorted(ctx.state.spares)  # the hot spares say hello too
        # startup_timeout, not timeout: a worker says hello once its kernels are loaded (or compiled, on a
        # cold numba cache: seconds) so that round 0 is as quick as any other. The workers that said hello
        # are pinged every beat meanwhile: a late one costs the others time, not their deadline.
        deadline = time.monotonic() + ex.startup_timeout
        got: dict[int, list] = {}
        failed: set[int] = set()

        def hello(r: int) -> bool:
            return any(isinstance(P.coerce(m), P.Hello) for m in got.get(r, []))

        while True:
            pending = [r for r in ranks if not hello(r) and r not in failed]
            now = time.monotonic()
            if not pending or now >= deadline:
                break
            out = ctx.ch.poll(pending, TAG_REPLY, min(deadline, now + beat_period(ex.timeout)),
                              until=lambda o: bool(o.messages or o.failed))
            for r, ms in out.messages.items():
                got.setdefault(r, []).extend(ms)
            failed |= set(out.failed)
            self.driver.ping([r for r in ranks if hello(r)])
        events: list[Heard | Lost | Chosen] = [ctx.heard(r, m) for r, ms in got.items() for m in ms]
        for r in ranks:
            if not hello(r):  # dropped: the rows are dealt to the others (logged with the loss)
                events.append(Lost(r, How.ULFM if r in failed else How.NEVER_JOINED,
                                   "no hello within executor.startup_timeout", ctx.mark(r)))
        self.driver.apply(ctx.state.apply(events, time.time()), {})

    def deal(self) -> None:
        """Deal the rows (fresh run) or spread the checkpoint's (resume), and write the shards."""
        ctx, t = self.ctx, self.ctx.tally
        cfg, d, s = ctx.cfg, ctx.data, ctx.state
        snap = self.resume
        if snap is None:
            dealt = partition(d.y_train, len(s.alive), cfg.data.partition, cfg.model.seed, alpha=cfg.data.alpha,
                              classes_per_worker=cfg.data.classes_per_worker, power=cfg.data.power)
            s.deal(dict(zip(s.alive, dealt, strict=True)))
        else:
            snap, back = give_places_back(snap, s.alive)
            ctx.gm.restore(snap)
            if len(snap.owner) != len(d.y_train):
                raise CheckpointError(f"checkpoint holds ownership of {len(snap.owner)} samples but the dataset "
                                      f"{d.name} has {len(d.y_train)} training rows")
            moved = s.resume({"owner": snap.owner, "dropped": snap.dropped, "weight": snap.weight,
                              "epoch": snap.epoch, "round": snap.round, "stale": snap.stale_dropped,
                              "rows_handed": snap.rows_handed, "failures": snap.failures,
                              "representative": snap.representative})
            t.bytes_before, t.wall_before = snap.bytes_total, snap.wall_seconds
            for spare, lost in sorted(back.items()):
                self.given_back.append({"spare": spare, "to": lost, "round": snap.round})
                ctx.out.progress.event(f"worker {lost} takes back the shard spare {spare} trained in its place; "
                                       f"spare {spare} waits again")
            ctx.out.progress.event(f"resumed at round {snap.round} (epoch {snap.epoch}): {moved} rows spread "
                                   f"over {s.alive}; coverage {s.ownership.coverage():.4f}")
        self.driver.ping(list(s.alive))  # writing the shards can take a while: the workers wait for them
        parts = {r: s.ownership.owned(r) for r in s.alive}
        t.histogram = class_histogram(d.y_train, list(parts.values()), d.n_classes)
        by_ref = shards_by_reference(d, [s.members[r].host for r in s.alive])
        ctx.standby.by_ref = by_ref  # standby files likewise: ids only, or uint8 rows
        t.shard_bytes = write_shards(ctx.run_dir, d, parts, s.weight, by_ref, cfg.data.compress_shards)
        if by_ref:
            t.shard_files = {r: (ids, s.weight[ids]) for r, ids in parts.items()}
        t.initial_shards = {r: int(len(ids)) for r, ids in parts.items()}
        if snap is not None:
            self._restore_workers(snap, parts)
        if self._test_write is not None:  # before the first round message names a deputy
            # bounded: started before the join, it had the join's time too; a stalled disk costs a takeover only
            t.test_set_bytes, why = self._test_write.result(write_stall_limit(cfg.executor.timeout))
            if why:
                ctx.out.progress.warn(f"warning: {why}; a deputy could not take over if rank 0 were lost")
        t.dealt = True

    def _restore_workers(self, snap: Snapshot, parts: dict[int, np.ndarray]) -> None:
        """An exact resume when the checkpoint holds the state of every one of its workers, this job has the
        same ranks, and each one's rows are those it trained on: each is sent its state (before the first round
        message, which it is applied with). Otherwise the workers start their optimizers afresh, as before."""
        s = self.ctx.state
        states = snap.workers or {}
        why = ""
        if not states:
            why = "the checkpoint holds no worker state (written by an older ftmpi)"
        elif sorted(s.alive) != sorted(snap.members):
            why = f"workers {sorted(s.alive)} resume a checkpoint of workers {sorted(snap.members)}"
        else:
            for r in s.alive:
                st = states.get(r)
                if st is None or st["round"] != snap.round:
                    why = f"the checkpoint holds no state of worker {r} as of round {snap.round}"
                elif st["shard"] != shard_key(parts[r], None if s.weight is None else s.weight[parts[r]]):
                    why = f"worker {r}'s rows are not those it trained on"
                if why:
                    break
        self.exact_resume = {"round": snap.round, "exact": not why, "why": why}
        if why:
            self.ctx.out.progress.event(f"resume at round {snap.round} is not exact: {why}")
            return
        for r in s.alive:
            self.ctx.ch.send(r, TAG_CTRL, P.Restore(snap.round, states[r], s.term))

    def _collect_states(self) -> None:
        """Before the checkpoint of a stop signal: every alive worker's state as of the next round (bounded by
        ``executor.timeout``; a worker that does not answer is missing from the checkpoint)."""
        ctx = self.ctx
        s, gm = ctx.state, ctx.gm
        me = ctx.ch.rank
        own = self.driver.local  # a coordinator that trains its own rows
        alive = [r for r in s.alive if r != me]
        for r in alive:
            ctx.ch.send(r, TAG_CTRL, P.Collect(s.round, s.term))

        def state(m: object) -> bool:
            return isinstance(m, P.State) and m.round == s.round

        out = ctx.ch.poll(alive, TAG_REPLY, time.monotonic() + ctx.cfg.executor.timeout,
                          until=lambda o: all(r in o.failed or any(state(P.coerce(m)) for m in o.messages.get(r, []))
                                              for r in alive))
        got = {r: m.state for r, ms in out.messages.items() for m in map(P.coerce, ms) if state(m)}
        if own is not None and me in s.alive:
            got[me] = own.local_state(s.round)
        gm.worker_states = got
        gm.known_states.update(got)

    def checkpoint(self, wait: bool = False) -> None:
        """Take a consistent snapshot (after the round's row is written) and have it saved in the background
        (old ones pruned); ``wait``: until it is on disk. The driver pings the workers while it waits."""
        ctx = self.ctx
        ctx.out.write_row(self.evaluate)
        t0 = time.monotonic()
        snap = self.snapshot()
        self.driver.wait_writer()  # one checkpoint in flight at a time; raises a write that failed
        self.replication.check_replaced(now=True)  # a deposed coordinator writes no checkpoint
        ctx.writer.submit("checkpoint", save_and_prune, ckpt_path(ctx.run_dir, ctx.state.round), snap,
                          ctx.run_dir, ctx.cfg.executor.keep, self.replication.fence)
        if wait:
            self.driver.wait_writer()
        ctx.tally.ckpt_seconds += time.monotonic() - t0

    def snapshot(self) -> Snapshot:
        """A checkpoint of the run as it stands."""
        ctx, t = self.ctx, self.ctx.tally
        st, tr, out = ctx.state.snapshot(), ctx.ch.traffic, ctx.out
        weight = st["weight"]
        # the workers' states sent for this checkpoint (the replies of the round before, or a stop's Collect)
        workers = {r: w for r, w in ctx.gm.worker_states.items() if w["round"] == st["round"] and r in ctx.state.alive}
        ident = {r: i for r, i in ctx.state.ident.items() if r in ctx.state.alive}
        return Snapshot(  # copies of everything the next rounds change in place (W); the rest is rebuilt
            round=st["round"], epoch=st["epoch"], **ctx.gm.checkpoint_fields(), members=ctx.state.alive,
            dead=[r for r, m in st["members"].items() if not m["alive"]], owner=st["owner"], dropped=st["dropped"],
            representative=st["representative"],
            # whose place each spare that took a shard holds (its seeds): a resume gives that place back
            rng={"seed": ctx.cfg.model.seed, **({"ident": {str(r): i for r, i in sorted(ident.items())}} if ident
                                               else {})},
            config=config_to_dict(ctx.cfg), test_acc=out.last_acc,
            per_class_acc=np.asarray(out.last_per_class, np.float64), train_loss=out.last_loss,
            failures=st["failures"], stale_dropped=st["stale"], rows_handed=st["rows_handed"],
            wall_seconds=t.wall_before + time.monotonic() - t.t_start,
            bytes_total=t.bytes_before + tr.bytes_sent + tr.bytes_recv, dataset=ctx.data.name,
            n_classes=ctx.data.n_classes, created=time.time(), weight=weight if np.any(weight != 1.0) else None,
            term=ctx.state.term, workers=workers or None)

    def finish(self, code: int) -> int:
        """Write every output first, then stop the workers: without ULFM, prterun kills the whole job as soon
        as any rank leaves without MPI_Finalize, and rank 0 must have said everything by then. Returns the
        exit code (EXIT_DISK when the final checkpoint or summary.json could not be written)."""
        ctx, t, rep = self.ctx, self.ctx.tally, self.replication
        ch, ex, s, out, gm = ctx.ch, ctx.cfg.executor, ctx.state, ctx.out, ctx.gm
        self.driver.wait_handoffs()
        rep.check_replaced(now=True)
        out.write_row(gm.evaluate, last=True)
        if t.target_stop and self.target_model is not None:
            # stopped by executor.target_accuracy: the run ends on the model that reached it, not on the one
            # of the round trained while it was evaluated (that round's row keeps its own accuracy)
            gm.W[...], out.last_acc, out.last_per_class = self.target_model
        if t.dealt:
            if not np.isfinite(out.last_acc):  # e.g. resumed a run that had finished
                out.last_acc, out.last_per_class = gm.evaluate()
            if code == EXIT_PREEMPTED and s.alive:  # a resume from this checkpoint continues exactly
                self._collect_states()
            try:
                self.checkpoint(wait=True)
            except WriteFailed as exc:
                if code != EXIT_DISK:  # said already otherwise
                    sys.stderr.write(f"ftmpi: rank 0: error: {exc}\n")
                code = EXIT_DISK
        out.close()
        s.finish()
        tr = ch.traffic
        run = {"wall_seconds": t.wall_before + time.monotonic() - t.t_start, "iterations": gm.iters_done,
               "bytes_sent": tr.bytes_sent, "bytes_recv": tr.bytes_recv,
               "bytes_total": t.bytes_before + tr.bytes_sent + tr.bytes_recv, "ranks": ch.size,
               "resumed_from": t.resumed_from,
               "checkpoint_seconds": t.ckpt_seconds,
               "checkpoint_write_seconds": ctx.writer.seconds["checkpoint"],
               "staging": {"files": ctx.writer.done["stage"], "seconds": ctx.writer.seconds["stage"]},
               "alive_comm": t.alive_comm, "preempted": t.preempted, "detector": ch.detector.value,
               "switched_at": gm.switched_at, "dataset": ctx.data.name, "dealt": t.dealt,
               # what each class (acc_classK in metrics.csv) stands for: a user file's own label values
               "classes": [str(c) for c in ctx.data.classes],
               "class_histogram": None if t.histogram is None else t.histogram.tolist(),
               "initial_shards": t.initial_shards, "shard_bytes": t.shard_bytes,
               "target_stop": t.target_stop}
        doc = summary(code, ctx.cfg, s, out, run)
        doc["write_errors"] = ctx.writer.error_summary()
        doc["coordinator"] = ch.rank
        doc["test_set_bytes_written"] = t.test_set_bytes
        if ex.standby_coordinator and ch.size >= 3:  # rank 1 never trained
            doc["workers"], doc["standby_coordinator"] = ch.size - 2, 1
        doc["deputy"] = {"rank": rep.deputy, "replicas": rep.sender.sent, "bytes": rep.replica_bytes,
                         "seconds": rep.replica_seconds}
        doc["coordinator_changes"] = rep.all_changes()
        doc["exact"] = {"resume": self.exact_resume,  # did a recovery change anything
                        "takeovers": [{k: c.get(k) for k in ("round", "new", "exact", "why")}
                                      for c in doc["coordinator_changes"]]}
        doc["screen"] = gm.screen.record()  # updates rejected by rank 0 (ftmpi.core.screen)
        doc["rejected_updates"] = doc["screen"]["rejected"]
        st = s.stragglers  # quorum rounds (ftmpi.core.quorum): what the straggler rules did over the run
        doc["stragglers"] = {"quorum": ex.quorum, "late_folded": st.folded, "late_dropped": st.dropped,
                             "rebalances": st.rebalances, "rebalanced_now": sorted(int(r) for r in st.share)}
        doc["spares"] = {"configured": ex.spares, "idle": sorted(s.spares),  # hot spares: who took which shard
                         "used": [d for d in s.spare_log if "took" in d],
                         "lost": [d for d in s.spare_log if d.get("lost")],
                         "given_back": self.given_back}  # by a resume: to the lost worker's rank
        rep.check_replaced(now=True)  # the verdict is the current term's alone
        try:
            write_json_atomic(ctx.run_dir / "summary.json", doc)
        except OSError as exc:
            sys.stderr.write(f"ftmpi: rank 0: error: cannot write {ctx.run_dir / 'summary.json'}: "
                             f"{' '.join(str(exc).split())}\n")
            code = EXIT_DISK
        write_status(code)
        # idle spares are stopped and say goodbye like the workers; not this process's own rows
        alive = [r for r in s.alive if r != ch.rank] + sorted(s.spares)
        for r in alive + ([rep.spare] if rep.spare >= 0 else []):
            ch.send(r, TAG_CTRL, P.Stop(s.epoch, s.round, s.term))
        for r in sorted(s.suspects):  # declared lost by deadline: one that wakes up later leaves at once, told why
            ch.send(r, TAG_CTRL, P.Exit(f"the run ended (exit {int(code)}) after this rank was declared lost"))
        silent: list[int] = []
        if alive:
            out = ch.poll(alive, TAG_REPLY, time.monotonic() + min(ex.timeout, 10.0),
                          until=lambda o: all(any(isinstance(m, P.Bye) for m in o.messages.get(r, []))
                                              or r in o.failed for r in alive))
            silent = [r for r in alive if r not in out.failed
                      and not any(isinstance(P.coerce(m), P.Bye) for m in out.messages.get(r, []))]
        ch.flush(time.monotonic() + 1.0)
        self.reap_hung(silent)
        return code

    def reap_hung(self, unanswered: list[int] | None = None) -> None:
        """SIGKILL ranks declared dead by deadline that still exist on this host (a stopped or hung process
        keeps mpirun from ever returning), and the workers in ``unanswered`` (told to stop, no goodbye), but
        only the very process that said hello: a pid reused since by another process is left alone (the start
        time recorded at hello must match); then lost coordinators likewise
        (:meth:`Replication.end_lost_coordinators`). On other hosts, the launcher ends a job that outlives the
        verdict (``ftmpi.launch.launcher.finish_grace``)."""
        me = hostname()
        s = self.ctx.state
        for r in sorted(s.suspects | set(unanswered or ())):
            if r == self.ctx.ch.rank:
                continue
            m = s.members[r] if r in s.members else s.spares.get(r)
            if m is None:  # a spare declared lost while idle (its record is in spare_log)
                continue
            if m.host == me:
                kill_if_same(m.pid, m.start_time)
        self.replication.end_lost_coordinators()


def give_places_back(snap: Snapshot, alive: list[int]) -> tuple[Snapshot, dict[int, int]]:
    """A checkpoint written after spares took lost workers' shards (``snap.rng["ident"]``: spare -> the lost
    worker whose place it holds), resumed by a job in which that worker's rank is a worker again (alive,
    owning nothing in the checkpoint) and the spare's is not: the spare's rows, representative rows, state and
    screening record go back to that rank, which draws the same seeds (they are its own), so the resume is
    exact; the spare waits again. Returns the checkpoint so renamed and the places given back (spare -> rank)."""
    ident = {int(r): int(i) for r, i in (snap.rng or {}).get("ident", {}).items()}
    now = set(alive)
    back = {sp: lost for sp, lost in ident.items()
            if sp in snap.members and sp not in now and lost in now and lost not in snap.members}
    if not back:
        return snap, {}

    def to(r: int) -> int:
        return back.get(r, r)

    owner = snap.owner.copy()
    for sp, lost in back.items():
        owner[snap.owner == sp] = lost
    screen = snap.screen
    if screen:
        screen = {**screen, **{k: {str(to(int(r))): v for r, v in screen[k].items()}
                               for k in ("history", "streak") if isinstance(screen.get(k), dict)}}
    rest = {str(r): i for r, i in ident.items() if r not in back}
    return dataclasses.replace(
        snap, owner=owner, members=[to(r) for r in snap.members],
        representative={to(r): ids for r, ids in snap.representative.items()},
        workers=None if snap.workers is None else {to(r): st for r, st in snap.workers.items()}, screen=screen,
        rng={k: v for k, v in snap.rng.items() if k != "ident"} | ({"ident": rest} if rest else {})), back
