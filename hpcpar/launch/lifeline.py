"""Tie a process's life to its parent's: the kernel signals it when the parent dies.

Pure and local: imports nothing of hpcpar and no MPI, so the rank guardian, which
runs as a file outside the package, loads it from the file beside it.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["die_with_parent", "parent_is"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies. **Local**.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); returns whether it was set. Call it in
    the process itself (in a child before ``exec``: a ``preexec_fn``), then compare
    ``os.getppid()`` with the parent expected: a parent that died before the call
    sends nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except Exception:
        return False


def parent_is(pid: int) -> bool:
    """Whether this process's parent is still ``pid`` (it is re-parented once that dies)."""
    return os.getppid() == pid
