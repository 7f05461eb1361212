"""`hpcpar run` as a drop-in for `mpiexec python`: plain mpi4py programs, run both ways, compared.

Each program is written here, launched with `mpiexec -n N python PROG` and with
`hpcpar run -n N PROG` (real MPICH processes, an outer timeout each); exit statuses
and the normalised output must agree.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from hpcpar.launch import launch_argv

pytestmark = pytest.mark.timeout(300)

RANKS = 2

PROGRAMS = {
    "hello": """
        from mpi4py import MPI
        c = MPI.COMM_WORLD
        lines = c.gather(f"hello from rank {c.rank} of {c.size}")  # one rank prints: no interleaving
        if c.rank == 0:
            print("\\n".join(lines))
    """,
    "finalize": """
        from mpi4py import MPI
        c = MPI.COMM_WORLD
        lines = c.gather(f"rank {c.rank} of {c.size}")
        MPI.Finalize()
        if lines:
            print("\\n".join(lines), "finalized", MPI.Is_finalized())
    """,
    "no_initialize": """
        import mpi4py
        mpi4py.rc.initialize = False
        from mpi4py import MPI
        assert not MPI.Is_initialized(), "initialised before the program asked"
        MPI.Init()
        lines = MPI.COMM_WORLD.gather(f"rank {MPI.COMM_WORLD.rank} initialised by the program")
        MPI.Finalize()
        if lines:
            print("\\n".join(lines))
    """,
    "thread_level": """
        import mpi4py
        mpi4py.rc.thread_level = "single"
        from mpi4py import MPI
        lines = MPI.COMM_WORLD.gather(f"rank {MPI.COMM_WORLD.rank} single {MPI.Query_thread() == MPI.THREAD_SINGLE}")
        if lines:
            print("\\n".join(lines))
    """,
    "file_and_argv": """
        import sys
        from mpi4py import MPI
        line = " ".join(map(str, (MPI.COMM_WORLD.rank, sys.argv, __file__, __name__, __spec__, sys.path[0],
                                  __file__ == __import__("os").path.abspath(sys.argv[0]))))
        lines = MPI.COMM_WORLD.gather(line)
        if lines:
            print("\\n".join(lines))
    """,
    "futures": """
        from mpi4py.futures import MPIPoolExecutor

        def square(x):
            return x * x

        if __name__ == "__main__":
            with MPIPoolExecutor() as ex:
                print(list(ex.map(square, range(8))))
    """,
    "raise_on_one_rank": """
        from mpi4py import MPI
        def check(rank):
            if rank == 1:
                raise ValueError(f"bad input on rank {rank}")
        check(MPI.COMM_WORLD.rank)
    """,
    "argparse_error": """
        import argparse
        from mpi4py import MPI
        p = argparse.ArgumentParser(prog="prog")
        p.add_argument("--steps", type=int, required=True)
        p.parse_args()
    """,
    "argparse_help": """
        import argparse
        from mpi4py import MPI
        p = argparse.ArgumentParser(prog="prog", description="a program with options")
        p.add_argument("--steps", type=int, default=3, help="how many steps")
        p.parse_args()
    """,
    "exit_3": """
        import sys
        from mpi4py import MPI
        MPI.COMM_WORLD.Barrier()
        sys.exit(3)
    """,
}

#: name -> (arguments before the program, arguments after it)
LAUNCH = {"futures": (["-m", "mpi4py.futures"], []), "file_and_argv": ([], ["--r", "0.3", "-n", "5"]),
          "argparse_help": ([], ["--help"])}


def _run(cmd, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "HPCPAR_"))}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=90, env=env)


def _both(tmp_path, name):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PROGRAMS[name]))
    before, after = LAUNCH.get(name, ([], []))
    prog = [*before, f"{name}.py", *after]  # a relative path, as users type it
    plain = _run(launch_argv(RANKS, [sys.executable, *prog]), tmp_path)
    ours = _run([sys.executable, "-m", "hpcpar", "run", "-n", str(RANKS), *prog], tmp_path)
    return plain, ours


def _lines(text):
    return sorted(line for line in text.splitlines() if line.strip())


@pytest.mark.parametrize("name", ["hello", "finalize", "no_initialize", "thread_level", "file_and_argv",
                                  "futures"])
def test_a_plain_program_runs_as_under_mpiexec(tmp_path, name):
    plain, ours = _both(tmp_path, name)
    assert plain.returncode == 0, plain.stderr
    assert ours.returncode == 0, ours.stderr
    assert _lines(ours.stdout) == _lines(plain.stdout)
    assert ours.stderr == "", ours.stderr


def test_file_and_argv_are_what_python_gives(tmp_path):
    plain, ours = _both(tmp_path, "file_and_argv")
    line = [x for x in ours.stdout.splitlines() if x.startswith("0 ")][0]
    assert f"['file_and_argv.py', '--r', '0.3', '-n', '5'] {tmp_path / 'file_and_argv.py'} __main__ None" in line
    assert line.endswith(" True")


def test_an_exception_on_one_rank(tmp_path):
    plain, ours = _both(tmp_path, "raise_on_one_rank")
    assert plain.returncode == ours.returncode == 1
    assert "ValueError: bad input on rank 1" in plain.stderr
    assert "rank 1 of 2 failed: ValueError: bad input on rank 1" in ours.stderr
    assert "[rank 1] ValueError: bad input on rank 1" in ours.stderr
    # the program's frames, none of hpcpar's or runpy's
    assert 'raise_on_one_rank.py", line 5, in check' in ours.stderr
    assert "hpcpar/" not in ours.stderr and "runpy" not in ours.stderr


def test_an_argparse_error_prints_once(tmp_path):
    plain, ours = _both(tmp_path, "argparse_error")
    error = "prog: error: the following arguments are required: --steps"
    assert plain.returncode == ours.returncode == 2
    assert plain.stderr.count(error) == RANKS
    assert ours.stderr.count(error) == 1, ours.stderr
    assert ours.stderr.count("usage: prog") == 1
    assert "failed" not in ours.stderr


def test_help_prints_once(tmp_path):
    plain, ours = _both(tmp_path, "argparse_help")
    assert plain.returncode == ours.returncode == 0
    assert plain.stdout.count("a program with options") == RANKS
    assert ours.stdout.count("a program with options") == 1
    assert set(_lines(ours.stdout)) == set(_lines(plain.stdout))
    assert ours.stderr == ""


def test_sys_exit_keeps_its_status(tmp_path):
    plain, ours = _both(tmp_path, "exit_3")
    assert plain.returncode == ours.returncode == 3


def test_the_same_error_on_every_rank_is_printed_once(tmp_path):
    (tmp_path / "job.py").write_text(textwrap.dedent("""
        import hpcpar
        def main(ctx):
            raise ValueError("--r must be at most 0.25")
        hpcpar.run(main)
    """))
    hp = [sys.executable, "-m", "hpcpar", "run", "-n", "3", "job.py"]
    r = _run(hp, tmp_path)
    assert r.returncode == 1
    assert "ranks 0-2 of 3 failed with the same error: ValueError: --r must be at most 0.25" in r.stderr
    assert r.stderr.count("Traceback") == 1 and "hpcpar/core" not in r.stderr
    assert len(r.stderr.splitlines()) < 12, r.stderr
    r = _run(["env", "HPCPAR_DEBUG=1", *hp], tmp_path)
    assert "hpcpar/core/runner.py" in r.stderr  # hpcpar's own frames, on request


def test_different_errors_are_each_printed_with_their_rank(tmp_path):
    (tmp_path / "job.py").write_text(textwrap.dedent("""
        from mpi4py import MPI
        raise RuntimeError(f"rank {MPI.COMM_WORLD.rank} broke")
    """))
    r = _run([sys.executable, "-m", "hpcpar", "run", "-n", "2", "job.py"], tmp_path)
    assert r.returncode == 1
    assert "rank 0 of 2 failed: RuntimeError: rank 0 broke" in r.stderr \
        or "rank 1 of 2 failed: RuntimeError: rank 1 broke" in r.stderr


def test_startup_benchmark_prints_both_launchers():
    r = subprocess.run([sys.executable, "-m", "hpcpar", "bench", "startup", "--repeats", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "mpiexec" in r.stdout and "hpcpar run" in r.stdout and "hpcpar run - mpiexec: best" in r.stdout
