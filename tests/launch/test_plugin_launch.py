"""hpcpar's pytest plugin, tested by running pytest on generated test files.

Plain tests: each starts ``mpiexec -n N python -m pytest --with-mpi`` (or plain
``pytest``) on files written by pytester and checks the outcome, the report
and how long the run took.
"""

import sys
import textwrap

import pytest

from hpcpar.launch.spawn import job_env, mpiexec_argv, run_job
from hpcpar.testing import assert_all, run_spmd
from hpcpar.testing.plugin import EXIT_TIMEOUT

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(120)

INI = """
[pytest]
addopts = -p no:cacheprovider --strict-markers -rfEs
"""


def mpi_pytest(pytester, n, *args, timeout=60, ini=INI):
    """``mpiexec -n n python -m pytest --with-mpi ARGS`` in pytester's folder."""
    pytester.makeini(ini)
    job = run_job(mpiexec_argv(n, [sys.executable, "-m", "pytest", "--with-mpi", *args]),
                  timeout=timeout, cwd=str(pytester.path))
    assert job.returncode is not None, f"pytest under mpiexec hung; output:\n{job.output}"
    return job, pytest.LineMatcher(job.output.splitlines())


FAILING = """
    import pytest
    from hpcpar.testing import assert_all

    pytestmark = pytest.mark.mpi

    def test_rank1_fails_assert_all(ctx):
        answer = 41 if ctx.rank == 1 else 42
        assert_all(answer == 42, f"computed {answer}, expected 42", ctx=ctx)

    def test_plain_assert_on_rank1(ctx):
        total = ctx.allreduce(1)
        assert ctx.rank != 1, f"plain assert on rank {ctx.rank} of {total}"

    @pytest.fixture
    def broken_on_rank2(ctx):
        if ctx.rank == 2:
            raise RuntimeError("fixture broke on rank 2")

    def test_setup_fails_on_rank2(broken_on_rank2, ctx):
        ctx.barrier()

    def test_skips_on_rank0_only(ctx):
        if ctx.rank == 0:
            pytest.skip("no device on rank 0")

    def test_same_tmp_path_everywhere(ctx, mpi_tmp_path):
        if ctx.rank == 0:
            (mpi_tmp_path / "data.txt").write_text("from rank 0")
        ctx.barrier()
        seen = (mpi_tmp_path / "data.txt").read_text()
        paths = ctx.comm.allgather(str(mpi_tmp_path))
        assert_all(len(set(paths)) == 1 and seen == "from rank 0", f"{paths} {seen}", ctx=ctx)

    @pytest.mark.mpi(n=3)
    def test_exactly_three(ctx):
        assert_all(ctx.size == 3, f"size {ctx.size}", ctx=ctx)

    @pytest.mark.mpi(n=2)
    def test_exactly_two(ctx):
        ctx.barrier()
"""


def test_failure_on_some_ranks_fails_every_rank_and_rank0_reports_it(pytester):
    pytester.makepyfile(test_failing=textwrap.dedent(FAILING))
    job, out = mpi_pytest(pytester, 3, "--mpi-timeout=30")
    assert job.returncode == 1, job.output
    assert job.elapsed < 30, f"took {job.elapsed:.1f} s"
    out.fnmatch_lines([
        "*AssertionError: failed on 1 of 3 ranks: rank 1: computed 41, expected 42",
    ])
    out.fnmatch_lines(["call failed on rank 1 of 3; passed or skipped on ranks 0, 2",
                       "*= rank 1 =*", "*AssertionError: plain assert on rank 1 of 3"])
    out.fnmatch_lines(["setup failed on rank 2 of 3; *", "*= rank 2 =*",
                       "*RuntimeError: fixture broke on rank 2"])
    out.fnmatch_lines(["*= hpcpar: outcomes that differ between ranks =*",
                       "test_failing.py::test_skips_on_rank0_only (call): skipped on rank 0: "
                       "no device on rank 0; passed on ranks 1, 2"])
    out.fnmatch_lines(["SKIPPED * needs exactly 2 MPI ranks (mpi(n=2)), this job has 3"])
    out.fnmatch_lines(["FAILED test_failing.py::test_rank1_fails_assert_all - AssertionError*",
                       "FAILED test_failing.py::test_plain_assert_on_rank1 - [[]rank 1[]] Assert*",
                       "ERROR test_failing.py::test_setup_fails_on_rank2 - [[]rank 2[]] RuntimeError*"])
    # every rank agrees on every outcome, and only rank 0 writes the report
    assert job.output.count("2 failed, 3 passed, 1 skipped, 1 error") == 1, job.output


