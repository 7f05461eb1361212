"""Starting jobs from a serial process: the MPI launcher, the rank guardian, scaling runs.

Nothing in this layer imports MPI: it runs in the ``hpcpar`` command, on a login
node, or in a test process, and starts MPI jobs as child processes.
"""

from .command import launch_argv, launcher
from .mpiexec import launch, launch_command

__all__ = ["launch", "launch_command", "launch_argv", "launcher"]
