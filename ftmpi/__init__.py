"""ftmpi: a fault-tolerant distributed trainer, one MPI SPMD program (rank 0 coordinates)."""

__version__ = "0.1.0"
