"""Pure partition arithmetic: block counts, displacements, ownership, process grids.

:class:`GridLayout` is the geometry of a block-decomposed Cartesian grid (local
shapes, global slices, neighbours, halo regions); :class:`hpcpar.Grid` adds the
communication.

Nothing here imports MPI: every function is local, deterministic and cheap, so the
same answers are computed independently on every rank (and in plain unit tests).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, cast

__all__ = [
    "block_counts",
    "block_displs",
    "block_range",
    "cyclic_indices",
    "weighted_counts",
    "owner",
    "dims_create",
    "normalize_axis",
    "GridLayout",
]


def normalize_axis(axis: int, ndim: int) -> int:
    """``axis`` of an array of ``ndim`` dimensions as an int in ``[0, ndim)``. **Local**.

    Negative axes count from the end, as in NumPy; NumPy integers are accepted.

    Raises:
        TypeError: when ``axis`` is not an int (bools are not axes).
        ValueError: when it is out of range, or the array is 0-d (it has no axis).
    """
    if isinstance(axis, bool) or not hasattr(axis, "__index__"):
        raise TypeError(f"axis must be an int, got {axis!r}")
    axis = int(axis.__index__())
    if ndim == 0:
        raise ValueError("a 0-d array has no axis to split or join; pass an array of at least "
                         "1 dimension")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for an array of {ndim} dimensions")
    return axis % ndim


def _check_n_parts(n: int, parts: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
        raise ValueError(f"parts must be a positive int, got {parts!r}")


@lru_cache(maxsize=256)
def _block_counts(n: int, parts: int) -> tuple[int, ...]:
    q, r = divmod(n, parts)
    return tuple(q + 1 if i < r else q for i in range(parts))


def block_counts(n: int, parts: int) -> tuple[int, ...]:
    """Split ``n`` items into ``parts`` contiguous blocks.

    The first ``n % parts`` blocks get one item more than the others, so sizes
    differ by at most one. Blocks may be empty when ``n < parts``.

    Args:
        n: number of items (>= 0).
        parts: number of blocks (>= 1).

    Returns:
        A tuple of ``parts`` counts summing to ``n``.
    """
    _check_n_parts(n, parts)
    return _block_counts(n, parts)


def block_displs(n: int, parts: int) -> tuple[int, ...]:
    """Start offset of each block of :func:`block_counts` (exclusive prefix sum)."""
    counts = block_counts(n, parts)
    displs = [0] * parts
    for i in range(1, parts):
        displs[i] = displs[i - 1] + counts[i - 1]
    return tuple(displs)


def block_range(n: int, parts: int, i: int) -> range:
    """The half-open index range ``[start, stop)`` of block ``i``.

    Computed in O(1), without building the whole count list.
    """
    _check_n_parts(n, parts)
    if not 0 <= i < parts:
        raise ValueError(f"block index {i} out of range for {parts} parts")
    q, r = divmod(n, parts)
    start = i * q + min(i, r)
    return range(start, start + q + (1 if i < r else 0))


def cyclic_indices(n: int, parts: int, i: int) -> range:
    """Indices of ``range(n)`` dealt round-robin to part ``i``: ``i, i+parts, ...``."""
    _check_n_parts(n, parts)
    if not 0 <= i < parts:
        raise ValueError(f"part index {i} out of range for {parts} parts")
    return range(i, n, parts)


def weighted_counts(weights: Sequence[float], n: int) -> tuple[int, ...]:
    """Split ``n`` items in proportion to ``weights`` (largest-remainder rounding).

    Use it to give faster ranks more work. Counts sum exactly to ``n``; a part
    of weight zero gets nothing.

    Args:
        weights: one non-negative, finite weight per part; not all zero.
        n: number of items (>= 0).
    """
    w = [float(x) for x in weights]
    if not w:
        raise ValueError("weights must not be empty")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"weights must be finite and >= 0, got {list(weights)!r}")
    total = sum(w)
    if total <= 0:
        raise ValueError("at least one weight must be positive")
    _check_n_parts(n, len(w))
    exact = [n * x / total for x in w]
    counts = [int(math.floor(e)) for e in exact]
    short = n - sum(counts)
    # Hand the remaining items to the largest remainders (ties: lowest index).
    order = sorted(range(len(w)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[:short]:
        counts[k] += 1
    return tuple(counts)


def owner(index: int, n: int, parts: int) -> int:
    """The block (of :func:`block_counts`) that holds item ``index`` of ``n``."""
    _check_n_parts(n, parts)
    if not 0 <= index < n:
        raise ValueError(f"index {index} out of range for n={n}")
    q, r = divmod(n, parts)
    big = r * (q + 1)  # items held by the r larger blocks
    if index < big:
        return index // (q + 1)
    return r + (index - big) // q


def dims_create(nprocs: int, ndim: int) -> tuple[int, ...]:
    """Balanced process-grid dimensions, like ``MPI_Dims_create`` with all zeros.

    Factors ``nprocs`` into ``ndim`` integers as close to each other as possible,
    in non-increasing order; their product is ``nprocs``.
    """
    if not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs must be a positive int, got {nprocs!r}")
    if not isinstance(ndim, int) or ndim < 1:
        raise ValueError(f"ndim must be a positive int, got {ndim!r}")
    # The smallest spread (largest - smallest factor); among equal spreads the one
    # MPICH's MPI_Dims_create picks: the larger largest factor, then the smaller
    # factors after it (e.g. 360 in 3-d: (10, 6, 6), not (9, 8, 5)).
    return min(_factorizations(nprocs, ndim, nprocs), key=lambda d: (d[0] - d[-1], -d[0], d))


def _factorizations(n: int, k: int, cap: int):
    """Non-increasing ``k``-tuples of positive ints with product ``n``, each <= ``cap``."""
    if k == 1:
        if n <= cap:
            yield (n,)
        return
    lo = math.ceil(round(n ** (1.0 / k), 9))  # the largest factor is at least the k-th root
    for d in range(min(cap, n), max(lo, 1) - 1, -1):
        if n % d == 0:
            for rest in _factorizations(n // d, k - 1, d):
                yield (d, *rest)


class GridLayout:
    """The geometry of an N-d array split in blocks over a Cartesian process grid.

    **Local and pure**: no MPI, every rank computes the same answers. Ranks are
    numbered row-major over ``dims`` (the last coordinate varies fastest), as
    ``MPI_Cart_create`` numbers them without reordering. Every axis is split with
    :func:`block_counts`, so blocks differ by at most one cell per axis.

    Args:
        shape: the global interior shape, 1 to 3 (or more) positive ints.
        dims: processes per axis, one positive int per axis of ``shape``.
        periodic: one bool for all axes, or one per axis.
        halo: ghost-cell width (>= 1) on every side of every axis.

    Raises:
        ValueError: when the arguments are malformed, or when some block would hold
            no cells, or fewer than ``halo`` cells along an axis that exchanges
            (more than one process, or periodic): the message states the shape,
            dims and halo and what to change.
    """

    def __init__(self, shape: Sequence[int], dims: Sequence[int],
                 periodic: bool | Sequence[bool] = False, halo: int = 1):
        shape = _int_tuple(shape, "shape", 1)
        dims = _int_tuple(dims, "dims", 1)
        if len(dims) != len(shape):
            raise ValueError(f"dims {dims} must have one entry per axis of shape {shape}")
        try:
            periodic = tuple(bool(p) for p in cast(Iterable[Any], periodic))  # a bare bool raises
        except TypeError:  # one flag for every axis
            periodic = (bool(periodic),) * len(shape)
        else:
            if len(periodic) != len(shape):
                raise ValueError(f"periodic {periodic} must be one bool or one per axis of shape {shape}")
        if not isinstance(halo, int) or isinstance(halo, bool) or halo < 1:
            raise ValueError(f"halo must be an int >= 1, got {halo!r}")
        self.shape: tuple[int, ...] = shape
        self.dims: tuple[int, ...] = dims
        self.periodic: tuple[bool, ...] = periodic
        self.halo: int = halo
        self.ndim: int = len(shape)
        self.nprocs: int = math.prod(dims)
        self.counts: tuple[tuple[int, ...], ...] = tuple(
            block_counts(n, d) for n, d in zip(shape, dims, strict=False))
        problems = []
        for k, (n, d, p) in enumerate(zip(shape, dims, periodic, strict=False)):
            need = halo if (d > 1 or p) else 1
            small = min(self.counts[k])
            if small < need:
                what = "no cells" if small == 0 else f"only {small} cell{'s' * (small != 1)}"
                problems.append(f"axis {k} ({n} cells over {d} processes) gives some ranks {what}, "
                                f"fewer than the {need} needed")
        if problems:
            raise ValueError(
                f"shape {shape} is too small for the process grid dims {dims} with halo {halo}: "
                + "; ".join(problems)
                + ". Use a larger shape, fewer ranks, a smaller halo, or dims that put fewer "
                "processes on the short axes.")

    def __repr__(self) -> str:
        return (f"GridLayout(shape={self.shape}, dims={self.dims}, "
                f"periodic={self.periodic}, halo={self.halo})")

    def coords(self, rank: int) -> tuple[int, ...]:
        """The process-grid coordinates of ``rank`` (row-major, like ``MPI_Cart_coords``)."""
        if not 0 <= rank < self.nprocs:
            raise ValueError(f"rank {rank} out of range for {self.nprocs} processes")
        out = []
        for d in reversed(self.dims):
            rank, c = divmod(rank, d)
            out.append(c)
        return tuple(reversed(out))

    def rank(self, coords: Sequence[int]) -> int | None:
        """The rank at ``coords``; periodic axes wrap, None beyond a non-periodic wall."""
        r = 0
        for c, d, p in zip(coords, self.dims, self.periodic, strict=False):
            if not 0 <= c < d:
                if not p:
                    return None
                c %= d
            r = r * d + c
        return r

    def neighbor(self, coords: Sequence[int], offset: Sequence[int]) -> int | None:
        """The rank at ``coords + offset`` (None beyond a wall); diagonal offsets allowed."""
        return self.rank([c + o for c, o in zip(coords, offset, strict=False)])

    def neighbors(self, coords: Sequence[int]) -> tuple[tuple[int | None, int | None], ...]:
        """Per axis, the ``(lower, upper)`` neighbour ranks; None at a non-periodic wall."""
        out = []
        for k in range(self.ndim):
            lo = [0] * self.ndim
            lo[k] = -1
            hi = [0] * self.ndim
            hi[k] = 1
            out.append((self.neighbor(coords, lo), self.neighbor(coords, hi)))
        return tuple(out)

    def local_shape(self, coords: Sequence[int]) -> tuple[int, ...]:
        """The interior shape (without halo) of the block at ``coords``."""
        return tuple(self.counts[k][c] for k, c in enumerate(coords))

    def halo_shape(self, coords: Sequence[int]) -> tuple[int, ...]:
        """The shape of the local array with its halo: ``local_shape + 2 * halo``."""
        return tuple(n + 2 * self.halo for n in self.local_shape(coords))

    def global_slices(self, coords: Sequence[int]) -> tuple[slice, ...]:
        """Where the interior of the block at ``coords`` sits in the global array."""
        out = []
        for k, c in enumerate(coords):
            r = block_range(self.shape[k], self.dims[k], c)
            out.append(slice(r.start, r.stop))
        return tuple(out)

    def offsets(self, corners: bool = True) -> list[tuple[int, ...]]:
        """Neighbour offsets in {-1, 0, 1}^ndim without the zero offset.

        With ``corners`` all ``3**ndim - 1`` of them (faces, edges, corners), in a
        fixed order; otherwise only the ``2 * ndim`` face offsets.
        """
        offs = [o for o in itertools.product((-1, 0, 1), repeat=self.ndim) if any(o)]
        if not corners:
            offs = [o for o in offs if sum(map(abs, o)) == 1]
        return offs

    def halo_regions(self, coords: Sequence[int], offset: Sequence[int]
                     ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """``(send, recv)`` regions of the local halo array for one neighbour offset.

        ``send`` holds the interior cells the neighbour at ``offset`` needs for its
        ghost cells on the opposite side; ``recv`` holds this block's ghost cells
        facing ``offset``. Along an axis with offset 0 both span the interior.
        The neighbour's ``send`` for ``-offset`` has the shape of this ``recv``.
        """
        h = self.halo
        send, recv = [], []
        for n, o in zip(self.local_shape(coords), offset, strict=False):
            if o < 0:
                send.append(slice(h, 2 * h))
                recv.append(slice(0, h))
            elif o > 0:
                send.append(slice(n, n + h))
                recv.append(slice(n + h, n + 2 * h))
            else:
                send.append(slice(h, n + h))
                recv.append(slice(h, n + h))
        return tuple(send), tuple(recv)


def _int_tuple(values, name: str, lo: int) -> tuple[int, ...]:
    """``values`` as a non-empty tuple of ints >= ``lo`` (NumPy ints accepted), or ValueError."""
    try:
        out = tuple(values)
    except TypeError:
        out = None
    if (not out or any(isinstance(v, bool) or not hasattr(v, "__index__") for v in out)
            or any(v < lo for v in out)):
        raise ValueError(f"{name} must be a non-empty sequence of ints >= {lo}, got {values!r}")
    return tuple(int(v) for v in out)
