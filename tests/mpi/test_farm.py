"""The task farm under real MPI: results, balance, failures, early stops, edge sizes."""

import socket
import time

import pytest

import hpcpar
from hpcpar import TaskError, farm, farm_iter
from hpcpar.testing import assert_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


def square(x):
    return x * x


def tagged(ctx):
    """A task function that says which rank ran it."""
    return lambda x: (x * 3 + 1, ctx.rank)


@pytest.mark.parametrize("chunksize", [1, 3, None])
def test_ordered_results_on_root_only(ctx, chunksize):
    n = 257
    out = farm(ctx, square, range(n) if ctx.is_root else None, chunksize=chunksize)
    if ctx.is_root:
        ok = out == [square(x) for x in range(n)]
    else:
        ok = out is None
    assert_all(ok, f"chunksize {chunksize}: wrong result {str(out)[:80]}", ctx=ctx)


def test_unordered_and_farm_iter(ctx):
    n = 100
    tasks = list(range(n)) if ctx.is_root else None
    out = farm(ctx, square, tasks, chunksize=2, ordered=False)
    ok = sorted(out) == [square(x) for x in range(n)] if ctx.is_root else out is None
    assert_all(ok, "unordered results are a permutation of the ordered ones", ctx=ctx)
    got = list(farm_iter(ctx, square, tasks, chunksize=1))
    ok = got == [square(x) for x in range(n)] if ctx.is_root else got == []
    assert_all(ok, "farm_iter yields in task order on root, nothing elsewhere", ctx=ctx)
    got = list(farm_iter(ctx, square, tasks, ordered=False))
    ok = sorted(got) == [square(x) for x in range(n)] if ctx.is_root else got == []
    assert_all(ok, "farm_iter(ordered=False) yields every result", ctx=ctx)


def test_uneven_costs_balance_and_every_rank_computes(ctx):
    # A few long tasks among many short ones, the long ones first: a static
    # split would give them all to root. Sleeps keep the test independent of
    # how loaded the machine's cores are.
    costs = [0.04] * 4 + [0.004] * 60
    tasks = list(enumerate(costs)) if ctx.is_root else None

    def work(task):
        i, c = task
        time.sleep(c)
        return i, ctx.rank

    out = farm(ctx, work, tasks, chunksize=1)
    if ctx.is_root:
        load = [0.0] * ctx.size
        for i, r in out:
            load[r] += costs[i]
        bound = sum(costs) / ctx.size + 2 * max(costs) + 0.02
        ok = [i for i, _ in out] == list(range(len(costs))) and max(load) <= bound
        ok = ok and all(x > 0 for x in load)
        msg = f"per-rank load {load} exceeds {bound:.3f} s or a rank did nothing"
    else:
        ok, msg = out is None, "non-root ranks get None"
    assert_all(ok, msg, ctx=ctx)


def failing(x):
    if x == 13:
        raise ValueError("thirteen is unlucky")
    return x


@pytest.mark.parametrize("chunksize", [1, 4])
def test_task_error_names_index_rank_traceback_and_context_stays_usable(ctx, chunksize):
    tasks = range(40) if ctx.is_root else None
    err = None
    try:
        out = farm(ctx, failing, tasks, chunksize=chunksize)
    except TaskError as exc:
        err, out = exc, None
    ok = (err is not None and out is None and err.index == 13 and 0 <= err.rank < ctx.size
          and "thirteen is unlucky" in str(err) and "in failing" in err.remote_traceback
          and f"on rank {err.rank} (host {err.host})" in str(err) and err.exc_type == "ValueError")
    assert_all(ok, f"the same TaskError on every rank; got {err!r}", ctx=ctx)
    assert_all(ctx.comm.bcast(str(err), root=0) == str(err), "the same message on every rank", ctx=ctx)
    # the context and the farm still work on every rank
    total = ctx.comm.allreduce(1)
    again = farm(ctx, square, [1, 2, 3] if ctx.is_root else None)
    assert_all(total == ctx.size and (again == [1, 4, 9] if ctx.is_root else again is None),
               "context usable after a failed farm", ctx=ctx)


