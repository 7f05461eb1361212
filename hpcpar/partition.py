"""Pure partition arithmetic: block counts, displacements, ownership, process grids.

Nothing here imports MPI: every function is local, deterministic and cheap, so the
same answers are computed independently on every rank (and in plain unit tests).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

__all__ = [
    "block_counts",
    "block_displs",
    "block_range",
    "cyclic_indices",
    "weighted_counts",
    "owner",
    "dims_create",
]


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
    best: tuple[int, ...] | None = None
    for dims in _factorizations(nprocs, ndim, nprocs):
        # most balanced first: smallest spread, then the smallest largest factor
        if best is None or (dims[0] - dims[-1], dims[0]) < (best[0] - best[-1], best[0]):
            best = dims
    assert best is not None
    return best


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
