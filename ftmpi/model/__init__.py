"""The model and its arithmetic: parameter layout bound to the kernels (``models``), SGD and Adam (``optim``),
what goes on the wire for a parameter vector (``codec``: raw, or quantized with error feedback).

Plug-in models (``plugin``): a user's class named in ``model.type``, imported from its file or module, checked
against the same contract.

May import: numpy, ``ftmpi.kernels`` and ``ftmpi.errors``. No MPI, no files (numba's cache, and a plug-in's own
module, aside).
"""
