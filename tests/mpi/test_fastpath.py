"""The fast path of repeated collectives (hpcpar.core.fastpath), under real MPI.

A context made with ``checks=False`` serves repeated small barrier, allreduce,
bcast and scatter calls and repeated gathers without the full method, a checked
one repeated array allreduces, bcasts, scatters and gathers; these tests repeat calls so that
the fast path runs, change the geometry between calls, send ranks down different
paths in the same call (one rank inside another marked call takes the full
method) and check every result against NumPy on every rank.
"""

import re

import numpy as np
import pytest

import hpcpar
from hpcpar.core import announce, watchdog
from hpcpar.testing import assert_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


@pytest.fixture
def u(ctx):
    c = hpcpar.Context(ctx.comm, checks=False)
    yield c
    c.free()


@pytest.fixture(params=[False, True], ids=["unchecked", "checked"])
def both(ctx, request):
    c = hpcpar.Context(ctx.comm, checks=request.param, debug=False)
    yield c
    c.free()


def same(got, want):
    return (isinstance(got, np.ndarray) and got.shape == np.shape(want) and got.dtype == np.asarray(want).dtype
            and np.array_equal(got, want))


def changed_later(kept):
    """Results (with what they should hold) that later calls wrote into: each must be the caller's own."""
    return [f"result {k} changed by later calls" for k, (got, want) in enumerate(kept) if not same(got, want)]


def test_the_fast_functions_stand_in_for_the_methods(u, ctx):
    names = ("barrier", "allreduce", "bcast", "scatter", "gather", "allgather")
    ok = all(getattr(u, n).__name__ == n and getattr(u, n).__doc__ and n in vars(u) for n in names)
    with hpcpar.Context(ctx.comm, checks=True, debug=False) as c, hpcpar.Context(ctx.comm, checks=True, debug=True) as d:
        ok = ok and [n for n in names if n in vars(c)] == list(names[1:]) and c.scatter.__doc__
        ok = ok and not any(n in vars(d) for n in names)  # debug mode: every call checks its call site
    assert_all(ok, "a context's fast functions lost the methods' names or docstrings", ctx=ctx)


@pytest.fixture
def c(ctx):
    c = hpcpar.Context(ctx.comm, checks=True, debug=False)
    yield c
    c.free()


def test_checked_repeated_allreduce(c, ctx):
    problems = []
    for k in range(4):
        for x, op, want in [(np.ones(3) * k, "sum", np.ones(3) * k * ctx.size),
                            (np.arange(6, dtype=np.int32).reshape(2, 3) + ctx.rank, "max",
                             np.arange(6, dtype=np.int32).reshape(2, 3) + ctx.size - 1),
                            (np.arange(8.0)[::2] + k, "sum", (np.arange(8.0)[::2] + k) * ctx.size),
                            (np.asfortranarray(np.arange(6.0).reshape(2, 3)) * (ctx.rank + 1), "sum",
                             np.arange(6.0).reshape(2, 3) * sum(range(1, ctx.size + 1)))]:
            got = c.allreduce(x, op)
            if not same(got, want):
                problems.append(f"call {k} {x.shape} {op}: {got!r}, wanted {want!r}")
    assert_all(not problems, "; ".join(problems), ctx=ctx)


@pytest.mark.checks
@pytest.mark.parametrize("change", ["dtype", "shape", "op", "call"])
def test_checked_repeated_allreduce_that_one_rank_changes_fails_on_every_rank(c, ctx, change):
    if ctx.size < 2:
        pytest.skip("needs a rank that differs")
    x = np.ones(4)
    for _ in range(3):
        c.allreduce(x)  # the fast path is warm on every rank
    odd = ctx.rank == ctx.size - 1
    msg = None
    try:
        if change == "dtype":
            c.allreduce(x.astype(np.float32) if odd else x)
        elif change == "shape":
            c.allreduce(np.ones(5) if odd else x)
        elif change == "op":
            c.allreduce(x, "max" if odd else "sum")
        else:
            c.bcast(x) if odd else c.allreduce(x)
    except (ValueError, TypeError) as e:
        msg = str(e)
    assert_all(msg is not None and re.search(rf"rank {ctx.size - 1}", msg), f"got {msg!r}", ctx=ctx)
    got = c.allreduce(x)  # still usable, and the fast path still right
    assert_all(same(got, x * ctx.size), f"after the error: {got!r}", ctx=ctx)


