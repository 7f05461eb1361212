"""The fault catalogue: every failure ends the job quickly, non-zero, naming the rank.

Each scenario launches a real MPI job (from plain pytest) and checks the promise of
the README's "Failure behaviour" table: the job ends in under 10 s (or the
watchdog timeout + 10 s), exits non-zero, names the rank at fault, and leaves no
process of the job behind.
"""

import os
import re
import socket
import subprocess
import sys
import time

import pytest
from helpers import job_pids, run_fault, run_mpi, script

pytestmark = pytest.mark.timeout(90)


# ---- exceptions on rank 0 and on the last rank, before and inside a collective ------
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("when", ["before", "inside"])
def test_exception_before_or_inside_a_collective(tmp_path, where, when):
    # "inside": root fails while pickling its object inside bcast, after the others
    # have entered the same bcast and wait for its data.
    path = script(tmp_path, f"""
        import numpy as np, hpcpar
        def main(ctx):
            bad = 0 if "{where}" == "first" else ctx.size - 1
            ctx.allreduce(np.ones(2))
            if "{when}" == "before":
                if ctx.rank == bad:
                    raise RuntimeError("broke before the collective")
                ctx.gather(np.ones(3))
            else:
                obj = (lambda: 0) if ctx.rank == bad else None
                ctx.bcast(obj, root=bad)   # a lambda cannot be pickled
        hpcpar.run(main)
    """)
    r = run_fault(3, path)
    bad = 0 if where == "first" else 2
    want = "RuntimeError: broke before" if when == "before" else "PicklingError|AttributeError|pickle"
    assert re.search(rf"rank {bad} of 3 failed: .*({want})", r.stderr), r.stderr
    assert f"[rank {bad}] Traceback" in r.stderr


# ---- a rank that finishes early -------------------------------------------------------
@pytest.mark.parametrize("how", ["return", "sys.exit(0)"])
def test_early_finish_while_others_enter_a_collective(tmp_path, how):
    path = script(tmp_path, f"""
        import sys, numpy as np, hpcpar
        def main(ctx):
            if ctx.rank == ctx.size - 1:
                {"return" if how == "return" else "sys.exit(0)"}
            ctx.gather(np.zeros(3))
        hpcpar.run(main)
    """)
    r = run_fault(3, path)
    assert "rank 2: returned from main (finished)" in r.stderr, r.stderr
    assert "rank 0: gather(root=0, float64)" in r.stderr


def test_early_finish_while_others_wait_in_another_context(tmp_path):
    path = script(tmp_path, """
        import numpy as np, hpcpar
        def main(ctx):
            other = hpcpar.Context()       # a second context: its calls cannot meet main's finish
            if ctx.rank == 0:
                return
            other.allreduce(np.zeros(3))
        hpcpar.run(main)
    """)
    r = run_fault(3, path)
    assert re.search(r"rank [12] of 3 is blocked in allreduce .* but rank 0 already finished", r.stderr), \
        r.stderr


def test_early_finish_under_hpcpar_run_of_a_plain_script(tmp_path):
    # a plain mpi4py script, started by `hpcpar run --timeout`: the ranks that never
    # finish are in a plain MPI call, which the watchdog sees by sampling their main
    # thread; the finished rank's final check times out too
    path = script(tmp_path, """
        import sys
        from mpi4py import MPI
        if MPI.COMM_WORLD.rank == 0:
            sys.exit(0)
        MPI.COMM_WORLD.Barrier()
    """)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "hpcpar.cli", "run", "--timeout", "2", "-n", "2", path],
                       capture_output=True, text=True, timeout=40)
    assert time.monotonic() - t0 < 12
    assert r.returncode == 124, r.stderr
    # rank 0 times out in its finish, or rank 1 in its plain Barrier: whichever is first
    assert re.search(r"rank 0 of 2 blocked .* in finish|rank 1 of 2 blocked .* in a plain MPI call "
                     r"\(Barrier at job.py:\d+", r.stderr), r.stderr
    # the program initialised MPI itself, so the final check's communicator is made at its
    # end: a rank in a plain MPI call may not answer the watchdog's request
    assert ("rank 1: not in an hpcpar call: main thread in the MPI call Barrier at job.py" in r.stderr
            or "rank 1: no answer" in r.stderr), r.stderr
    assert not job_pids(path)


