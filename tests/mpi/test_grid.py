"""hpcpar.Grid under real MPI: halo exchange (corners, walls, wrap-around), scatter/gather, errors.

Run with ``mpiexec -n N python -m pytest --with-mpi``. Every rank checks the same
globally combined condition, so one failing rank fails the test everywhere.
"""

import numpy as np
import pytest
from mpi4py import MPI

import hpcpar
from hpcpar.testing import assert_all, assert_equal_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


def global_index(shape, dtype=np.float64):
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


def expected_after_exchange(grid, corners=True, fill=-1):
    """The local array with halo every ghost cell should hold, computed from global indices."""
    G = global_index(grid.shape)
    idx, valid, outside = [], [], []
    h = grid.halo
    for k, sl in enumerate(grid.global_slices):
        g = np.arange(sl.start - h, sl.stop + h)
        ok = np.ones(g.size, bool) if grid.periodic[k] else (g >= 0) & (g < grid.shape[k])
        idx.append(np.where(ok, g % grid.shape[k], 0))
        valid.append(ok)
        local = np.arange(g.size)
        outside.append((local < h) | (local >= g.size - h))
    want = G[np.ix_(*idx)]
    mask = np.ones(want.shape, bool)
    n_out = np.zeros(want.shape, int)
    for k in range(grid.ndim):
        shp = [1] * grid.ndim
        shp[k] = -1
        mask &= valid[k].reshape(shp)
        n_out += outside[k].reshape(shp)
    if not corners:
        mask &= n_out <= 1
    return np.where(mask, want, fill)


def filled(grid):
    a = grid.empty()
    a[...] = -1
    grid.interior(a)[...] = global_index(grid.shape)[grid.global_slices]
    return a


CONFIGS = [
    # shape, dims (None: dims_create; "row": (1, size, ...)), periodic, halo
    ((11,), None, False, 1),
    ((11,), None, True, 2),
    ((9, 7), None, False, 1),
    ((9, 7), None, True, 1),
    ((9, 7), None, (True, False), 2),
    ((9, 8), "row", (False, True), 2),
    ((7, 6, 5), None, False, 1),
    ((7, 6, 5), None, True, 2),
    ((7, 6, 5), "row", (True, False, True), 1),
]


def make_grid(ctx, shape, dims, periodic, halo):
    """The grid of a CONFIGS entry; an axis too short for this many ranks is lengthened."""
    if dims == "row":
        dims = tuple(ctx.size if k == 1 else 1 for k in range(len(shape)))
    per = (periodic,) * len(shape) if isinstance(periodic, bool) else periodic
    ds = dims or hpcpar.partition.dims_create(ctx.size, len(shape))
    # each rank needs `halo` cells along an axis it exchanges over, else one cell
    shape = tuple(max(n, d * (halo if d > 1 or p else 1)) for n, d, p in zip(shape, ds, per))
    return hpcpar.Grid(ctx, shape, dims=dims, periodic=periodic, halo=halo)


@pytest.mark.parametrize("corners", [True, False])
@pytest.mark.parametrize("shape,dims,periodic,halo", CONFIGS)
def test_exchange_fills_ghost_cells_from_neighbours(ctx, shape, dims, periodic, halo, corners):
    with make_grid(ctx, shape, dims, periodic, halo) as grid:
        a = filled(grid)
        out = grid.exchange(a, corners=corners)
        assert_all(out is a, "exchange returns its argument", ctx=ctx)
        assert_equal_all(a, expected_after_exchange(grid, corners),
                         msg=f"coords {grid.coords}", ctx=ctx)
        grid.exchange(a, corners=corners)  # a second call (cached datatypes) changes nothing
        assert_equal_all(a, expected_after_exchange(grid, corners), ctx=ctx)


