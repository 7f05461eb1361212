"""The SPMD runner: one rank's failure ends the whole job, loudly and quickly.

An uncaught exception on any rank would otherwise leave the other ranks blocked
in their next collective until the batch system kills the job. The runner
prints ``rank R of N failed:`` and the traceback, then calls ``MPI_Abort``, which
ends every rank of the job within seconds with a non-zero exit status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mpi4py import MPI

from .. import env
from ..launch.family import mismatch, refuse
from ..observe import timing, tracefile
from ..observe.info import mpi_library
from ..observe.trace import RECORDER, WAIT
from ..slurm import job as slurm_job
from . import preempt, watchdog
from .abort import abort
from .context import Context
from .failure import EXIT_INTERRUPTED, end_job

__all__ = ["run", "abort", "EXIT_INTERRUPTED", "check_launcher"]


def check_launcher() -> None:
    """End this process when its launcher started more processes than MPI sees. **Local**.

    ``mpiexec`` of one MPI starting a Python whose mpi4py uses another gives N
    one-rank jobs that would each run the whole program as rank 0 (and write the
    same files). The process the launcher calls rank 0 prints what is wrong and what
    to do (:func:`hpcpar.launch.family.mismatch`); every process exits with status 2.
    """
    text = mismatch(MPI.COMM_WORLD.Get_size(), mpi_library())
    if text is not None:
        refuse(text)


def _guard(body: Callable[[], Any]) -> Any:
    """Run ``body``; on an uncaught exception, Ctrl-C or ``sys.exit(N != 0)``, end the whole job."""
    try:
        return body()
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            raise
        end_job(exc)
    except BaseException as exc:
        end_job(exc)


def _final_report(ctx: Context) -> None:
    """Print the timing table on root when any rank timed a region (or it was asked for)."""
    asked = env.get(env.HPCPAR_REPORT)
    if asked == "0":
        return
    want = asked == "1" or bool(timing.REGISTRY.regions) or bool(env.get(env.HPCPAR_REPORT_JSON))
    if ctx.comm.allreduce(want, op=MPI.LOR):
        timing.report(ctx, json_path=env.get(env.HPCPAR_REPORT_JSON))


def _finishing(ctx: Context, body: Callable[[], Any]) -> Any:
    """Run ``body``, then wait in ``ctx.finish()`` for every rank, also after ``sys.exit(0)``."""
    try:
        result = body()
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            _finish(ctx)
        raise
    _finish(ctx)
    return result


def _finish(ctx: Context) -> None:
    """``ctx.finish()``; traced as a wait span (the rank waits there for the slowest)."""
    t0 = time.perf_counter()
    ctx.finish()
    if RECORDER.on:
        RECORDER.add(WAIT, "finish", t0, time.perf_counter())


def run(main: Callable[..., Any], *args: Any, timeout: float | None = None, trace: str | None = None,
        **kwargs: Any) -> Any:
    """Build a :class:`Context`, call ``main(ctx, *args, **kwargs)`` and return its value.

    **Collective** over ``COMM_WORLD``: every rank of the job calls it. An uncaught
    exception on any rank prints ``rank R of N failed:`` with the traceback to
    stderr and aborts the whole job with exit status 1; Ctrl-C exits with 130;
    ``sys.exit(code)`` with a non-zero code aborts with that code. When any rank
    timed a region (``ctx.timer``), or ``HPCPAR_REPORT=1``, root prints the
    per-rank timing table at the end (``HPCPAR_REPORT_JSON`` also writes it as
    JSON). Works the same
    under ``mpiexec``, ``srun``, ``hpcpar run`` and as a plain one-rank script.

    When ``main`` returns (or calls ``sys.exit(0)``) the rank waits in
    :meth:`Context.finish` for the others: a rank still in a collective then gets
    :class:`CollectiveMismatchError` and the job ends, instead of hanging.

    Before ``main`` starts, SIGUSR1 (Slurm's ``--signal=USR1@N`` warning) is
    turned into a stop request that ``ctx.should_stop()`` reports on every rank.
    Inside a Slurm job root records the job's state (RUNNING, then COMPLETED) in
    ``.hpcpar/job-$SLURM_JOB_ID.json`` in the working directory, and a failing
    rank records FAILED with its rank and message before it aborts the job.

    Args:
        main: the function every rank runs.
        timeout: seconds a rank may stay blocked in one hpcpar call before the
            watchdog dumps every rank's stacks and aborts the job (exit status
            124); None: ``HPCPAR_TIMEOUT`` (default: no limit). Not passed to ``main``.
        trace: path of a timeline trace root writes at the end (Chrome Trace Event
            JSON, see :mod:`hpcpar.observe.tracefile`); None: ``HPCPAR_TRACE``
            (default: none). Every rank passes the same value. Not passed to ``main``.
    """
    path = trace

    def body():
        check_launcher()
        if timeout is not None:
            watchdog.set_timeout(timeout)
        preempt.install()
        world = MPI.COMM_WORLD
        # Root records RUNNING before the collective Dup in Context(), so no rank can
        # fail (and record FAILED) before it.
        slurm_job.job_started(world.Get_rank(), world.Get_size())
        ctx = Context()
        timing.REGISTRY.started = time.perf_counter()
        try:
            tracing = tracefile.begin(ctx, path)
            result = _finishing(ctx, lambda: main(ctx, *args, **kwargs))
            if tracing:
                tracefile.end(ctx)  # after finish(): every rank is here
            _final_report(ctx)  # after finish(): every rank is here
            if ctx.is_root:
                slurm_job.job_finished(ctx.rank, ctx.size)
            if slurm_job.requeue_pending():
                # The requeue's exit handler finalizes MPI before the watchdog's own
                # handler would stop its thread, which must not probe after that.
                watchdog.stop()
            return result
        finally:
            ctx.free()

    return _guard(body)
