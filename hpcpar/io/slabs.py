"""Hyperslabs: who writes which box of a dataset, checked, and the h5py calls that move one box.

The geometry here is pure (no MPI): the global shape and each rank's
``(start, count)`` box of a block write (:func:`block_slabs`) or a Grid write
(:func:`grid_slab`, :func:`grid_slabs`), the overlap check, and the chunk shape
of an extendible dataset. :func:`hyper_write` and :func:`hyper_read` move one
box with h5py's low-level API, so an empty box still takes part in a collective
MPI-IO call (with an empty selection).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import raise_problems

if TYPE_CHECKING:
    from ..core.context import Context
    from ..decomp.grid import Grid

__all__ = ["Box", "Slab", "check_dtype", "check_name", "is_grid", "grid_slab", "grid_slabs",
           "check_block", "block_slabs", "overlaps", "append_chunks", "as_bytes",
           "hyper_write", "hyper_read", "CHUNK_BYTES", "grid_payload", "new_dataset",
           "extendible"]

#: A box of a dataset: ``(start, count)``, one entry per dimension.
Box = tuple[tuple[int, ...], tuple[int, ...]]
#: A Grid rank's box with the global shape: ``(global shape, start, count)``.
Slab = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

#: Target chunk size in bytes of extendible (append) datasets.
CHUNK_BYTES = 2**20


def check_dtype(dtype: np.dtype) -> str | None:
    """Why HDF5 cannot store ``dtype``, or None. **Local**."""
    import h5py

    if dtype.hasobject:
        return f"dtype {dtype} holds Python objects, which HDF5 cannot store"
    try:
        h5py.h5t.py_create(dtype, logical=True)
    except Exception:
        hint = " (encode text as bytes, e.g. .astype('S'))" if dtype.kind == "U" else ""
        return f"HDF5 cannot store dtype {dtype}{hint}"
    return None


def check_name(name: Any) -> str | None:
    """Why ``name`` is not a dataset name, or None. **Local**."""
    if not isinstance(name, str) or not name.strip("/"):
        return f"the dataset name must be a non-empty str, got {name!r}"
    return None


def is_grid(obj: Any) -> bool:
    """Whether ``obj`` looks like a :class:`hpcpar.Grid` (duck-typed). **Local**."""
    return all(hasattr(obj, a) for a in ("global_slices", "shape", "interior", "ctx"))


def grid_slab(grid: Grid, ctx: Context | None = None) -> Slab:
    """``(global shape, start, count)`` of this rank's interior of ``grid``. **Local**.

    Raises:
        ValueError: for non-contiguous ``global_slices``, or a grid of another
            context than ``ctx``.
    """
    gshape = tuple(int(n) for n in grid.shape)
    sl = tuple(grid.global_slices)
    if len(sl) != len(gshape):
        raise ValueError(f"grid.global_slices has {len(sl)} slices for a {len(gshape)}-d grid")
    start, count = [], []
    for s, n in zip(sl, gshape):
        a, b, step = s.indices(n)
        if step != 1 or b < a:
            raise ValueError(f"grid.global_slices {sl} must be contiguous slices")
        start.append(a)
        count.append(b - a)
    if ctx is not None and (grid.ctx.size != ctx.size or grid.ctx.rank != ctx.rank):
        raise ValueError(f"the grid's context (rank {grid.ctx.rank} of {grid.ctx.size}) is not "
                         f"this one's (rank {ctx.rank} of {ctx.size})")
    return gshape, tuple(start), tuple(count)


def overlaps(boxes: Sequence[Box]) -> tuple[int, int] | None:
    """Two ranks whose non-empty boxes overlap, or None. **Local**.

    Beyond 1024 non-empty boxes nothing is compared (None).
    """
    full = [(r, s, c) for r, (s, c) in enumerate(boxes) if math.prod(c) > 0]
    if len(full) > 1024:
        return None  # too many to compare pairwise; the volume check still runs
    for i, (r, s, c) in enumerate(full):
        for q, t, d in full[i + 1:]:
            if all(a < b + m and b < a + n for a, n, b, m in zip(s, c, t, d)):
                return r, q
    return None


def grid_slabs(heads: Sequence[tuple[Slab, np.dtype]], where: str
               ) -> tuple[tuple[int, ...], np.dtype, list[Box]]:
    """Global shape, dtype and per-rank box of a Grid write, from every rank's
    ``(grid_slab, dtype)``. **Local**, alike on every rank given the same ``heads``.

    Raises:
        UsageError: ranks disagree about the grid, a box falls outside it, or two overlap.
    """
    gshapes = {h[0][0] for h in heads}
    dtypes = {h[1] for h in heads}
    if len(gshapes) > 1 or len(dtypes) > 1:
        raise_problems(where, [("ValueError", "ranks disagree about the grid: " + "; ".join(
            f"rank {r}: {h[1]}{list(h[0][0])}" for r, h in enumerate(heads)))])
    gshape, dtype = heads[0][0][0], heads[0][1]
    boxes = [(h[0][1], h[0][2]) for h in heads]
    bad = [r for r, (s, c) in enumerate(boxes)
           if any(a < 0 or a + n > g for a, n, g in zip(s, c, gshape))]
    if bad:
        raise_problems(where, [("ValueError", f"global_slices of rank(s) {bad} fall outside the "
                                f"grid {list(gshape)}")])
    pair = overlaps(boxes)
    if pair:
        raise_problems(where, [("ValueError", f"ranks {pair[0]} and {pair[1]} have overlapping "
                                "global_slices")])
    return gshape, dtype, boxes


def check_block(local: Any, axis: Any) -> tuple[str | None, int | None]:
    """``(problem, normalized axis)`` of one rank's block of a block write. **Local**."""
    if not isinstance(local, np.ndarray):
        return f"the local block must be a NumPy array, got {type(local).__name__}", None
    if local.ndim == 0:
        return "a 0-d array is not a block of a distributed array; use write_root", None
    if (not isinstance(axis, (int, np.integer)) or isinstance(axis, bool)
            or not -local.ndim <= axis < local.ndim):
        return f"axis={axis!r} is out of range for a {local.ndim}-d block", None
    return check_dtype(local.dtype), int(axis) % local.ndim


