"""The agreement step of an :class:`~hpcpar.Output` call: fixed-size traffic, whatever the rank count.

Every call of an Output first checks that all ranks are in the same call, with
arguments that fit together, and learns where this rank's block goes. The
normal path, like the checked collectives' (:mod:`hpcpar.core.agreement`), is

* one ``MPI_Exscan`` (sum) of one integer: this rank's count (rows of a block
  write, elements of a Grid write), which gives its offset; then
* one ``MPI_Allreduce`` (max) of :data:`SIZE` int64: pairs ``v, -v`` of a code of
  the call, a hash of the dataset name and a hash of the arguments that must
  agree (:class:`Slot`), a flag for a rank that found a problem, and the end of
  the last block (its offset plus its count: the total of all counts).

Every rank sees the same result, so all take the same branch: when a pair
disagrees or a flag is set, :func:`headers` gathers every rank's full header
(``O(P)``, the error path only) and raises the error that names each rank.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from mpi4py import MPI

from ..errors import Problem, raise_problems
from .slabs import Box, block_slabs, check_block, check_name, grid_payload, grid_slabs

if TYPE_CHECKING:
    from ..core.context import Context
    from ..decomp.grid import Grid

__all__ = ["Slot", "SIZE", "code", "settle", "headers", "Layout", "block_layout", "grid_layout",
           "gather_boxes", "Exchange"]

#: An Output's exchange: ``(op, name, payload, problem, key=, count=, odd=)`` ->
#: ``(every rank's payload or None, offset, total)`` (``Output._exchange``).
Exchange = Callable[..., tuple[list | None, int, int]]


class Slot:
    """Positions in the agreement vector of an Output call."""

    OP = 0  #: a code of the call (``"write"``, ``"write(grid)"``, ``"append"``, ...)
    NAME = 1  #: a hash of the dataset name
    KEY = 2  #: a hash of the arguments every rank must give alike (shape but the axis, dtype, ...)
    NPAIR = 3  #: the number of pairs; a pair's negated half sits at ``slot + NPAIR``
    FLAG = 2 * NPAIR  #: 1 when some rank found a problem: every rank's header is gathered
    END = FLAG + 1  #: the largest offset + count: the total count of all ranks


#: Slots in the vector: 8 int64, 64 bytes.
SIZE = Slot.END + 1


def code(value: Any) -> int:
    """A 59-bit hash of ``repr(value)``, the same on every rank. **Local**."""
    return int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=8).digest(), "little") >> 5


def settle(comm: MPI.Intracomm, op: str, name: str, key: Any, flag: bool, count: int = 0
           ) -> tuple[bool, int, int]:
    """Agree on one call. **Collective**: every rank calls it for the same call.

    Args:
        comm: the Output's communicator.
        op, name: the call and its dataset.
        key: what every rank must give alike (its ``repr`` is hashed).
        flag: this rank found a problem with its own arguments.
        count: this rank's count (0 when it has none).

    Returns:
        ``(agreed, offset, total)``, the same ``agreed`` and ``total`` on every rank:
        whether every rank is in the same call with the same ``key`` and no flag;
        the sum of the counts of the ranks before this one; the sum of all counts.
    """
    if comm.Get_size() == 1:
        return not flag, 0, int(count)
    mine = np.array([count], np.int64)
    before = np.zeros(1, np.int64)
    comm.Exscan(mine, before, MPI.SUM)
    if comm.Get_rank() == 0:
        before[0] = 0  # MPI leaves rank 0's result undefined
    v = np.empty(SIZE, np.int64)
    v[:Slot.NPAIR] = code(op), code(name), code(key)
    v[Slot.NPAIR:2 * Slot.NPAIR] = -v[:Slot.NPAIR]
    v[Slot.FLAG] = 1 if flag else 0
    v[Slot.END] = before[0] + count
    comm.Allreduce(MPI.IN_PLACE, v, MPI.MAX)
    same = not v[Slot.FLAG] and bool((v[:Slot.NPAIR] + v[Slot.NPAIR:2 * Slot.NPAIR] == 0).all())
    return same, int(before[0]), int(v[Slot.END])


def headers(comm: MPI.Intracomm, path: str, op: str, name: str, payload: Any,
            problem: Problem | str | None) -> list:
    """Every rank's payload, after the ranks' headers are compared. **Collective**, ``O(P)``:
    only when :func:`settle` found a disagreement.

    Raises:
        ValueError: on every rank, naming each rank's call, when ranks are in different calls.
        CollectiveError: on every rank, naming the ranks at fault, when any rank has a problem.
    """
    heads = comm.allgather((op, name, payload, problem))
    if len({(h[0], h[1]) for h in heads}) > 1:
        raise_problems(f"hpcpar.Output({path!r})", [("ValueError", "ranks are in different calls: "
                       + "; ".join(f"rank {r}: {h[0]}({h[1]!r})" for r, h in enumerate(heads)))])
    where = f"hpcpar.Output.{op.split('(')[0]}({name!r})"
    raise_problems(where, [h[3] if h[3] is None or isinstance(h[3], tuple) else ("ValueError", h[3])
                           for h in heads])
    return [h[2] for h in heads]


class Layout(NamedTuple):
    """Where one write goes: agreed on every rank.

    Attributes:
        shape: the dataset's global shape.
        dtype: its dtype.
        box: this rank's ``(start, count)``.
        total: the elements all ranks write together.
        boxes: every rank's box, when the error path gathered them (else None).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    box: Box
    total: int
    boxes: Sequence[Box] | None = None

    @classmethod
    def of(cls, shape: tuple[int, ...], dtype: np.dtype, boxes: Sequence[Box], rank: int) -> Layout:
        """The layout of fully known ``boxes`` (the error path), seen from ``rank``."""
        return cls(shape, dtype, boxes[rank], sum(math.prod(c) for _, c in boxes), boxes)


