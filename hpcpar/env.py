"""Environment variables that change hpcpar's behaviour, in one place.

Every variable is read when it is used (not at import), so a job script may set
them with ``os.environ`` before creating a :class:`hpcpar.Context`.
"""

from __future__ import annotations

import os

__all__ = [
    "HPCPAR_MPIEXEC", "HPCPAR_ABORT_GRACE", "HPCPAR_REPORT", "HPCPAR_REPORT_JSON",
    "HPCPAR_PROGRESS", "HPCPAR_PROGRESS_EVERY", "HPCPAR_LOG_ALL", "HPCPAR_LOG_LEVEL",
    "HPCPAR_TIMEOUT", "HPCPAR_DEBUG", "HPCPAR_CHECKS", "HPCPAR_H5", "HPCPAR_EXPECT_H5_MODE", "HPCPAR_REQUEUE",
    "HPCPAR_MPICC", "HPCPAR_COUNT_CACHE", "HPCPAR_RUN_DIR", "HPCPAR_LARGE_COUNT",
    "HPCPAR_EXPECT_LARGE_COUNT", "HPCPAR_TEST_BIGMEM_HELD", "HPCPAR_TRACE", "HPCPAR_TRACE_EVENTS",
    "HPCPAR_LAUNCHER_PID", "HPCPAR_GUARDIAN_FD",
    "HPCPAR_RELAY",
    "get", "get_float", "flag",
]

#: Launcher used by ``hpcpar run`` (default: the ``mpiexec`` beside the running
#: Python, then ``mpiexec`` on ``PATH``). May hold options: ``"srun --mpi=pmi2"``.
HPCPAR_MPIEXEC = "HPCPAR_MPIEXEC"

#: Seconds a failing rank waits, once the launcher has read what it wrote, before it
#: calls ``MPI_Abort`` on the whole job (default 0.2; :func:`hpcpar.observe.drain.drain`).
HPCPAR_ABORT_GRACE = "HPCPAR_ABORT_GRACE"

#: Set by ``hpcpar run --hosts/--hostfile`` for the ranks: the run ledger's directory
#: (:mod:`hpcpar.launch.ledger`), under the shared working directory's ``.hpcpar``.
HPCPAR_RUN_DIR = "HPCPAR_RUN_DIR"

#: ``1``: print the per-rank timing table at the end of ``hpcpar.run`` even when no
#: region was timed (set by ``hpcpar run --report``); ``0``: never print it.
HPCPAR_REPORT = "HPCPAR_REPORT"

#: Path of a JSON file that receives the timing report (``hpcpar run --report-json``).
HPCPAR_REPORT_JSON = "HPCPAR_REPORT_JSON"

#: ``0`` turns off progress output of ``ctx.progress`` and the farm.
HPCPAR_PROGRESS = "HPCPAR_PROGRESS"

#: Seconds between plain progress lines when stderr is not a terminal (default 10).
HPCPAR_PROGRESS_EVERY = "HPCPAR_PROGRESS_EVERY"

#: ``1``: ``hpcpar.get_logger`` loggers emit on every rank, not only rank 0.
HPCPAR_LOG_ALL = "HPCPAR_LOG_ALL"

#: Level of ``hpcpar.get_logger`` loggers: DEBUG, INFO (default), WARNING, ERROR.
HPCPAR_LOG_LEVEL = "HPCPAR_LOG_LEVEL"

#: Seconds a rank may stay blocked in one hpcpar call (a collective, the final
#: check after ``main`` returns, or a region marked with ``hpcpar.watchdog.watching``)
#: before the watchdog dumps every rank's Python stacks to stderr and aborts the job
#: with exit status 124 (default: no limit). ``hpcpar.run(main, timeout=...)`` and
#: ``hpcpar run --timeout`` set it too.
HPCPAR_TIMEOUT = "HPCPAR_TIMEOUT"

#: ``1`` turns on debug checks: before every collective the ranks also check that
#: they call it from the same function (``Context(debug=True)`` does the same for
#: one context). Default ``0``.
HPCPAR_DEBUG = "HPCPAR_DEBUG"

#: ``0`` turns off the agreement step of every collective (``Context(checks=False)``
#: does the same for one context): calls go straight to MPI. Arguments that one rank
#: can see are wrong still raise on that rank, and the watchdog still ends a hung
#: job, but ranks that disagree (different calls, roots, shapes) are no longer
#: caught before data moves. For production runs of code already tested with the
#: checks on (the default, ``1``).
HPCPAR_CHECKS = "HPCPAR_CHECKS"

#: I/O path of :class:`hpcpar.Output`, :func:`hpcpar.read` and :class:`hpcpar.Checkpoint`:
#: ``mpio`` (collective MPI-IO; needs h5py built with MPI), ``serial`` (the fallback
#: that works with any h5py) or ``auto`` (the default: mpio where h5py can do it).
HPCPAR_H5 = "HPCPAR_H5"