@pytest.mark.parametrize("shape,dims,periodic,halo", CONFIGS[2:6])
def test_nine_point_stencil_after_one_exchange_equals_serial(ctx, shape, dims, periodic, halo):
    """A 9-point average computed from local arrays matches the same stencil on the global array."""
    with make_grid(ctx, shape, dims, periodic, halo) as grid:
        G = np.random.default_rng(5).random(grid.shape)
        a = grid.scatter(G if ctx.is_root else None)
        grid.exchange(a)
        h = grid.halo
        n0, n1 = grid.local_shape
        local = sum(a[h + i:h + i + n0, h + j:h + j + n1] for i in (-1, 0, 1) for j in (-1, 0, 1))
        mode = ["wrap" if p else "constant" for p in grid.periodic]
        P = np.pad(G, [(1, 1), (0, 0)], mode=mode[0])
        P = np.pad(P, [(0, 0), (1, 1)], mode=mode[1])
        N0, N1 = grid.shape
        full = sum(P[1 + i:1 + i + N0, 1 + j:1 + j + N1] for i in (-1, 0, 1) for j in (-1, 0, 1))
        # walls hold 0 in both: zeros() ghost cells and constant padding
        assert_all(np.allclose(local, full[grid.global_slices], rtol=1e-14, atol=0),
                   f"coords {grid.coords}", ctx=ctx)


def test_exchange_begin_end_overlaps_interior_work(ctx):
    with hpcpar.Grid(ctx, (12, 10), periodic=True, halo=2) as grid:
        a = filled(grid)
        grid.exchange_begin(a)
        # work on a separate array while halos travel
        b = np.sqrt(grid.interior(a))
        again = None
        try:
            grid.exchange_begin(a)
        except RuntimeError as exc:
            again = str(exc)
        done = grid.exchange_end()
        assert_all(again is not None and "already pending" in again,
                   f"a second exchange_begin raised {again!r}", ctx=ctx)
        assert_all(done is a and grid.exchange_end() is None, "exchange_end returns the array", ctx=ctx)
        assert_equal_all(a, expected_after_exchange(grid), ctx=ctx)
        assert_equal_all(b, np.sqrt(global_index(grid.shape)[grid.global_slices]), ctx=ctx)


def test_walls_are_never_written(ctx):
    with hpcpar.Grid(ctx, (8, 8), halo=1) as grid:
        a = grid.zeros()
        a[...] = 7.5
        grid.interior(a)[...] = 1.0
        grid.exchange(a)
        h = grid.halo
        ok = True
        for k, (lo, hi) in enumerate(grid.neighbors):
            edge_lo = [slice(None)] * 2
            edge_lo[k] = slice(0, h)
            edge_hi = [slice(None)] * 2
            edge_hi[k] = slice(-h, None)
            if lo == MPI.PROC_NULL:
                ok &= bool((a[tuple(edge_lo)] == 7.5).all())
            if hi == MPI.PROC_NULL:
                ok &= bool((a[tuple(edge_hi)] == 7.5).all())
        assert_all(ok, f"wall ghost cells changed at {grid.coords}", ctx=ctx)


def test_geometry_attributes_agree_with_mpi(ctx):
    with hpcpar.Grid(ctx, (10, 9, 8), periodic=(True, False, False)) as grid:
        lay = grid.layout
        assert_all(grid.coords == lay.coords(ctx.rank), "coords", ctx=ctx)
        assert_all(grid.dims == hpcpar.partition.dims_create(ctx.size, 3), "dims", ctx=ctx)
        shifts = tuple(grid.comm.Shift(k, 1) for k in range(3))
        assert_all(grid.neighbors == shifts, f"neighbors {grid.neighbors} vs Shift {shifts}", ctx=ctx)
        sizes = ctx.comm.allgather(int(np.prod(grid.local_shape)))
        assert_all(sum(sizes) == 10 * 9 * 8, f"local shapes tile the domain: {sizes}", ctx=ctx)
        a = grid.zeros(np.int32)
        assert_all(a.shape == grid.halo_shape and a.dtype == np.int32
                   and grid.interior(a).shape == grid.local_shape, "zeros/interior", ctx=ctx)


@pytest.mark.parametrize("shape,dtype", [((13,), np.float64), ((9, 7), np.int32),
                                         ((5, 6, 7), np.complex128), ((6, 5), np.dtype("i2,f4"))])