def test_errors_collect_puts_exceptions_in_place(ctx):
    out = farm(ctx, failing, range(30) if ctx.is_root else None, chunksize=2, errors="collect")
    if ctx.is_root:
        ok = (isinstance(out[13], ValueError) and str(out[13]) == "thirteen is unlucky"
              and out[:13] == list(range(13)) and out[14:] == list(range(14, 30))
              and out[13].task_index == 13)
    else:
        ok = out is None
    assert_all(ok, f"collected: {str(out)[:120]}", ctx=ctx)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_tasks_than_ranks_and_zero_tasks(ctx, n):
    out = farm(ctx, square, list(range(n)) if ctx.is_root else None)
    ok = out == [square(x) for x in range(n)] if ctx.is_root else out is None
    assert_all(ok, f"{n} tasks on {ctx.size} ranks: {out}", ctx=ctx)


def test_root_stops_farm_iter_early(ctx):
    seen = []
    if ctx.is_root:
        for k, v in enumerate(farm_iter(ctx, square, range(500), chunksize=1)):
            seen.append(v)
            if k == 9:
                break
    else:
        for _ in farm_iter(ctx, square, None):
            pass
    after = farm(ctx, square, range(5) if ctx.is_root else None)
    ok = (seen == [square(x) for x in range(10)] and after == [0, 1, 4, 9, 16]) if ctx.is_root \
        else after is None
    assert_all(ok, "breaking out of farm_iter ends the farm cleanly everywhere", ctx=ctx)


@pytest.mark.checks  # root's tasks, and errors named "rank 0" by the agreement
def test_bad_arguments_raise_on_every_rank(ctx):
    for kwargs in ({"tasks": None}, {"tasks": [1], "chunksize": 0}, {"tasks": [1], "errors": "ignore"}):
        tasks = kwargs.pop("tasks")
        try:
            farm(ctx, square, tasks if ctx.is_root else None, **kwargs)
            raised = None
        except ValueError as exc:
            raised = str(exc)
        assert_all(raised is not None and "rank 0" in raised, f"{kwargs}: {raised}", ctx=ctx)


def test_results_keep_big_ints_and_objects(ctx):
    out = farm(ctx, lambda k: (k, 3 ** (1000 + k)), range(20) if ctx.is_root else None, chunksize=3)
    ok = out == [(k, 3 ** (1000 + k)) for k in range(20)] if ctx.is_root else out is None
    assert_all(ok, "big integers travel exactly", ctx=ctx)


def test_progress_writes_plain_lines_on_root_off_a_terminal(ctx, capfd):
    out = farm(ctx, square, range(50) if ctx.is_root else None, progress=True)
    err = capfd.readouterr().err
    done = "hpcpar.farm: 50/50 (100%)" in err and err.rstrip().endswith("done")
    ok = (out == [square(x) for x in range(50)] and done) if ctx.is_root else (
        out is None and "hpcpar.farm" not in err)
    assert_all(ok, f"progress lines (root only): {err[:100]!r}", ctx=ctx)


def test_hpcpar_progress_0_silences_the_farm(ctx, capfd, monkeypatch):
    monkeypatch.setenv("HPCPAR_PROGRESS", "0")
    out = farm(ctx, square, range(20) if ctx.is_root else None, progress=True)
    err = capfd.readouterr().err
    ok = (out == [square(x) for x in range(20)] if ctx.is_root else out is None) and "hpcpar.farm" not in err
    assert_all(ok, f"HPCPAR_PROGRESS=0 yet: {err[:100]!r}", ctx=ctx)


def test_exported_names():
    assert hpcpar.farm is farm and hpcpar.TaskError is TaskError


