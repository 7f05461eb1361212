"""The end of a farm or pipeline: root's verdict (a :class:`TaskError`, or none) on every rank.

Root alone learns which task or stage failed. When the farm (or pipeline) has
ended, :func:`share` hands root's verdict to every rank, so that every rank
raises the same error, or none does. The normal path is one non-blocking
broadcast of one integer (the same bytes at any number of ranks, ``O(log P)``);
only a failure travels further (pickled, on the error path).
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import numpy as np
from mpi4py import MPI

from ..core import watchdog
from ..errors import TaskError

__all__ = ["share"]

_IDLE_MIN, _IDLE_MAX = 20e-6, 5e-4  # a waiting rank sleeps between tests (seconds)


def share(comm: MPI.Intracomm, root: int, error: TaskError | None, doing: str,
          watch: Any = None) -> TaskError | None:
    """Root's ``error`` on every rank of ``comm`` (None when all went well). **Collective**.

    Every rank calls it once the farm or pipeline has ended on that rank; only
    root's ``error`` counts (the others pass None). A rank whose broadcast has not
    arrived sleeps between tests (20 us doubling to 0.5 ms) rather than spin a
    core in a blocking ``MPI_Bcast``: root may still be computing its last task.

    Args:
        comm: the communicator of every rank that took part (a private duplicate,
            or the context's own communicator).
        root: the rank that holds the verdict.
        error: on root, the error to raise everywhere, or None.
        doing: what the hang watchdog records while this rank waits.
        watch: the ranks the wait depends on (:class:`hpcpar.core.watchdog.Peers`).

    Returns:
        The same :class:`TaskError` on every rank (root's own object on root; on
        the other ranks a copy whose ``__cause__`` is the remote exception when
        that can be unpickled), or None.
    """
    me = comm.Get_rank()
    if comm.Get_size() == 1:
        return error
    flag = np.array([1 if me == root and error is not None else 0], dtype=np.intc)
    req = comm.Ibcast(flag, root=root)
    if not req.Test():
        with watchdog.watching(doing, watch):
            pause = _IDLE_MIN
            while not req.Test():
                time.sleep(pause)
                pause = min(2 * pause, _IDLE_MAX)
    if not flag[0]:
        return None
    if me == root:
        assert error is not None  # the flag says so
        comm.bcast((error, _cause_bytes(error)), root=root)
        return error
    err, cause = comm.bcast(None, root=root)
    if cause is not None:
        try:
            err.__cause__ = pickle.loads(cause)
        except Exception:
            pass  # the message and the remote traceback say what happened
    return err


def _cause_bytes(error: BaseException) -> bytes | None:
    """``error.__cause__`` pickled, when it pickles and unpickles; else None."""
    cause = error.__cause__
    if cause is None:
        return None
    try:
        data = pickle.dumps(cause, pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)
        return data
    except Exception:
        return None