def test_combined_outcomes_hide_neither_a_pass_nor_a_failure(pytester):
    """failed > xpassed > passed > xfailed > skipped in call; in setup a skip on some
    ranks skips the test on all (its call needs every rank); differing outcomes are listed."""
    pytester.makepyfile(test_mixed="""
        import pytest
        pytestmark = pytest.mark.mpi

        def test_skips_on_rank0(ctx):
            if ctx.rank == 0:
                pytest.skip("no device on rank 0")

        @pytest.mark.xfail(reason="fails on rank 0")
        def test_xpasses_on_rank1(ctx):
            assert ctx.rank != 0

        @pytest.mark.xfail(reason="strict one", strict=True)
        def test_strict_xpasses_on_rank1(ctx):
            assert ctx.rank != 0

        @pytest.mark.xfail(reason="everywhere")
        def test_xfails_everywhere(ctx):
            assert False

        @pytest.fixture
        def absent_on_rank1(ctx):
            if ctx.rank == 1:
                pytest.skip("no file on rank 1")

        def test_setup_skips_on_rank1(absent_on_rank1, ctx):
            ctx.barrier()
    """)
    job, out = mpi_pytest(pytester, 2, "-rfEspPxX")
    assert job.returncode == 1, job.output
    out.fnmatch_lines(["*= hpcpar: outcomes that differ between ranks =*",
                       "test_mixed.py::test_skips_on_rank0 (call): skipped on rank 0: no device on rank 0; "
                       "passed on rank 1",
                       "test_mixed.py::test_xpasses_on_rank1 (call): xfailed on rank 0: *; xpassed on rank 1*",
                       "test_mixed.py::test_strict_xpasses_on_rank1 (call): xfailed on rank 0: *; failed on rank 1",
                       "test_mixed.py::test_setup_skips_on_rank1 (setup): passed on rank 0; skipped on rank 1: "
                       "no file on rank 1"])
    for line in ("PASSED test_mixed.py::test_skips_on_rank0",
                 "SKIPPED * skipped on rank 1 of 2: no file on rank 1",
                 "XFAIL test_mixed.py::test_xfails_everywhere - everywhere",
                 "XPASS test_mixed.py::test_xpasses_on_rank1 - fails on rank 0",
                 "FAILED test_mixed.py::test_strict_xpasses_on_rank1 - *"):
        out.fnmatch_lines([line])
    assert job.output.count("1 failed, 1 passed, 1 skipped, 1 xfailed, 1 xpassed") == 1, job.output


def test_report_of_every_rank_on_request(pytester):
    pytester.makepyfile(test_ok="""
        import pytest
        @pytest.mark.mpi
        def test_ok(ctx):
            ctx.barrier()
    """)
    job, out = mpi_pytest(pytester, 2, "--mpi-report=all")
    assert job.returncode == 0, job.output
    for rank in (0, 1):
        out.fnmatch_lines([f"[[]rank {rank}[]] *1 passed*"])