def block_slabs(heads: Sequence[tuple[tuple[int, ...], np.dtype, int]], where: str
                ) -> tuple[tuple[int, ...], np.dtype, list[Box]]:
    """Global shape, dtype and per-rank box of a block write, from every rank's
    ``(local shape, dtype, axis)``; blocks follow each other in rank order. **Local**.

    Raises:
        UsageError: the blocks disagree in dtype, axis or a dimension other than the axis.
    """
    shapes = [h[0] for h in heads]
    dtypes = [h[1] for h in heads]
    axes = {h[2] for h in heads}
    ax = heads[0][2]
    rest = {s[:ax] + s[ax + 1:] if len(s) == len(shapes[0]) else None for s in shapes}
    if len(axes) > 1 or len(rest) > 1 or len(set(dtypes)) > 1:
        raise_problems(where, [("ValueError", "blocks must agree in dtype, axis and every dimension "
                                "but the axis; got " + "; ".join(
                                    f"rank {r}: {d}{list(s)} axis={h[2]}"
                                    for r, (s, d, h) in enumerate(zip(shapes, dtypes, heads))))])
    counts = [s[ax] for s in shapes]
    gshape = shapes[0][:ax] + (sum(counts),) + shapes[0][ax + 1:]
    boxes, off = [], 0
    for s, c in zip(shapes, counts):
        start = tuple(off if i == ax else 0 for i in range(len(s)))
        boxes.append((start, s))
        off += c
    return gshape, dtypes[0], boxes


