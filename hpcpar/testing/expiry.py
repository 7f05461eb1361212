"""The per-test time limit of a ``--with-mpi`` run: stacks from every rank, a summary, an abort.

When a test runs past its limit, every rank prints the test's node id and its
Python stacks (``[rank R]`` prefixes), and the failure it already had if it left
the test early; rank 0 reports the test as failed and writes the session's
summary; then the job ends with ``MPI_Abort`` and :data:`EXIT_TIMEOUT`.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import os
import threading
import time
from typing import Any

import pytest

from ..observe import stacks
from ..observe.drain import drain, flush
from .marks import RankFailure

__all__ = ["ABORT_GRACE", "EXIT_TIMEOUT", "TestTimer", "pending_failure"]

#: Exit status of a job aborted because a test ran past its limit (as GNU ``timeout``).
EXIT_TIMEOUT = stacks.EXIT_TIMEOUT

#: Seconds a rank waits after dumping its stacks before it aborts the job, so that
#: the other ranks, whose timers fire at about the same moment, dump theirs too.
ABORT_GRACE = 1.5

# Seconds rank 0 gets, after the stacks, to write the session's summary before another
# rank ends the job. Rank 0 ends it as soon as its summary is written, so this is spent
# only where rank 0 cannot write one (its timer thread held off by a C call). Writing it
# may take seconds on a loaded node: other plugins' summary hooks run there (Hypothesis
# imports itself in its hook, 1.3 s on an idle node).
_SUMMARY_GRACE = 30.0

# Extra seconds after which faulthandler ends a rank whose watchdog thread could
# not run (a C call holding the GIL).
_HARD_KILL_AFTER = 15.0


def pending_failure(rep: pytest.TestReport | None, tag: str) -> str:
    """The failure this rank had in the phase it waits to exchange, prefixed; or "".

    The everyday hang: a rank fails an assertion and leaves the test while the others
    wait for it in a collective. Its failure is shown with the stacks, since the
    combined report that would show it never comes.
    """
    if rep is None or not rep.failed:
        return ""
    text = rep.longreprtext.rstrip("\n")
    lines = text.splitlines()[-_FAILURE_LINES:]
    return (f"{tag}This rank's {rep.when} FAILED before the hang:\n"
            + "".join(f"{tag}  {line}\n" for line in lines))


# Lines of a waiting rank's own failure shown in a timeout report (the end of its traceback).
_FAILURE_LINES = 30


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None  # pytest's own packages are installed
    return os.path.dirname(spec.origin) + os.sep


#: Frames of pytest's own machinery, left out of the stacks a timed-out test shows.
_PLUMBING = tuple(_package_dir(m) for m in ("pluggy", "_pytest"))


class TestTimer:
    """Ends the job when one test runs too long, after every rank has shown where it is.

    **Local** (a timer thread per test). ``run`` is the plugin's per-session state under
    ``--with-mpi``: its ``rank``, ``world``, ``err`` (the real stderr), ``phase``,
    ``waiting`` and ``pending`` (the phase this rank exchanges and its report),
    ``prefixed`` (set where every rank's report is shown, ``--mpi-report=all``) and
    ``hard_kill`` (whether faulthandler is free to end a rank stuck in C).
    """

    __test__ = False   # not a test class, whatever pytest's naming rules say

    def __init__(self, run: Any, item: pytest.Item, limit: float, source: str):
        self.run = run
        self.item = item
        self.limit = limit
        self.source = source
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        if self.limit <= 0:
            return
        self._timer = threading.Timer(self.limit, self._expire)
        self._timer.daemon = True
        self._timer.start()
        if self.run.hard_kill:
            faulthandler.dump_traceback_later(self.limit + _HARD_KILL_AFTER, exit=True, file=self.run.err)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            if self.run.hard_kill:
                faulthandler.cancel_dump_traceback_later()

    def _expire(self) -> None:
        run = self.run
        tag = f"[rank {run.rank}] "
        dump = stacks.format_stacks(prefix=tag, hide=_PLUMBING)
        text = (f"\n{tag}hpcpar: test {self.item.nodeid} still running after {self.limit:g} s "
                f"({self.source}); every rank dumps its stack, then the job is aborted.\n"
                f"{tag}A collective that only some ranks reach (e.g. inside `if ctx.rank == 0:`) "
                "blocks the others forever.\n"
                + (f"{tag}This rank has finished the test's {run.waiting} and waits for the other ranks.\n"
                   if run.waiting else "")
                + pending_failure(run.pending, tag)
                + dump)
        if run.hard_kill:   # the last resort, should this thread be held off from here on
            faulthandler.dump_traceback_later(ABORT_GRACE + _SUMMARY_GRACE + _HARD_KILL_AFTER,
                                              exit=True, file=run.err)
        try:
            run.err.write(text)
            run.err.flush()
            time.sleep(ABORT_GRACE)
            backstop = threading.Timer(_SUMMARY_GRACE, run.world.Abort, (EXIT_TIMEOUT,))
            backstop.daemon = True
            backstop.start()
            if run.rank == 0 or run.prefixed is not None:   # the ranks whose report is shown
                self._summarise(text)
            if run.rank != 0:       # let rank 0 finish its summary: the first Abort ends every rank
                time.sleep(_SUMMARY_GRACE)
        finally:
            drain()                 # the report reaches the launcher before the abort ends it
            run.world.Abort(EXIT_TIMEOUT)

    def _summarise(self, text: str) -> None:
        """Report the test as failed and write the session's summary, as at the end of a run."""
        item, config, when = self.item, self.item.config, self.run.phase
        sections = []
        capman = config.pluginmanager.get_plugin("capturemanager")
        if capman is not None:      # the terminal is fd 1 again, and the test's output is read
            capman.suspend_global_capture(in_=True)
            out, err = capman.read_global_capture()
            sections = [(f"Captured {name} {when}", content)
                        for name, content in (("stdout", out), ("stderr", err)) if content]
        crash = f"timed out after {self.limit:g} s ({self.source})"
        rep = pytest.TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, "failed",
                                RankFailure(text.strip("\n"), crash),  # type: ignore[arg-type]
                                when, sections, self.limit)
        config.hook.pytest_runtest_logreport(report=rep)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            config.hook.pytest_terminal_summary(terminalreporter=reporter, exitstatus=EXIT_TIMEOUT,
                                                config=config)
            reporter.summary_stats()
        flush()