def test_a_rank_that_skips_a_collective_ends_the_run_with_every_stack(pytester):
    pytester.makepyfile(test_hang="""
        import pytest
        pytestmark = pytest.mark.mpi

        def test_fine(ctx):
            ctx.barrier()

        def test_rank2_skips_the_barrier(ctx):
            if ctx.rank != 2:
                ctx.barrier()

        def test_never_reached(ctx):
            ctx.barrier()
    """)
    job, out = mpi_pytest(pytester, 3, "--mpi-timeout=5")
    assert job.returncode == EXIT_TIMEOUT, job.output
    assert job.elapsed < 30, f"took {job.elapsed:.1f} s"
    for rank in range(3):
        out.fnmatch_lines([f"[[]rank {rank}[]] hpcpar: test test_hang.py::test_rank2_skips_the_barrier "
                           "still running after 5 s*"])
    for rank in (0, 1):   # stuck in the barrier, inside the test
        out.fnmatch_lines([f"[[]rank {rank}[]] *in test_rank2_skips_the_barrier",
                           f"[[]rank {rank}[]]     ctx.barrier()"])
    out.fnmatch_lines(["[[]rank 2[]] This rank has finished the test's call and waits for the other ranks."])
    assert "test_never_reached" not in job.output


def test_an_assertion_that_leaves_the_others_waiting_is_shown_with_the_stacks(pytester):
    """The everyday hang: rank 1 fails an assertion and leaves the test while the others
    wait in a barrier. The combined report never comes, so rank 1's failure is printed
    with the stacks when the limit ends the job."""
    pytester.makepyfile(test_assert_hang="""
        import pytest
        pytestmark = pytest.mark.mpi

        def test_rank1_disagrees(ctx):
            assert ctx.rank != 1, "rank 1 disagrees"
            ctx.barrier()
    """)
    job, out = mpi_pytest(pytester, 2, "--mpi-timeout=4")
    assert job.returncode == EXIT_TIMEOUT, job.output
    out.fnmatch_lines(["[[]rank 1[]] This rank's call FAILED before the hang:",
                       "[[]rank 1[]]   *AssertionError: rank 1 disagrees*"])
    out.fnmatch_lines(["[[]rank 0[]] *in test_rank1_disagrees", "[[]rank 0[]]     ctx.barrier()"])


def test_limit_from_pytest_timeout_and_a_summary_after_the_abort(pytester):
    """The per-test limit is pytest-timeout's (marker, then --timeout, then the ini
    option) unless --mpi-timeout is given; a test past it ends the job with every
    stack, then the failure and the summary of the tests run so far."""
    pytester.makepyfile(test_limits="""
        import time
        import pytest
        pytestmark = pytest.mark.mpi

        def test_fails(ctx):
            assert ctx.rank == 5, "wrong rank"

        @pytest.mark.timeout(30)
        def test_slow_with_its_own_limit(ctx):
            time.sleep(4)       # over the ini option's 3 s: the marker wins
            ctx.barrier()

        def test_hang(ctx):
            print("output of the hanging test")
            if ctx.rank != 1:
                ctx.barrier()

        def test_never_reached(ctx):
            ctx.barrier()
    """)
    job, out = mpi_pytest(pytester, 2, ini=INI + "timeout = 3\n")
    assert job.returncode == EXIT_TIMEOUT, job.output
    out.fnmatch_lines(["hpcpar: 2 MPI ranks in lockstep; per-test limit 3 s (ini timeout)*"])
    out.fnmatch_lines(["[[]rank 1[]] hpcpar: test test_limits.py::test_hang still running after 3 s "
                       "(ini timeout)*"])
    out.fnmatch_lines(["*Captured stdout call*", "output of the hanging test",
                       "*short test summary info*",
                       "FAILED test_limits.py::test_fails - *",
                       "FAILED test_limits.py::test_hang - timed out after 3 s (ini timeout)",
                       "*= 2 failed, 1 passed in *"])
    assert "test_never_reached" not in job.output
    # --timeout beats the ini option; an explicit --mpi-timeout beats both; nothing set: no limit
    for args, source in ((["--timeout=2"], "--timeout"), (["--timeout=50", "--mpi-timeout=2"], "--mpi-timeout")):
        job, out = mpi_pytest(pytester, 2, "-k", "hang", *args, ini=INI + "timeout = 50\n")
        assert job.returncode == EXIT_TIMEOUT, job.output
        out.fnmatch_lines([f"FAILED test_limits.py::test_hang - timed out after 2 s ({source})"])
    job, out = mpi_pytest(pytester, 2, "-k", "fails")
    assert job.returncode == 1, job.output
    out.fnmatch_lines(["*per-test limit none (no timeout configured)*"])


