"""Command line: ``python -m ftmpi launch|train|inspect|report|plot|verify ...``.

Parses the command line and dispatches: ``train`` to :func:`ftmpi.job.train` (every rank of a training job),
``launch`` to :mod:`ftmpi.launch.launcher`, ``inspect`` here, ``report``, ``plot`` and ``verify`` to their
modules.
Errors of the commands run here become one line and an exit code; a training job does that itself.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ftmpi.errors import EXIT_BAD_INPUT, FtmpiError
from ftmpi.job import train
from ftmpi.launch.args import add_train_args


def _parser(full: str | None = None) -> argparse.ArgumentParser:
    """The command line. ``full``: the subcommand whose own arguments are added; ``report`` and ``plot`` take
    theirs from their modules, imported only then (every rank of a training run parses its command line,
    and those modules and what they import cost every rank CPU time)."""
    p = argparse.ArgumentParser(prog="ftmpi", description="Fault-tolerant distributed trainer (MPI SPMD).")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("launch", help="start a job: launch -n W CONFIG [--max-restarts N] [--hostfile F] [train args]")
    add_train_args(sub.add_parser("train", help="train (run under mpirun -n 1+W; see jobs/local.sh)"))
    i = sub.add_parser("inspect", help="summarise an HDF5 checkpoint")
    i.add_argument("file", help="a checkpoint, e.g. runs/x/ckpt/round-000080.h5")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    r = sub.add_parser("report", help="results table of run dirs")
    g = sub.add_parser("plot", help="accuracy/loss curves of run dirs as PNG")
    v = sub.add_parser("verify", help="compare two runs' metrics and parameters; where they first differ")
    if full == "verify":
        from ftmpi.observe.verify import add_verify_args, run_verify

        add_verify_args(v).set_defaults(run=run_verify)
    elif full == "report":
        from ftmpi.observe.report import add_report_args, run_report

        add_report_args(r).set_defaults(run=run_report)
    elif full == "plot":
        from ftmpi.observe.plot import add_plot_args, run_plot

        add_plot_args(g).set_defaults(run=run_plot)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launch"]:  # its own parser: everything it does not know goes to train
        from ftmpi.launch.launcher import main as launch

        return launch(argv[1:])
    args = _parser(argv[0] if argv else None).parse_args(argv)
    if getattr(args, "run", None):
        try:
            return args.run(args)
        except BrokenPipeError:  # e.g. `ftmpi verify A B | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if args.cmd == "train":
        return train(args)
    if args.cmd == "inspect":
        return _inspect(args)
    return EXIT_BAD_INPUT


def _inspect(args: argparse.Namespace) -> int:
    import json

    from ftmpi.storage.checkpoint import format_summary, summarize

    try:
        d = summarize(args.file)
    except FtmpiError as exc:
        sys.stderr.write(f"ftmpi: error: {exc}\n")
        return exc.exit_code
    print(json.dumps(d, indent=2) if args.json else format_summary(d))
    return 0
