"""hpcpar: fast, safe SPMD programs with MPI, NumPy and HDF5.

Every rank runs the same script on its own part of the data::

    import hpcpar

    def main(ctx):
        block = ctx.scatter(data if ctx.is_root else None)
        return ctx.gather(block * 2)

    hpcpar.run(main)

Importing hpcpar imports mpi4py (which initialises MPI) and nothing else happens:
no call communicates until you make one.
"""

from . import partition
from .comm import CollectiveMismatchError, Context
from .farm import TaskError, farm, farm_iter
from .local import LocalPool, local_cpus, local_pool
from .pipeline import pipeline
from .runner import abort, run

__version__ = "0.1.0"

__all__ = [
    "Context",
    "CollectiveMismatchError",
    "run",
    "abort",
    "partition",
    "farm",
    "farm_iter",
    "TaskError",
    "pipeline",
    "local_cpus",
    "local_pool",
    "LocalPool",
    "__version__",
]