def append_chunks(gshape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk shape of an extendible dataset: one time step, at most about :data:`CHUNK_BYTES`."""
    chunk = [1] + [max(1, n) for n in gshape]
    while math.prod(chunk) * itemsize > CHUNK_BYTES:
        k = max(range(1, len(chunk)), key=lambda i: chunk[i])
        if chunk[k] == 1:
            break
        chunk[k] = (chunk[k] + 1) // 2
    return tuple(chunk)


def as_bytes(a: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a C-contiguous copy of ``a`` (any dtype), for MPI.BYTE transfers."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def hyper_write(dset: Any, start: Sequence[int], count: Sequence[int], block: np.ndarray,
                dxpl: Any = None) -> None:
    """Write ``block`` into the box ``(start, count)`` of the h5py dataset ``dset``. **Local**
    (collective over the file's communicator on the mpio path, with ``dxpl``).

    An empty ``count`` selects nothing but still makes the call.
    """
    from h5py import h5s

    fspace = dset.id.get_space()
    if math.prod(count) == 0:
        fspace.select_none()
        mspace = h5s.create_simple((1,))
        mspace.select_none()
        buf = np.zeros(1, block.dtype)
    else:
        fspace.select_hyperslab(tuple(start), tuple(count))
        mspace = h5s.create_simple(tuple(count))
        buf = np.ascontiguousarray(block).reshape(count)
    dset.id.write(mspace, fspace, buf, dxpl=dxpl)


def hyper_read(dset: Any, start: Sequence[int], count: Sequence[int], dxpl: Any = None) -> np.ndarray:
    """The box ``(start, count)`` of ``dset`` as a new C-contiguous array; as :func:`hyper_write`."""
    from h5py import h5s

    out = np.empty(tuple(count), dset.dtype)
    fspace = dset.id.get_space()
    if math.prod(count) == 0:
        fspace.select_none()
        mspace = h5s.create_simple((1,))
        mspace.select_none()
        dset.id.read(mspace, fspace, np.zeros(1, dset.dtype), dxpl=dxpl)
        return out
    fspace.select_hyperslab(tuple(start), tuple(count))
    mspace = h5s.create_simple(tuple(count))
    dset.id.read(mspace, fspace, out, dxpl=dxpl)
    return out


def grid_payload(grid: Grid, field: Any, ctx: Context, problem: str | None
                 ) -> tuple[np.ndarray | None, tuple[Slab, np.dtype] | None, str | None]:
    """``(interior data, (slab, dtype), problem)`` of this rank's part of a Grid write. **Local**."""
    if problem is not None:
        return None, None, problem
    try:
        slab = grid_slab(grid, ctx)
        data = np.asarray(grid.interior(field))
        if data.shape != slab[2]:
            raise ValueError(f"grid.interior(a) has shape {data.shape}, but this "
                             f"rank's global_slices cover {slab[2]}")
        return data, (slab, data.dtype), check_dtype(data.dtype)
    except Exception as exc:  # reported on every rank
        return None, None, str(exc)


def new_dataset(f: Any, name: str, shape: tuple[int, ...], dtype: Any, attrs: dict[str, Any], *,
                maxshape: Any = None, chunks: Any = None, compression: Any = None,
                compression_opts: Any = None, cover: bool = False) -> Any:
    """Create dataset ``name`` in the h5py file ``f``, marked ``hpcpar_incomplete`` until written.

    **Local** (collective over the file's communicator on the mpio path). ``cover``:
    every element will be written, so HDF5's fill pass is skipped.
    """
    from .lock import INCOMPLETE

    kw: dict[str, Any] = {}
    if maxshape is not None:
        kw["maxshape"] = maxshape
    if chunks is not None:
        kw["chunks"] = chunks
    if compression is not None:
        kw["compression"] = compression
        if compression_opts is not None:
            kw["compression_opts"] = compression_opts
    if cover and compression is None and math.prod(shape) > 0:
        kw["fill_time"] = "never"
    elif not cover:
        # What no rank writes reads as the fill value (0) on every path: parallel HDF5
        # allocates the whole dataset at once and, without this, leaves it unwritten.
        kw["fill_time"] = "alloc"
    d = f.create_dataset(name, shape=shape, dtype=dtype, **kw)
    for k, v in attrs.items():
        d.attrs[k] = v
    if math.prod(shape) > 0:
        d.attrs[INCOMPLETE] = True  # until every rank's data is in (Output._put clears it)
    return d


def extendible(f: Any, name: str, path: str) -> Any:
    """The h5py dataset ``name`` of the open file ``f`` (at ``path``), checked to be
    extendible (made by ``Output.append``). **Local**.

    Raises:
        KeyError: no such dataset. ValueError: it cannot grow along its first axis.
    """
    import h5py

    if name not in f:
        raise KeyError(f"{path} has no dataset {name!r}")
    d = f[name]
    if not isinstance(d, h5py.Dataset) or not d.shape or d.maxshape[0] is not None:
        raise ValueError(f"{name!r} is not an extendible dataset (one made by Output.append)")
    return d
