"""Faults in waits outside Context's collectives: each one ends the job, naming the call.

Each scenario launches a real 3-rank MPI job (from plain pytest) with an outer
timeout and checks the README's "Failure behaviour" promise: the job ends within
the watchdog's limit plus a few seconds, non-zero, naming the call each rank
waits in (and its host), with no process left behind.
"""

import re
import subprocess
import sys
import time

import pytest
from helpers import job_pids, run_fault, script

pytestmark = pytest.mark.timeout(120)

T = 1.5  # the watchdog timeout of these jobs (seconds)
LIMIT = T + 12  # the most a job may take to end


# ---- hpcpar's own waits: timeouts -------------------------------------------------------
HANGS = {
    "grid exchange": ("""
        g = hpcpar.Grid(ctx, (12, 12))
        a = g.zeros()
        g.exchange(a)
        if ctx.rank == 1:
            stuck()
        g.exchange(a)
    """, "Grid.exchange"),
    "grid exchange_begin/end": ("""
        g = hpcpar.Grid(ctx, (12, 12))
        a = g.zeros()
        if ctx.rank == 1:
            stuck()
        g.exchange_begin(a)
        g.exchange_end()
    """, "Grid.exchange"),
    "grid gather": ("""
        g = hpcpar.Grid(ctx, (12, 12))
        a = g.zeros()
        if ctx.rank == 1:
            stuck()
        g.gather(a)
    """, "Grid.gather"),
    "sample_sort": ("""
        if ctx.rank == 1:
            stuck()
        hpcpar.sort.sample_sort(ctx, np.arange(10.0))
    """, "sample_sort"),
    "farm task": ("""
        def task(x):
            if ctx.rank == 1:
                stuck()
            time.sleep(0.01)
            return x
        hpcpar.farm(ctx, task, range(40) if ctx.is_root else None, chunksize=1)
    """, "farm (root waiting for results)"),
    "pipeline stage": ("""
        def middle(x):
            if x == 3:
                stuck()
            return x
        hpcpar.pipeline(ctx, [lambda x: x, middle, lambda x: x], range(10) if ctx.is_root else None)
    """, "pipeline (waiting for the previous stage)"),
    "unchecked allreduce (fast path)": ("""
        u = hpcpar.Context(checks=False)
        x = np.ones(2)
        u.allreduce(x)
        u.allreduce(x)
        if ctx.rank == 1:
            stuck()
        u.allreduce(x)
    """, "allreduce"),
    "unchecked bcast (fast path)": ("""
        u = hpcpar.Context(checks=False)
        for _ in range(2):
            u.bcast(np.ones(8) if ctx.rank == 1 else None, root=1)
        if ctx.rank == 1:
            stuck()
        u.bcast(np.ones(8) if ctx.rank == 1 else None, root=1)
    """, "bcast"),
}


@pytest.mark.parametrize("case", sorted(HANGS))
def test_timeout_covers_hpcpars_own_waits(tmp_path, case):
    body, call = HANGS[case]
    path = script(tmp_path, "import time, numpy as np, hpcpar\n"
                  "def stuck():\n    time.sleep(300)\n"
                  "def main(ctx):\n" + "\n".join("    " + line for line in
                                                 __import__("textwrap").dedent(body).splitlines())
                  + f"\nhpcpar.run(main, timeout={T})\n")
    r = run_fault(3, path, limit=LIMIT)
    err = r.stderr
    assert r.returncode == 124, err
    assert re.search(r"hpcpar watchdog: rank \d of 3 blocked \d+\.\d s in ", err), err
    assert re.search(rf": waiting in {re.escape(call)}[^;]* \(on host \S+", err), err
    assert "in stuck" in err  # the stuck rank's stack is dumped


# ---- early finishes: caught without a timeout ------------------------------------------
EARLY = {
    "farm task sys.exit(0)": """
        def task(x):
            if x == 3 and ctx.rank != 0:
                sys.exit(0)
            time.sleep(0.01)
            return x
        hpcpar.farm(ctx, task, range(60) if ctx.is_root else None, chunksize=1)
    """,
    "pipeline stage sys.exit(0)": """
        def middle(x):
            if x == 3:
                sys.exit(0)
            return x
        hpcpar.pipeline(ctx, [lambda x: x, middle, lambda x: x], range(10) if ctx.is_root else None)
    """,
    "grid exchange return": """
        g = hpcpar.Grid(ctx, (12, 12))
        a = g.zeros()
        g.exchange(a)
        if ctx.rank == 1:
            return
        g.exchange(a)
    """,
}


@pytest.mark.parametrize("case", sorted(EARLY))
def test_early_finish_in_hpcpars_own_waits(tmp_path, case):
    path = script(tmp_path, "import sys, time, numpy as np, hpcpar\n"
                  "def main(ctx):\n" + "\n".join("    " + line for line in
                                                 __import__("textwrap").dedent(EARLY[case]).splitlines())
                  + "\nhpcpar.run(main)\n")
    r = run_fault(3, path, limit=12)
    # the farm hands task 3 to whichever worker asks first, so either worker may be the one
    assert re.search(r"is blocked in .* but rank [12] already finished the main function", r.stderr), \
        r.stderr


