"""Bad arguments to every public collective, debug mode and watchdog marks, under real MPI.

Each bad call must raise the same clear ValueError on every rank (never hang),
and leave the context usable. Unusual but valid input (non-contiguous, read-only,
empty) must simply work.

Tests marked ``checks`` need the agreement step (ranks that disagree, or a bad
argument that only some ranks see) and are skipped under ``HPCPAR_CHECKS=0``;
the others pass the same bad argument on every rank, which each rank sees itself.
"""

import re

import numpy as np
import pytest
from mpi4py import MPI

import hpcpar
from hpcpar.core import watchdog
from hpcpar.testing import assert_all, assert_equal_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


def raises_everywhere(ctx, fn, match, exc=ValueError):
    try:
        fn()
        msg = None
    except exc as e:
        msg = str(e)
    assert_all(msg is not None and re.search(match, msg), f"got {msg!r}, wanted /{match}/", ctx=ctx)
    ctx.barrier()  # still usable
    return msg


def last(ctx):
    return ctx.size - 1


# ---- scatter ---------------------------------------------------------------------------
# axis 1 or -2 of a 1-D array: only root, which holds the array, can tell
@pytest.mark.parametrize("axis", [pytest.param(1, marks=pytest.mark.checks),
                                  pytest.param(-2, marks=pytest.mark.checks), "0"])
def test_scatter_bad_axis(ctx, axis):
    a = np.zeros(4)
    raises_everywhere(ctx, lambda: ctx.scatter(a if ctx.is_root else None, axis=axis), "axis")


def test_scatter_bad_root(ctx):
    raises_everywhere(ctx, lambda: ctx.scatter(np.zeros(3), root=-1), "root=-1 is not a rank")


@pytest.mark.checks
def test_scatter_out_wrong_dtype(ctx):
    out = np.empty(2, np.float32 if ctx.rank == last(ctx) else np.float64)
    msg = raises_everywhere(ctx, lambda: ctx.scatter(np.zeros(2 * ctx.size) if ctx.is_root else None,
                                                     out=out), "does not fit")
    assert_all(f"rank {last(ctx)}: out float32[2]" in msg, msg, ctx=ctx)


def test_scatter_out_not_an_array(ctx):
    raises_everywhere(ctx, lambda: ctx.scatter(np.zeros(ctx.size) if ctx.is_root else None, out=[0.0]),
                      "out must be a NumPy array, got list")


