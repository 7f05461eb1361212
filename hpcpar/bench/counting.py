"""Count the MPI calls and bytes of each rank with a PMPI library preloaded into the job.

The library (``pmpi/count.c``, shipped with hpcpar) wraps the MPI functions that
hpcpar and mpi4py use (collectives, point-to-point, their large-count ``_c``
forms) and counts, per process, the calls of each and the bytes each sends and
receives; ``count.c`` says exactly what a byte count means. It is compiled on
demand with the MPI's own ``mpicc`` into a per-user cache and loaded into every
rank with ``LD_PRELOAD``, because an MPI function cannot be interposed in a
process that is already running.

Outside the job (**local**, no MPI)::

    lib = counting.build()                                # compile once, cached
    cmd = counting.job_command(4, [sys.executable, "job.py"], lib)
    subprocess.run(cmd)

Inside the job (**local** to each rank; reading never calls MPI)::

    counters = counting.Counters()        # RuntimeError when the library is not preloaded
    counters.reset()
    ...                                   # the calls to measure
    snap = counters.read()                # {"Allreduce_c": Count(calls=10, sent=80, recv=80)}

``python -m hpcpar.bench.counting`` builds the library and prints its path, for
``mpiexec -n 4 env LD_PRELOAD=$(python -m hpcpar.bench.counting) python job.py``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from ..env import HPCPAR_COUNT_CACHE, HPCPAR_MPICC
from ..launch import launcher

__all__ = ["HPCPAR_MPICC", "HPCPAR_COUNT_CACHE", "Count", "Counters", "source_path", "compiler",
           "cache_dir", "build", "job_command", "fold", "total"]

#: The interface version of count.c this module reads (``hpcpar_count_version()``).
_VERSION = 1


@dataclass(frozen=True)
class Count:
    """Calls of one MPI function and the bytes they sent and received, on one rank."""

    calls: float
    sent: float
    recv: float

    def __add__(self, other: Count) -> Count:
        return Count(self.calls + other.calls, self.sent + other.sent, self.recv + other.recv)

    def __sub__(self, other: Count) -> Count:
        return Count(self.calls - other.calls, self.sent - other.sent, self.recv - other.recv)

    def scaled(self, factor: float) -> Count:
        """This count times ``factor`` (e.g. ``1 / repeats`` for a per-call average)."""
        return Count(self.calls * factor, self.sent * factor, self.recv * factor)


# ---- outside the job: build and launch ----------------------------------------
def source_path() -> str:
    """The path of ``count.c`` inside the installed package. **Local**."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "pmpi", "count.c")


def compiler() -> str:
    """The MPI compiler wrapper: ``HPCPAR_MPICC``, else ``mpicc`` beside this Python, else on ``PATH``.

    **Local**. Raises FileNotFoundError, saying what to install or set, when none is found.
    """
    forced = os.environ.get(HPCPAR_MPICC)
    if forced:
        return forced
    here = os.path.join(os.path.dirname(sys.executable), "mpicc")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("mpicc")
    if found:
        return found
    raise FileNotFoundError(
        "no mpicc found to build the PMPI counting library: install the MPI with its compiler "
        f"wrapper (`pip install hpcpar[mpich]` has one) or set {HPCPAR_MPICC} to the mpicc of "
        "the MPI that mpi4py uses")


def cache_dir() -> str:
    """Where compiled counting libraries are kept (see :data:`HPCPAR_COUNT_CACHE`). **Local**."""
    forced = os.environ.get(HPCPAR_COUNT_CACHE)
    if forced:
        return forced
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hpcpar")