# ---- plain MPI waits under `hpcpar run --timeout` ---------------------------------------
PLAIN = {
    "point-to-point deadlock": ("""
        import hpcpar
        def main(ctx):
            if ctx.rank < 2:
                ctx.comm.recv(source=1 - ctx.rank)   # both wait: a deadlock
        hpcpar.run(main)
    """, "recv"),
    "barrier on one rank": ("""
        from mpi4py import MPI
        import time
        if MPI.COMM_WORLD.rank == 1:
            MPI.COMM_WORLD.barrier()
        else:
            time.sleep(60)
    """, "barrier"),
}


@pytest.mark.parametrize("case", sorted(PLAIN))
def test_timeout_covers_plain_mpi_waits(tmp_path, case):
    body, call = PLAIN[case]
    path = script(tmp_path, body)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "hpcpar.cli", "run", "--timeout", str(T), "-n", "3", path],
                       capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < LIMIT, r.stderr
    assert r.returncode == 124, r.stderr
    # the rank that fires: one in the plain call, or (deadlock) rank 2 waiting in its finish
    assert re.search(rf"blocked \d+\.\d s in (a plain MPI call \({call} at job.py:\d+|finish)",
                     r.stderr), r.stderr
    assert re.search(rf"ranks? (\d+, )*1(, \d+)*: not in an hpcpar call: main thread in the MPI "
                     rf"call {call} at job.py:\d+", r.stderr), r.stderr
    for rank in range(3):  # every rank dumped its stacks
        assert f"[rank {rank}]" in r.stderr
    time.sleep(0.2)
    assert not job_pids(path)


def test_long_computation_on_one_line_is_not_a_plain_wait(tmp_path):
    path = script(tmp_path, """
        import time, numpy as np, hpcpar
        def main(ctx):
            time.sleep(2.5)               # one line, longer than the timeout: not an MPI wait
            total = ctx.allreduce(1)
            if ctx.is_root:               # one writer: the ranks' stdout streams may interleave
                print("done", total)
        hpcpar.run(main, timeout=1.0)
    """)
    r = subprocess.run([sys.executable, "-m", "hpcpar.cli", "run", "-n", "3", path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["done", "3"], r.stdout


# ---- bad tasks and results: no hang ------------------------------------------------------
BAD = {
    "task that cannot be pickled": ("""
        tasks = [(lambda: 0)] * 30 if ctx.is_root else None   # lambdas cannot be pickled
        hpcpar.farm(ctx, lambda t: time.sleep(0.05), tasks, chunksize=1)
    """, r"TaskError: task \d+ raised TypeError on rank 0 \(host \S+\): task \d+ cannot be sent from root "
         r"\(rank 0\) to rank [12]"),
    "result that cannot be unpickled": ("""
        def task(x):
            time.sleep(0.02)
            return Bad(x, x)       # pickles, but Bad(x) fails when root unpickles it
        hpcpar.farm(ctx, task, range(30) if ctx.is_root else None, chunksize=1)
    """, r"TaskError: task \d+ raised TypeError on rank [12] \(host \S+\): the result of task \d+ from rank "
         r"[12] cannot be unpickled on root"),
    "pipeline output that cannot be unpickled": ("""
        def middle(x):
            return Bad(x, x) if x == 4 else x
        hpcpar.pipeline(ctx, [lambda x: x, middle, lambda x: x], range(10) if ctx.is_root else None)
    """, r"TaskError: pipeline stage 1 raised TypeError on rank 1 \(host \S+, item 4\): the output of stage 1 "
         r"from rank 1 cannot be unpickled on rank 2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tasks_and_results_fail_the_farm(tmp_path, case):
    body, want = BAD[case]
    path = script(tmp_path, "import time, hpcpar\n"
                  "class Bad(Exception):  # pickles as Bad(a): unpickling fails\n"
                  "    def __init__(self, a, b):\n"
                  "        super().__init__(a)\n"
                  "def main(ctx):\n" + "\n".join("    " + line for line in
                                                 __import__("textwrap").dedent(body).splitlines())
                  + "\nhpcpar.run(main)\n")
    r = run_fault(3, path, limit=15)
    assert re.search(want, r.stderr), r.stderr
    assert "Exception in thread" not in r.stderr


# ---- Grid dtype mismatch: the same error on every rank -------------------------------------
@pytest.mark.parametrize("dtype", ["np.int64", "np.float32"])
def test_grid_exchange_with_one_rank_of_another_dtype(tmp_path, dtype):
    path = script(tmp_path, f"""
        import numpy as np, hpcpar
        def main(ctx):
            g = hpcpar.Grid(ctx, (12, 12), periodic=True)
            a = g.zeros({dtype} if ctx.rank == 1 else np.float64)
            try:
                g.exchange(a)
            except ValueError as exc:
                print(f"rank {{ctx.rank}} caught: {{exc}}", flush=True)
                raise
        hpcpar.run(main)
    """)
    r = run_fault(3, path)
    name = dtype.split(".")[1]
    for rank in range(3):
        assert re.search(rf"rank {rank} caught: hpcpar.Grid.exchange: every rank must pass the same "
                         rf"dtype and corners; got rank 0: dtype float64.*rank 1: dtype {name}",
                         r.stdout), r.stdout + r.stderr
