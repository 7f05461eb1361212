"""The runner and launcher, tested by launching real MPI jobs (from plain pytest)."""

import sys
import time

import pytest
from helpers import JOBS, ROOT, run_mpi, script

pytestmark = pytest.mark.timeout(120)


def test_exception_on_one_rank_ends_the_whole_job_quickly(tmp_path):
    path = script(tmp_path, """
        import hpcpar
        def main(ctx):
            if ctx.rank == 1:
                raise RuntimeError("bad input on purpose")
            ctx.barrier()   # the other ranks would wait here forever
        hpcpar.run(main)
    """)
    t0 = time.monotonic()
    r = run_mpi(3, [path], timeout=30)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0
    assert elapsed < 10, f"job took {elapsed:.1f} s to end"
    assert "rank 1 of 3 failed: RuntimeError: bad input on purpose" in r.stderr
    assert "[rank 1] Traceback" in r.stderr


@pytest.mark.parametrize("where", ["first", "last"])
def test_exception_inside_a_collective_on_root_or_last_rank(tmp_path, where):
    path = script(tmp_path, f"""
        import numpy as np, hpcpar
        def main(ctx):
            bad = 0 if "{where}" == "first" else ctx.size - 1
            for step in range(3):
                if step == 1 and ctx.rank == bad:
                    raise ValueError("step 1 broke")
                ctx.allreduce(np.ones(4))
        hpcpar.run(main)
    """)
    r = run_mpi(3, [path], timeout=30)
    bad = 0 if where == "first" else 2
    assert r.returncode != 0
    assert f"rank {bad} of 3 failed: ValueError: step 1 broke" in r.stderr


def test_sys_exit_code_is_kept(tmp_path):
    path = script(tmp_path, """
        import sys, hpcpar
        def main(ctx):
            if ctx.rank == 0:
                sys.exit(3)
            ctx.barrier()
        hpcpar.run(main)
    """)
    r = run_mpi(2, [path], timeout=30)
    assert r.returncode == 3
    assert "rank 0 of 2 failed: exited with status 3" in r.stderr


def test_hpcpar_run_launches_a_script_through_the_runner(tmp_path):
    path = script(tmp_path, """
        import sys
        from mpi4py import MPI
        c = MPI.COMM_WORLD
        print(f"rank {c.rank} of {c.size} args {sys.argv[1:]}")
        if c.rank == 2:
            raise KeyError("plain script, no hpcpar.run")
        c.Barrier()
    """)
    import subprocess

    hp = [sys.executable, "-m", "hpcpar.cli"]
    r = subprocess.run([*hp, "run", "-n", "3", path, "--x", "1"], capture_output=True, text=True, timeout=30)
    assert "args ['--x', '1']" in r.stdout
    assert r.returncode != 0
    assert "rank 2 of 3 failed: KeyError" in r.stderr
    r = subprocess.run([*hp, "run", "-n", "2", path], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "rank 0 of 2 args []" in r.stdout


def test_the_hpcpar_run_process_itself_starts_no_mpi():
    """`hpcpar run -n 2 jobs/pi.py` works, and the launching process never loads mpi4py.MPI."""
    import subprocess

    code = ("import sys; from hpcpar import cli; code = cli.main(['run', '-n', '2', 'jobs/pi.py', "
            "'--samples', '2e6']); print('@@', code, 'mpi4py.MPI' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "@@ 0 False" in r.stdout, r.stdout + r.stderr
    assert "pi" in r.stdout.lower()


def test_one_rank_without_mpiexec(tmp_path):
    import subprocess

    path = script(tmp_path, """
        import numpy as np, hpcpar
        def main(ctx):
            a = np.arange(5.0)
            assert ctx.size == 1 and ctx.is_root
            b = ctx.gather(ctx.scatter(a))
            assert (b == a).all()
            print("ok", ctx.allreduce(np.float64(2.0)))
        hpcpar.run(main)
    """)
    r = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok 2.0"


def test_keyboard_interrupt_exits_130(tmp_path):
    import subprocess

    path = script(tmp_path, """
        import hpcpar
        def main(ctx):
            raise KeyboardInterrupt
        hpcpar.run(main)
    """)
    r = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=30)
    assert r.returncode == 130
    assert "interrupted" in r.stderr


@pytest.mark.parametrize("n", [1, 2, 3])
def test_pi_is_independent_of_rank_count(n):
    r = run_mpi(n, [str(JOBS / "pi.py"), "--samples", "3e6", "--chunk", "250000"], timeout=60)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("pi ~= 3.14")
    # the estimate for this seed and sample count, computed serially
    import numpy as np
    sys.path.insert(0, str(JOBS))
    import pi as pijob

    streams = np.random.SeedSequence(2024).spawn(12)
    hits = sum(pijob.count_hits(np.random.default_rng(s), 250000) for s in streams)
    assert line.split()[2] == f"{4.0 * hits / 3e6:.10f}"


def test_info_under_mpiexec():
    r = run_mpi(2, ["-m", "hpcpar.cli", "info"], timeout=30)
    assert r.returncode == 0, r.stderr
    assert "MPI library  MPICH" in r.stdout or "MPI library" in r.stdout
    assert "ranks        2" in r.stdout
    assert "rank 1" in r.stdout and "h5py" in r.stdout
    assert r.stdout.count("hpcpar       ") == 1  # root prints once


def test_cli_help_explains():
    import subprocess

    r = subprocess.run([sys.executable, "-m", "hpcpar.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout and "bench" in r.stdout and "info" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hpcpar.cli", "run", "-n", "2", str(ROOT / "nope.py")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such script" in r.stderr


def test_what_a_failing_rank_printed_reaches_the_launcher_before_the_abort(tmp_path):
    # 2 MB of report, then the failure: the abort waits until the launcher has read it
    # all (no grace after that, HPCPAR_ABORT_GRACE=0), so no line is cut off.
    path = script(tmp_path, """
        import sys, hpcpar
        def main(ctx):
            if ctx.rank == 1:
                sys.stdout.write("".join(f"report line {i:06d} {'.' * 32}\\n" for i in range(40000)))
                print("end of the report")
                raise RuntimeError("failed after a long report")
            ctx.barrier()
        hpcpar.run(main)
    """)
    r = run_mpi(2, [path], timeout=60, env={"HPCPAR_ABORT_GRACE": "0"})
    assert r.returncode != 0
    assert "end of the report" in r.stdout
    assert sum(line.startswith("report line ") for line in r.stdout.splitlines()) == 40000
    assert "rank 1 of 2 failed: RuntimeError: failed after a long report" in r.stderr