# ---- kill -9 ---------------------------------------------------------------------------
KILL_JOB = """
    import os, signal, time, numpy as np, hpcpar
    def main(ctx):
        print(f"rank {ctx.rank} pid {os.getpid()}", flush=True)
        for step in range(100):
            ctx.allreduce(np.ones(4))
            if step == 5 and ctx.rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.01)
    hpcpar.run(main)
"""


def test_kill_9_of_one_rank_under_hpcpar_run(tmp_path):
    path = script(tmp_path, KILL_JOB)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "hpcpar.cli", "run", "-n", "3", path],
                       capture_output=True, text=True, timeout=40)
    assert time.monotonic() - t0 < 10
    assert r.returncode != 0
    pid = re.search(r"rank 1 pid (\d+)", r.stdout).group(1)
    host = socket.gethostname()
    assert f"hpcpar: rank 1 of 3 (host {host}, pid {pid}) was killed by signal 9 (SIGKILL)" in r.stderr, r.stderr
    assert r.returncode == 128 + 9, r.stderr
    time.sleep(0.2)
    assert not job_pids(path), "orphan processes"


def test_kill_9_of_one_rank_under_plain_mpiexec(tmp_path):
    # without hpcpar's launcher only MPICH reports: it ends every rank at once and
    # names a pid of the job (not always the killed one)
    path = script(tmp_path, KILL_JOB)
    r = run_fault(3, path)
    pids = re.findall(r"rank \d pid (\d+)", r.stdout)
    named = re.search(r"PID (\d+)", r.stdout + r.stderr)
    assert named and named.group(1) in pids, r.stdout + r.stderr


# ---- the watchdog ---------------------------------------------------------------------
@pytest.mark.parametrize("via", ["env", "run"])
def test_watchdog_dumps_every_rank_and_aborts(tmp_path, via):
    path = script(tmp_path, f"""
        import time, numpy as np, hpcpar
        def stuck_here(ctx):
            time.sleep(60)                 # rank 1 never reaches the gather
        def main(ctx):
            if ctx.rank == 1:
                stuck_here(ctx)
            ctx.gather(np.zeros(3))
        hpcpar.run(main{", timeout=1.5" if via == "run" else ""})
    """)
    r = run_fault(3, path, limit=1.5 + 10, env={"HPCPAR_TIMEOUT": "1.5"} if via == "env" else None)
    err = r.stderr
    assert r.returncode == 124, err
    assert re.search(r"hpcpar watchdog: rank [02] of 3 blocked \d+\.\d s in gather", err), err
    assert re.search(r"ranks 0, 2: waiting in gather", err), err
    assert "rank 1: not in an hpcpar call" in err
    for rank in range(3):  # every rank dumped its stacks, prefixed
        assert re.search(rf"\[rank {rank}\] +File \".*job.py\", line \d+ in main", err), err
    assert re.search(r"\[rank 1\] +File \".*job.py\", line \d+ in stuck_here", err)


