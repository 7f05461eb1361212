"""What this job runs on: MPI library, Python packages, CPUs, Slurm allocation."""

from __future__ import annotations

import os
import sys

from .. import env
from ..launch.family import MPICH, OPEN_MPI, conflict, library_family, mismatch, refuse
from ..launch.variables import launched_size

TYPE_CHECKING = False  # typing itself is not imported: it costs every rank ~5 ms of start-up
if TYPE_CHECKING:
    from typing import Any

    from ..core.context import Context

__all__ = ["mpi_library", "mpi4py_family", "preflight", "collect", "format_info", "slurm_env",
           "affinity", "collectives_mode", "format_collectives"]


def mpi_library() -> str:
    """The first line of the MPI library's version string. **Local** (imports mpi4py).

    Open MPI ends the string with a NUL character, which HDF5 attributes refuse;
    it is cut off here, with the surrounding blanks.
    """
    from mpi4py import MPI

    text = MPI.Get_library_version().split("\x00", 1)[0].strip()
    return text.splitlines()[0].strip() if text else ""


def mpi4py_family() -> str | None:
    """The MPI family (``launch.family.OPEN_MPI`` or ``MPICH``) of the library mpi4py loads,
    found without initialising MPI; None when it cannot be told. **Local**.

    Once ``mpi4py.MPI`` is imported, its library's version says; before, the loader of
    mpi4py's binary wheels tells which of its builds (Open MPI's or MPICH's ABI) it
    would load (None for an mpi4py built against one library).
    """
    if "mpi4py.MPI" in sys.modules:
        return library_family(mpi_library())
    try:
        import mpi4py
        from mpi4py import _mpiabi  # mpi4py>=4.1's loader; it opens libmpi, starts nothing

        # Only a wheel that picks its build this way (the PyPI wheels) is asked; an mpi4py
        # built against one library is judged once MPI runs. Private API: failure = unknown.
        if not getattr(_mpiabi, "_registry", {}).get(mpi4py.__name__ + ".MPI"):
            return None
        abi = getattr(_mpiabi, "_get_mpiabi")()  # noqa: B009
    except Exception:
        return None
    return {"openmpi": OPEN_MPI, "mpich": MPICH}.get(str(abi))


def preflight() -> None:
    """Before MPI starts: end this process, saying what to do, when a launcher of one MPI
    started it as one of several and mpi4py uses another MPI (MPI would fail in
    ``MPI_Init`` or run N separate one-rank jobs). **Local**; does nothing, at the cost of
    reading the environment, outside a launcher or once MPI is loaded.
    """
    if "mpi4py.MPI" in sys.modules or (launched_size() or 0) <= 1:
        return
    text = conflict(mpi4py_family())
    if text is not None:
        refuse(text)