def gather_boxes(comm: MPI.Intracomm, box: Box, root: int) -> list[Box] | None:
    """Every rank's box, on ``root`` (None elsewhere). **Collective**: one ``Gather`` of
    ``2 * ndim`` integers per rank, as root needs them to receive each rank's block."""
    ndim = len(box[0])
    mine = np.array([*box[0], *box[1]], np.int64)
    every = np.empty((comm.Get_size(), 2 * ndim), np.int64) if comm.Get_rank() == root else None
    comm.Gather(mine, every, root=root)
    if every is None:
        return None
    return [(tuple(int(x) for x in row[:ndim]), tuple(int(x) for x in row[ndim:])) for row in every]


def block_layout(exchange: Exchange, op: str, name: str, local: Any, axis: Any, rank: int) -> Layout:
    """The layout of a block write (blocks follow each other in rank order along ``axis``).

    **Collective** through ``exchange``. The normal path: the offset along the axis
    comes from the ``Exscan`` and the global length from the total; the dtype, the
    axis and the other dimensions agree by hash.

    Raises:
        ValueError: on every rank, naming each rank's block, when they do not fit together.
    """
    problem, ax = check_name(name), None
    if problem is None:
        problem, ax = check_block(local, axis)
    fine = problem is None and ax is not None
    ax = int(ax) if ax is not None else 0
    payload = (tuple(local.shape), local.dtype, ax) if fine else None
    key = (local.shape[:ax], local.shape[ax + 1:], str(local.dtype), ax) if fine else None
    heads, offset, total = exchange(op, name, payload, problem, key=key, count=local.shape[ax] if fine else 0)
    if heads is not None:
        return Layout.of(*block_slabs(heads, f"hpcpar.Output.{op}({name!r})"), rank)
    shape = (*local.shape[:ax], total, *local.shape[ax + 1:])
    start = tuple(offset if i == ax else 0 for i in range(local.ndim))
    return Layout(shape, local.dtype, (start, tuple(local.shape)), math.prod(shape))


def grid_layout(exchange: Exchange, ctx: Context, path: str, op: str, name: str, grid: Grid,
                field: Any) -> tuple[Any, Layout]:
    """``(interior data, layout)`` of a Grid write. **Collective** through ``exchange``.

    The normal path: the global shape and dtype agree by hash and each rank checks
    its own box against the grid; the total of the boxes' elements decides whether
    they tile the grid exactly. Only when they do not are every rank's boxes gathered
    to look for overlaps (boxes of equal total volume that overlap, and so leave a
    gap, are not found).

    Raises:
        ValueError: on every rank, when ranks disagree about the grid, a box falls
            outside it, or two boxes overlap.
    """
    op = f"{op}(grid)"
    data, payload, problem = grid_payload(grid, field, ctx, check_name(name))
    (gshape, start, count), dtype = payload or (((), (), ()), np.dtype(np.uint8))  # a problem raises
    outside = any(a < 0 or a + n > g for a, n, g in zip(start, count, gshape))
    heads, _, total = exchange(op, name, payload, problem, key=(gshape, str(dtype)),
                               count=math.prod(count) if payload else 0, odd=outside)
    if heads is None and total != math.prod(gshape):  # not an exact tiling: look for overlaps
        heads = headers(ctx.comm, path, op, name, payload, None)
    if heads is None:
        return data, Layout(gshape, dtype, (start, count), total)
    return data, Layout.of(*grid_slabs(heads, f"hpcpar.Output.write({name!r})"), ctx.rank)
