"""The I/O path of a process (collective MPI-IO or serial h5py), and the checks made before a file opens.

``"mpio"``
    h5py built with MPI (``h5py.get_config().mpi``) whose HDF5 loads the same MPI
    library as mpi4py: every rank opens the file with ``driver="mpio"`` and every
    data write is one collective MPI-IO call (ranks with nothing to write still
    take part, with an empty selection).
``"serial"``
    any other h5py, e.g. the pip wheel. Root holds the file; small writes are
    gathered to root block by block, large ones are written by each rank in
    turn, passing a token (root closes the file, rank 1 opens, writes its slab,
    closes, hands on, ...).

``HPCPAR_H5=mpio|serial`` (or ``io=``) forces a path. Nothing here
communicates: :func:`io_mode` is what *this* process can do (the callers agree
on it across ranks), and :func:`check_path` looks at the file system only.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .. import env
from ..errors import Problem

__all__ = ["IO_MODES", "io_mode", "collective_dxpl", "check_path"]

#: The I/O paths: collective MPI-IO, or the serial-h5py fallback.
IO_MODES = ("mpio", "serial")


def _mapped_mpi_libraries() -> set[str] | None:
    """Real paths of the MPI libraries mapped into this process; None when unknown."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = set()
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and re.match(r"lib(mpi|mpich)\.so(\.|$)", os.path.basename(parts[-1])):
            found.add(os.path.realpath(parts[-1]))
    return found


def _mpio_problem() -> str | None:
    """Why the mpio path cannot be used in this process, or None when it can."""
    import h5py

    if not h5py.get_config().mpi:
        return ("this h5py was built without MPI (h5py.get_config().mpi is False); build h5py "
                "against your MPI (README: 'Parallel HDF5') or use the serial path")
    import h5py.h5p  # loads HDF5 and the MPI library it links

    libs = _mapped_mpi_libraries()
    if libs is not None and len(libs) > 1:
        return (f"h5py's HDF5 and mpi4py load different MPI libraries ({', '.join(sorted(libs))}); "
                "build mpi4py and h5py against the same MPI")
    return None


def io_mode(io: str | None = None) -> str:
    """The I/O path this process uses: ``"mpio"`` or ``"serial"``. **Local**.

    ``io`` (or, when None, the environment variable ``HPCPAR_H5``) forces a path:
    ``"mpio"``, ``"serial"`` or ``"auto"``. Automatic choice: ``"mpio"`` when h5py
    was built with MPI and its HDF5 uses the same MPI library as mpi4py, else
    ``"serial"``.

    Raises:
        ValueError: for an unknown value, or ``"mpio"`` forced where h5py cannot do it.
    """
    source = "io" if io is not None else env.HPCPAR_H5
    value = io if io is not None else env.get(env.HPCPAR_H5, "auto")
    choice = str(value).strip().lower()
    if choice not in ("auto", *IO_MODES):
        raise ValueError(f"{source}={value!r} is not one of 'mpio', 'serial', 'auto'")
    if choice == "serial":
        return "serial"
    why = _mpio_problem()
    if choice == "mpio" and why:
        raise ValueError(f"{source}=mpio, but {why}")
    return "serial" if why else "mpio"


def collective_dxpl() -> Any:
    """A dataset-transfer property list for collective MPI-IO (the mpio path). **Local**."""
    from h5py import h5fd, h5p

    dxpl = h5p.create(h5p.DATASET_XFER)
    dxpl.set_dxpl_mpio(h5fd.MPIO_COLLECTIVE)
    return dxpl


def check_path(path: str, mode: str) -> Problem | None:
    """Why ``path`` cannot be opened with the h5py ``mode``, as a problem; None when it can.

    **Local**; creates no file (it may create and remove a probe file beside it).
    """
    d = os.path.dirname(path) or "."
    exists = os.path.lexists(path)
    if not os.path.isdir(d):
        return ("FileNotFoundError", f"directory {d} does not exist; create it first "
                f"(os.makedirs) or choose another path")
    if exists and os.path.isdir(path):
        return ("IsADirectoryError", f"{path} is a directory, not a file")
    if mode == "w-" and exists:
        return ("FileExistsError", f"{path} already exists and mode='w-' does not overwrite; "
                "remove it or open with mode='w'")
    if mode == "r+" and not exists:
        return ("FileNotFoundError", f"{path} does not exist (mode='r+' opens an existing file)")
    if exists:
        try:
            os.close(os.open(path, os.O_RDWR))
        except OSError as exc:
            return ("PermissionError", f"cannot write {path}: {exc.strerror}; choose a writable file")
        return None
    probe = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        return ("PermissionError", f"cannot create files in {d}: {exc.strerror}; "
                "choose a writable location")
    return None
