"""What a rank prints when its program fails, and how it ends the job.

Importing this module loads no MPI: ``hpcpar run`` formats the failure of a
program that never initialised MPI (or finalized it) here as well.

A failure reads ``rank R of N failed: TYPE: MESSAGE`` followed by the traceback,
every line prefixed ``[rank R]``. hpcpar's own frames (the runner, the collectives'
machinery) and ``runpy``'s are left out unless ``HPCPAR_DEBUG=1``: the traceback
starts at the program's own code, as ``python script.py`` shows it. ``hpcpar run``
prints identical failures of several ranks once (:mod:`hpcpar.launch.relay`).
"""

from __future__ import annotations

import os
import sys

from .. import env

TYPE_CHECKING = False  # typing is not imported at run time: every rank would pay for it at start-up
if TYPE_CHECKING:
    import traceback
    from typing import NoReturn

__all__ = ["EXIT_INTERRUPTED", "HEADER", "describe", "usage_exit", "end_job"]

#: Exit status of a job ended by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

#: The first line of a rank's failure report (``rank 1 of 3 failed: ...``); the launcher's
#: relay recognises reports by it.
HEADER = "rank {rank} of {size} failed: {what}"
#: The first line of a report after the header: ``on host H, pid P``.
WHERE = "on host"

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _hidden(frame: traceback.FrameSummary) -> bool:  # traceback loads on the failure path only
    name = frame.filename
    return name.startswith(_PACKAGE) or name in ("<frozen runpy>", "<frozen importlib._bootstrap>") \
        or os.path.basename(name) == "runpy.py"


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    """Drop hpcpar's and runpy's frames from ``te`` and the exceptions chained to it."""
    if id(te) in seen:
        return
    seen.add(id(te))
    import traceback

    kept = [f for f in te.stack if not _hidden(f)]
    if kept and len(kept) != len(te.stack):  # an error inside hpcpar alone keeps its frames
        te.stack = traceback.StackSummary.from_list(kept)
    for other in (te.__cause__, te.__context__):
        if other is not None:
            _trim(other, seen)


def traceback_text(exc: BaseException) -> str:
    """The traceback of ``exc`` as Python prints it, hpcpar's frames left out unless
    ``HPCPAR_DEBUG=1``. **Local**."""
    import traceback

    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    if not env.flag(env.HPCPAR_DEBUG, False):
        _trim(te, set())
    return "".join(te.format())


def describe(exc: BaseException, rank: int, size: int) -> str:
    """The failure report of ``exc`` on ``rank`` of ``size``: a header (with the first line
    of the message), this rank's host and pid, and the traceback (which ends with the whole
    message), every line after the header prefixed ``[rank R]``. **Local**."""

    # the header holds the message's first line; the whole message ends the traceback
    first = str(exc).split("\n", 1)[0]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    where = f"{WHERE} {os.uname().nodename}, pid {os.getpid()}"
    lines = "".join(f"[rank {rank}] {line}\n"
                    for line in [where, *traceback_text(exc).rstrip("\n").split("\n")])
    return HEADER.format(rank=rank, size=size, what=what) + "\n" + lines


def usage_exit(exc: BaseException) -> bool:
    """True when ``exc`` is the ``SystemExit`` of ``argparse`` (``--help``, a usage error). **Local**."""
    if not isinstance(exc, SystemExit):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if os.path.basename(tb.tb_frame.f_code.co_filename) == "argparse.py":
            return True
        tb = tb.tb_next
    return False


def _record(rank: int, size: int, code: int, message: str) -> None:
    """Record FAILED in the Slurm job's status file (only inside a Slurm job)."""
    if os.environ.get("SLURM_JOB_ID"):
        from ..slurm import job as slurm_job

        slurm_job.job_finished(rank, size, "FAILED", code, message)


def end_job(exc: BaseException) -> NoReturn:
    """End the whole MPI job because ``exc`` escaped this rank's program. **Local**; MPI must
    be initialised and not finalized.

    An exception prints :func:`describe` and aborts with status 1; Ctrl-C with 130;
    ``sys.exit(N)`` with ``N``, after a one-line note, except for ``argparse``'s exit,
    whose usage message already said what was wrong. Never returns.
    """
    from mpi4py import MPI

    from .abort import abort

    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    if isinstance(exc, KeyboardInterrupt):
        _record(rank, size, EXIT_INTERRUPTED, "interrupted (Ctrl-C)")
        abort(f"rank {rank} of {size} interrupted (Ctrl-C)", EXIT_INTERRUPTED)
    if isinstance(exc, SystemExit):
        code = exc.code
        if not isinstance(code, int):
            sys.stderr.write(f"{code}\n")
            code = 0 if code is None else 1
        _record(rank, size, code, f"exited with status {code}")
        if usage_exit(exc):
            if env.flag(env.HPCPAR_RELAY, False):
                from . import usage

                usage.report()
            abort("", code)
        abort(HEADER.format(rank=rank, size=size, what=f"exited with status {code}"), code)
    _record(rank, size, 1, f"{type(exc).__name__}: {exc}")
    abort(describe(exc, rank, size), 1)