LOCKSTEP_TMP = """
    import time

    pytest_plugins = ["pytester"]

    def test_temporary_directories_of_lockstep_ranks(pytester, tmp_path):
        (tmp_path / "mine.txt").write_text("kept")
        pytester.makepyfile(test_inner="def test_inner(tmp_path):\\n    assert tmp_path.is_dir()\\n")
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
        pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
        time.sleep(0.5)
        assert (tmp_path / "mine.txt").read_text() == "kept"
"""


@pytest.mark.parametrize("mode", ["--with-mpi", "plain"])
def test_lockstep_ranks_have_temporary_directories_of_their_own(pytester, mode):
    """Ranks started together with one --basetemp (pytester's runpytest_subprocess
    gives its runs one): each rank uses a base of its own, with or without --with-mpi,
    and pytester's in-process and subprocess runs inside work on every rank."""
    pytester.makepyfile(test_tmp=textwrap.dedent(LOCKSTEP_TMP))
    pytester.makeini(INI)
    base = pytester.path / "base"
    args = [sys.executable, "-m", "pytest", f"--basetemp={base}", "test_tmp.py"]
    job = run_job(mpiexec_argv(3, args + (["--with-mpi"] if mode != "plain" else [])),
                  timeout=90, cwd=str(pytester.path))
    assert job.returncode == 0, job.output
    runs = 1 if mode != "plain" else 3      # without --with-mpi every rank reports
    assert job.output.count("1 passed") == runs, job.output
    assert sorted(p.name for p in pytester.path.glob("base*")) == ["base", "base-rank1", "base-rank2"]


def test_ranks_that_collect_different_tests_stop_at_once(pytester):
    pytester.makepyfile(test_uneven="""
        import pytest
        from mpi4py import MPI

        @pytest.mark.mpi
        @pytest.mark.parametrize("i", range(MPI.COMM_WORLD.rank + 1))
        def test_per_rank(ctx, i):
            ctx.barrier()
    """)
    job, out = mpi_pytest(pytester, 2)
    assert job.returncode == pytest.ExitCode.USAGE_ERROR, job.output
    out.fnmatch_lines(["*the ranks collected different tests (rank 0: 1 tests*; rank 1: 2 tests*"])


def test_mpi_n_from_plain_pytest_runs_in_a_fresh_job(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_spawned="""
        import pytest
        from hpcpar.testing import assert_all

        @pytest.mark.mpi(n=3)
        def test_three_ranks(ctx, mpi_tmp_path):
            print(f"rank {ctx.rank} of {ctx.size} in {mpi_tmp_path.name}")
            assert_all(ctx.size == 3, f"size {ctx.size}", ctx=ctx)

        @pytest.mark.mpi(n=3)
        def test_three_ranks_failing(ctx):
            assert_all(ctx.rank != 2, "rank 2 disagrees", ctx=ctx)

        def test_serial():
            pass
    """)
    result = pytester.runpytest_subprocess("-rA", timeout=120)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*Captured stdout call (in mpiexec -n 3)*", "rank 0 of 3 in *"])
    result.stdout.fnmatch_lines(["mpiexec -n 3: call failed in the job (one job for 2 tests):",
                                 "*AssertionError: failed on 1 of 3 ranks: rank 2: rank 2 disagrees"])
    result.stdout.fnmatch_lines(["FAILED test_spawned.py::test_three_ranks_failing - "
                                 "[[]mpiexec -n 3[]] Assert*"])


