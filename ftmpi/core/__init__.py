"""The MPI-free core: what rank 0 knows of the cluster and how it decides.

Owns :class:`~ftmpi.core.cluster.ClusterState` (events in, effects out), the events and effects, the wire
messages (``protocol``), the named phases and kinds (``kinds``: ``Phase``, ``How``), partition and
handoff maths, the weight rules, the failover bookkeeping that has no MPI in it (who the deputy is,
what is replicated, what a deputy takes over from) and the screening rule of the workers' updates
(``screen``: which are rejected, which workers are treated as failed).

May import: the standard library (no clock, no files, no processes), numpy, ``ftmpi.kernels``,
``ftmpi.errors``, ``ftmpi.config`` (its names and dataclasses) and itself. Never ``mpi4py``, the storage,
the clock (``time``), or the coordinator's and the worker's packages: times come in as arguments.
"""