def affinity() -> list[int]:
    """The CPUs this process may run on (its affinity set). **Local**."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def slurm_env() -> dict[str, str]:
    """The ``SLURM_*`` variables that describe the allocation, when present. **Local**."""
    keys = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST", "SLURM_NNODES",
            "SLURM_NTASKS", "SLURM_CPUS_PER_TASK", "SLURM_ARRAY_JOB_ID",
            "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_ID")
    return {k: os.environ[k] for k in keys if k in os.environ}


def collectives_mode(checks: bool | None = None, debug: bool | None = None) -> dict[str, Any]:
    """How the collectives run: ``checks`` (the agreement step), ``debug`` (call sites
    compared too), and the raw ``HPCPAR_CHECKS``/``HPCPAR_DEBUG`` values (None: unset).

    ``checks`` and ``debug`` default to what the variables select (a context's own
    ``ctx.checks``/``ctx.debug`` when given). **Local**; reads the environment only.
    """
    return {
        "checks": env.flag(env.HPCPAR_CHECKS, True) if checks is None else bool(checks),
        "debug": env.flag(env.HPCPAR_DEBUG, False) if debug is None else bool(debug),
        env.HPCPAR_CHECKS: env.get(env.HPCPAR_CHECKS),
        env.HPCPAR_DEBUG: env.get(env.HPCPAR_DEBUG),
    }


def format_collectives(mode: dict[str, Any]) -> str:
    """``checked (HPCPAR_CHECKS unset)``, ``unchecked (HPCPAR_CHECKS=0)``, plus debug when on."""
    def shown(name: str) -> str:
        value = mode.get(name)
        return f"{name} unset" if value is None else f"{name}={value}"

    if mode["checks"]:
        text = f"checked ({shown(env.HPCPAR_CHECKS)}): ranks agree on every call before data moves"
    else:
        text = f"unchecked ({shown(env.HPCPAR_CHECKS)}): straight to MPI, no agreement step"
    if mode["debug"]:
        text += f"; debug ({shown(env.HPCPAR_DEBUG)})"
        if mode["checks"]:
            text += ": ranks also compare the calling function"
    return text


def collect(ctx: Context) -> dict[str, Any] | None:
    """Everything ``hpcpar info`` reports. **Collective**: root gets the dict, others None."""
    import platform

    import mpi4py
    import numpy
    from mpi4py import MPI

    from .. import __version__

    # ctx.checks once Context has it; until then the variable says what is asked for
    mode = collectives_mode(ctx.checks, ctx.debug)
    me = {"host": os.uname().nodename, "pid": os.getpid(), "cpus": affinity(), "collectives": mode}
    ranks = ctx.comm.gather(me, root=0)
    if not ctx.is_root:
        return None
    try:
        import h5py
        h5 = {"version": h5py.version.version, "hdf5": h5py.version.hdf5_version,
              "mpi": bool(h5py.get_config().mpi)}
    except Exception as exc:
        h5 = {"error": f"{type(exc).__name__}: {exc}"}
    lib = mpi_library()
    return {
        "launcher_mismatch": mismatch(MPI.COMM_WORLD.Get_size(), lib),
        "hpcpar": __version__,
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "numpy": numpy.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi_library": lib,
        "mpi_standard": "{}.{}".format(*MPI.Get_version()),
        "thread_level": {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
                         MPI.THREAD_SERIALIZED: "serialized",
                         MPI.THREAD_MULTIPLE: "multiple"}[MPI.Query_thread()],
        "ranks": ctx.size,
        "collectives": mode,
        "h5py": h5,
        "per_rank": ranks,
        "slurm": slurm_env(),
    }


def format_info(info: dict[str, Any]) -> str:
    """Human-readable lines for :func:`collect`'s dict."""
    h5 = info["h5py"]
    if "error" in h5:
        h5line = f"not usable ({h5['error']})"
    else:
        kind = ("built with MPI: parallel writes" if h5["mpi"]
                else "serial build: hpcpar uses its fallback writer")
        h5line = f"{h5['version']} (HDF5 {h5['hdf5']}, {kind})"
    lines = [
        f"hpcpar       {info['hpcpar']}",
        f"python       {info['python']}",
        f"numpy        {info['numpy']}",
        f"mpi4py       {info['mpi4py']}",
        f"MPI library  {info['mpi_library']} (MPI {info['mpi_standard']}, "
        f"thread level {info['thread_level']})",
        f"h5py         {h5line}",
        f"collectives  {format_collectives(info['collectives'])}",
    ]
    mode = info["collectives"]
    for r, d in enumerate(info["per_rank"]):
        theirs = d.get("collectives", mode)
        if (theirs["checks"], theirs["debug"]) != (mode["checks"], mode["debug"]):
            lines.append(f"  rank {r:<4} differs from rank 0: {format_collectives(theirs)}")
    lines.append(f"ranks        {info['ranks']}")
    by_host: dict[str, list[int]] = {}
    for r, d in enumerate(info["per_rank"]):
        by_host.setdefault(d["host"], []).append(r)
    lines.append(f"hosts        {len(by_host)}: " + ", ".join(
        f"{h} (rank{'s' if len(rs) > 1 else ''} {_ranges(rs)[1:-1]})" for h, rs in by_host.items()))
    if info.get("launcher_mismatch"):
        lines.append(f"launcher     MISMATCH: {info['launcher_mismatch']}")
    for r, d in enumerate(info["per_rank"]):
        cpus = d["cpus"]
        lines.append(f"  rank {r:<4} host {d['host']} pid {d['pid']} "
                     f"may use {len(cpus)} CPUs {_ranges(cpus)}")
    if info["slurm"]:
        lines.append("slurm        " + " ".join(f"{k}={v}" for k, v in info["slurm"].items()))
    else:
        lines.append("slurm        not inside a Slurm allocation")
    return "\n".join(lines)


def _ranges(cpus: list[int]) -> str:
    out: list[str] = []
    start: int | None = None
    prev = 0  # meaningful only once start is set
    for c in cpus:
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = c
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return "[" + ",".join(out) + "]"