def test_repeated_allreduce_of_changing_dtypes_and_ops(u, ctx):
    problems = []
    for dtype, op, fn in [(np.float64, "sum", np.sum), (np.int32, "max", np.max), (np.float64, "sum", np.sum),
                          (np.int64, "prod", np.prod), (np.int32, "max", np.max), (np.complex128, "sum", np.sum)]:
        for k in range(3):
            x = (np.arange(5) + ctx.rank + k).astype(dtype)
            want = fn(np.stack([(np.arange(5) + r + k).astype(dtype) for r in range(ctx.size)]), axis=0)
            got = u.allreduce(x, op)
            if not same(got, want.astype(dtype)) or got is x:
                problems.append(f"{dtype.__name__} {op} call {k}: {got!r}, wanted {want!r}")
    assert_all(not problems, "; ".join(problems), ctx=ctx)


def test_allreduce_of_arrays_the_fast_path_does_not_take(u, ctx):
    u.allreduce(np.ones(4))  # (sum, float64) is known from now on
    strided = np.arange(8.0)[::2] + ctx.rank
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3)) * (ctx.rank + 1)
    tri = sum(range(1, ctx.size + 1))
    ok = (same(u.allreduce(strided), np.arange(8.0)[::2] * ctx.size + sum(range(ctx.size)))
          and same(u.allreduce(fortran), np.arange(6.0).reshape(2, 3) * tri)
          and same(u.allreduce(np.float64(2.0)).reshape(1), np.array([2.0 * ctx.size]))
          and u.allreduce(3) == 3 * ctx.size)
    assert_all(ok, "an allreduce of a strided, Fortran-ordered, scalar or Python value went wrong", ctx=ctx)


@pytest.mark.parametrize("root_last", [False, True])
def test_repeated_small_bcast_of_changing_geometry(both, ctx, root_last):
    root = ctx.size - 1 if root_last else 0
    kept, problems = [], []
    for k, (shape, dtype) in enumerate([((128,), np.float64), ((128,), np.float64), ((3, 4), np.int16),
                                        ((128,), np.float64), ((2, 2, 2), np.bool_), ((3, 4), np.int16),
                                        ((7,), np.complex64), ((7,), np.complex64), ((600,), np.float64)]):
        want = (np.arange(np.prod(shape)).reshape(shape) + k).astype(dtype)
        got = both.bcast(want.copy() if ctx.rank == root else None, root=root)
        if not same(got, want):
            problems.append(f"call {k} {shape} {np.dtype(dtype)}: got {got!r}")
        kept.append((got, want))
    problems += changed_later(kept)
    assert_all(not problems, "; ".join(problems), ctx=ctx)