def build(mpicc: str | None = None, force: bool = False) -> str:
    """Compile the counting library (once per compiler and source) and return its path. **Local**.

    The file name carries a hash of ``count.c``, the compiler's path and its
    ``-show`` line, so a changed source or another MPI gets its own build; a
    concurrent build by another process is harmless (the file is renamed into place).

    Args:
        mpicc: the compiler wrapper; default :func:`compiler`.
        force: compile even when a cached build exists.

    Raises:
        FileNotFoundError: no mpicc; RuntimeError: the compiler failed (its output is in the message).
    """
    cc = mpicc or compiler()
    with open(source_path(), "rb") as fh:
        source = fh.read()
    try:
        show = subprocess.run([cc, "-show"], capture_output=True, text=True, timeout=60).stdout
    except OSError as exc:
        raise FileNotFoundError(f"cannot run the MPI compiler {cc!r}: {exc}") from None
    key = hashlib.sha256(source + os.path.realpath(cc).encode() + show.encode()).hexdigest()[:16]
    out_dir = cache_dir()
    path = os.path.join(out_dir, f"libhpcpar_count-{key}.so")
    if os.path.exists(path) and not force:
        return path
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libhpcpar_count-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", tmp, source_path()],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"building the PMPI counting library with {cc} failed "
                               f"(exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def job_command(ranks: int, argv: list[str], lib: str) -> list[str]:
    """The launch command that runs ``argv`` on ``ranks`` ranks with ``lib`` preloaded. **Local**.

    Only the ranks get ``LD_PRELOAD`` (through ``env``), not the launcher; the
    launcher is :func:`hpcpar.launch.launcher`. An ``LD_PRELOAD`` already set in
    this environment is kept after ``lib``.
    """
    preload = ":".join(p for p in (lib, os.environ.get("LD_PRELOAD", "")) if p)
    return [*launcher(), "-n", str(ranks), "env", f"LD_PRELOAD={preload}", *argv]


# ---- inside the job: read and reset ---------------------------------------------
class Counters:
    """The counters of the preloaded library in this process. **Local**; no MPI call.

    Raises:
        RuntimeError: when the library is not loaded (the job was not started with
            :func:`job_command` or ``LD_PRELOAD``), or is of another version.
    """

    def __init__(self) -> None:
        lib = ctypes.CDLL(None)  # the preloaded library's symbols are global
        if not hasattr(lib, "hpcpar_count_read"):
            raise RuntimeError(
                "the PMPI counting library is not loaded in this process: start the job with "
                "LD_PRELOAD=$(python -m hpcpar.bench.counting), or from Python with "
                "hpcpar.bench.counting.job_command()")
        version = lib.hpcpar_count_version()
        if version != _VERSION:
            raise RuntimeError(f"the preloaded counting library has interface version {version}, "
                               f"this hpcpar reads version {_VERSION}: rebuild it with "
                               "hpcpar.bench.counting.build(force=True)")
        lib.hpcpar_count_name.restype = ctypes.c_char_p
        self._lib = lib
        self._n = int(lib.hpcpar_count_nfuncs())
        self.names: list[str] = [lib.hpcpar_count_name(i).decode() for i in range(self._n)]

    @staticmethod
    def loaded() -> bool:
        """True when the counting library is preloaded into this process. **Local**."""
        return hasattr(ctypes.CDLL(None), "hpcpar_count_read")

    def reset(self) -> None:
        """Zero every counter of this process."""
        self._lib.hpcpar_count_reset()

    def read(self) -> dict[str, Count]:
        """The counters of this process since the last :meth:`reset`, functions never called left out.

        Returns:
            MPI function name without the ``MPI_`` prefix (``"Allgather"``, the
            large-count entry point ``"Allgather_c"``) -> :class:`Count`.
        """
        arr = ctypes.c_uint64 * self._n
        calls, sent, recv = arr(), arr(), arr()
        self._lib.hpcpar_count_read(calls, sent, recv)
        return {self.names[i]: Count(calls[i], sent[i], recv[i])
                for i in range(self._n) if calls[i]}


def fold(snap: dict[str, Count]) -> dict[str, Count]:
    """``snap`` with each large-count ``X_c`` counter added into ``X``. **Local**, pure."""
    out: dict[str, Count] = {}
    for name, c in snap.items():
        base = name[:-2] if name.endswith("_c") else name
        out[base] = out[base] + c if base in out else c
    return out


def total(snap: dict[str, Count]) -> Count:
    """The sum of every counter in ``snap``. **Local**, pure."""
    out = Count(0, 0, 0)
    for c in snap.values():
        out = out + c
    return out


if __name__ == "__main__":
    try:
        print(build(force="--force" in sys.argv[1:]))
    except (FileNotFoundError, RuntimeError) as exc:
        sys.exit(f"hpcpar.bench.counting: {exc}")
