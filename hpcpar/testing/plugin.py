"""hpcpar's pytest plugin: SPMD tests that fail together, never hang, and report once.

Active wherever hpcpar is installed (``pytest11`` entry point); it works beside
pytest-mpi and uses its ``mpi`` marker and ``--with-mpi`` option.

Under ``mpiexec -n N python -m pytest --with-mpi``:

- every test runs in lockstep on all ranks; after each phase (setup, call,
  teardown) the ranks exchange their outcome with one small collective on a
  communicator of their own, and every rank reports the combined outcome: the
  first of ``failed, xpassed, passed, xfailed, skipped`` that some rank had
  (an xpass under ``strict`` is a failure). A test that fails on some ranks fails
  on all, and rank 0's report shows the failing ranks' tracebacks and captured
  output; one that passes on some ranks and skips on others passes. In setup, a
  skip (or xfail) on some ranks skips the test on all, as its call needs every
  rank. Differing outcomes are named in the report (a section) and listed, with
  the skip and xfail reasons, under "hpcpar: outcomes that differ between ranks";
- a test still running after its limit makes every rank print the test's node id
  and its Python stacks with ``[rank R]`` prefixes; rank 0 then reports the test
  as failed and writes the session's summary (the tests run so far), and the job
  is aborted with status :data:`EXIT_TIMEOUT`. The limit is pytest-timeout's: the
  test's ``@pytest.mark.timeout(N)``, else ``--mpi-timeout`` when given, else
  ``--timeout``, ``PYTEST_TIMEOUT``, the ``timeout`` ini option; with none of them
  there is no limit, as with pytest-timeout (pytest-timeout itself is held back in
  such runs, as one rank ending alone leaves no stacks of the others);
- a ``--basetemp`` given to all ranks is rank 0's; rank R uses ``BASETEMP-rankR``
  (pytest empties its base directory at start: a shared one would lose files),
  also in runs under mpiexec without ``--with-mpi``;
- only rank 0 writes the terminal report (``--mpi-report=all`` shows every rank,
  each line prefixed ``[rank R]``);
- ``@pytest.mark.mpi(n=K)`` runs in place when the job has exactly K ranks and is
  skipped with a reason otherwise (pytest-mpi's ``min_size=K`` means "at least");
  ``mpi(n=[K1, K2])`` makes one copy of the test per rank count (ids ``nK1``,
  ``nK2``), each marked as ``mpi(n=K)``.

In a plain ``pytest`` run (no ``--with-mpi``), a test marked ``mpi(n=K)`` runs in a
fresh ``mpiexec -n K python -m pytest --with-mpi NODEID`` job, and its outcome,
failure report and output are reported as the test's own.
(:mod:`hpcpar.testing.spawned`; the markers are read by :mod:`hpcpar.testing.marks`).

Fixtures: ``ctx`` (see :class:`HpcparFixtures`), and ``mpi_tmp_path`` only where
pytest-mpi, which defines it, is not active (hpcpar's is the same: rank 0's
``tmp_path``, the same path on every rank).

A plain ``pytest`` session that uses none of this (no ``--with-mpi``, no test
marked ``mpi(n=K)``, no hpcpar fixture) imports no ``mpi4py.MPI``, initialises no
MPI and changes no test.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from ..launch.variables import launched_rank
from ..observe import stacks
from .expiry import ABORT_GRACE, TestTimer
from .marks import RankFailure, format_ranks, ranks_wanted, session_limit, take_over_timeout, time_limit
from .spawned import STARTUP_ALLOWANCE, SerialRun

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["DEFAULT_TIMEOUT", "EXIT_TIMEOUT", "ABORT_GRACE", "STARTUP_ALLOWANCE", "HpcparFixtures"]

#: Seconds a test may run under MPI when neither ``--mpi-timeout`` nor pytest-timeout's
#: ``--timeout``, ``PYTEST_TIMEOUT``, ``timeout`` ini option or marker sets a limit: none (0).
DEFAULT_TIMEOUT = 0.0

#: Exit status of a job aborted because a test ran past its timeout (as GNU ``timeout``):
#: :data:`hpcpar.observe.stacks.EXIT_TIMEOUT`.
EXIT_TIMEOUT = stacks.EXIT_TIMEOUT

_LIMIT = pytest.StashKey[tuple[float, str]]()

#: pytest-mpi's plugin name (its ``pytest11`` entry point).
_PYTEST_MPI = "pytest_mpi"


# --------------------------------------------------------------------------- options
@functools.cache
def _pytest_mpi_installed() -> bool:
    """Whether the importable ``pytest_mpi`` package is pytest-mpi's plugin. **Local**.

    mpi-pytest ships a package of the same name: installed after pytest-mpi, its
    ``__init__`` replaces the one that holds pytest-mpi's hooks, and pytest-mpi's
    ``--with-mpi`` and ``mpi_tmp_path`` are gone. hpcpar then defines both itself. The
    package's source is read, not imported (importing must not start MPI).
    """
    spec = importlib.util.find_spec("pytest_mpi")
    if spec is None or not spec.origin:
        return False
    try:
        text = Path(spec.origin).read_text(errors="replace")
    except OSError:
        return False
    return "def pytest_addoption" in text and "--with-mpi" in text


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hpcpar", "hpcpar: SPMD tests under MPI")
    if not _pytest_mpi_installed():
        group.addoption("--with-mpi", action="store_true", default=False,
                        help="run the tests under MPI (start pytest with mpiexec -n N)")
    group.addoption("--mpi-timeout", type=float, default=None, metavar="SECONDS",
                    help="under --with-mpi, a test still running after SECONDS makes every rank "
                         "dump its stacks and aborts the job; a test's @pytest.mark.timeout(N) "
                         "overrides it; 0 turns it off (default: pytest-timeout's --timeout, "
                         "PYTEST_TIMEOUT or timeout ini option, else no limit)")
    group.addoption("--mpi-report", choices=("root", "all"), default="root",
                    help="under --with-mpi, which ranks write the terminal report: rank 0 only "
                         "(default) or all, each line prefixed [rank R]")
    group.addoption("--mpi-result", metavar="FILE", default=None,
                    help="under --with-mpi, rank 0 appends each test's combined outcome to FILE "
                         "as JSON lines (used for tests marked mpi(n=K) run from plain pytest)")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Under an MPI launcher with a ``--basetemp``, give every rank but 0 a base of its own.

    pytest empties a given base directory and creates it again when it first uses
    it; ranks sharing one delete each other's temporary files and race to recreate
    it (``FileExistsError``), with ``--with-mpi`` or without (``mpiexec -n 2 pytest``,
    as pytester's ``runpytest_subprocess`` gives its runs one ``--basetemp``). Rank 0
    keeps ``BASETEMP``; rank R uses ``BASETEMP-rankR``. Ranks are told apart by the
    launcher's variables, before MPI starts. Without ``--basetemp`` each process
    gets a numbered directory of its own (pytest retries a number taken by another).
    """
    basetemp = config.option.basetemp
    rank = launched_rank()
    if basetemp and rank:
        config.option.basetemp = f"{os.fspath(basetemp).rstrip(os.sep)}-rank{rank}"


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if not any(re.match(r"\s*mpi\b", line) for line in config.getini("markers")):
        config.addinivalue_line("markers", "mpi(n=None): a test that communicates; n=K: on exactly K "
                                "ranks; n=[K1, K2]: once for each")
    config.pluginmanager.register(HpcparFixtures(), "hpcpar-fixtures")
    if not (_pytest_mpi_installed() and config.pluginmanager.has_plugin(_PYTEST_MPI)):
        config.pluginmanager.register(TmpPathFixture(), "hpcpar-mpi-tmp-path")
    if _mpi_mode(config):
        config.pluginmanager.register(_SPMDRun(config), "hpcpar-spmd")
    else:
        config.pluginmanager.register(SerialRun(config), "hpcpar-serial")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``mpi(n=[K1, K2])``: one copy of the test per rank count (ids ``nK1``, ``nK2``)."""
    from .marks import parametrize_ranks

    parametrize_ranks(metafunc)


def _mpi_mode(config: pytest.Config) -> bool:
    return bool(config.getoption("--with-mpi", default=False)
                or config.getoption("--only-mpi", default=False))


# --------------------------------------------------------------------------- fixtures
class HpcparFixtures:
    """The plugin's fixtures: ``ctx``, a thin alias of the private ``_hpcpar_ctx``.

    hpcpar's own fixtures depend on ``_hpcpar_ctx``, so a project that defines its
    own ``ctx`` fixture changes only what its tests get as ``ctx``.
    """

    @pytest.fixture
    def _hpcpar_ctx(self) -> Generator[Context, None, None]:
        """A :class:`hpcpar.Context` on a fresh duplicate of ``COMM_WORLD``, freed after the test.

        **Collective**: set up and torn down on every rank. The test's traffic never
        mixes with traffic on ``COMM_WORLD`` or on the plugin's own communicator.
        In a plain run it is a one-rank context.
        """
        from ..core.context import Context

        c = Context()
        yield c
        c.free()

    @pytest.fixture
    def ctx(self, _hpcpar_ctx: Context) -> Context:
        """A :class:`hpcpar.Context` on a fresh duplicate of ``COMM_WORLD``, freed after the test.

        **Collective**: set up and torn down on every rank. In a plain run it is a
        one-rank context.
        """
        return _hpcpar_ctx


class TmpPathFixture:
    """``mpi_tmp_path`` where pytest-mpi is not active, with pytest-mpi's behaviour.

    Not registered when pytest-mpi is: its ``mpi_tmp_path`` (and ``mpi_tmpdir``,
    ``mpi_file_name``) are then used unchanged.
    """

    @pytest.fixture
    def mpi_tmp_path(self, _hpcpar_ctx: Context, tmp_path: Path) -> Path:
        """Rank 0's ``tmp_path``, the same path on every rank (as pytest-mpi's). **Collective**.

        Rank 0 broadcasts the path; on a cluster its base temporary directory must be
        on a file system every node sees (``--basetemp``).
        """
        path = str(tmp_path) if _hpcpar_ctx.rank == 0 else None
        return Path(_hpcpar_ctx.comm.bcast(path, root=0))


# --------------------------------------------------------------------------- under mpiexec
class _SPMDRun:
    """The per-test protocol of a ``--with-mpi`` run: lockstep, combined outcome, watchdog."""

    def __init__(self, config: pytest.Config):
        from mpi4py import MPI

        self.world = MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        self.sync = self.world.Dup()         # the outcome exchange, apart from any test traffic
        self.config = config
        self.limit = session_limit(config)
        self.phase: Literal["setup", "call", "teardown"] = "setup"   # the phase this rank runs
        # The real stderr, for the watchdog: fd 2 is redirected while pytest captures a test.
        self.err = os.fdopen(os.dup(2), "w")
        # faulthandler keeps one pending dump per process: leave it to pytest's own if set.
        try:
            fh_timeout = float(config.getini("faulthandler_timeout") or 0)
        except (ValueError, TypeError):
            fh_timeout = 0.0
        self.hard_kill = fh_timeout <= 0
        result = config.getoption("--mpi-result")
        self.result_path = result if self.rank == 0 else None
        self.prefixed: _Prefixed | None = None
        self.mixed: list[str] = []          # tests whose ranks had different outcomes
        self.waiting: str | None = None     # the phase whose outcome this rank is exchanging
        self.pending: pytest.TestReport | None = None  # this rank's report of that phase
        # With a result file, outcomes, reports and captured output go there instead.
        self._set_terminal(config, "none" if result else config.getoption("--mpi-report"))

    def _set_terminal(self, config: pytest.Config, report: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or (report == "root" and self.rank == 0):
            return
        from _pytest.config import create_terminal_writer

        if report == "all":
            self.prefixed = _Prefixed(sys.stdout, f"[rank {self.rank}] ")
            stream: Any = self.prefixed
        else:
            stream = open(os.devnull, "w")
        reporter._tw = create_terminal_writer(config, stream)

    def pytest_report_header(self, config: pytest.Config) -> str:
        seconds, source = self.limit
        limit = f"{seconds:g} s ({source})" if seconds > 0 else f"none ({source})"
        who = "every rank" if config.getoption("--mpi-report") == "all" else "rank 0"
        return (f"hpcpar: {self.size} MPI ranks in lockstep; per-test limit {limit}, a test's "
                f"timeout marker overrides it (in place of pytest-timeout); report of {who}")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.prefixed is not None:
            self.prefixed.close()

    # Every rank must run the same tests in the same order, or the exchanges pair up wrongly.
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        ids = "\n".join(item.nodeid for item in session.items).encode()
        mine = (len(session.items), hashlib.sha1(ids).hexdigest(), session.testsfailed)
        every = self.sync.allgather(mine)
        if any(e != every[0] for e in every):
            detail = "; ".join(f"rank {r}: {c} tests, {f} collection errors"
                               for r, (c, _, f) in enumerate(every))
            pytest.exit(f"hpcpar: the ranks collected different tests ({detail}). Every rank must "
                        "collect the same tests in the same order: avoid rank-dependent "
                        "parametrization and fix errors that happen on some ranks only.",
                        returncode=pytest.ExitCode.USAGE_ERROR)

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        for item in items:
            item.stash[_LIMIT] = time_limit(item, self.limit)
            take_over_timeout(item)
            n = ranks_wanted(item)
            if n is not None and n != self.size:
                item.add_marker(pytest.mark.skip(
                    reason=f"needs exactly {n} MPI ranks (mpi(n={n})), this job has {self.size}"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None
                                ) -> Generator[None, object, object]:
        dog = TestTimer(self, item, *item.stash.get(_LIMIT, self.limit))
        dog.start()
        try:
            return (yield)
        finally:
            dog.cancel()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.phase = "setup"

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        self.phase = "call"

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        self.phase = "teardown"

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo
                                  ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        self.waiting, self.pending = rep.when, rep
        every = self.sync.allgather(_summary(rep))
        self.waiting, self.pending = None, None
        mixed = _combine(rep, item, every, self.rank)
        if mixed:
            self.mixed.append(f"{item.nodeid} ({rep.when}): {mixed}")
        return rep

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.mixed:
            terminalreporter.section("hpcpar: outcomes that differ between ranks")
            for line in self.mixed:
                terminalreporter.line(line)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.result_path is None:
            return
        record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                  "longrepr": report.longreprtext, "reason": _skip_reason(report),
                  "crash": getattr(getattr(report.longrepr, "reprcrash", None), "message", "") or "",
                  "sections": report.sections}
        with open(self.result_path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _skip_reason(rep: pytest.TestReport) -> str:
    lr = rep.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return getattr(rep, "wasxfail", "") or ""


#: The order in which the ranks' outcomes of a phase combine: the first that some
#: rank had is the test's. In setup any rank that did not pass stops the test on all
#: (its call needs every rank); in call and teardown a pass outranks a skip.
_ORDER = {"setup": ("failed", "xfailed", "skipped", "xpassed", "passed"),
          "call": ("failed", "xpassed", "passed", "xfailed", "skipped"),
          "teardown": ("failed", "xpassed", "passed", "xfailed", "skipped")}


def _kind(rep: pytest.TestReport) -> str:
    if hasattr(rep, "wasxfail") and not rep.failed:
        return "xpassed" if rep.passed else "xfailed"
    return rep.outcome


def _summary(rep: pytest.TestReport) -> tuple:
    """What this rank tells the others about one phase: outcome, text, crash line, output."""
    kind = _kind(rep)
    if kind != "failed":
        return (kind, _skip_reason(rep) if kind != "passed" else "", "", [])
    crash = getattr(getattr(rep.longrepr, "reprcrash", None), "message", "") or ""
    return ("failed", rep.longreprtext, crash, [tuple(s) for s in rep.sections])


def _combine(rep: pytest.TestReport, item: pytest.Item, every: list[tuple], rank: int) -> str:
    """Make this rank's report of a phase the combined outcome of every rank's (``_ORDER``).

    Returns a line naming the ranks' outcomes where they differ, else "".
    """
    size = len(every)
    kinds = {e[0] for e in every}
    kind = next(k for k in _ORDER[rep.when] if k in kinds)
    by_kind: dict[str, list[int]] = {}
    for r, e in enumerate(every):
        by_kind.setdefault(e[0], []).append(r)
    mixed = "; ".join(f"{k} on {format_ranks(ranks)}" + (f": {every[ranks[0]][1]}" if every[ranks[0]][1]
                                                          and k != "failed" else "")
                      for k, ranks in by_kind.items()) if len(by_kind) > 1 else ""
    if mixed:
        rep.sections.append((f"hpcpar: outcomes of the {rep.when} on the {size} ranks", mixed))
    if kind == "failed":
        _combine_failures(rep, every, rank)
    elif kind != _kind(rep):
        reason = every[by_kind[kind][0]][1]
        if kind in ("passed", "xpassed"):
            rep.outcome, rep.longrepr = "passed", None
        else:
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), (item.location[1] or 0) + 1,
                            f"Skipped: {kind} on {format_ranks(by_kind[kind])} of {size}: {reason}")
        if kind.startswith("x"):
            rep.wasxfail = reason
        elif hasattr(rep, "wasxfail"):
            del rep.wasxfail
    return mixed


def _combine_failures(rep: pytest.TestReport, every: list[tuple], rank: int) -> None:
    size = len(every)
    failed = [r for r, e in enumerate(every) if e[0] == "failed"]
    texts: dict[str, list[int]] = {}
    for r in failed:
        texts.setdefault(every[r][1], []).append(r)
    if len(failed) == size and (len(texts) == 1 or len({e[2] for e in every}) == 1):
        return      # one error on every rank (a collective assertion): this rank's report says it all
    others = [r for r in range(size) if r not in failed]
    head = f"{rep.when} failed on {format_ranks(failed)} of {size}"
    if others:
        head += f"; passed or skipped on {format_ranks(others)}"
    parts = [head]
    for text, ranks in texts.items():
        parts.append(f"{'=' * 24} {format_ranks(ranks)} {'=' * 24}\n{text}")
    first = failed[0]
    crash = f"[rank {first}] {every[first][2]}" if every[first][2] else head
    rep.outcome = "failed"
    if hasattr(rep, "wasxfail"):
        del rep.wasxfail
    # pytest renders any object with toterminal(); its stubs list only its own types
    rep.longrepr = RankFailure("\n\n".join(parts), crash)  # type: ignore[assignment]
    for r in failed:
        if r != rank:
            rep.sections.extend((f"{title} [rank {r}]", content) for title, content in every[r][3])


class _Prefixed:
    """A text stream that writes whole lines to ``stream``, each starting with ``prefix``."""

    def __init__(self, stream, prefix: str):
        self._stream = stream
        self._prefix = prefix
        self._partial = ""
        self.encoding = getattr(stream, "encoding", "utf-8")

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        if lines:
            self._stream.write("".join(f"{self._prefix}{line}\n" for line in lines))
            self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self._partial:
            self.write("\n")
