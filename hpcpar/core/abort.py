"""Ending the whole MPI job from any one rank, loudly."""

from __future__ import annotations

import os
import stat
import sys
from typing import NoReturn

from mpi4py import MPI

from .. import env
from ..observe.drain import drain

__all__ = ["abort"]


def abort(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` to stderr and end the whole MPI job. **Local**: any one rank may call it.

    Never returns. Use it when a rank finds a condition the others cannot learn of
    (they may already be blocked in a collective).

    Args:
        message: what went wrong; a newline is added when it lacks one. Empty: print
            nothing (the rank has said what was wrong already).
        code: the job's exit status.
    """
    try:
        sys.stdout.flush()
    except Exception:
        pass
    if message:
        sys.stderr.write(message if message.endswith("\n") else message + "\n")
        sys.stderr.flush()
    _tell_guardian()
    size = MPI.COMM_WORLD.Get_size()
    if size > 1:
        # Let the launcher read what this rank wrote before the abort tears down every
        # process of the job, the launcher's output relays included.
        drain()
        MPI.COMM_WORLD.Abort(code)
    os._exit(code)


def _tell_guardian() -> None:
    """Under ``hpcpar run``, tell this rank's guardian that the failure is reported.

    ``HPCPAR_GUARDIAN_FD`` is ``FD@PID``: the guardian's pipe and its pid. Only its
    direct child, the rank, writes, and only into a pipe.
    """
    fd, _, guardian = (env.get(env.HPCPAR_GUARDIAN_FD) or "").partition("@")
    if not (fd.isdigit() and guardian.isdigit()) or os.getppid() != int(guardian):
        return
    try:
        if stat.S_ISFIFO(os.fstat(int(fd)).st_mode):
            os.write(int(fd), b"reported\n")
    except OSError:
        pass
