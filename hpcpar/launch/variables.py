"""The environment variables MPI launchers set in the processes they start, in one place.

Pure constants and lookups: this module imports nothing of hpcpar and no MPI, so
:mod:`hpcpar.launch.guardian`, which runs as a file outside the package, imports it
as its sibling ``variables``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["RANK_VARIABLES", "SIZE_VARIABLES", "LAUNCHER_PREFIXES", "launched_rank", "launched_size"]

#: Variables holding a process's rank in its job, in the order they are read:
#: MPICH/Hydra and Intel MPI (PMI), PMIx launchers, Open MPI, Slurm's srun.
RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")

#: Variables holding the number of ranks of the job, in the same order. Slurm's
#: ``SLURM_NTASKS`` comes last: a batch script has it too, without any launcher.
SIZE_VARIABLES = ("PMI_SIZE", "PMIX_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")

#: Prefixes (and whole names) of the variables a launcher sets in the processes it
#: starts. A job started from inside another MPI process must not inherit them, or
#: its launcher joins the enclosing job.
LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "MPIR_", "OMPI_", "MPI_LOCALNRANKS",
                     "MPI_LOCALRANKID")


def _first(names: tuple[str, ...], environ: Mapping[str, str] | None) -> int | None:
    environ = os.environ if environ is None else environ
    for name in names:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def launched_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's rank as its launcher announced it (None when none did). **Local**."""
    return _first(RANK_VARIABLES, environ)


def launched_size(environ: Mapping[str, str] | None = None, slurm: bool = False) -> int | None:
    """The job size an enclosing MPI launcher announced (None when none did). **Local**.

    Args:
        environ: the environment to read (default ``os.environ``).
        slurm: also trust ``SLURM_NTASKS``, which a batch script has without any launcher.
    """
    return _first(SIZE_VARIABLES if slurm else SIZE_VARIABLES[:-1], environ)
