"""``python -m ftmpi`` entry point.

Several ranks share the cores of a node, so BLAS and numba default to one thread per process (set before
numpy loads; the user's own settings win).
"""
import os

from ftmpi.observe.timeline import mark

mark("start")

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from ftmpi.cli import main  # noqa: E402

raise SystemExit(main())
