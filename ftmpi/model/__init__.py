"""The model and its arithmetic: parameter layout bound to the kernels (``models``), SGD and Adam (``optim``),
what goes on the wire for a parameter vector (``codec``: raw, or quantized with error feedback).

May import: numpy, ``ftmpi.kernels`` and ``ftmpi.errors``. No MPI, no files (numba's cache aside).
"""
