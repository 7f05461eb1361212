"""Plain waits: the main thread seen from the watchdog thread, blocked in one mpi4py call.

hpcpar's own blocking calls mark themselves (:mod:`hpcpar.core.watchdog`); a plain
mpi4py call (``comm.recv``, ``comm.Barrier()``, ``req.Wait()``) does not. The
watchdog thread therefore samples the main thread's innermost Python frame at
each tick (``sys._current_frames()``: no cost at all in the main thread). A
:class:`Spot` is that frame and its current instruction; the same frame object
at the same instruction on consecutive ticks means the main thread has not moved.
It counts as a *plain MPI wait* when that instruction's line calls a blocking
mpi4py method (:data:`BLOCKING`, e.g. ``recv``, ``Barrier``, ``Waitall``), or the
frame is mpi4py's own Python code. A long computation on one line is not a wait.

Limitation: a loop that spends nearly all its time in one MPI call of the same
frame (``while True: comm.recv(...)`` with almost nothing else) looks blocked
when every sample lands on that call; set the timeout far above such a loop's
longest quiet spell.
"""

from __future__ import annotations

import dis
import os
import sys
import threading
from types import CodeType, FrameType

__all__ = ["BLOCKING", "Spot", "sample"]

#: mpi4py methods that may block until other ranks act.
BLOCKING = frozenset(
    "recv Recv send Send ssend Ssend sendrecv Sendrecv Sendrecv_replace probe Probe mprobe Mprobe "
    "wait Wait waitall Waitall waitany Waitany waitsome Waitsome barrier Barrier bcast Bcast "
    "gather Gather Gatherv allgather Allgather Allgatherv scatter Scatter Scatterv alltoall "
    "Alltoall Alltoallv Alltoallw reduce Reduce allreduce Allreduce Reduce_scatter "
    "Reduce_scatter_block scan Scan exscan Exscan Dup Split Create_cart".split())

_MPI4PY = os.sep + "mpi4py" + os.sep
_CALLS: dict[tuple[CodeType, int], str | None] = {}  # (code, offset) -> blocking name, if any


class Spot:
    """Where the main thread stood: ``frame`` at ``lasti`` since ``since`` (monotonic seconds).

    Attributes:
        call: the blocking mpi4py method its line calls, or None (not an MPI wait).
        where: ``file:line in function``.
    """

    __slots__ = ("frame", "lasti", "since", "call", "where")

    def __init__(self, frame: FrameType, since: float):
        self.frame, self.lasti, self.since = frame, frame.f_lasti, since
        code = frame.f_code
        self.call = _blocking_call(code, frame.f_lasti, frame.f_lineno)
        self.where = f"{os.path.basename(code.co_filename)}:{frame.f_lineno} in {code.co_name}"

    def describe(self) -> str:
        """``"in the MPI call recv at job.py:7 in main"`` or ``"at job.py:7 in main"``."""
        if self.call is None:
            return f"at {self.where}"
        return f"in the MPI call {self.call} at {self.where}"


def sample(prev: Spot | None, now: float) -> Spot | None:
    """The main thread's spot now; ``prev`` itself when it has not moved. **Local**.

    Holds a reference to the innermost frame until the next sample, so that a new
    call can never be mistaken for the old one at a reused address.
    """
    ident = threading.main_thread().ident
    frame = sys._current_frames().get(ident) if ident is not None else None
    if frame is None:
        return None
    if prev is not None and prev.frame is frame and prev.lasti == frame.f_lasti:
        return prev
    return Spot(frame, now)


def _blocking_call(code: CodeType, lasti: int, line: int | None) -> str | None:
    """The blocking mpi4py method called on ``line`` up to ``lasti``, or None. Cached."""
    key = (code, lasti)
    if key in _CALLS:
        return _CALLS[key]
    name = None
    if _MPI4PY in code.co_filename:
        name = code.co_name
    else:
        for ins in dis.get_instructions(code):
            if ins.offset > lasti:
                break
            pos = getattr(ins, "positions", None)  # Python 3.11+
            lineno = pos.lineno if pos is not None else None
            if lineno == line and ins.opname in ("LOAD_ATTR", "LOAD_METHOD") \
                    and ins.argval in BLOCKING:
                name = ins.argval
    if len(_CALLS) > 4096:
        _CALLS.clear()
    _CALLS[key] = name
    return name