def test_tests_of_one_rank_count_share_one_job(pytester, monkeypatch):
    """From plain pytest, the selected mpi(n=2) tests run in one mpiexec job (one start for
    all); a test that hangs ends that job by its limit and the tests the job did not reach
    run again alone, so each still gets its own outcome."""
    pytester.makeini(INI)
    pytester.makepyfile(test_batch="""
        import os
        import pytest

        def record(ctx, name):
            if ctx.rank == 0:
                with open(os.environ["BATCH_LOG"], "a") as f:
                    f.write(f"{name} {os.getpid()}\\n")

        @pytest.mark.mpi(n=2)
        def test_a(ctx):
            record(ctx, "a")
            assert ctx.allreduce(1) == 2

        @pytest.mark.mpi(n=2)
        def test_b_fails(ctx):
            record(ctx, "b")
            assert ctx.allreduce(ctx.rank) == 5, "sum of ranks"

        @pytest.mark.mpi(n=2)
        @pytest.mark.timeout(4)
        def test_c_hangs(ctx):
            record(ctx, "c")
            if ctx.rank == 0:
                ctx.barrier()

        @pytest.mark.mpi(n=2)
        def test_d(ctx):
            record(ctx, "d")
            ctx.barrier()
    """)
    log = pytester.path / "batch.log"
    monkeypatch.setenv("BATCH_LOG", str(log))
    result = pytester.runpytest_subprocess("-rA", timeout=180)
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["mpiexec -n 2: call failed in the job (one job for 4 tests):",
                                 "*AssertionError: sum of ranks*"])
    result.stdout.fnmatch_lines(["FAILED test_batch.py::test_b_fails - *",
                                 "FAILED test_batch.py::test_c_hangs - *timed out after 4 s*"])
    runs = [line.split() for line in log.read_text().splitlines()]
    pids = {name: {pid for n, pid in runs if n == name} for name in "abcd"}
    # a, b and c ran in the batch's job; c hung, so c and d ran again, each alone
    assert pids["a"] == pids["b"] and len(pids["a"]) == 1, runs
    assert pids["a"] < pids["c"] and len(pids["c"]) == 2, runs
    assert len(pids["d"]) == 1 and pids["d"].isdisjoint(pids["a"] | pids["c"]), runs


def test_mpi_n_list_makes_one_test_per_rank_count(pytester):
    """mpi(n=[1, 2]): copies nK run in fresh jobs from plain pytest, in place under mpiexec -n K."""
    pytester.makepyfile(test_counts="""
        import pytest
        from hpcpar.testing import assert_all

        @pytest.mark.mpi(n=[1, 2])
        @pytest.mark.parametrize("x", [7])
        def test_counts(ctx, x):
            print(f"on {ctx.size} ranks")
            assert_all(ctx.size in (1, 2) and x == 7, f"size {ctx.size}", ctx=ctx)
    """)
    pytester.makeini(INI)
    result = pytester.runpytest_subprocess("-rA", timeout=120)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["PASSED test_counts.py::test_counts[[]n1-7[]]",
                                 "PASSED test_counts.py::test_counts[[]n2-7[]]"])
    result.stdout.fnmatch_lines(["*Captured stdout call (in mpiexec -n 2)*", "on 2 ranks"])
    job, out = mpi_pytest(pytester, 2, "-rA")
    assert job.returncode == 0, job.output
    out.fnmatch_lines(["PASSED test_counts.py::test_counts[[]n2-7[]]",
                       "SKIPPED * needs exactly 1 MPI ranks (mpi(n=1)), this job has 2",
                       "*1 passed, 1 skipped*"])


def spmd_sum(ctx, scale):
    """Each rank's share of a sum, and the sum (the job imports this by name)."""
    total = ctx.allreduce(scale * ctx.rank)
    return ctx.rank, total


def spmd_breaks_on_rank1(ctx):
    if ctx.rank == 1:
        raise ValueError("bad input on rank 1")
    ctx.barrier()     # rank 1 never comes: the job is aborted, not hung


def test_run_spmd_from_a_serial_process():
    assert run_spmd(spmd_sum, n=3, args=(10,)) == [(0, 30), (1, 30), (2, 30)]
    with pytest.raises(AssertionError, match=r"run_spmd\(spmd_breaks_on_rank1, n=2\) failed on rank 1: "
                                              r"ValueError: bad input on rank 1"):
        run_spmd(spmd_breaks_on_rank1, n=2, timeout=60)
    with pytest.raises(ValueError, match="module-level function"):
        run_spmd(lambda ctx: 0, n=2)


def test_run_spmd_with_one_rank_runs_in_place():
    assert run_spmd(spmd_sum, n=1, args=(3,)) == [(0, 0)]
    assert_all(True, "assert_all works in a one-rank run")


