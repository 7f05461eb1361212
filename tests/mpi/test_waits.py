"""Bad input to waits outside the collectives: the same error on every rank, never a hang.

Grid's first exchange of a dtype, reductions of Python objects of different kinds,
a Context used by two threads at once, farm tasks and results that cannot travel.
"""

import threading
import time

import numpy as np
import pytest

import hpcpar
from hpcpar import TaskError, farm
from hpcpar.testing import assert_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


class Bad(Exception):
    """Pickles as ``Bad(a)``, so unpickling it fails."""

    def __init__(self, a, b):
        super().__init__(a)


def _caught(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    return None


# ---- Grid: the first exchange of a dtype is checked on every rank ---------------------------
@pytest.mark.parametrize("other", [np.int64, np.float32])
def test_grid_exchange_with_another_dtype_on_one_rank_fails_on_every_rank(ctx, other):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    with hpcpar.Grid(ctx, (12, 12), periodic=True) as grid:
        a = grid.zeros(other if ctx.rank == 1 else np.float64)
        exc = _caught(lambda: grid.exchange(a))
        assert_all(isinstance(exc, ValueError) and "same dtype and corners" in str(exc)
                   and f"rank 1: dtype {np.dtype(other)}" in str(exc), f"got {exc!r}", ctx=ctx)
        # the grid stays usable: the same dtype everywhere works
        b = grid.zeros()
        grid.interior(b)[...] = ctx.rank + 1
        grid.exchange(b)
        assert_all(b[0, 0] != 0, "ghost cells were filled", ctx=ctx)


def test_grid_first_exchange_with_a_misfit_on_one_rank_fails_on_every_rank(ctx):
    bad = ctx.size - 1
    with hpcpar.Grid(ctx, (8, 8)) as grid:
        a = grid.zeros() if ctx.rank != bad else np.zeros((3, 3))
        exc = _caught(lambda: grid.exchange(a))
        assert_all(isinstance(exc, ValueError) and f"rank {bad}: array of shape (3, 3)" in str(exc),
                   f"got {exc!r}", ctx=ctx)
        ctx.barrier()


def test_grid_begin_end_checks_the_dtype_too(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    with hpcpar.Grid(ctx, (8, 8), periodic=True) as grid:
        grid.exchange(grid.zeros())  # float64 agreed
        a = grid.zeros(np.int32 if ctx.rank == 0 else np.int64)  # a new dtype: checked again
        exc = _caught(lambda: grid.exchange_begin(a))
        assert_all(isinstance(exc, ValueError) and "rank 0: dtype int32" in str(exc),
                   f"got {exc!r}", ctx=ctx)
        assert_all(grid.exchange_end() is None, "nothing pending after the error", ctx=ctx)


@pytest.mark.checks  # unchecked, only the first exchange of a dtype is checked
@pytest.mark.parametrize("other", [np.float32, np.int64])  # int64: the same bytes, other meaning
@pytest.mark.parametrize("begin", [False, True])
def test_grid_later_exchange_with_a_dtype_switched_on_one_rank_fails_on_every_rank(ctx, begin, other):
    """Every rank has exchanged float64 and ``other`` arrays; then rank 0 passes float64 while
    the others pass ``other`` (each a dtype it has seen): every rank raises before any message
    moves, the grid stays usable. A later misfit on one rank fails on every rank too."""
    with hpcpar.Grid(ctx, (12, 12), periodic=True) as grid:
        arrays = {np.float64: grid.zeros(np.float64), np.float32: grid.zeros(other)}
        for a in arrays.values():
            grid.exchange(a)
        a = arrays[np.float64] if ctx.rank == 0 else arrays[np.float32]
        if begin:
            exc = _caught(lambda: grid.exchange_begin(a))
            done = grid.exchange_end()  # one rank: no error, the exchange completes
            assert_all(done is (a if ctx.size == 1 else None), "nothing pending after the error",
                       ctx=ctx)
        else:
            exc = _caught(lambda: grid.exchange(a))
        if ctx.size == 1:
            ok = exc is None
        else:
            ok = (isinstance(exc, ValueError) and "same dtype and corners" in str(exc)
                  and "rank 0: dtype float64" in str(exc)
                  and f"rank 1: dtype {np.dtype(other)}" in str(exc))
        assert_all(ok, f"got {exc!r}", ctx=ctx)
        bad = ctx.size - 1
        b = arrays[np.float64] if ctx.rank != bad else np.zeros((3, 3))
        exc = _caught(lambda: grid.exchange(b))
        ok = isinstance(exc, ValueError) and f"rank {bad}: array of shape (3, 3)" in str(exc)
        assert_all(ok, f"a later misfit: got {exc!r}", ctx=ctx)
        c = arrays[np.float32]
        grid.interior(c)[...] = ctx.rank + 1
        grid.exchange(c)
        assert_all(c[0, 0] != 0, "the grid works after both errors", ctx=ctx)


# ---- reductions of Python objects of different kinds ----------------------------------------
@pytest.mark.checks  # unchecked, values of different kinds on different ranks reach MPI as they are
def test_allreduce_of_mixed_kinds_fails_on_every_rank(ctx):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    exc = _caught(lambda: ctx.allreduce(1 if ctx.rank == 0 else "x"))
    assert_all(isinstance(exc, TypeError) and "rank 0: int; rank 1: str" in str(exc),
               f"got {exc!r}", ctx=ctx)
    exc = _caught(lambda: ctx.reduce([1] if ctx.rank == 1 else (1,)))
    assert_all(isinstance(exc, TypeError) and "rank 1: list" in str(exc), f"got {exc!r}", ctx=ctx)
    # numbers of different types still combine; so do str with str
    total = ctx.allreduce(1 if ctx.rank == 0 else 2.5)
    assert_all(total == 1 + 2.5 * (ctx.size - 1), f"sum {total}", ctx=ctx)
    assert_all(ctx.allreduce("a") == "a" * ctx.size, "strings concatenate", ctx=ctx)


# ---- a Context used by two threads at once -------------------------------------------------
def test_a_second_thread_in_the_same_context_gets_a_clear_error(ctx):
    if ctx.size == 1:
        pytest.skip("needs a collective that waits for another rank")
    seen = []

    def intruder():
        time.sleep(0.2)  # rank 0's main thread is inside barrier by now
        seen.append(_caught(lambda: ctx.allreduce(np.ones(2))))

    t = None
    if ctx.rank == 0:
        t = threading.Thread(target=intruder)
        t.start()
    else:
        time.sleep(0.6)
    ctx.barrier()
    if t is not None:
        t.join()
    exc = seen[0] if seen else None
    ok = (ctx.rank != 0 or (isinstance(exc, RuntimeError) and "Context.allreduce was called from "
                            "thread" in str(exc) and "inside barrier on the same object" in str(exc)))
    assert_all(ok, f"got {exc!r}", ctx=ctx)
    assert_all(ctx.allreduce(np.int64(1)) == ctx.size, "the context is still usable", ctx=ctx)


# ---- farm and pipeline: tasks and results that cannot travel --------------------------------
def test_farm_task_that_cannot_be_pickled_fails_the_task(ctx):
    tasks = [lambda: 0] * 20 if ctx.is_root else None  # lambdas cannot be pickled

    def fn(t):
        time.sleep(0.02)
        return 1

    out = farm(ctx, fn, tasks, chunksize=1, errors="collect")
    if ctx.is_root:
        failed = [x for x in out if isinstance(x, BaseException)]
        ok = len(out) == 20 and all(x == 1 or "cannot be sent from root" in str(x) for x in out)
        ok = ok and (bool(failed) or ctx.size == 1)  # every worker got at least one task
    else:
        ok = out is None
    assert_all(ok, f"results {str(out)[:200]}", ctx=ctx)
    exc = _caught(lambda: farm(ctx, fn, tasks, chunksize=1))
    # every rank raises (one rank pickles nothing: no error then)
    ok = (isinstance(exc, TaskError) and "cannot be sent from root" in str(exc)
          if ctx.size > 1 else exc is None)
    assert_all(ok, f"got {exc!r}", ctx=ctx)


def test_farm_result_that_cannot_be_unpickled_fails_the_task(ctx):
    def fn(x):
        time.sleep(0.02)
        return Bad(x, x)

    exc = _caught(lambda: farm(ctx, fn, range(20) if ctx.is_root else None, chunksize=1))
    ok = (isinstance(exc, TaskError) and "cannot be unpickled on root" in str(exc)
          and exc.rank != 0 and exc.index is not None and f"(host {exc.host})" in str(exc)
          and exc.host not in ("", "?")
          if ctx.size > 1 else exc is None)
    assert_all(ok, f"got {exc!r}", ctx=ctx)
    assert_all(ctx.allreduce(np.int64(1)) == ctx.size, "the context is still usable", ctx=ctx)


def test_pipeline_output_that_cannot_be_unpickled_fails_the_item(ctx):
    stages = [lambda x: x, lambda x: Bad(x, x) if x == 4 else x, lambda x: x]
    exc = _caught(lambda: hpcpar.pipeline(ctx, stages, range(8) if ctx.is_root else None))
    if ctx.size > 1:  # every rank raises
        ok = (isinstance(exc, TaskError) and exc.index == 4 and "cannot be unpickled" in str(exc)
              and exc.host not in ("", "?"))
    else:
        ok = exc is None
    assert_all(ok, f"got {exc!r}", ctx=ctx)