def test_unpicklable_result_becomes_a_task_error(ctx):
    import threading

    def task(x):
        return threading.Lock() if x == 3 else x

    out = farm(ctx, task, range(8) if ctx.is_root else None, chunksize=1, errors="collect")
    if ctx.is_root:
        # root may run task 3 itself (no pickling then): either the lock or a TypeError
        ok = out[:3] == [0, 1, 2] and out[4:] == [4, 5, 6, 7] and (
            isinstance(out[3], TypeError) or hasattr(out[3], "acquire"))
    else:
        ok = out is None
    assert_all(ok, f"unpicklable result: {out}", ctx=ctx)


def test_failure_on_the_last_rank_carries_its_traceback(ctx):
    last = ctx.size - 1

    def fails_on_last_rank(x):
        time.sleep(0.003)
        if ctx.rank == last:
            raise RuntimeError(f"rank {ctx.rank} refuses task {x}")
        return x

    err = None
    try:
        farm(ctx, fails_on_last_rank, range(30) if ctx.is_root else None, chunksize=1)
    except TaskError as exc:
        err = exc
    # every rank: the remote traceback, and the remote exception as the cause
    ok = (err is not None and err.rank == last and "fails_on_last_rank" in err.remote_traceback
          and f"refuses task {err.index}" in str(err) and isinstance(err.__cause__, RuntimeError))
    assert_all(ok, f"got {err!r}", ctx=ctx)
    assert_all(ctx.comm.allreduce(1) == ctx.size, "context usable", ctx=ctx)


# ---- a failed task: the same TaskError on every rank -----------------------------------------
def _failure_everywhere(ctx, run):
    """Run ``run()`` on every rank; return (this rank's TaskError or None, whether every rank
    got an error with the same message, index, rank and host)."""
    err = None
    try:
        run()
    except TaskError as exc:
        err = exc
    mine = None if err is None else (str(err), err.index, err.rank, err.host, err.exc_type)
    return err, ctx.comm.allgather(mine)


@pytest.mark.parametrize("who", ["root", "last"])
def test_a_failed_task_raises_the_same_task_error_on_every_rank(ctx, who):
    """Task 5 fails on root or on the last rank: every rank raises the same TaskError, naming
    the task, the rank that ran it and that rank's host; and the context stays usable."""
    bad = 0 if who == "root" else ctx.size - 1

    def task(x):
        time.sleep(0.002)
        if x >= 5 and ctx.rank == bad:
            raise ValueError(f"task {x} refused on rank {ctx.rank}")
        return x

    err, seen = _failure_everywhere(
        ctx, lambda: farm(ctx, task, range(40) if ctx.is_root else None, chunksize=1))
    host = ctx.comm.bcast(socket.gethostname(), root=bad)  # the failing rank's host name
    ok = (err is not None and len(set(seen)) == 1 and err.rank == bad and err.host == host
          and f"raised ValueError on rank {bad} (host {host}): task {err.index} refused" in str(err))
    assert_all(ok, f"every rank must raise the same TaskError; got {seen}", ctx=ctx)
    again = farm(ctx, square, [1, 2] if ctx.is_root else None)
    assert_all(again == [1, 4] if ctx.is_root else again is None, "the farm works again", ctx=ctx)


def test_farm_iter_failure_raises_on_every_rank_after_the_results_before_it(ctx):
    got = []

    def run():
        for value in farm_iter(ctx, failing, range(20) if ctx.is_root else None, chunksize=1):
            got.append(value)

    err, seen = _failure_everywhere(ctx, run)
    ok = err is not None and err.index == 13 and len(set(seen)) == 1
    ok = ok and (got == list(range(13)) if ctx.is_root else got == [])
    assert_all(ok, f"got {seen}, results {got}", ctx=ctx)


def test_root_stopping_early_after_a_failure_raises_nowhere(ctx):
    """Root leaves farm_iter before the failure's turn: no rank raises, nothing hangs."""
    got = []

    def run():
        for value in farm_iter(ctx, failing, range(40) if ctx.is_root else None, chunksize=1):
            got.append(value)
            if value == 2:
                break

    err, seen = _failure_everywhere(ctx, run)
    assert_all(seen == [None] * ctx.size, f"got {seen}", ctx=ctx)
