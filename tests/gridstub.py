"""A minimal stand-in for a Grid, for testing Output's Grid interface only.

Plain data computed from :mod:`hpcpar.partition`: a block decomposition of a
global array over a balanced process grid, with a halo of width ``halo`` on
every side of each rank's interior.
"""

from __future__ import annotations

import numpy as np

from hpcpar.decomp import partition


class BlockGrid:
    """``ctx``, ``shape``, ``dims``, ``global_slices``, ``local_shape``, ``interior(a)``."""

    def __init__(self, ctx, shape, halo: int = 1, dims=None):
        self.ctx = ctx
        self.shape = tuple(shape)
        self.halo = halo
        self.dims = tuple(dims) if dims else partition.dims_create(ctx.size, len(shape))
        coords, r = [], ctx.rank
        for d in reversed(self.dims):  # row-major rank -> coordinates
            coords.append(r % d)
            r //= d
        self.coords = tuple(reversed(coords))
        self.global_slices = tuple(
            slice(rg.start, rg.stop) for rg in
            (partition.block_range(n, d, c) for n, d, c in zip(self.shape, self.dims, self.coords)))
        self.local_shape = tuple(s.stop - s.start for s in self.global_slices)

    def zeros(self, dtype=float) -> np.ndarray:
        return np.zeros(tuple(n + 2 * self.halo for n in self.local_shape), dtype)

    def interior(self, a: np.ndarray) -> np.ndarray:
        h = self.halo
        return a[tuple(slice(h, h + n) for n in self.local_shape)]
