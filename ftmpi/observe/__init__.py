"""What a run shows: metrics CSV and progress lines (``metrics``), TensorBoard (``tb``), result tables
(``report``), training curves (``plot``) and the start-up/end timeline (``timeline``).

May import: ``ftmpi.config``, ``ftmpi.errors``, ``ftmpi.storage``. Never ``mpi4py``, the coordinator or the
worker.
"""