def test_fixtures_beside_pytest_mpi_and_a_projects_own_ctx(pytester):
    """A shared --basetemp is rank 0's (rank R gets BASETEMP-rankR, no race to empty it);
    mpi_tmp_path is rank 0's tmp_path as pytest-mpi documents; a project's own ``ctx``
    fixture changes only what its tests get as ``ctx``, not hpcpar's fixtures."""
    pytester.makeconftest("""
        import pytest

        @pytest.fixture
        def ctx():
            return "the project's own ctx"
    """)
    pytester.makepyfile(test_fixtures="""
        import pytest
        from mpi4py import MPI
        pytestmark = pytest.mark.mpi

        def test_shared_path(mpi_tmp_path, tmp_path, ctx):
            comm = MPI.COMM_WORLD
            paths = comm.allgather(str(mpi_tmp_path))
            mine = comm.allgather(str(tmp_path))
            ok = len(set(paths)) == 1 and paths[0] == mine[0] and ctx == "the project's own ctx"
            assert comm.allreduce(ok, op=MPI.LAND), (paths, mine, ctx)
    """)
    base = pytester.path / "base"
    job, out = mpi_pytest(pytester, 2, f"--basetemp={base}")
    assert job.returncode == 0, job.output
    out.fnmatch_lines(["*1 passed*"])
    assert base.is_dir() and (pytester.path / "base-rank1").is_dir()


MPI_PYTEST = "mpi-pytest==2026.0"


@pytest.fixture(scope="module")
def mpi_pytest_over_pytest_mpi(tmp_path_factory):
    """A folder holding mpi-pytest's wheel unpacked: first on PYTHONPATH, its ``pytest_mpi``
    package hides pytest-mpi's, as installing mpi-pytest after pytest-mpi overwrites it.

    The wheel comes from the package index (the test is skipped when it cannot be fetched).
    """
    import os
    import subprocess
    import zipfile

    where = tmp_path_factory.mktemp("mpi-pytest")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", MPI_PYTEST,
                        "-d", str(where / "wheel")], check=True, timeout=120, capture_output=True)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"cannot fetch {MPI_PYTEST} from the package index: {e}")
    (wheel,) = (where / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(where / "site")
    env = dict(job_env(), PYTHONPATH=str(where / "site"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return env


def test_beside_mpi_pytest(pytester, mpi_pytest_over_pytest_mpi):
    """Installed next to mpi-pytest (both ship a package named ``pytest_mpi``), hpcpar still
    offers ``--with-mpi`` and ``mpi_tmp_path`` itself, and mpi-pytest's own
    ``parallel`` tests keep working in the same environment."""
    env = mpi_pytest_over_pytest_mpi
    pytester.makeini(INI)
    pytester.makepyfile(test_spmd="""
        import pytest
        pytestmark = pytest.mark.mpi

        def test_sum(ctx, mpi_tmp_path):
            assert ctx.allreduce(1) == ctx.size
            assert mpi_tmp_path == ctx.comm.bcast(mpi_tmp_path)
    """)
    pytester.makepyfile(test_parallel="""
        import pytest
        from mpi4py import MPI

        @pytest.mark.parallel(2)
        def test_two_ranks():
            assert MPI.COMM_WORLD.size == 2
    """)
    job = run_job(mpiexec_argv(2, [sys.executable, "-m", "pytest", "--with-mpi", "test_spmd.py"]),
                  timeout=60, cwd=str(pytester.path), env=env)
    assert job.returncode == 0, job.output
    out = pytest.LineMatcher(job.output.splitlines())
    out.fnmatch_lines(["*hpcpar: 2 MPI ranks in lockstep*", "*1 passed*"])
    assert "mpi-pytest" in job.output or "pytest_mpi" in job.output, job.output  # it was loaded
    serial = run_job([sys.executable, "-m", "pytest", "test_parallel.py"],
                     timeout=90, cwd=str(pytester.path), env=env)
    assert serial.returncode == 0, serial.output
    pytest.LineMatcher(serial.output.splitlines()).fnmatch_lines(["*1 passed*"])
