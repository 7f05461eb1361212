"""Rank-local pools under real MPI: CPU shares, process and thread pools, pools in farm tasks."""

import math
import os

import numpy as np
import pytest

import hpcpar
from hpcpar import farm, local_cpus, local_pool
from hpcpar.tasks.local import available_cpus
from hpcpar.testing import assert_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def ppool():
    with local_pool(2, kind="process") as pool:
        yield pool


def child_state(_):
    from mpi4py import MPI

    return MPI.Is_initialized(), os.environ.get("MPI4PY_RC_INITIALIZE"), os.getpid()


def block_info(block):
    return float(block.sum()), block.shape, block.flags.owndata, block.flags.writeable


def fib_mod(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a % 1_000_003


def test_local_cpus_shares_the_node(ctx):
    n = local_cpus(ctx)
    total = ctx.comm.allreduce(n)
    aff = available_cpus()
    ok = 1 <= n <= aff and local_cpus(ctx) == n  # second call: cached, local
    # all ranks here share one node and one affinity set: no oversubscription
    ok = ok and total <= max(aff, ctx.size)
    assert_all(ok, f"rank {ctx.rank}: {n} of {aff} CPUs, {total} in all", ctx=ctx)


def test_slurm_cpus_per_task_caps_the_share(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    with hpcpar.Context() as c:
        n = local_cpus(c)
        assert_all(n == 1, f"SLURM_CPUS_PER_TASK=1 gave {n}", ctx=c)


def test_process_workers_never_initialise_mpi(ctx, ppool):
    states = list(ppool.map(child_state, range(4)))
    ok = all(init is False and flag == "0" and pid != os.getpid() for init, flag, pid in states)
    ok = ok and "MPI4PY_RC_INITIALIZE" not in os.environ
    assert_all(ok, f"worker states {states}", ctx=ctx)


def test_process_map_and_submit(ctx, ppool):
    got = list(ppool.map(fib_mod, range(50), chunksize=5))
    fut = ppool.submit(math.comb, 60, 30)
    ok = got == [fib_mod(k) for k in range(50)] and fut.result() == math.comb(60, 30)
    assert_all(ok, "process pool results", ctx=ctx)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_map_array_through_shared_memory(ctx, ppool, axis):
    a = np.arange(3 * 1000 * 7, dtype=np.float64).reshape(3, 1000, 7) + ctx.rank
    got = ppool.map_array(block_info, a, axis=axis, blocks=3)
    ax = axis % a.ndim
    parts = np.array_split(a, 3, axis=ax)
    ok = [g[0] for g in got] == [float(p.sum()) for p in parts]
    ok = ok and [g[1] for g in got] == [p.shape for p in parts]
    # views of the shared mapping, not unpickled copies; read-only
    ok = ok and all(not own and not writable for _, _, own, writable in got)
    assert_all(ok, f"axis {axis}: {got}", ctx=ctx)


def test_thread_pool(ctx):
    with local_pool(3, kind="thread") as pool:
        got = list(pool.map(fib_mod, range(30)))
        parts = pool.map_array(np.sum, np.arange(100), blocks=4)
    ok = got == [fib_mod(k) for k in range(30)] and [int(p) for p in parts] == [300, 925, 1550, 2175]
    assert_all(ok, f"thread pool {parts}", ctx=ctx)


def test_pool_inside_farm_tasks(ctx, ppool):
    def task(k):
        return sum(ppool.map(fib_mod, range(k, k + 20)))

    out = farm(ctx, task, range(12) if ctx.is_root else None, chunksize=1)
    want = [sum(fib_mod(j) for j in range(k, k + 20)) for k in range(12)]
    assert_all(out == want if ctx.is_root else out is None, "hierarchical farm + pool", ctx=ctx)


def test_bad_arguments():
    for kwargs in ({"workers": 0}, {"kind": "gpu"}):
        with pytest.raises(ValueError, match="hpcpar.local_pool"):
            local_pool(**kwargs)
    with local_pool(1, kind="thread") as pool, pytest.raises(ValueError, match="object arrays"):
        pool.map_array(len, np.array([[1], "x"], dtype=object))