def test_scatter_gather_round_trip(ctx, shape, dtype):
    with hpcpar.Grid(ctx, shape) as grid:
        G = global_index(shape).astype(np.int64)
        if np.dtype(dtype).names:
            H = np.zeros(shape, dtype)
            H["f0"] = G
            H["f1"] = G * 0.5
            G = H
        else:
            G = G.astype(dtype)
        a = grid.scatter(G if ctx.is_root else None)
        assert_all(a.shape == grid.halo_shape and a.dtype == G.dtype, f"local {a.shape} {a.dtype}",
                   ctx=ctx)
        assert_equal_all(grid.interior(a), G[grid.global_slices], ctx=ctx)
        ghost = a.copy()
        ghost[grid._interior] = np.zeros((), G.dtype)
        assert_all(not ghost.astype(bool).any() if not G.dtype.names else True, "ghosts are zero", ctx=ctx)
        back = grid.gather(a)
        assert_all((back is None) != ctx.is_root, "gather returns the array on root only", ctx=ctx)
        if ctx.is_root:
            np.testing.assert_array_equal(back, G)
        # without halo, to another root
        root = ctx.size - 1
        back = grid.gather(np.ascontiguousarray(grid.interior(a)), root=root)
        assert_all(back is None or np.array_equal(back, G), "gather of interiors", ctx=ctx)
        assert_all((back is not None) == (ctx.rank == root), "root receives", ctx=ctx)


@pytest.mark.checks  # root's array, one rank's block: only those ranks see it
def test_scatter_wrong_shape_fails_on_every_rank(ctx):
    with hpcpar.Grid(ctx, (6, 4)) as grid:
        with pytest.raises(ValueError, match=r"shape \(4, 6\).*grid's shape is \(6, 4\)"):
            grid.scatter(np.zeros((4, 6)) if ctx.is_root else None)
        bad = grid.zeros() if ctx.rank != ctx.size - 1 else np.zeros((1, 1))
        with pytest.raises(ValueError, match=f"rank {ctx.size - 1}: array of shape"):
            grid.gather(bad)
        ctx.barrier()


def test_too_small_shape_fails_on_every_rank_naming_shape_and_dims(ctx):
    if ctx.size == 1:
        shape, dims, kw = (1, 4), (1, 1), dict(periodic=True, halo=2)
    else:
        shape, dims, kw = (ctx.size - 1, 4), (ctx.size, 1), {}
    msg = None
    try:
        hpcpar.Grid(ctx, shape, dims=dims, **kw)
    except ValueError as exc:
        msg = str(exc)
    assert_all(msg is not None and f"shape {shape}" in msg and f"dims {dims}" in msg,
               f"error was {msg!r}", ctx=ctx)
    ctx.barrier()  # the context is still usable


def test_bad_dims_and_halo_fail_on_every_rank(ctx):
    with pytest.raises(ValueError, match="dims .* make a grid of"):
        hpcpar.Grid(ctx, (8, 8), dims=(ctx.size + 1, 1))
    with pytest.raises(ValueError, match="halo must be an int"):
        hpcpar.Grid(ctx, (8, 8), halo=0)
    ctx.barrier()


@pytest.mark.checks
def test_disagreeing_arguments_fail_on_every_rank(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    with pytest.raises(ValueError, match="same shape, dims, periodic and halo"):
        hpcpar.Grid(ctx, (8, 8), halo=1 + (ctx.rank == 1))
    ctx.barrier()


def test_exchange_rejects_a_wrong_array_on_the_calling_rank(ctx):
    with hpcpar.Grid(ctx, (6, 6)) as grid:
        with pytest.raises(ValueError, match="make it with grid.zeros"):
            grid.exchange(np.zeros((2, 2)))  # every rank errs locally, no message was posted
        with pytest.raises(ValueError, match="C-contiguous"):
            grid.exchange(np.asfortranarray(grid.zeros()))
        ctx.barrier()
