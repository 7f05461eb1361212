"""The one builder of MPI launch command lines: which launcher, and how it is told the rank count.

Pure and local: it reads the environment and the file system, starts nothing, and
imports no MPI. ``hpcpar run``, the pytest plugin's spawned jobs,
:func:`hpcpar.testing.run_spmd` and the mpiexec line of a Slurm script
(:meth:`hpcpar.slurm.JobSpec.command`) all build their command here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys

from .. import env

__all__ = ["launcher", "mpiexec_beside", "launch_argv", "ranks_flag"]


def mpiexec_beside(python: str) -> str | None:
    """The executable ``mpiexec`` in the directory of an absolute ``python`` path, else None.
    **Local**.

    A virtual environment with ``hpcpar[mpich]`` has the mpiexec of the MPI library
    its mpi4py was built against there.
    """
    if os.path.isabs(python):
        here = os.path.join(os.path.dirname(python), "mpiexec")
        if os.access(here, os.X_OK):
            return here
    return None


def launcher() -> list[str]:
    """The launcher command: ``HPCPAR_MPIEXEC``, else the ``mpiexec`` beside this Python,
    else ``mpiexec`` / ``mpirun`` on ``PATH``. **Local**.

    Raises:
        FileNotFoundError: when none is found, saying how to install one.
    """
    forced = env.get(env.HPCPAR_MPIEXEC)
    if forced:
        return shlex.split(forced)
    here = mpiexec_beside(sys.executable)
    if here:
        return [here]
    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return [found]
    raise FileNotFoundError(
        "no MPI launcher found: install one with `pip install hpcpar[mpich]`, load your "
        f"cluster's MPI module, or set {env.HPCPAR_MPIEXEC} (e.g. 'srun --mpi=pmi2')")


def ranks_flag(launch: list[str]) -> str:
    """The option that sets the rank count of ``launch``: ``--ntasks`` for srun, else ``-n``."""
    return "--ntasks" if os.path.basename(launch[0]) == "srun" else "-n"


def launch_argv(ranks: int | str, argv: list[str], launch: list[str] | None = None) -> list[str]:
    """The command that runs ``argv`` on ``ranks`` ranks under ``launch``. **Local**, pure
    once ``launch`` is given.

    Args:
        ranks: the rank count (a string for a shell expression in a rendered script).
        argv: the command every rank runs.
        launch: the launcher command (default: :func:`launcher`).

    Raises:
        FileNotFoundError: when ``launch`` is None and no launcher is found.
    """
    launch = launcher() if launch is None else list(launch)
    count = ranks if isinstance(ranks, str) else str(ranks)  # a str is passed on as it is
    return [*launch, ranks_flag(launch), count, *argv]