#: Read by the test suite only: when set (``mpio`` or ``serial``), the output tests
#: assert that the automatic I/O path is this one (``make test-parallel-hdf5`` sets ``mpio``).
HPCPAR_EXPECT_H5_MODE = "HPCPAR_EXPECT_H5_MODE"

#: ``1`` in a Slurm job rendered with ``JobSpec(requeue=True)``: ``hpcpar.slurm.requeue()``
#: then puts the job back in the queue (otherwise it does nothing and the job ends).
HPCPAR_REQUEUE = "HPCPAR_REQUEUE"

#: The MPI compiler wrapper that builds the counting library (default: the ``mpicc``
#: beside the running Python, then ``mpicc`` on ``PATH``). It must belong to the MPI
#: that mpi4py loads.
HPCPAR_MPICC = "HPCPAR_MPICC"

#: Directory of the compiled counting libraries (default ``$XDG_CACHE_HOME/hpcpar``,
#: else ``~/.cache/hpcpar``).
HPCPAR_COUNT_CACHE = "HPCPAR_COUNT_CACHE"

#: Path of a timeline trace that ``hpcpar.run`` writes on root at the end: every
#: rank's timer regions, collectives (with the time waited for the last rank), Grid
#: exchanges, farm tasks, pipeline items, Output writes and checkpoint saves, in the
#: Chrome Trace Event format (Perfetto, chrome://tracing; ``hpcpar trace FILE --png``).
#: A name ending ``.gz`` is gzip-compressed. ``hpcpar run --trace`` and
#: ``hpcpar.run(main, trace=...)`` set it too. Default: no trace.
HPCPAR_TRACE = "HPCPAR_TRACE"

#: Spans each rank keeps for the trace (default 250000, about 13 MB); later spans
#: are counted but not kept, and root says so.
HPCPAR_TRACE_EVENTS = "HPCPAR_TRACE_EVENTS"


#: ``0``: messages over ``2**31 - 1`` bytes travel in units of derived datatypes
#: (and as point-to-point messages where no common unit fits) even when the MPI
#: library has the MPI-4 large-count calls: the path MPI-3 libraries such as Open
#: MPI 5 take, testable anywhere (:func:`hpcpar.core.largecount.force_units` does
#: the same within one process). Read once per process, at the first collective that
#: moves data. Default ``1``: large counts where the library has them.
HPCPAR_LARGE_COUNT = "HPCPAR_LARGE_COUNT"


#: Read by the test suite only: ``0`` makes the large-message test assert that the
#: MPI library lacks MPI-4 large counts, so that it takes the derived-datatype path
#: without being forced (``make test-openmpi`` sets it: Open MPI 5 reports MPI 3.1).
HPCPAR_EXPECT_LARGE_COUNT = "HPCPAR_EXPECT_LARGE_COUNT"

#: Read by the test suite only: ``1`` when the caller already holds
#: ``/tmp/hpcpar-bigmem.lock`` (``flock /tmp/hpcpar-bigmem.lock ...``), so the tests
#: that need several GB do not take it again.
HPCPAR_TEST_BIGMEM_HELD = "HPCPAR_TEST_BIGMEM_HELD"

#: Set by ``hpcpar run`` for its ranks: ``PID@HOST`` of the ``hpcpar run`` process.
#: The rank guardians on that host end their rank within a fraction of a second
#: once that process is gone (even after ``kill -9`` of it). Not for users to set.
HPCPAR_LAUNCHER_PID = "HPCPAR_LAUNCHER_PID"

#: Set by ``hpcpar run``'s rank guardian for its rank: ``FD@PID``, the guardian's pipe
#: and pid, on which :func:`hpcpar.abort` says that the rank reported its own failure,
#: so the guardian does not report it a second time. Not for users to set.
HPCPAR_GUARDIAN_FD = "HPCPAR_GUARDIAN_FD"


#: ``1`` (set by ``hpcpar run`` in the ranks it starts): the launcher relays the
#: ranks' stderr, printing identical failure reports and argument-parsing output once;
#: ranks other than 0 hold what ``argparse`` prints and hand it to the relay.
HPCPAR_RELAY = "HPCPAR_RELAY"


def get(name: str, default: str | None = None) -> str | None:
    """The value of ``name`` with surrounding blanks removed; ``default`` if unset or empty."""
    value = os.environ.get(name, "").strip()
    return value if value else default


def get_float(name: str, default: float) -> float:
    """``name`` as a float; a clear ``ValueError`` naming the variable if it is not one."""
    value = get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None


#: Values of an on/off variable that mean off (any case); anything else set means on.
_OFF = ("0", "false", "no", "off")


def flag(name: str, default: bool) -> bool:
    """``name`` as an on/off switch: ``0``, ``false``, ``no``, ``off`` (any case) are off,
    any other value is on; ``default`` if unset or empty."""
    value = get(name)
    if value is None:
        return default
    return value.lower() not in _OFF
