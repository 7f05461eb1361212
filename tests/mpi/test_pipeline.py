"""The rank pipeline under real MPI: stage mapping, order, back-pressure, failures."""

import socket
import time

import pytest

from hpcpar import TaskError, partition, pipeline
from hpcpar.testing import assert_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


def stages_of(k):
    """k stages that each leave a visible trace: x -> x * 2 + stage."""
    return [lambda x, s=s: x * 2 + s for s in range(k)]


def expected(x, k):
    for s in range(k):
        x = x * 2 + s
    return x


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_output_in_input_order_for_any_stage_count(ctx, k):
    n = 200
    out = pipeline(ctx, stages_of(k), range(n) if ctx.is_root else None)
    ok = out == [expected(x, k) for x in range(n)] if ctx.is_root else out is None
    assert_all(ok, f"{k} stages on {ctx.size} ranks: {str(out)[:80]}", ctx=ctx)


def test_stages_run_on_their_ranks(ctx):
    k = 4
    used = min(ctx.size, k)
    stages = [lambda trail, s=s: trail + [(s, ctx.rank)] for s in range(k)]
    out = pipeline(ctx, stages, [[] for _ in range(5)] if ctx.is_root else None)
    if ctx.is_root:
        want = [(s, r) for r in range(used) for s in partition.block_range(k, used, r)]
        ok = all(trail == want for trail in out)
    else:
        ok = out is None
    assert_all(ok, f"stage placement {out[0] if out else None}", ctx=ctx)


def test_back_pressure_bounds_items_in_flight(ctx):
    window, n = 2, 30
    pulled, finished = [], []

    def source():
        for i in range(n):
            pulled.append(time.monotonic())
            yield i

    def slow_last(x):
        time.sleep(0.003)
        finished.append(time.monotonic())
        return x

    out = pipeline(ctx, [lambda x: x, slow_last], source() if ctx.is_root else None, window=window)
    lists = ctx.comm.gather(finished, root=0)
    if ctx.is_root:
        done = sorted(t for part in lists for t in part)
        # item i is read only once at least i - window outputs have come back
        worst = max(i - sum(1 for t in done if t <= p) for i, p in enumerate(pulled))
        ok = out == list(range(n)) and len(done) == n and worst <= window
        msg = f"up to {worst} items in flight with window {window}"
    else:
        ok, msg = out is None, "non-root gets None"
    assert_all(ok, msg, ctx=ctx)


@pytest.mark.parametrize("bad_stage", [0, 1, 2])
def test_exception_names_stage_and_rank_and_everyone_leaves(ctx, bad_stage):
    k = 3

    def stage(s):
        def run(x):
            if s == bad_stage and x == 7:
                raise KeyError(f"stage {s} dislikes 7")
            return x
        return run

    err = None
    try:
        out = pipeline(ctx, [stage(s) for s in range(k)], range(40) if ctx.is_root else None)
    except TaskError as exc:
        err, out = exc, None
    used = min(ctx.size, k)
    owner = next(r for r in range(used) if bad_stage in partition.block_range(k, used, r))
    # every rank raises the same error, also a rank beyond the last stage
    ok = (err is not None and out is None and err.stage == bad_stage and err.rank == owner
          and err.index == 7 and "dislikes 7" in str(err) and f"stage {bad_stage}" in str(err)
          and f"on rank {owner} (host {err.host}, item 7)" in str(err))
    assert_all(ok, f"expected stage {bad_stage} on rank {owner}; got {err!r}", ctx=ctx)
    assert_all(ctx.comm.bcast(str(err), root=0) == str(err), "the same message on every rank", ctx=ctx)
    again = pipeline(ctx, stages_of(2), range(4) if ctx.is_root else None)
    assert_all(again == [expected(x, 2) for x in range(4)] if ctx.is_root else again is None,
               "context usable after a failed pipeline", ctx=ctx)


def test_empty_input(ctx):
    out = pipeline(ctx, stages_of(3), [] if ctx.is_root else None)
    assert_all(out == [] if ctx.is_root else out is None, "no items, no outputs", ctx=ctx)


@pytest.mark.checks
def test_no_stages_on_one_rank_fails_on_every_rank(ctx):
    try:
        pipeline(ctx, [] if ctx.rank == ctx.size - 1 else stages_of(2), [1] if ctx.is_root else None)
        raised = None
    except ValueError as exc:
        raised = str(exc)
    assert_all(raised is not None and f"rank {ctx.size - 1}" in raised, f"got {raised}", ctx=ctx)


def _error_everywhere(ctx, run):
    """This rank's TaskError (or None) and every rank's (message, stage, rank, host)."""
    err = None
    try:
        run()
    except TaskError as exc:
        err = exc
    mine = None if err is None else (str(err), err.stage, err.rank, err.host)
    return err, ctx.comm.allgather(mine)


@pytest.mark.parametrize("k", [1, 2])
def test_a_failed_stage_raises_on_every_rank_also_beyond_the_last_stage(ctx, k):
    """With fewer stages than ranks (one stage: root runs it alone), every rank raises the same
    TaskError naming the stage, the rank and its host."""
    def last_stage(x):
        if x == 3:
            raise ValueError(f"rank {ctx.rank} rejects 3")
        return x

    stages = [lambda x: x] * (k - 1) + [last_stage]
    owner = min(ctx.size, k) - 1
    err, seen = _error_everywhere(ctx, lambda: pipeline(ctx, stages, range(9) if ctx.is_root else None))
    host = ctx.comm.bcast(socket.gethostname(), root=owner)
    ok = (err is not None and len(set(seen)) == 1 and err.stage == k - 1 and err.rank == owner
          and err.host == host and f"rank {owner} rejects 3" in str(err))
    assert_all(ok, f"got {seen}", ctx=ctx)


def test_items_that_raise_on_root_fail_on_every_rank(ctx):
    def items():
        yield from range(4)
        raise OSError("the input file went away")

    err, seen = _error_everywhere(
        ctx, lambda: pipeline(ctx, stages_of(3), items() if ctx.is_root else None))
    ok = (err is not None and len(set(seen)) == 1 and err.stage is None and err.index == 4
          and "reading root's items raised OSError on rank 0" in str(err)
          and "the input file went away" in str(err))
    assert_all(ok, f"got {seen}", ctx=ctx)
    again = pipeline(ctx, stages_of(2), range(3) if ctx.is_root else None)
    assert_all(again == [expected(x, 2) for x in range(3)] if ctx.is_root else again is None,
               "the pipeline works again", ctx=ctx)
