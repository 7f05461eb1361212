"""The fast path of repeated gathers and allgathers (see :mod:`hpcpar.core.fastpath`).

**Unchecked** contexts: a block whose number of dimensions, trailing shape and
dtype the full method took before (axis 0, C-contiguous, no ``out``) goes
straight to MPI, as the full method sends it: one ``Gather`` (``Allgather``) of
this rank's block length, then the ``Gatherv`` (``Allgatherv``) with the plan of
the lengths (cached by their bytes, which root (every rank) receives anyway).

**Checked** contexts (not in debug mode): a call whose arguments the full method
validated before (its vector is in :attr:`~hpcpar.core.blocks.Blocks.gather_vectors`),
with the same block length as this rank's last call of that kind, runs the
agreement on the cached vector; when the result is that vector, no rank changed
anything and every rank holds the plan, so the ``Gatherv`` (``Allgatherv``)
follows at once: two MPI collectives, as raw mpi4py needs when counts can change.
Any other result goes on in :meth:`~hpcpar.core.blocks.Blocks.gather_agreed`
(new counts, disagreement), inside the same mark.

On a library without MPI-4 large counts (or with ``HPCPAR_LARGE_COUNT=0``) every
gather takes the full method, whose paths for messages over ``2**31`` bytes differ
(and a rooted gather adds root's large-count verdict).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from ..observe.trace import COLLECTIVE, RECORDER
from . import agreement, largecount, watchdog
from .cache import BoundedCache
from .protocol import Call, Plan

__all__ = ["unchecked", "checked"]

MAX = MPI.MAX
_ndarray = np.ndarray


def unchecked(ctx: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The fast unchecked ``gather`` and ``allgather``: one ``Gather`` (``Allgather``) of this
    rank's block length, then the ``Gatherv`` (``Allgatherv``), as the full method does."""
    state, clock, ident, rec = watchdog.STATE, watchdog.clock, watchdog.thread_ident, RECORDER
    comm, me, size, empty, byte = ctx.comm, ctx.rank, ctx.size, np.empty, MPI.BYTE
    full_gather, full_allgather, live = ctx.gather, ctx.allgather, largecount.units_live
    spans = {True: rec.name_id(COLLECTIVE, "gather"), False: rec.name_id(COLLECTIVE, "allgather")}
    taken: dict[tuple, bool] = {}  # (ndim, trailing shape, dtype) of blocks the full methods took
    plans: BoundedCache[tuple, Plan] = BoundedCache(64)  # (counts' bytes, ...) -> root's plan
    last: list = [None, None, None, None]  # the counts, trailing shape and dtype of the last plan, it
    # this rank's block length, an int64 as the full method sends it, set through a memoryview
    # (half the cost of NumPy's item assignment)
    mine, counts = np.zeros(1, np.int64).data, np.empty(size, np.int64)
    known: list = [None, None]  # the shape and dtype of the last block found in ``taken``

    def fits(local: np.ndarray) -> bool:  # the full method took such a block before
        if local.shape == known[0] and local.dtype is known[1]:
            return True
        if (local.ndim, local.shape[1:], local.dtype) in taken:
            known[0], known[1] = local.shape, local.dtype
            return True
        return False

    def move(local: np.ndarray, root: int | None) -> Any:
        t0 = clock()
        state.now = ("allgather" if root is None else "gather", t0, ctx)
        state.tid = ident()
        try:
            mine[0] = local.shape[0]
            send = [local, local.nbytes, byte]
            if root is None:
                comm.Allgather(mine, counts)
            elif root != me:
                comm.Gather(mine, None, root=root)
                comm.Gatherv(send, None, root=root)
                return None
            else:
                comm.Gather(mine, counts, root=root)
            seen, dt, rest = counts.tobytes(), local.dtype, local.shape[1:]  # the counts MPI takes anyway
            if seen == last[0] and dt is last[2] and rest == last[1]:
                plan = last[3]
            else:
                plan = plans.get((seen, rest, dt))
                if plan is None:
                    plan = plans.put((seen, rest, dt), Plan.blocks(0, dt, counts.tolist(), local.shape))
                last[0], last[1], last[2], last[3] = seen, rest, dt, plan
            recv = empty(plan.gshape, dt)
            if root is None:
                comm.Allgatherv(send, [recv, plan.bcounts, plan.bdispls, byte])
            else:
                comm.Gatherv(send, [recv, plan.bcounts, plan.bdispls, byte], root=root)
            return recv
        finally:
            state.now = None
            if rec.on:  # tracing: the call's span
                rec.call(spans[root is not None], ctx, t0, local.nbytes)

    def took(local: Any, axis: Any, out: Any) -> None:  # the full method accepted these arguments
        if (local.__class__ is _ndarray and axis.__class__ is int and axis == 0 and out is None
                and local.ndim and len(taken) < 256):
            taken[(local.ndim, local.shape[1:], local.dtype)] = True

    def gather(local: Any, root: int = 0, axis: int = 0, out: Any = None) -> Any:
        if (local.__class__ is _ndarray and axis.__class__ is int and axis == 0 and out is None
                and root.__class__ is int and 0 <= root < size and state.now is None
                and fits(local) and local.flags.c_contiguous and not live()):
            return move(local, root)
        result = full_gather(local, root, axis, out)
        took(local, axis, out)
        return result

    def allgather(local: Any, axis: int = 0, out: Any = None) -> Any:
        if (local.__class__ is _ndarray and axis.__class__ is int and axis == 0 and out is None
                and state.now is None and fits(local) and local.flags.c_contiguous and not live()):
            return move(local, None)
        result = full_allgather(local, axis, out)
        took(local, axis, out)
        return result
    return gather, allgather


