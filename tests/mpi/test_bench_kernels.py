"""The hand-written halo exchange of the benchmarks fills exactly the cells Grid.exchange fills.

``hpcpar bench halo`` and ``hpcpar bench scale`` compare Grid with
:func:`hpcpar.bench.kernels.hand_written_halo`; the comparison is only fair if both
move the same cells. Run with ``mpiexec -n N python -m pytest --with-mpi``.
"""

import numpy as np
import pytest

import hpcpar
from hpcpar.bench.kernels import hand_written_halo
from hpcpar.decomp import partition
from hpcpar.testing import assert_equal_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


@pytest.mark.parametrize("corners", [False, True])
@pytest.mark.parametrize("skip_walls", [False, True])
def test_hand_written_halo_fills_the_cells_of_grid_exchange(ctx, corners, skip_walls):
    dims = partition.dims_create(ctx.size, 2)
    with hpcpar.Grid(ctx, (5 * dims[0] + 1, 4 * dims[1] + 2), dims=dims) as grid:
        n0, n1 = grid.local_shape
        a = np.full(grid.halo_shape, -1.0)
        rows, cols = grid.global_slices
        a[1:-1, 1:-1] = np.arange(rows.start, rows.stop)[:, None] * 1000 + np.arange(cols.start, cols.stop)
        b = a.copy()
        grid.exchange(a, corners=corners)
        cart, exchange = hand_written_halo(ctx.comm, tuple(grid.dims), (n0, n1), corners=corners,
                                           skip_walls=skip_walls)
        try:
            exchange(b)
            exchange(b)  # a second call changes nothing
        finally:
            cart.Free()
        assert_equal_all(b, a, f"rank {ctx.rank}, dims {tuple(grid.dims)}", ctx=ctx)