def test_bcast_of_objects_custom_dtypes_and_large_arrays_between_small_ones(both, ctx):
    rec = np.dtype([("a", np.int32), ("b", np.float64)])
    big = np.arange(announce.INLINE // 8 + 10, dtype=np.float64)  # does not fit the announcement
    problems = []
    for k in range(3):  # each kind three times: the fast path must not take any of them for a small array
        for name, want in [("small", np.arange(4.0) + k), ("record", np.array([(k, 0.5)] * 3, rec)),
                           ("big", big + k), ("object", {"k": k}), ("small", np.arange(4.0) - k),
                           ("empty", np.zeros(0)), ("0-d", np.array(k))]:
            got = both.bcast(want if ctx.is_root else None)
            good = got == want if name == "object" else same(got, want)
            if not good:
                problems.append(f"{name} call {k}: got {got!r}")
    assert_all(not problems, "; ".join(problems), ctx=ctx)


def test_bcast_on_root_returns_its_array_and_reads_non_contiguous_ones(both, ctx):
    whole = np.arange(40.0).reshape(8, 5)
    ok = True
    for _ in range(2):
        got = both.bcast(whole[:, 1] if ctx.is_root else None)  # strided on root
        ok = ok and same(got, whole[:, 1])
        mine = np.arange(3.0)
        got = both.bcast(mine if ctx.is_root else None)
        ok = ok and same(got, mine) and (got is mine) == ctx.is_root
    assert_all(ok, "a bcast of a strided array, or root's own array, went wrong", ctx=ctx)


def test_ranks_on_different_paths_in_the_same_call(both, ctx):
    """The ranks inside another marked call take the full methods; the others the fast path."""
    problems = []
    for k in range(4):
        inside = (ctx.rank + k) % 2 == 0
        prev = watchdog.enter("outer", both) if inside else None
        try:
            b = both.bcast(np.arange(6.0) + k if ctx.is_root else None)
            s = both.scatter(np.arange(4.0 * ctx.size) + k if ctx.is_root else None)
            r = both.allreduce(np.ones(2) * k)
            both.barrier()
        finally:
            if inside:
                watchdog.leave(prev)
        want_s = np.arange(4.0 * ctx.size)[4 * ctx.rank:4 * ctx.rank + 4] + k
        if not (same(b, np.arange(6.0) + k) and same(s, want_s) and same(r, np.ones(2) * k * ctx.size)):
            problems.append(f"call {k} ({'full' if inside else 'fast'} path): {b}, {s}, {r}")
    assert_all(not problems, "; ".join(problems), ctx=ctx)


def test_repeated_small_scatter_of_changing_geometry(both, ctx):
    problems, kept = [], []
    for k, (rows, cols, dtype) in enumerate([(10, 1, np.float64), (10, 1, np.float64), (ctx.size * 3, 4, np.int8),
                                             (1, 3, np.float32), (10, 1, np.float64), (200, 3, np.float64)]):
        whole = (np.arange(rows * cols).reshape(rows, cols) + k).astype(dtype)
        if cols == 1:
            whole = whole.reshape(rows)
        for root in {0, ctx.size - 1}:
            got = both.scatter(whole.copy() if ctx.rank == root else None, root=root)
            want = np.array_split(whole, ctx.size)[ctx.rank]  # the first rows % size ranks get one more row
            if not same(got, want) or not got.flags.c_contiguous:
                problems.append(f"call {k} root {root} {whole.shape} {whole.dtype}: {got!r}, wanted {want!r}")
            kept.append((got, want))
    problems += changed_later(kept)
    assert_all(not problems, "; ".join(problems), ctx=ctx)


def test_scatter_the_fast_path_does_not_take(both, ctx):
    whole = np.arange(6.0 * ctx.size).reshape(6, ctx.size)
    ok = True
    for _ in range(2):
        col = both.scatter(whole if ctx.is_root else None, axis=1)
        ok = ok and same(col, whole[:, ctx.rank:ctx.rank + 1])
        part = np.arange(6.0)
        out = np.empty(len(np.array_split(part, ctx.size)[ctx.rank]))
        got = both.scatter(part if ctx.is_root else None, out=out)
        ok = ok and got is out and same(out, np.array_split(part, ctx.size)[ctx.rank])
        f = np.asfortranarray(np.arange(4.0 * ctx.size).reshape(2 * ctx.size, 2))
        ok = ok and same(both.scatter(f if ctx.is_root else None), np.array_split(np.ascontiguousarray(f),
                                                                                ctx.size)[ctx.rank])
    assert_all(ok, "a scatter along axis 1, into out=, or of a Fortran-ordered array went wrong", ctx=ctx)


def test_bad_arguments_still_raise_on_the_rank_that_sees_them(u, ctx):
    u.bcast(np.ones(2) if ctx.is_root else None)  # the fast path is warm
    got = []
    for call in (lambda: u.bcast(1, root=ctx.size), lambda: u.scatter(None, root=-1),
                 lambda: u.allreduce(np.ones(2), op="nope"), lambda: u.allreduce(np.ones(2, bool), op="sum")):
        try:
            call()
            got.append(None)
        except (ValueError, TypeError) as e:
            got.append(type(e).__name__)
    assert_all(None not in got, f"a bad argument was accepted: {got}", ctx=ctx)
    u.barrier()


@pytest.mark.parametrize("checks", [True, False])
def test_tracing_records_one_span_per_fast_call(ctx, checks):
    from hpcpar.observe import trace

    rec = trace.RECORDER
    with hpcpar.Context(ctx.comm, checks=checks, debug=False) as c:
        x = np.ones(4)
        for _ in range(2):  # the fast paths are warm
            c.allreduce(x), c.barrier(), c.bcast(x if ctx.is_root else None), c.scatter(
                np.arange(2.0 * ctx.size) if ctx.is_root else None)
        rec.reset(trace.CHUNK, ctx.size)
        rec.on = True
        try:
            for _ in range(3):
                c.allreduce(x)
                c.barrier()
                c.bcast(x if ctx.is_root else None)
                c.scatter(np.arange(2.0 * ctx.size) if ctx.is_root else None)
        finally:
            rec.on = False
        ev = rec.events()
    names = [rec.names[w][1] for w in ev["what"]]
    want = ["allreduce", "barrier", "bcast", "scatter"] * 3
    ok = names == want and (ev["t1"] >= ev["t0"]).all()
    ok = ok and list(ev["nbytes"][0::4]) == [32] * 3  # the allreduce's array
    ok = ok and list(ev["nbytes"][2::4]) == [32 if ctx.is_root else 0] * 3
    assert_all(ok, f"spans {names}, bytes {list(ev['nbytes'])}", ctx=ctx)


@pytest.mark.checks
@pytest.mark.parametrize("call", ["bcast", "scatter"])
def test_checked_repeated_call_with_another_root_on_one_rank_fails_on_every_rank(c, ctx, call):
    if ctx.size < 2:
        pytest.skip("needs a rank that differs")
    whole = np.arange(4.0 * ctx.size)
    run = c.bcast if call == "bcast" else c.scatter
    for _ in range(3):
        run(whole if ctx.is_root else None)  # the fast path is warm on every rank
    odd = ctx.rank == ctx.size - 1
    msg = None
    try:
        run(whole if ctx.rank in (0, 1) else None, root=1 if odd else 0)
    except (ValueError, TypeError) as e:
        msg = str(e)
    assert_all(msg is not None and (call == "scatter" or "root" in msg), f"got {msg!r}", ctx=ctx)
    got = run(whole * 2 if ctx.is_root else None)  # still usable
    want = whole * 2 if call == "bcast" else np.array_split(whole * 2, ctx.size)[ctx.rank]
    assert_all(same(got, want), f"after the error: {got!r}", ctx=ctx)


def _blocks(k, rank, dtype, trailing):
    """Rank ``rank``'s block in call ``k``: its length changes with k and differs across ranks."""
    n = (rank + k) % 3  # empty blocks too
    return (np.arange(n * int(np.prod(trailing, dtype=int))).reshape((n,) + trailing) + 100 * rank + k).astype(dtype)


@pytest.mark.parametrize("same_lengths", [True, False], ids=["steady", "changing"])
def test_repeated_gathers_of_changing_lengths_roots_and_layouts(both, ctx, same_lengths):
    problems, kept = [], []
    layouts = [(np.float64, ()), (np.float64, ()), (np.int32, (2,)), (np.float64, ()), (np.float32, (3, 2))]
    for k in range(12):
        dtype, trailing = layouts[k % len(layouts)]
        kk = 0 if same_lengths else k
        mine = _blocks(kk, ctx.rank, dtype, trailing)
        want = np.concatenate([_blocks(kk, r, dtype, trailing) for r in range(ctx.size)])
        root = k % ctx.size
        got = both.gather(mine, root=root)
        if (got is None) == (ctx.rank == root) or (got is not None and not same(got, want)):
            problems.append(f"gather {k} to {root}: {got!r}, wanted {want!r}")
        everyone = both.allgather(mine)
        if not same(everyone, want):
            problems.append(f"allgather {k}: {everyone!r}, wanted {want!r}")
        kept.append((everyone, want))
    problems += changed_later(kept)
    assert_all(not problems, "; ".join(problems), ctx=ctx)


def test_gathers_the_fast_path_does_not_take_between_fast_ones(both, ctx):
    """Strided blocks, another axis and ``out`` between repeated calls; some ranks inside another
    marked call (the full method) while the others take the fast path."""
    problems = []
    for k in range(6):
        block = np.arange(8.0).reshape(4, 2) + 10 * ctx.rank + k
        want = np.concatenate([np.arange(8.0).reshape(4, 2) + 10 * r + k for r in range(ctx.size)])
        inside = (ctx.rank + k) % 2 == 0
        prev = watchdog.enter("outer", both) if inside else None
        try:
            got = both.allgather(block)
            strided = both.allgather(np.asfortranarray(block))
            cols = both.allgather(block, axis=1)
            out = np.empty_like(want) if ctx.is_root else None
            into = both.gather(block, out=out)
            plain = both.gather(block)
        finally:
            if inside:
                watchdog.leave(prev)
        if not (same(got, want) and same(strided, want) and same(cols, np.concatenate(
                [np.arange(8.0).reshape(4, 2) + 10 * r + k for r in range(ctx.size)], axis=1))):
            problems.append(f"call {k}: allgather {got!r}, {strided!r}, {cols!r}")
        if ctx.is_root and not (into is out and same(out, want) and same(plain, want)):
            problems.append(f"call {k}: gather {into!r}, {plain!r}")
    assert_all(not problems, "; ".join(problems), ctx=ctx)


@pytest.mark.checks
@pytest.mark.parametrize("change", ["dtype", "trailing shape", "root"])
def test_checked_repeated_gather_that_one_rank_changes_fails_on_every_rank(c, ctx, change):
    if ctx.size < 2:
        pytest.skip("needs a rank that differs")
    block = np.ones((2, 3))
    for _ in range(3):
        c.gather(block), c.allgather(block)  # the fast paths are warm on every rank
    odd = ctx.rank == ctx.size - 1
    msgs = []
    for call in ("gather", "allgather"):
        if change == "root" and call == "allgather":
            continue
        mine, root = block, 0
        if odd and change == "dtype":
            mine = block.astype(np.float32)
        elif odd and change == "trailing shape":
            mine = np.ones((2, 4))
        elif odd:
            root = 1
        try:
            c.gather(mine, root=root) if call == "gather" else c.allgather(mine)
            msgs.append(None)
        except (ValueError, TypeError) as e:
            msgs.append(str(e))
    assert_all(None not in msgs, f"got {msgs!r}", ctx=ctx)
    got = c.allgather(block * 2)  # still usable
    assert_all(same(got, np.full((2 * ctx.size, 3), 2.0)), f"after the error: {got!r}", ctx=ctx)


def test_small_bcasts_and_scatters_of_one_geometry_from_changing_roots(both, ctx):
    """A bcast and a scatter of one geometry announce the same header: roots that change and
    calls that alternate must each find the right payload (root rewrites its header after
    receiving one; a rank reuses its last header only when the bytes say so)."""
    problems = []
    for k in range(12):
        whole = np.arange(4.0 * ctx.size) + k
        root, other = k % ctx.size, (k // 2) % ctx.size
        b = both.bcast(whole.copy() if ctx.rank == root else None, root=root)
        f = both.bcast(whole.astype(np.float32) if ctx.rank == root else None, root=root)  # same shape
        s = both.scatter(whole.copy() if ctx.rank == other else None, root=other)
        f = f if same(f, whole.astype(np.float32)) else f"float32 bcast gave {f!r}"
        b2 = both.bcast(whole[:3] * 2 if ctx.rank == other else None, root=other)  # another header
        if not (same(b, whole) and same(s, whole[4 * ctx.rank:4 * ctx.rank + 4]) and same(b2, whole[:3] * 2)
                and not isinstance(f, str)):
            problems.append(f"call {k} roots {root}, {other}: {b!r} {f!r} {s!r} {b2!r}")
    assert_all(not problems, "; ".join(problems), ctx=ctx)


@pytest.mark.checks
@pytest.mark.parametrize("bad", ["root", "axis"])
def test_an_unhashable_root_or_axis_on_one_rank_fails_on_every_rank(c, ctx, bad):
    """Once the fast paths are warm, a list as root or axis on the last rank gives every rank
    the checks' message (it used to be a bare "unhashable type" on that rank alone)."""
    block = np.ones(2)
    c.gather(block), c.allgather(block), c.scatter(np.ones(2 * ctx.size) if ctx.is_root else None)
    odd = ctx.rank == ctx.size - 1
    kw = {bad: [0] if odd else 0}
    msgs = []
    for call in (lambda: c.gather(block, **kw), lambda: c.scatter(np.ones(2 * ctx.size) if ctx.is_root else None,
                                                                   **kw)):
        try:
            call()
            msgs.append(None)
        except (TypeError, ValueError) as e:
            msgs.append(str(e))
    want = "is not a rank" if bad == "root" else "axis must be an int"
    assert_all(all(m is not None and want in m for m in msgs), f"got {msgs!r}", ctx=ctx)
