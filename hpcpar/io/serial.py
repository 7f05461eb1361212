"""The serial path's data movement: blocks gathered to root, or written rank by rank passing a token.

Used by :class:`hpcpar.Output` when h5py has no MPI (:func:`hpcpar.io.mode.io_mode`
is ``"serial"``): root holds the open file. Both functions are **collective** over
``ctx`` and raise the same error on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import agree, attempt, gather_problems, raise_problems
from .slabs import Box, as_bytes, hyper_write

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["put_gather", "put_token", "TAG"]

#: Point-to-point tag of the serial path's messages on ``ctx.comm``.
TAG = 0x4835


def put_gather(ctx: Context, dset: Any, dtype: np.dtype, box: Box, boxes: Sequence[Box] | None,
               block: np.ndarray, where: str) -> bool:
    """Small data: root receives each rank's block and writes it into ``dset``. **Collective**.

    Args:
        ctx: the file's context.
        dset: root's open h5py dataset (ignored on the other ranks).
        dtype: the dataset's dtype (every rank's block has it).
        box: this rank's ``(start, count)`` box.
        boxes: on root, every rank's box (ignored on the other ranks).
        block: this rank's data, of shape ``count``.
        where: how errors start.

    Returns:
        Whether this rank wrote to the file (True on root).
    """
    from mpi4py import MPI

    from ..core import watchdog

    comm = ctx.comm
    start, count = box
    if not ctx.is_root:
        with watchdog.watching("Output (sending a block to root)", ctx):
            if math.prod(count):
                comm.Send([as_bytes(block), MPI.BYTE], dest=ctx.root, tag=TAG)
            agree(comm, where, None, root=ctx.root)
        return False
    # Root writes its own block while the next one arrives, then each received
    # block while receiving the one after it: at most two blocks in flight.
    assert boxes is not None, "root needs every rank's box"
    senders = [r for r, (_, c) in enumerate(boxes) if math.prod(c) and r != ctx.rank]

    def post(i: int) -> tuple[np.ndarray, Any] | None:
        if i >= len(senders):
            return None
        buf = np.empty(boxes[senders[i]][1], dtype)
        return buf, comm.Irecv([as_bytes(buf), MPI.BYTE], source=senders[i], tag=TAG)

    pending = post(0)
    problem = None
    if math.prod(count):
        _, problem = attempt(hyper_write, dset, start, count, block)
    for i, r in enumerate(senders):
        assert pending is not None  # post(i) with i < len(senders)
        buf, req = pending
        with watchdog.watching("Output (root receiving blocks)", ctx):
            req.Wait()
        pending = post(i + 1)
        if problem is None:  # keep receiving after an error: every send must be matched
            _, problem = attempt(hyper_write, dset, boxes[r][0], boxes[r][1], buf)
    with watchdog.watching("Output (root receiving blocks)", ctx):
        agree(comm, where, problem, root=ctx.root)
    return True


def put_token(ctx: Context, path: str, name: str, root_file: Any, box: Box,
              block: np.ndarray, where: str, reopened: Callable[[Any], None]) -> bool:
    """Large data: each rank in turn opens ``path``, writes its box, closes. **Collective**.

    Root writes first into ``root_file`` and closes it; the others follow in rank
    order, each told by the previous one whether all went well; then root opens
    the file again and hands it to ``reopened`` (None when that fails).

    Returns:
        Whether this rank wrote to the file.
    """
    import h5py

    from ..core import watchdog

    comm = ctx.comm
    start, count = box
    problem = None
    if ctx.is_root:
        if math.prod(count):
            _, problem = attempt(hyper_write, root_file[name], start, count, block)
        _, p = attempt(root_file.close)
        problem = problem or p
        ok = problem is None
    else:
        with watchdog.watching("Output (waiting for the previous rank's write)", ctx):
            ok = comm.recv(source=ctx.rank - 1, tag=TAG)
        if ok and math.prod(count):
            def one() -> None:
                with h5py.File(path, "r+", locking=False) as f:  # root holds the file's lock
                    hyper_write(f[name], start, count, block)
            _, problem = attempt(one)
            ok = problem is None
    with watchdog.watching("Output (passing the write token)", ctx):
        if ctx.rank + 1 < ctx.size:
            comm.send(ok, dest=ctx.rank + 1, tag=TAG)
        problems = gather_problems(comm, problem)  # every rank's, only when some rank has one
    p = None
    if ctx.is_root:  # every rank has written: root holds the file again
        f, p = attempt(h5py.File, path, "r+")
        reopened(f)
    p = comm.bcast(p, root=ctx.root)
    if problems is not None or p is not None:
        problems = problems or [None] * ctx.size
        problems[ctx.root] = problems[ctx.root] or p
        raise_problems(where, problems)
    return bool(math.prod(count))
