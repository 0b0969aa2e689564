"""``ftmpi launch``: everything around one MPI job. The mpirun (or srun) command line (``mpicmd``), hosts
and hostfiles (``hosts``), the verdict, restarts and relaunches (``launcher``), what the launcher records in
a run dir (``record``), and the run-dir policy: resume, start over or refuse, and its lock (``rundir``).

May import: ``ftmpi.config``, ``ftmpi.errors``, ``ftmpi.procs``, ``ftmpi.storage``, ``ftmpi.observe``. Never
``mpi4py`` (it runs mpirun, it is not a rank), ``ftmpi.coordinator`` or ``ftmpi.worker``.
"""
