"""A worker's side of a run: say hello, train on its shard round after round, reply, leave when told.

Owns the worker's loop (``loop``) and its rows in memory (``localshard``).

May import: ``ftmpi.core``, ``ftmpi.storage``, ``ftmpi.model``, ``ftmpi.observe.timeline``, the top-level
modules (``comm`` is its only way to MPI). Never ``ftmpi.coordinator``.
"""
