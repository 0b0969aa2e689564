"""Session set-up shared by the test tiers."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def warm_numba_cache():
    """Compile the kernels once, in this process, before any MPI job: on a fresh checkout the jobs (each
    launched by tests/mpirun.py under a hard timeout) then load them from numba's cache instead of compiling
    them in every rank."""
    from ftmpi.model.models import warmup

    warmup(8, True, "all")
