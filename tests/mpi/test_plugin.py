"""The plugin's fixtures and markers in the project's own MPI runs (1, 2 and 3 ranks)."""

import pytest
from mpi4py import MPI

from hpcpar.testing import assert_all, assert_equal_all, run_spmd

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(30)]


def test_ctx_is_a_private_duplicate_of_the_world(ctx):
    same_group = MPI.Comm.Compare(ctx.comm, MPI.COMM_WORLD) == MPI.CONGRUENT
    assert_all(same_group, "ctx.comm has COMM_WORLD's ranks in a new context", ctx=ctx)
    assert_all((ctx.rank, ctx.size) == (MPI.COMM_WORLD.rank, MPI.COMM_WORLD.size),
               f"rank {ctx.rank} of {ctx.size}", ctx=ctx)
    # traffic on the test's context is invisible to COMM_WORLD
    req = ctx.comm.isend(f"from {ctx.rank}", dest=(ctx.rank + 1) % ctx.size, tag=7)
    ctx.comm.probe(source=(ctx.rank - 1) % ctx.size, tag=7)
    on_world = MPI.COMM_WORLD.iprobe(source=MPI.ANY_SOURCE, tag=7)
    got = ctx.comm.recv(source=(ctx.rank - 1) % ctx.size, tag=7)
    req.wait()
    assert_all(not on_world, "a message on ctx.comm was visible on COMM_WORLD", ctx=ctx)
    assert_all(got == f"from {(ctx.rank - 1) % ctx.size}", got, ctx=ctx)


def test_mpi_tmp_path_is_one_directory_for_every_rank(ctx, mpi_tmp_path):
    paths = ctx.comm.allgather(str(mpi_tmp_path))
    assert_all(len(set(paths)) == 1, f"paths differ: {paths}", ctx=ctx)
    (mpi_tmp_path / f"rank-{ctx.rank}.txt").write_text(str(ctx.rank))
    ctx.barrier()
    names = sorted(p.name for p in mpi_tmp_path.iterdir())
    assert_equal_all(names, sorted(f"rank-{r}.txt" for r in range(ctx.size)), ctx=ctx)


@pytest.mark.mpi(n=2)
def test_mpi_n_runs_only_on_exactly_that_many_ranks(ctx):
    assert_all(ctx.size == 2, f"ran on {ctx.size} ranks", ctx=ctx)
    assert_all(ctx.allreduce(1) == 2, "both ranks take part", ctx=ctx)


@pytest.mark.mpi(n=[2, 3])
def test_mpi_n_list_runs_the_copy_of_the_jobs_size(ctx, request):
    assert_all(request.node.name == f"test_mpi_n_list_runs_the_copy_of_the_jobs_size[n{ctx.size}]",
               request.node.name, ctx=ctx)


def rank_and_sum(ctx):
    return ctx.rank, ctx.allreduce(ctx.rank)


def test_run_spmd_runs_in_place_in_a_job_of_its_size(ctx):
    results = run_spmd(rank_and_sum, n=ctx.size)
    total = ctx.size * (ctx.size - 1) // 2
    assert_all(results == [(r, total) for r in range(ctx.size)], str(results), ctx=ctx)
    if ctx.size > 1:
        try:
            run_spmd(rank_and_sum, n=ctx.size + 1)
            problem = "no error for a job of the wrong size"
        except ValueError as exc:
            problem = None if f"{ctx.size}-rank job" in str(exc) else str(exc)
        assert_all(problem is None, str(problem), ctx=ctx)
