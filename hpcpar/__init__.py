"""hpcpar: fast, safe SPMD programs with MPI, NumPy and HDF5.

Every rank runs the same script on its own part of the data::

    import hpcpar

    def main(ctx):
        block = ctx.scatter(data if ctx.is_root else None)
        return ctx.gather(block * 2)

    hpcpar.run(main)

Importing hpcpar starts nothing: the names below are loaded on first use
(PEP 562), and MPI is initialised only when a name that needs it is used
(``Context``, ``run``, ``Grid``, ...). Tools that run on a login node
(:mod:`hpcpar.slurm`, :mod:`hpcpar.partition`, the ``hpcpar`` command, the
launcher, the pytest plugin) never initialise MPI.

The package is layered; each layer imports only the ones above it in this list:

``errors``, ``env``
    the error types and the one registry of ``HPCPAR_*`` variables.
``decomp.partition``, ``slurm``, ``observe``, ``launch.command``, ``launch.variables``, ``launch.family``,
``launch.ledger``
    pure geometry; the Slurm client and in-job state; timing, progress, logs;
    the launch-command builder, the launchers' variables, which MPI a launcher
    and a library belong to, and the run ledger (where each rank of ``hpcpar run
    --hosts`` ran).
``core``
    :class:`Context` and its checked collectives, the runner, the watchdog.
``decomp``, ``tasks``, ``io``
    grids and sorting; farms, pipelines and local pools; HDF5 output and checkpoints.
``launch``, ``testing``, ``bench``, ``cli``
    starting jobs, testing them, measuring them, and the ``hpcpar`` command.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from types import ModuleType

TYPE_CHECKING = False  # typing itself is not imported: it costs every rank ~8 ms of start-up
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.2.0"

#: Public name -> the module that defines it (loaded on first use).
_NAMES = {
    "Context": "hpcpar.core.context",
    "run": "hpcpar.core.runner",
    "abort": "hpcpar.core.runner",
    "HpcparError": "hpcpar.errors",
    "CollectiveError": "hpcpar.errors",
    "CollectiveMismatchError": "hpcpar.errors",
    "Grid": "hpcpar.decomp.grid",
    "farm": "hpcpar.tasks.farm",
    "farm_iter": "hpcpar.tasks.farm",
    "TaskError": "hpcpar.errors",
    "pipeline": "hpcpar.tasks.pipeline",
    "LocalPool": "hpcpar.tasks.local",
    "local_cpus": "hpcpar.tasks.local",
    "local_pool": "hpcpar.tasks.local",
    "Output": "hpcpar.io.output",
    "read": "hpcpar.io.read",
    "read_grid": "hpcpar.io.read",
    "Checkpoint": "hpcpar.io.checkpoint",
    "get_logger": "hpcpar.observe.log",
    "timed": "hpcpar.observe.timing",
}

#: Module paths of earlier releases (flat modules) -> where they live now. Both
#: ``import hpcpar.partition`` and ``hpcpar.partition`` give the same module object.
_MODULES = {
    "partition": "hpcpar.decomp.partition",
    "grid": "hpcpar.decomp.grid",
    "sort": "hpcpar.decomp.sort",
    "comm": "hpcpar.core.context",
    "runner": "hpcpar.core.runner",
    "watchdog": "hpcpar.core.watchdog",
    "preempt": "hpcpar.core.preempt",
    "local": "hpcpar.tasks.local",
    "output": "hpcpar.io.output",
    "checkpoint": "hpcpar.io.checkpoint",
    "timing": "hpcpar.observe.timing",
    "progress": "hpcpar.observe.progress",
    "log": "hpcpar.observe.log",
    "info": "hpcpar.observe.info",
    "scale": "hpcpar.launch.scale",
    "pytest_plugin": "hpcpar.testing.plugin",
}

__all__ = [*_NAMES, "partition", "sort", "watchdog", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'hpcpar' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES, *_MODULES})


class _Alias:
    """Makes ``import hpcpar.<old module>`` give the module at its new place: a meta path
    finder and loader (not derived from ``importlib.abc``, whose import costs ~20 ms)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        prefix, _, rest = fullname.partition(".")
        if prefix != "hpcpar" or rest not in _MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)  # type: ignore[arg-type]

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(_MODULES[spec.name.partition(".")[2]])
        spec.loader_state = module.__spec__  # the import system is about to overwrite it
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The real module is already executed: give it back its own __spec__.
        own = module.__spec__.loader_state if module.__spec__ is not None else None
        if own is not None:
            module.__spec__ = own


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.append(_Alias())


if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .core import watchdog
    from .core.context import Context
    from .core.runner import abort, run
    from .decomp import partition, sort
    from .decomp.grid import Grid
    from .errors import CollectiveError, CollectiveMismatchError, HpcparError, TaskError
    from .io.checkpoint import Checkpoint
    from .io.output import Output
    from .io.read import read, read_grid
    from .observe.log import get_logger
    from .observe.timing import timed
    from .tasks.farm import farm, farm_iter
    from .tasks.local import LocalPool, local_cpus, local_pool
    from .tasks.pipeline import pipeline