@pytest.mark.checks
def test_scatter_ranks_disagree_on_axis(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    a = np.zeros((4, 4))
    raises_everywhere(ctx, lambda: ctx.scatter(a if ctx.is_root else None, axis=ctx.rank % 2),
                      "ranks passed different axes")


# ---- gather / allgather ------------------------------------------------------------------
@pytest.mark.checks
def test_gather_not_an_array_on_one_rank(ctx):
    local = [1.0] if ctx.rank == last(ctx) else np.zeros(1)
    raises_everywhere(ctx, lambda: ctx.gather(local),
                      f"rank {last(ctx)}: the local block must be a NumPy array, got list")


@pytest.mark.checks
def test_gather_bad_out_on_root(ctx):
    out = np.empty(ctx.size + 1) if ctx.is_root else None
    raises_everywhere(ctx, lambda: ctx.gather(np.zeros(1), out=out), "rank 0: out float64.* does not fit")
    ro = np.empty(ctx.size)
    ro.flags.writeable = False
    raises_everywhere(ctx, lambda: ctx.gather(np.zeros(1), out=ro if ctx.is_root else None), "read-only")


@pytest.mark.checks
def test_allgather_ranks_disagree_on_axis(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    raises_everywhere(ctx, lambda: ctx.allgather(np.zeros((2, 2)), axis=ctx.rank % 2),
                      "different axes")


@pytest.mark.checks
def test_allgather_ndim_mismatch(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    local = np.zeros((2, 1)) if ctx.rank == last(ctx) else np.zeros(2)
    raises_everywhere(ctx, lambda: ctx.allgather(local), "every dimension but axis")


def test_allgather_zero_d(ctx):
    raises_everywhere(ctx, lambda: ctx.allgather(np.float64(1.0)), "must be a NumPy array|0-d")
    raises_everywhere(ctx, lambda: ctx.allgather(np.array(1.0)), "0-d array")


def test_gather_noncontiguous_readonly_and_empty_blocks_work(ctx):
    base = np.arange(30.0).reshape(5, 6)
    local = base[:, ::3]  # not contiguous
    local.flags.writeable = False
    full = ctx.allgather(local, axis=1)
    assert_equal_all(full, np.concatenate([local] * ctx.size, axis=1), ctx=ctx)
    empty = np.zeros((0, 4), np.int16) if ctx.rank % 2 else np.ones((1, 4), np.int16)
    got = ctx.allgather(empty)
    assert_all(got.shape == ((ctx.size + 1) // 2, 4), str(got.shape), ctx=ctx)


# ---- bcast -------------------------------------------------------------------------------
def test_bcast_bad_root(ctx):
    raises_everywhere(ctx, lambda: ctx.bcast(1, root=ctx.size), "not a rank")
    raises_everywhere(ctx, lambda: ctx.bcast(1, root=True), "not a rank")


def test_bcast_noncontiguous_readonly_and_empty(ctx):
    a = np.arange(24, dtype=np.int32).reshape(4, 6)[::2, 1::2]
    a.flags.writeable = False
    assert_equal_all(ctx.bcast(a if ctx.is_root else None), a, ctx=ctx)
    z = ctx.bcast(np.zeros((0, 3), np.complex64) if ctx.is_root else None)
    assert_all(z.shape == (0, 3) and z.dtype == np.complex64, repr(z), ctx=ctx)


# ---- reduce / allreduce ------------------------------------------------------------------
def test_reduce_bad_op(ctx):
    raises_everywhere(ctx, lambda: ctx.allreduce(np.ones(2), op="median"), "op='median' is not one of")
    raises_everywhere(ctx, lambda: ctx.reduce(np.ones(2), op=None), "op=None")


def test_reduce_non_numeric_dtype(ctx):
    raises_everywhere(ctx, lambda: ctx.allreduce(np.array(["a", "b"])), "cannot reduce dtype <U1")


@pytest.mark.checks
def test_reduce_dtype_mismatch(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    x = np.ones(2, np.float32 if ctx.rank == last(ctx) else np.float64)
    raises_everywhere(ctx, lambda: ctx.allreduce(x), f"rank {last(ctx)}: float32")


@pytest.mark.checks
def test_reduce_array_versus_python_number(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    x = 1.0 if ctx.rank == last(ctx) else np.ones(1)
    raises_everywhere(ctx, lambda: ctx.reduce(x), "a Python object")


def test_reduce_bad_root(ctx):
    raises_everywhere(ctx, lambda: ctx.reduce(np.ones(1), root=1.0), "not a rank")


def test_reduce_noncontiguous_readonly_and_empty(ctx):
    a = np.arange(12.0).reshape(3, 4)[:, ::2]
    a.flags.writeable = False
    assert_equal_all(ctx.allreduce(a), a * ctx.size, ctx=ctx)
    got = ctx.reduce(np.zeros((2, 0)), op="max", root=last(ctx))
    assert_all(got is None if ctx.rank != last(ctx) else got.shape == (2, 0), repr(got), ctx=ctx)


@pytest.mark.checks
def test_mismatched_op_message_names_ops(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    msg = raises_everywhere(ctx, lambda: ctx.allreduce(np.ones(2), op="max" if ctx.rank == 0 else "sum"),
                            "different collectives", exc=hpcpar.CollectiveMismatchError)
    # in debug mode (HPCPAR_DEBUG=1) each call also names its call site: "... from FILE:FUNC"
    assert_all(re.search(r"rank 0: allreduce\(float64, op=max\)( from [^;]+)?; "
                         r"rank 1: allreduce\(float64, op=sum\)", msg) is not None, msg, ctx=ctx)


# ---- debug mode ----------------------------------------------------------------------------
@pytest.fixture
def dctx():
    c = hpcpar.Context(debug=True)
    yield c
    c.free()


def _via_a(c, x):
    return c.allreduce(x)


def _via_b(c, x):
    return c.allreduce(x)


def test_debug_mode_same_function_different_lines_is_fine(dctx):
    if dctx.is_root:  # the usual `if root: ... else: ...` shape stays legal
        got = dctx.bcast(np.arange(3))
    else:
        got = dctx.bcast(None)
    assert_equal_all(got, np.arange(3), ctx=dctx)
    assert_all(dctx.debug, "debug flag", ctx=dctx)


@pytest.mark.checks
def test_debug_mode_different_functions_raise_everywhere(dctx):
    if dctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    fn = _via_a if dctx.rank == 0 else _via_b
    msg = raises_everywhere(dctx, lambda: fn(dctx, np.ones(2)), "from different functions",
                            exc=hpcpar.CollectiveMismatchError)
    assert_all("rank 0: allreduce(float64, op=sum) from test_context_checks.py:_via_a" in msg
               and "rank 1: allreduce(float64, op=sum) from test_context_checks.py:_via_b" in msg, msg, ctx=dctx)


@pytest.mark.checks
def test_debug_mode_mismatch_names_callers(dctx):
    if dctx.size == 1:
        pytest.skip("needs two ranks to disagree")

    def body():
        if dctx.rank == 1:
            dctx.bcast(np.zeros(2))
        else:
            dctx.gather(np.zeros(2))
    msg = raises_everywhere(dctx, body, "different collectives", exc=hpcpar.CollectiveMismatchError)
    assert_all("rank 0: gather(root=0, float64) from test_context_checks.py:body" in msg
               and "rank 1: bcast(root=0) from test_context_checks.py:body" in msg, msg, ctx=dctx)


def test_debug_and_plain_contexts_agree_with_each_other(ctx):
    # ranks that disagree about debug mode still work (no site is compared)
    c = hpcpar.Context(debug=ctx.rank == 0)
    try:
        assert_equal_all(_via_a(c, np.int64(1)) if ctx.rank else _via_b(c, np.int64(1)), ctx.size, ctx=ctx)
    finally:
        c.free()


# ---- watchdog marks ----------------------------------------------------------------------
def test_collectives_mark_and_unmark_the_watchdog(ctx):
    assert_all(watchdog.current() is None, f"marked outside a call: {watchdog.current()}", ctx=ctx)
    with watchdog.watching("outer", ctx):
        ctx.barrier()  # a collective inside a marked region keeps the outer mark
        cur = watchdog.current()
    assert_all(cur is not None and cur[0] == "outer", repr(cur), ctx=ctx)
    try:
        ctx.allreduce(np.ones(2), op="nope")
    except ValueError:
        pass
    assert_all(watchdog.current() is None, "a failed call leaves no mark", ctx=ctx)


def test_finish_is_a_barrier(ctx):
    ctx.finish()
    ctx.finish()
    assert_all(MPI.Is_initialized(), "finish returns on every rank", ctx=ctx)


@pytest.mark.parametrize("op,dtype", [("sum", np.bool_), ("land", np.float64), ("max", np.complex128),
                                      ("band", np.bool_)])
def test_reduce_op_not_defined_for_the_dtype(ctx, op, dtype):
    msg = raises_everywhere(ctx, lambda: ctx.allreduce(np.ones(2, dtype), op=op), f"op='{op}' is not defined",
                            exc=TypeError)
    assert_all("use one of" in msg, msg, ctx=ctx)
    assert_equal_all(ctx.allreduce(np.ones(2, np.int32), op="band"), np.ones(2, np.int32), ctx=ctx)