def test_no_timeout_for_a_slow_but_healthy_job(tmp_path):
    path = script(tmp_path, """
        import time, numpy as np, hpcpar
        def main(ctx):
            for step in range(4):
                time.sleep(0.8)            # computing (3.2 s in all) is not waiting: no timeout
                ctx.allreduce(np.ones(2))
            if ctx.rank == 0:
                time.sleep(1.2)            # nor is a finish shorter than the limit
            print("done", ctx.rank)
        hpcpar.run(main, timeout=2.5)
    """)
    r = run_mpi(3, [path], timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("done") == 3


# ---- debug mode -----------------------------------------------------------------------
def test_debug_mode_catches_collectives_paired_across_functions(tmp_path):
    # rank 0 skips one allreduce, so its next allreduce (in report()) pairs with the
    # others' allreduce in step(): same call, same dtype, silently wrong without debug
    path = script(tmp_path, """
        import numpy as np, hpcpar
        def step(ctx, i):
            return ctx.allreduce(np.float64(i))
        def report(ctx):
            return ctx.allreduce(np.float64(1.0))
        def main(ctx):
            for i in range(2 if ctx.rank == 0 else 3):
                step(ctx, i)
            report(ctx)
        hpcpar.run(main)
    """)
    r = run_fault(3, path, env={"HPCPAR_DEBUG": "1"})
    assert "(debug mode): ranks reached this collective from different functions" in r.stderr, r.stderr
    assert "rank 0: allreduce(float64, op=sum) from job.py:report" in r.stderr
    assert "rank 1: allreduce(float64, op=sum) from job.py:step" in r.stderr
    r = run_mpi(3, [path], timeout=30, env={"HPCPAR_DEBUG": "0"})
    assert r.returncode != 0  # without debug the mismatch is found later, at the finish check
    assert "returned from main" in r.stderr


def test_mismatched_collectives_end_the_job(tmp_path):
    path = script(tmp_path, """
        import numpy as np, hpcpar
        def main(ctx):
            if ctx.rank == 2:
                ctx.bcast(np.zeros(2))
            else:
                ctx.gather(np.zeros(2))
        hpcpar.run(main)
    """)
    r = run_fault(3, path)
    assert "rank 0: gather(root=0, float64); rank 1: gather(root=0, float64); rank 2: bcast(root=0)" \
        in r.stderr, r.stderr


# ---- what must simply work ------------------------------------------------------------
def test_one_rank_with_timeout_and_debug_without_mpiexec(tmp_path):
    path = script(tmp_path, """
        import numpy as np, hpcpar
        def main(ctx):
            z = np.zeros((0, 3))
            assert ctx.gather(ctx.scatter(z)).shape == (0, 3)
            assert ctx.allreduce(np.zeros(0)).shape == (0,)
            print("ok", ctx.debug)
        hpcpar.run(main, timeout=5)
    """)
    r = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "HPCPAR_DEBUG": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok True"


def test_watchdog_timeout_on_one_rank_without_mpiexec(tmp_path):
    path = script(tmp_path, """
        import hpcpar
        from hpcpar.core import watchdog
        def main(ctx):
            with watchdog.watching("a marked wait", ctx):
                import time; time.sleep(30)
        hpcpar.run(main, timeout=0.5)
    """)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - t0 < 10
    assert r.returncode == 124
    assert "rank 0 of 1 blocked" in r.stderr and "in a marked wait" in r.stderr
    assert re.search(r"\[rank 0\] +File \".*job.py\", line \d+ in main", r.stderr), r.stderr


def test_clean_exit_leaves_nothing_behind(tmp_path):
    path = script(tmp_path, """
        import numpy as np, hpcpar
        def main(ctx):
            seen = ctx.comm.gather(int(ctx.allreduce(np.int64(1))))
            if ctx.is_root:  # one writer: the ranks' stdout streams may interleave
                print(*seen)
        hpcpar.run(main)
    """)
    r = run_mpi(3, [path], timeout=30)
    assert r.returncode == 0 and r.stdout.split() == ["3"] * 3, r.stderr
    assert not job_pids(path)


def test_two_runs_in_one_script_with_a_slow_rank_are_not_an_early_exit(tmp_path):
    # rank 0 waits over a second in the first run's finish (so it tells the others it
    # finished); in the second run the others wait for rank 0 in a collective: healthy
    path = script(tmp_path, """
        import time, numpy as np, hpcpar
        def first(ctx):
            if ctx.rank == 1:
                time.sleep(1.8)
        def second(ctx):
            if ctx.rank == 0:
                time.sleep(1.8)
            return ctx.allreduce(np.int64(1))
        from mpi4py import MPI
        hpcpar.run(first)
        totals = MPI.COMM_WORLD.gather(int(hpcpar.run(second)))
        if MPI.COMM_WORLD.rank == 0:  # one writer: the ranks' stdout streams may interleave
            print("totals", *totals)
    """)
    r = run_mpi(3, [path], timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["totals", "3", "3", "3"]
