"""The fixed-size agreement and the unchecked mode, under real MPI.

The agreement caches what it can (vectors, plans, each gather's block lengths);
these tests change what the cache keys cover and what they leave out (block
lengths, ``out`` arrays, dimensions beyond the fourth, structured dtypes) and
check the data against plain mpi4py. Tests marked ``checks`` expect errors on
every rank and are skipped under ``HPCPAR_CHECKS=0``.
"""

import re

import numpy as np
import pytest

import hpcpar
from hpcpar.core import announce
from hpcpar.testing import assert_all, assert_equal_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


def raises_everywhere(ctx, fn, match, exc=ValueError):
    try:
        fn()
        msg = None
    except exc as e:
        msg = str(e)
    assert_all(msg is not None and re.search(match, msg), f"got {msg!r}, wanted /{match}/", ctx=ctx)
    ctx.barrier()
    return msg


@pytest.fixture(params=[True, False], ids=["checked", "unchecked"])
def mctx(request, ctx):
    """A context of each mode (the unchecked one whatever HPCPAR_CHECKS says)."""
    c = hpcpar.Context(ctx.comm, checks=request.param)
    yield c
    c.free()


def _rows(ctx, step):
    """Block lengths that change on some ranks between steps, and stay for others."""
    return (ctx.rank + step // 2 * (ctx.rank % 2)) % 4


def test_gather_follows_block_lengths_that_change_between_calls(mctx):
    comm = mctx.comm
    for step in range(12):
        local = np.full((_rows(mctx, step), 3), 10 * mctx.rank + step, np.int32)
        want = np.concatenate(comm.allgather(local))
        got = mctx.gather(local)
        if mctx.is_root:
            np.testing.assert_array_equal(got, want)
        else:
            assert got is None
        np.testing.assert_array_equal(mctx.allgather(local), want)


def test_gather_into_out_on_root_as_lengths_change(mctx):
    comm = mctx.comm
    for step in range(8):
        local = np.arange(_rows(mctx, step) * 2, dtype=np.float64).reshape(-1, 2) + mctx.rank
        want = np.concatenate(comm.allgather(local))
        out = np.empty_like(want) if step % 3 else None
        got = mctx.gather(local, out=out)
        if mctx.is_root:
            np.testing.assert_array_equal(got, want)
            if out is not None:
                assert got is out


@pytest.mark.checks
def test_an_out_that_stops_fitting_raises_everywhere(ctx):
    if ctx.size == 1:
        pytest.skip("needs block lengths that change on another rank")
    local = np.zeros((1, 2))
    out = np.empty((ctx.size, 2))
    for _ in range(3):  # the lengths settle, and root's out fits
        ctx.gather(local, out=out)
    grown = np.zeros((2 if ctx.rank == ctx.size - 1 else 1, 2))
    raises_everywhere(ctx, lambda: ctx.gather(grown, out=out), "does not fit the gathered")
    raises_everywhere(ctx, lambda: ctx.allgather(grown, out=out), "does not fit the gathered")


def test_allgather_with_out_on_some_ranks(mctx):
    local = np.full(mctx.rank + 1, mctx.rank, np.int16)
    n = mctx.size * (mctx.size + 1) // 2
    want = np.repeat(np.arange(mctx.size, dtype=np.int16), np.arange(1, mctx.size + 1))
    for _ in range(3):
        out = np.empty(n, np.int16) if mctx.rank % 2 == 0 else None
        assert_equal_all(mctx.allgather(local, out=out), want, ctx=mctx)


def test_scatter_with_out_on_some_ranks_along_axis_1(mctx):
    full = np.arange(4 * (2 * mctx.size + 1), dtype=np.float32).reshape(4, -1)
    counts = hpcpar.partition.block_counts(full.shape[1], mctx.size)
    start = sum(counts[:mctx.rank])
    want = full[:, start:start + counts[mctx.rank]]
    for _ in range(3):
        out = np.empty_like(want) if mctx.rank % 2 else None
        got = mctx.scatter(full if mctx.is_root else None, axis=1, out=out)
        np.testing.assert_array_equal(got, want)


@pytest.mark.checks
def test_scatter_out_of_the_wrong_length_on_one_rank_raises_everywhere(ctx):
    full = np.zeros(3 * ctx.size)
    bad = ctx.size - 1
    out = np.empty(4 if ctx.rank == bad else 3)
    raises_everywhere(ctx, lambda: ctx.scatter(full if ctx.is_root else None, out=out),
                      f"rank {bad}: out float64\\[4\\] does not fit its block float64\\[3\\]")


_REC = np.dtype([("id", "<i4"), ("pos", "<f8", (3,)), ("tag", "S5")])


def test_structured_dtypes_travel_and_are_cached(mctx):
    whole = np.zeros(2 * mctx.size + 1, _REC)
    whole["id"] = np.arange(whole.size)
    whole["tag"] = b"ok"
    for _ in range(3):
        got = mctx.bcast(whole if mctx.is_root else None)
        assert_all(got.dtype == _REC and (got == whole).all(), "bcast of a structured array", ctx=mctx)
        block = mctx.scatter(whole if mctx.is_root else None)
        again = mctx.allgather(block)
        assert_all(again.dtype == _REC and (again == whole).all(), "scatter + allgather", ctx=mctx)


def test_arrays_of_many_dimensions(mctx):
    shape = (2, 1, 3, 1, 2, 2)
    a = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    assert_equal_all(mctx.bcast(a if mctx.is_root else None), a, ctx=mctx)
    assert_equal_all(mctx.allreduce(a), a * mctx.size, ctx=mctx)
    whole = np.concatenate([a] * mctx.size, axis=4)
    assert_equal_all(mctx.allgather(a, axis=4), whole, ctx=mctx)


@pytest.mark.checks
def test_dimensions_beyond_the_fourth_must_agree(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    shape = (1, 1, 1, 1, 2, 3 if ctx.rank == 0 else 4)  # differ only in the hashed sixth dimension
    msg = raises_everywhere(ctx, lambda: ctx.allreduce(np.zeros(shape)), "same shape")
    assert_all("rank 0: float64[1, 1, 1, 1, 2, 3]" in msg and "float64[1, 1, 1, 1, 2, 4]" in msg, msg, ctx=ctx)


def test_many_signatures_cycle_through_the_bounded_caches(mctx):
    comm = mctx.comm
    for rep in range(2):
        for width in range(1, 300, 2):  # more kinds of call than any cache keeps
            local = np.full((mctx.rank % 3 + rep, width), width % 251, np.uint8)
            got = mctx.allgather(local)
            np.testing.assert_array_equal(got, np.concatenate(comm.allgather(local)))


@pytest.mark.parametrize("n", [3, announce.INLINE // 8 + 5])
def test_unchecked_bcast_and_scatter_inline_or_not(ctx, n):
    u = hpcpar.Context(ctx.comm, checks=False)
    try:
        assert repr(u).endswith("unchecked>") and not u.checks
        a = np.arange(n * u.size, dtype=np.float64)
        assert_equal_all(u.bcast(a if u.is_root else None), a, ctx=u)
        assert_equal_all(u.bcast({"n": n} if u.is_root else None), {"n": n}, ctx=u)
        block = u.scatter(a if u.is_root else None)
        np.testing.assert_array_equal(block, a[u.rank * n:(u.rank + 1) * n])
        assert block.flags.c_contiguous and block.flags.writeable
        assert u.allreduce(np.float64(u.rank)) == u.size * (u.size - 1) / 2
        assert u.allreduce(u.rank) == u.size * (u.size - 1) // 2
        u.barrier()
    finally:
        u.free()


def test_unchecked_errors_that_every_rank_sees_raise_on_every_rank(ctx):
    u = hpcpar.Context(ctx.comm, checks=False)
    try:
        msg = raises_everywhere(u, lambda: u.allreduce(np.ones(2), op="median"), "op='median'")
        assert_all("collectives are unchecked" in msg, msg, ctx=u)
        raises_everywhere(u, lambda: u.gather(np.zeros(2), root=u.size), "is not a rank")
        raises_everywhere(u, lambda: u.scatter(np.zeros(2), axis="0"), "axis")
    finally:
        u.free()
