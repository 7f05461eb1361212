"""Stop requests: SIGUSR1 (Slurm's time-limit warning, or ``scancel --signal=USR1``) as a flag
that every rank of a time-step loop sees at the same step.

Slurm sends ``--signal=USR1@N`` to every process of the job's steps N seconds
before the time limit (up to a minute early); ``scancel --signal=USR1 JOB`` sends
it at once. The default action of SIGUSR1 would kill the process, so
:func:`hpcpar.run` installs :func:`install`'s handler before the user code
starts; the handler only records the signal. :func:`should_stop` (and
``ctx.should_stop()``) combines the flags of all ranks, so the loop ends at
the same step everywhere, and the job can save its checkpoint and, under Slurm,
ask to be requeued (:func:`hpcpar.slurm.requeue`).

Unlike the rest of :mod:`hpcpar.core`, importing this module loads neither MPI nor
NumPy: ``hpcpar run`` installs the handler before the program starts, and the
program may initialise MPI itself, later, its own way.
"""

from __future__ import annotations

import signal
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time: every rank would pay for it at start-up
if TYPE_CHECKING:
    from typing import Any

    from .context import Context

__all__ = ["STOP_SIGNALS", "install", "requested", "request", "reset", "should_stop"]

#: Signals that request a stop.
STOP_SIGNALS = (signal.SIGUSR1,)

_got: dict = {"signum": None, "time": None}
_installed = {"done": False}


def _handler(signum, frame) -> None:
    if _got["signum"] is None:
        _got["signum"], _got["time"] = signum, time.time()


def install() -> bool:
    """Install the stop handler for :data:`STOP_SIGNALS`. **Local**; idempotent.

    Returns False (and installs nothing) when called outside the main thread,
    where Python cannot install signal handlers.
    """
    if _installed["done"]:
        return True
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)
    _installed["done"] = True
    return True


def request() -> None:
    """Request a stop on this rank, as the signal would. **Local**."""
    _handler(signal.SIGUSR1, None)


def requested() -> bool:
    """True when this rank got a stop signal (or :func:`request`). **Local**; no communication."""
    return _got["signum"] is not None


def reset() -> None:
    """Forget a received stop request on this rank. **Local**."""
    _got["signum"] = _got["time"] = None


class _StopState:
    __slots__ = ("buf", "calls", "stopped", "mpi")

    def __init__(self) -> None:
        import numpy as np
        from mpi4py import MPI

        self.buf = np.zeros(1, dtype=np.int32)
        self.calls = 0
        self.stopped = False
        self.mpi: Any = MPI


def should_stop(ctx: Context, every: int = 1) -> bool:
    """True on every rank once any rank got a stop signal. **Collective**.

    Every rank of ``ctx`` calls it the same number of times (typically once per
    time step); the ranks exchange one integer (``MPI_Allreduce``, a few
    microseconds) on every ``every``-th call and return False on the others, so
    all ranks always return the same value at the same call. Once true it stays
    true without communicating. On the first true, root prints one line to
    stderr.

    Raises:
        ValueError: when ``every`` is not a positive integer.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"should_stop: every={every!r} must be a positive integer (check every N-th call)")
    state = ctx.__dict__.get("_stop_state")
    if state is None:
        install()
        state = ctx.__dict__["_stop_state"] = _StopState()
    if state.stopped:
        return True
    state.calls += 1
    if state.calls % every:
        return False
    state.buf[0] = 1 if requested() else 0
    if ctx.size > 1:
        ctx.comm.Allreduce(state.mpi.IN_PLACE, state.buf, op=state.mpi.MAX)
    if state.buf[0]:
        state.stopped = True
        if ctx.is_root:
            sys.stderr.write("hpcpar: stop requested (SIGUSR1: Slurm's time-limit warning or "
                             "scancel --signal=USR1); ctx.should_stop() is now true on every rank\n")
            sys.stderr.flush()
    return state.stopped
