"""What a run keeps on disk and reads back: datasets, training rows by id, shards and handoff files, the
data a deputy takes over with, checkpoints, compressed HDF5 writes, atomic replacement, populated buffers.

May import: numpy, h5py, the standard library, ``ftmpi.errors``, ``ftmpi.config``, ``ftmpi.kernels`` (the
parameter layout) and ``ftmpi.core.partition``. Never ``mpi4py``: every file here is written by one rank and
can be tested in one process.
"""
