"""Read datasets back on any number of ranks: each rank its block, or its part of a grid."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..decomp import partition
from ..errors import agree, attempt, raise_problems
from .mode import collective_dxpl, io_mode
from .slabs import grid_slab, hyper_read

if TYPE_CHECKING:
    from ..core.context import Context
    from ..decomp.grid import Grid

#: What ``slab_of(dataset)`` tells :func:`_read_slab`: ``(start, count, shape)``;
#: start None reads the whole dataset.
_SlabOf = Callable[[Any], tuple[Any, Any, Any]]

__all__ = ["read", "read_grid"]


def _read_slab(ctx: Context, path: str | os.PathLike[str], name: str, where: str, io: str | None,
               slab_of: _SlabOf) -> np.ndarray:
    """Open ``path`` on every rank, read the slab ``slab_of(dset)`` gives; collective."""
    import h5py

    mine, problem = attempt(io_mode, io)
    heads = ctx.comm.allgather((mine, problem, name))
    raise_problems(where, [h[1] for h in heads])
    if len({h[2] for h in heads}) > 1 or len({h[0] for h in heads}) > 1:
        raise_problems(where, [("ValueError", "ranks disagree: " + "; ".join(
            f"rank {r}: {h[2]!r} ({h[0]})" for r, h in enumerate(heads)))])
    path = ctx.comm.bcast(os.path.abspath(os.fspath(path)) if ctx.is_root else None, root=ctx.root)
    problem = None
    if ctx.is_root and not os.path.exists(path):
        problem = ("FileNotFoundError", f"{path} does not exist")
    agree(ctx.comm, where, problem, root=ctx.root)
    if mine == "mpio":
        f, problem = attempt(h5py.File, path, "r", driver="mpio", comm=ctx.comm)
    else:
        f, problem = attempt(h5py.File, path, "r")
    agree(ctx.comm, where, problem)
    assert f is not None  # agree raised on every rank otherwise
    try:
        def locate():
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise KeyError(f"{path} has no dataset {name!r}")
            d = f[name]
            return d, slab_of(d)
        found, problem = attempt(locate)
        agree(ctx.comm, where, problem)
        assert found is not None  # agree raised on every rank otherwise
        dset, (start, count, shape) = found
        block: np.ndarray | None
        if dset.size == 0:  # no storage to read (the same on every rank)
            block, problem = np.empty(dset.shape if start is None else count, dset.dtype), None
        elif start is None:  # the whole dataset, on every rank
            block, problem = attempt(lambda: dset[()])
        else:
            dxpl = collective_dxpl() if mine == "mpio" else None
            block, problem = attempt(hyper_read, dset, start, count, dxpl)
        agree(ctx.comm, where, problem)
        assert block is not None  # agree raised on every rank otherwise
        return block if shape is None else block.reshape(shape)
    finally:
        _, problem = attempt(f.close)
        agree(ctx.comm, f"{where}: closing", problem)


def read(ctx: Context, path: str | os.PathLike[str], name: str, axis: int | None = 0, *,
         io: str | None = None) -> np.ndarray:
    """This rank's block of dataset ``name`` of the file ``path``. **Collective**.

    The dataset is split along ``axis`` in blocks of
    :func:`hpcpar.partition.block_range` over ``ctx.size`` ranks, whatever the
    number of ranks that wrote it. ``axis=None`` returns the whole dataset on
    every rank (0-d datasets always are). Works with the serial h5py and the
    mpio one (``io`` as in :class:`Output`).

    Raises:
        FileNotFoundError, KeyError, ValueError: on every rank, for a missing
            file or dataset or an axis out of range.
    """
    where = f"hpcpar.read({os.fspath(path)!r}, {name!r})"

    def slab(d):
        if axis is None or d.ndim == 0:
            return None, None, None
        if not isinstance(axis, (int, np.integer)) or not -d.ndim <= axis < d.ndim:
            raise ValueError(f"axis={axis!r} is out of range for the {d.ndim}-d dataset {name!r}")
        ax = int(axis) % d.ndim
        rng = partition.block_range(d.shape[ax], ctx.size, ctx.rank)
        start = tuple(rng.start if i == ax else 0 for i in range(d.ndim))
        count = tuple(len(rng) if i == ax else n for i, n in enumerate(d.shape))
        return start, count, None

    return _read_slab(ctx, path, name, where, io, slab)


def read_grid(grid: Grid, path: str | os.PathLike[str], name: str, out: np.ndarray | None = None, *,
              io: str | None = None) -> np.ndarray:
    """This rank's part (``grid.global_slices``) of a dataset of shape ``grid.shape``.

    **Collective** over ``grid.ctx``. Returns a new array of ``grid.local_shape``,
    or, with ``out`` (a field of the grid, with halo), fills ``grid.interior(out)``
    and returns ``out``.

    Raises:
        ValueError: on every rank when the dataset's shape is not ``grid.shape``.
    """
    ctx = grid.ctx
    where = f"hpcpar.read_grid({os.fspath(path)!r}, {name!r})"

    def slab(d):
        gshape, start, count = grid_slab(grid)
        if tuple(d.shape) != gshape:
            raise ValueError(f"dataset {name!r} has shape {list(d.shape)}, the grid {list(gshape)}")
        return start, count, None

    block = _read_slab(ctx, path, name, where, io, slab)
    if out is None:
        return block
    grid.interior(out)[...] = block
    return out
