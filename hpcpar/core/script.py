"""``python -m hpcpar.core.script (SCRIPT | -m MODULE) [ARGS]``: run a program on this rank
as ``python`` would, under the hpcpar runner (``hpcpar run`` starts this on every rank).

The program starts with MPI not initialised and nothing of hpcpar beyond this module
loaded: its own ``mpi4py.rc`` settings (``initialize = False``, ``thread_level``)
apply, it may call ``MPI.Init`` and ``MPI.Finalize`` itself, and ``__file__``,
``sys.argv`` and ``sys.path[0]`` are what ``python SCRIPT`` or ``python -m MODULE``
give. The runner steps in only around it:

* before: the SIGUSR1 stop handler (:mod:`hpcpar.core.preempt`); inside a Slurm job,
  root records RUNNING;
* an exception, Ctrl-C or ``sys.exit(N != 0)`` while MPI is initialised and not
  finalized ends the whole job (:func:`hpcpar.core.failure.end_job`), so no rank
  waits forever for a failed one; with MPI not initialised, or finalized, the rank
  prints the same report and exits with status 1 (or N) as ``python`` would;
* after a normal end, only while MPI is initialised and not finalized: the final
  check, a barrier of every rank under the hang watchdog (``HPCPAR_TIMEOUT``), and
  root's COMPLETED record;
* with a hang timeout (``HPCPAR_TIMEOUT``, ``hpcpar run --timeout``), MPI is
  initialised and the watchdog started *before* the program, so that plain MPI
  waits are watched too; the program's own ``mpi4py.rc`` settings then do not apply.
"""

from __future__ import annotations

import builtins
import os
import runpy
import sys
import types
from importlib.machinery import SourceFileLoader

from .. import env
from ..launch.variables import launched_rank, launched_size
from . import failure, preempt, usage

TYPE_CHECKING = False  # typing is not imported at run time: every rank would pay for it at start-up
if TYPE_CHECKING:
    from typing import Any

__all__ = ["main", "run_program", "finish_program"]


def _mpi_live() -> bool:
    """True when mpi4py's MPI is loaded, initialised and not finalized."""
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and bool(mpi.Is_initialized()) and not mpi.Is_finalized()


def _where() -> tuple[int, int]:
    """This rank and the job size: from MPI when it is live, else from the launcher."""
    if _mpi_live():
        world = sys.modules["mpi4py.MPI"].COMM_WORLD
        return world.Get_rank(), world.Get_size()
    return launched_rank() or 0, launched_size() or 1


def _run_file(path: str, args: list[str]) -> None:
    """Execute ``path`` as ``__main__``, as ``python path args`` does."""
    sys.argv = [path, *args]
    full = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    if not getattr(sys.flags, "isolated", 0):
        sys.path[0] = os.path.dirname(os.path.realpath(full))
    if os.path.isdir(full) or not full.endswith((".py", ".pyw")) and _is_zip(full):
        runpy.run_path(full, run_name="__main__")  # a directory or zip file with __main__.py
        return
    with open(full, "rb") as fh:
        code = compile(fh.read(), full, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=full, __cached__=None, __builtins__=builtins, __package__=None,
                         __spec__=None, __loader__=SourceFileLoader("__main__", full))
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _run_module(module: str, args: list[str]) -> None:
    """Run ``module`` as ``__main__``, as ``python -m module args`` does (``sys.path[0]``
    is already the working directory: this rank was started with ``-m``)."""
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def finish_program() -> None:
    """The final check after a program ended normally with MPI still initialised. **Collective**
    over ``COMM_WORLD``.

    A barrier of every rank on a private duplicate of ``COMM_WORLD``, marked as the
    watchdog's ``finish``: with ``HPCPAR_TIMEOUT`` a rank that returned while others
    still wait in a collective ends the job with the watchdog's report (status 124)
    instead of hanging. (MPI was initialised by the program, so the duplicate is made
    here; the ranks still in a plain MPI call cannot answer the watchdog.) Root then
    records COMPLETED inside a Slurm job.
    """
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if env.get(env.HPCPAR_TIMEOUT) is None and "hpcpar.core.context" not in sys.modules:
        if world.Get_size() > 1:  # no watchdog to run: a barrier
            _private(world).Barrier()
        _completed(world)
        return
    from . import watchdog

    watchdog.start(world="hpcpar.core.context" in sys.modules and _mpi_multiple())
    prev = watchdog.enter(watchdog.FINISH)
    completed = False
    try:
        if world.Get_size() > 1:
            _private(world).Barrier()
        completed = True
    finally:
        watchdog.leave_finish(prev, completed)
    _completed(world)


