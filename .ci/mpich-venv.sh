#!/usr/bin/env bash
# A second venv with MPICH (the `mpich` wheel, hydra's mpiexec) instead of Open MPI, for tests/mpi/test_mpich.py:
# ftmpi under an MPI without ULFM, where a lost rank ends the job and `ftmpi launch` relaunches it.
# Creates ROOT/.venv-mpich (editable install of this checkout). Exit 1 when pip cannot install it.
set -eu
cd "$(dirname "$0")/.."
[ -x .venv-mpich/bin/python ] && .venv-mpich/bin/python -c "import mpi4py, ftmpi" 2>/dev/null && exit 0
python3 -m venv .venv-mpich
.venv-mpich/bin/pip install -q mpich mpi4py numpy numba h5py pyyaml pytest
.venv-mpich/bin/pip install -q --no-deps -e .
