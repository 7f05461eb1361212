"""Context collectives under real MPI: run with ``mpiexec -n N python -m pytest --with-mpi``.

Every rank checks the same globally combined condition (``assert_all``), so a
failure on one rank fails the test everywhere instead of hanging the others.
"""

import numpy as np
import pytest
from helpers import big_memory
from mpi4py import MPI

import hpcpar
from hpcpar.decomp import partition
from hpcpar.testing import assert_all, assert_equal_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]

DTYPES = [np.bool_, np.int8, np.uint16, np.int64, np.float32, np.float64, np.complex128,
          np.dtype(">f8"), np.dtype("M8[s]"), np.dtype("U3"), np.dtype("S2"),
          np.dtype([("a", "<i4"), ("b", "<f8", (2,))])]


def make(shape, dtype, seed=0):
    """A deterministic array of any dtype (the same on every rank)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.random.default_rng(seed).integers(0, 100, size=n * dt.itemsize, dtype=np.uint8)
    a = raw.view(np.uint8).copy()
    if dt.kind == "U":
        return np.array([chr(65 + i % 26) * 3 for i in range(n)], dtype=dt).reshape(shape)
    if dt.kind == "b":
        return (raw[:n] % 2 == 0).reshape(shape)
    if dt.kind == "f":
        return (np.arange(n) * 0.5).astype(dt).reshape(shape)
    if dt.kind == "c":
        return (np.arange(n) * 0.5 + 1j).astype(dt).reshape(shape)
    return a.view(dt).reshape(shape) if a.size else np.empty(shape, dt)


def expected_block(a, size, rank, axis):
    r = partition.block_range(a.shape[axis], size, rank)
    return np.take(a, np.arange(r.start, r.stop), axis=axis)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scatter_gather_roundtrip_dtypes(ctx, dtype):
    a = make((2 * ctx.size + 1, 3), dtype)
    block = ctx.scatter(a if ctx.is_root else None)
    assert_equal_all(block, expected_block(a, ctx.size, ctx.rank, 0), ctx=ctx)
    assert_all(block.dtype == a.dtype, f"dtype {block.dtype}", ctx=ctx)
    back = ctx.gather(block)
    assert_all((back is None) != ctx.is_root, "gather returns the array on root only", ctx=ctx)
    if ctx.is_root:
        np.testing.assert_array_equal(back, a)
    assert_equal_all(ctx.allgather(block), a, ctx=ctx)


@pytest.mark.parametrize("shape,axis", [((7,), 0), ((5, 4), 1), ((3, 4, 5), 2), ((3, 4, 5), -2),
                                        ((0, 3), 0), ((2,), 0), ((1, 0, 2), 0)])
def test_axes_uneven_and_empty_blocks(ctx, shape, axis):
    a = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    root = ctx.size - 1
    block = ctx.scatter(a if ctx.rank == root else None, root=root, axis=axis)
    assert_equal_all(block, expected_block(a, ctx.size, ctx.rank, axis % a.ndim), ctx=ctx)
    assert_all(block.flags.c_contiguous, "blocks come back C-contiguous", ctx=ctx)
    back = ctx.gather(block, root=root, axis=axis)
    if ctx.rank == root:
        np.testing.assert_array_equal(back, a)
    assert_equal_all(ctx.allgather(block, axis=axis), a, ctx=ctx)


def test_more_ranks_than_rows(ctx):
    a = np.arange(2.0)
    block = ctx.scatter(a if ctx.is_root else None)
    want = (partition.block_counts(2, ctx.size)[ctx.rank],)
    assert_all(block.shape == want, f"{block.shape} != {want}", ctx=ctx)
    assert_equal_all(ctx.allgather(block), a, ctx=ctx)


def test_out_receives_in_place(ctx):
    n = 10
    a = np.arange(n * 2, dtype=np.int32).reshape(n, 2)
    counts = partition.block_counts(n, ctx.size)
    out = np.empty((counts[ctx.rank], 2), np.int32)
    for _ in range(3):  # the second call reuses the cached plan
        got = ctx.scatter(a if ctx.is_root else None, out=out)
        assert_all(got is out, "scatter(out=) returns out", ctx=ctx)
        assert_equal_all(out, expected_block(a, ctx.size, ctx.rank, 0), ctx=ctx)
    full = np.zeros_like(a)
    got = ctx.allgather(out, out=full)
    assert_all(got is full, "allgather(out=) returns out", ctx=ctx)
    assert_equal_all(full, a, ctx=ctx)
    g = np.zeros_like(a) if ctx.is_root else None
    got = ctx.gather(out, out=g)
    if ctx.is_root:
        assert got is g
        np.testing.assert_array_equal(g, a)
    # out along another axis, and a non-contiguous out
    t = np.zeros((2, n), np.int32)[:, :]
    ctx.allgather(np.ascontiguousarray(out.T), axis=1, out=t)
    assert_equal_all(t, a.T, ctx=ctx)


def test_noncontiguous_and_readonly_input(ctx):
    a = np.arange(40.0).reshape(8, 5)[:, ::2]  # not contiguous
    a.flags.writeable = False
    block = ctx.scatter(a if ctx.is_root else None)
    assert_equal_all(block, expected_block(a, ctx.size, ctx.rank, 0), ctx=ctx)
    assert_equal_all(ctx.allgather(block[::-1][::-1]), a, ctx=ctx)


def test_bcast(ctx):
    a = np.arange(12, dtype=np.complex64).reshape(3, 4)
    got = ctx.bcast(a if ctx.is_root else None)
    assert_equal_all(got, a, ctx=ctx)
    s = make((4,), DTYPES[-1])
    assert_equal_all(ctx.bcast(s if ctx.rank == ctx.size - 1 else None, root=ctx.size - 1), s, ctx=ctx)
    obj = {"a": [1, 2], "b": "x"}
    assert_all(ctx.bcast(obj if ctx.is_root else None) == obj, "object bcast", ctx=ctx)
    assert_all(ctx.bcast(np.float32(2.5) if ctx.is_root else None) == 2.5, "numpy scalar", ctx=ctx)


def test_reductions(ctx):
    n, r = ctx.size, ctx.rank
    v = np.array([r, 2 * r, 1], dtype=np.int64)
    assert_equal_all(ctx.allreduce(v), [n * (n - 1) // 2, n * (n - 1), n], ctx=ctx)
    assert_equal_all(ctx.allreduce(v, op="max"), [n - 1, 2 * (n - 1), 1], ctx=ctx)
    assert_equal_all(ctx.allreduce(v + 1, op="prod")[2], 2**n, ctx=ctx)
    assert_equal_all(ctx.allreduce(v, op=MPI.MIN), [0, 0, 1], ctx=ctx)
    got = ctx.reduce(np.float64(r), root=n - 1)
    assert_all((got == n * (n - 1) / 2) if r == n - 1 else got is None, repr(got), ctx=ctx)
    s = ctx.allreduce(np.float64(1.5))
    assert_all(isinstance(s, np.float64) and s == 1.5 * n, repr(s), ctx=ctx)
    big = ctx.allreduce(10**30 + r)  # Python ints: exact, by pickle
    assert_all(big == n * 10**30 + n * (n - 1) // 2, repr(big), ctx=ctx)
    flags = ctx.allreduce(np.array([r == 0, True]), op="land")
    assert_equal_all(flags, [n == 1, True], ctx=ctx)


# ---- bad input: the same clear ValueError on every rank, never a hang -------------------
# Marked `checks`: ranks that disagree, or a bad argument only some ranks see (root's
# array, one rank's out=), raise on every rank only through the agreement step.
# Unmarked: every rank passes the same bad argument and raises by itself.
def raises_everywhere(ctx, fn, match):
    try:
        fn()
        msg = None
    except ValueError as exc:
        msg = str(exc)
    import re

    assert_all(msg is not None and re.search(match, msg), f"got {msg!r}, wanted /{match}/", ctx=ctx)
    ctx.barrier()  # the context is still usable afterwards
    return msg


@pytest.mark.checks
def test_gather_dtype_mismatch(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    dt = np.float32 if ctx.rank == ctx.size - 1 else np.float64
    msg = raises_everywhere(ctx, lambda: ctx.gather(np.zeros(3, dt)), "dtype")
    assert_all(f"rank {ctx.size - 1}: float32" in msg, msg, ctx=ctx)


@pytest.mark.checks
def test_gather_trailing_shape_mismatch(ctx):
    shape = (2, 4) if ctx.rank == 0 else (2, 3 if ctx.size > 1 else 4)
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    raises_everywhere(ctx, lambda: ctx.allgather(np.zeros(shape)), "every dimension but axis")


@pytest.mark.checks
def test_scatter_non_array_on_root(ctx):
    raises_everywhere(ctx, lambda: ctx.scatter([1, 2, 3] if ctx.is_root else None),
                      "rank 0: the array on root must be a NumPy array, got list")


@pytest.mark.checks
def test_object_arrays_rejected(ctx):
    a = np.array([{}, None, 1], dtype=object)
    raises_everywhere(ctx, lambda: ctx.scatter(a if ctx.is_root else None), "Python objects")


@pytest.mark.parametrize("axis", [2, -3, 1.5])
def test_bad_axis(ctx, axis):
    raises_everywhere(ctx, lambda: ctx.gather(np.zeros((2, 2)), axis=axis), "axis")


def test_bad_root(ctx):
    raises_everywhere(ctx, lambda: ctx.gather(np.zeros(2), root=ctx.size), "not a rank")


@pytest.mark.checks
def test_bad_out_on_one_rank(ctx):
    n = 3 * ctx.size
    bad_rank = ctx.size - 1
    out = np.empty((3 + (ctx.rank == bad_rank),))
    msg = raises_everywhere(ctx, lambda: ctx.scatter(np.arange(float(n)) if ctx.is_root else None,
                                                     out=out), "does not fit")
    assert_all(f"rank {bad_rank}: out" in msg, msg, ctx=ctx)


def test_read_only_out_on_every_rank(ctx):
    n = 3 * ctx.size
    ro = np.empty(3)
    ro.flags.writeable = False
    raises_everywhere(ctx, lambda: ctx.scatter(np.arange(float(n)) if ctx.is_root else None,
                                               out=ro), "read-only")


@pytest.mark.checks
def test_mismatched_collectives(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")

    def body():
        if ctx.rank == 1:
            ctx.bcast(np.zeros(2))
        else:
            ctx.gather(np.zeros(2))
    msg = raises_everywhere(ctx, body, "different collectives")
    assert_all("rank 1: bcast(root=0)" in msg and "rank 0: gather(root=0, float64)" in msg, msg, ctx=ctx)


@pytest.mark.checks
def test_mismatched_reduce_ops(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    raises_everywhere(ctx, lambda: ctx.allreduce(np.ones(2), op="sum" if ctx.rank else "max"),
                      "different collectives")


@pytest.mark.checks
def test_reduce_shape_mismatch(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    raises_everywhere(ctx, lambda: ctx.allreduce(np.ones(2 + ctx.rank)), "same shape")


def test_context_from_subcommunicator(ctx):
    sub = ctx.comm.Split(ctx.rank % 2, ctx.rank)
    with hpcpar.Context(sub) as c2:
        total = c2.allreduce(np.int64(1))
        assert_all(total == sub.Get_size(), str(total), ctx=ctx)
    sub.Free()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_larger_than_2_gib(ctx):
    """A > 2.1 GB array through scatter and gather (MPI-4 large counts or unit datatypes)."""
    if ctx.size != 2:
        pytest.skip("run at 2 ranks only (memory and time)")
    with big_memory(ctx, gib=11):  # alone among the tests that need several GB
        n = 2**31 + 2**20 + 7  # bytes, uint8: more than INT_MAX elements and bytes
        a = None
        if ctx.is_root:
            a = np.empty(n, np.uint8)
            a[::4096] = 7
            a[-1] = 9
        block = ctx.scatter(a)
        r = partition.block_range(n, 2, ctx.rank)
        ok = block.size == len(r) and block[-1] == (9 if ctx.rank == 1 else a[r.stop - 1])
        assert_all(ok, "block content", ctx=ctx)
        back = ctx.gather(block)
        if ctx.is_root:
            assert back.size == n and back[-1] == 9 and back[4096 * 1000] == 7
            assert np.array_equal(back[::4096], a[::4096])
        del back, a
        big = np.full(2**30 + 5, ctx.rank + 1, dtype=np.uint8)  # together over 2 GiB
        g = ctx.allgather(big)
        ok = g.size == 2 * big.size and g[0] == 1 and g[big.size - 1] == 1 and g[big.size] == 2 and g[-1] == 2
        assert_all(ok, "allgather content", ctx=ctx)


@pytest.mark.checks
def test_repeated_calls_stay_checked(ctx):
    """Calls repeated with the same arguments skip the local checks, never the agreement."""
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    a = np.arange(6.0)
    for _ in range(3):  # validated once, then repeats
        ctx.allgather(a)
        ctx.scatter(a if ctx.is_root else None)
    # every rank repeats a call it made before, but rank 1 now pairs it with another one
    def body():
        if ctx.rank == 1:
            ctx.scatter(None)
        else:
            ctx.allgather(a)
    msg = raises_everywhere(ctx, body, "different collectives")
    assert_all("rank 1: scatter" in msg, msg, ctx=ctx)
    # a repeat on most ranks, a new (bad) block on the last one
    bad = a.astype(np.float32) if ctx.rank == ctx.size - 1 else a
    raises_everywhere(ctx, lambda: ctx.allgather(bad), "dtype")
    assert_equal_all(ctx.allgather(a), np.tile(a, ctx.size), ctx=ctx)