def _private(world: Any) -> Any:
    """A duplicate of ``world`` for the final check (freed at ``MPI_Finalize``)."""
    return world.Dup()


def _mpi_multiple() -> bool:
    mpi = sys.modules["mpi4py.MPI"]
    return bool(mpi.Query_thread() == mpi.THREAD_MULTIPLE)


def _completed(world: Any) -> None:
    """Root records COMPLETED inside a Slurm job."""
    if os.environ.get("SLURM_JOB_ID"):
        from ..slurm import job as slurm_job

        if world.Get_rank() == 0:
            slurm_job.job_finished(0, world.Get_size())
        if slurm_job.requeue_pending() and "hpcpar.core.watchdog" in sys.modules:
            from . import watchdog

            watchdog.stop()  # before the requeue's exit handler finalizes MPI


def _failed(exc: BaseException) -> int:
    """What happens when ``exc`` leaves the program; the exit status when MPI is not live."""
    code: int = 1
    if isinstance(exc, SystemExit):
        if exc.code is None or exc.code == 0:
            if failure.usage_exit(exc) and env.flag(env.HPCPAR_RELAY, False):
                usage.report()
            return 0
        if failure.usage_exit(exc) and env.flag(env.HPCPAR_RELAY, False):
            usage.report()
        if _mpi_live():
            failure.end_job(exc)
        if isinstance(exc.code, int):
            return exc.code
        sys.stderr.write(f"{exc.code}\n")
        return 1
    if _mpi_live():
        failure.end_job(exc)
    if isinstance(exc, KeyboardInterrupt):
        code = failure.EXIT_INTERRUPTED
    rank, size = _where()
    sys.stderr.write(failure.describe(exc, rank, size))
    sys.stderr.flush()
    return code


def _watch_from_the_start() -> None:
    """With a hang timeout (``HPCPAR_TIMEOUT``, ``hpcpar run --timeout``): initialise MPI
    and start the watchdog before the program, so that a rank blocked in a plain MPI
    call, or waiting for a rank that ended, is reported and ends the job. **Collective**
    over ``COMM_WORLD`` (the watchdog's communicator is a duplicate of it). The program's
    own ``mpi4py.rc`` settings then no longer apply: MPI is already initialised."""
    from mpi4py import MPI

    from . import watchdog

    watchdog.start(world=MPI.Query_thread() == MPI.THREAD_MULTIPLE)


def run_program(argv: list[str]) -> int:
    """Run ``SCRIPT ARGS`` or ``-m MODULE ARGS`` on this rank; return its exit status. **Collective**
    once the program initialises MPI (the final check); see the module's docstring."""
    preempt.install()
    if os.environ.get("SLURM_JOB_ID"):
        from ..slurm import job as slurm_job

        slurm_job.job_started(*_where())
    if env.flag(env.HPCPAR_RELAY, False):
        usage.hold(_where()[0])
    if env.get_float(env.HPCPAR_TIMEOUT, 0.0) > 0:
        _watch_from_the_start()
    try:
        if argv[0] == "-m":
            _run_module(argv[1], argv[2:])
        else:
            _run_file(argv[0], argv[1:])
    except BaseException as exc:
        code = _failed(exc)
        if code:
            return code
    if _mpi_live():
        try:
            finish_program()
        except BaseException as exc:
            failure.end_job(exc)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m hpcpar.core.script``. **Local** until the program starts MPI."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] == "-m" and len(argv) < 2):
        sys.stderr.write("usage: python -m hpcpar.core.script (SCRIPT | -m MODULE) [ARGS...]\n")
        return 2
    return run_program(argv)


if __name__ == "__main__":
    sys.exit(main())
