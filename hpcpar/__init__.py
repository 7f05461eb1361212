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

from . import partition, sort, watchdog
from .checkpoint import Checkpoint
from .comm import CollectiveMismatchError, Context
from .farm import TaskError, farm, farm_iter
from .grid import Grid
from .local import LocalPool, local_cpus, local_pool
from .log import get_logger
from .output import Output, read, read_grid
from .pipeline import pipeline
from .runner import abort, run
from .timing import timed

__version__ = "0.1.0"

__all__ = [
    "Context",
    "CollectiveMismatchError",
    "Grid",
    "run",
    "abort",
    "partition",
    "get_logger",
    "timed",
    "watchdog",
    "Output",
    "read",
    "read_grid",
    "Checkpoint",
    "sort",
    "farm",
    "farm_iter",
    "TaskError",
    "pipeline",
    "local_cpus",
    "local_pool",
    "LocalPool",
    "__version__",
]