def checked(ctx: Any, a: Any, blocks: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The fast checked ``gather`` and ``allgather``: the agreement on the cached vector, and
    when every rank sent it unchanged (same call, same block lengths as last time) the
    ``Gatherv`` (``Allgatherv``) with the plan of those lengths; anything else goes on in
    :meth:`~hpcpar.core.blocks.Blocks.gather_agreed`."""
    state, clock, ident, rec = watchdog.STATE, watchdog.clock, watchdog.thread_ident, RECORDER
    comm, me, empty, byte = ctx.comm, ctx.rank, np.empty, MPI.BYTE
    full_gather, full_allgather, live = ctx.gather, ctx.allgather, largecount.units_live
    agree, r, mx, vectors, counts = a.comm.Allreduce, a.result, MAX, blocks.gather_vectors, blocks.counts
    spans = {True: rec.name_id(COLLECTIVE, "gather"), False: rec.name_id(COLLECTIVE, "allgather")}
    calls = {True: int(Call.GATHER), False: int(Call.ALLGATHER)}
    changed = agreement.Slot.CHANGED

    def move(local: Any, root: int | None, full: Callable[..., Any], args: tuple) -> Any:
        rooted = root is not None
        got = vectors.get((calls[rooted], root, root.__class__, 0, int, (local.shape, local.dtype), None))
        if got is None or state.now is not None or not local.flags.c_contiguous:  # protocol.fast_key
            return full(*args)
        entry = counts.get(got[1])
        if entry is None or entry.mine != got[2] or live():  # MPI-3: the full method's large-count paths
            return full(*args)
        v = got[0]
        v[changed] = 0
        t0 = clock()
        state.now = ("gather" if rooted else "allgather", t0, ctx)
        state.tid = ident()
        try:
            agree(v, r, mx)
            if r.tobytes() != v.tobytes():  # a change or a disagreement somewhere: the full rest
                return blocks.gather_agreed(calls[rooted], r, got, entry, local, root, 0, None)
            send = [local, got[3], byte]
            if rooted and root != me:
                comm.Gatherv(send, None, root=root)
                return None
            plan = entry.plan
            recv = empty(plan.gshape, plan.dtype)
            if rooted:
                comm.Gatherv(send, [recv, plan.bcounts, plan.bdispls, byte], root=root)
            else:
                comm.Allgatherv(send, [recv, plan.bcounts, plan.bdispls, byte])
            return recv
        finally:
            state.now = None
            if rec.on:  # tracing: the call's span
                rec.call(spans[rooted], ctx, t0, local.nbytes)

    def gather(local: Any, root: int = 0, axis: int = 0, out: Any = None) -> Any:
        if (local.__class__ is _ndarray and axis.__class__ is int and axis == 0 and out is None
                and root.__class__ is int):
            return move(local, root, full_gather, (local, root, axis, out))
        return full_gather(local, root, axis, out)

    def allgather(local: Any, axis: int = 0, out: Any = None) -> Any:
        if local.__class__ is _ndarray and axis.__class__ is int and axis == 0 and out is None:
            return move(local, None, full_allgather, (local, axis, out))
        return full_allgather(local, axis, out)
    return gather, allgather
