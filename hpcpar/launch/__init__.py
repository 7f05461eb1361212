"""Starting jobs from a serial process: the MPI launcher, the rank guardian, scaling runs.

Nothing in this layer imports MPI: it runs in the ``hpcpar`` command, on a login
node, or in a test process, and starts MPI jobs as child processes. The names
below load on first use, so that a rank importing :mod:`hpcpar.launch.variables`
does not pay for the launcher's modules.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing is not imported at run time: every rank would pay for it at start-up

__all__ = ["launch", "launch_command", "launch_argv", "launcher"]

_NAMES = {"launch": ".mpiexec", "launch_command": ".mpiexec",
          "launch_argv": ".command", "launcher": ".command"}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'hpcpar.launch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name], __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from typing import Any

    from .command import launch_argv, launcher
    from .mpiexec import launch, launch_command
