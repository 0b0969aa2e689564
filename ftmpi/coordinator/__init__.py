"""Rank 0's side of a run: the round driver and what it owns.

Holds the driver (``driver``: rounds, deadlines, pings; it turns what MPI delivers into events for
:class:`~ftmpi.core.cluster.ClusterState` and carries out the effects, one handler per effect type) and the
parts it owns: the start and the end of a run (``lifecycle``: join, deal, checkpoints, finish) and
replication to the deputy and a deputy's takeover (``deputy``), which share what ``context`` defines; then
the global model (``globalmodel``), rank 0's writes (``files``, ``saver``, ``staging``) and outputs
(``outputs``).

May import: ``ftmpi.core``, ``ftmpi.storage``, ``ftmpi.model``, ``ftmpi.observe``, the top-level modules
(``comm`` is its only way to MPI). Never ``ftmpi.worker``: a deputy that takes over leaves the worker's
loop and the job module starts the coordinator in the same process.
"""
