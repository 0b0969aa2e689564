"""The arguments of ``ftmpi train``, shared by the command line and the launcher (``ftmpi launch`` checks them
before the job starts, then passes them on to every rank), and the config overrides they stand for.
"""
from __future__ import annotations

import argparse


def add_train_args(t: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``train``, shared by ``ftmpi train`` and ``ftmpi launch`` (which passes them on)."""
    t.add_argument("config", help="YAML config file")
    t.add_argument("--run-dir", help="output folder (default: executor.shared_folder)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    t.add_argument("--inject", action="append", default=[], metavar="KIND:R@N[:S]",
                   help="inject a fault: kill|exit|hang|pause|slow, rank R, round N (repeatable)")
    t.add_argument("--detector", choices=["auto", "ulfm", "timeout"], help="executor.failure_detector")
    t.add_argument("--resume", metavar="RUN_DIR|auto",
                   help="continue from the newest valid checkpoint in RUN_DIR; 'auto': the run dir's, if it has "
                        "any, else start fresh (for batch jobs that may be requeued)")
    t.add_argument("--overwrite", action="store_true",
                   help="start over in a run dir that holds an earlier run (deletes its checkpoints)")
    t.add_argument("--tensorboard", action="store_true", help="write TensorBoard events to RUN_DIR/tb")
    t.add_argument("--quiet", action="store_true", help="no progress line")
    return t


def overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides the train arguments stand for (``--set`` first, then the shorthand flags)."""
    overrides = list(args.overrides)
    if args.detector:
        overrides.append(f"executor.failure_detector={args.detector}")
    if args.tensorboard:
        overrides.append("executor.tensorboard=true")
    if args.quiet:
        overrides.append("executor.progress=false")
    if args.inject:
        overrides.append("faults=[" + ",".join(repr(s) for s in args.inject) + "]")
    return overrides
