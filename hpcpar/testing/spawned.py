"""Tests marked ``mpi(n=K)`` in a plain pytest run: each runs as a fresh ``mpiexec -n K`` job.

The job is ``mpiexec -n K python -m pytest --with-mpi NODEID``; its outcome, failure
report and captured output are reported as the test's own. This process starts
no MPI.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Generator
from typing import Any

import pytest

from ..launch.variables import launched_size
from .marks import RankFailure, ranks_wanted, session_limit, take_over_timeout, time_limit

__all__ = ["SerialRun", "STARTUP_ALLOWANCE"]

#: Seconds a spawned ``mpiexec -n K pytest`` job gets, beyond the test's timeout, to
#: start, collect and finish before it is killed.
STARTUP_ALLOWANCE = 60.0


def _is_pytest_mpi_skip(mark: pytest.Mark) -> bool:
    return mark.name == "skip" and mark.kwargs.get("reason") == "need --with-mpi option to run"


class SerialRun:
    """A plain run: tests marked ``mpi(n=K)`` become fresh ``mpiexec -n K`` jobs."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.limit = session_limit(config)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        launched = launched_size() or 0
        for i, item in enumerate(items):
            n = ranks_wanted(item)
            if n is None or not isinstance(item, pytest.Function):
                continue
            if launched:
                item.add_marker(pytest.mark.skip(
                    reason=f"started by an MPI launcher ({launched} ranks) without --with-mpi; "
                           "add --with-mpi, or run plain pytest to have it launch the test"))
                continue
            assert item.parent is not None  # every collected item has one
            spawned = _SpawnedItem.from_parent(item.parent, name=item.name, original=item, ranks=n,
                                               limit=time_limit(item, self.limit)[0])
            take_over_timeout(spawned)
            items[i] = spawned

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo
                                  ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        if isinstance(item, _SpawnedItem) and rep.when == "call":
            rep.sections.extend(item.job_sections)
        return rep


class _SpawnFailed(Exception):
    """The spawned job's test failed; the message is the whole report."""


class _SpawnedItem(pytest.Item):
    """A test marked ``mpi(n=K)``, run as ``mpiexec -n K python -m pytest --with-mpi NODEID``."""

    def __init__(self, *, original: pytest.Function, ranks: int, limit: float, **kw: Any):
        super().__init__(**kw)
        self.ranks = ranks
        self.limit = limit
        self._reportinfo = original.reportinfo()
        self.own_markers.extend(m for m in original.own_markers if not _is_pytest_mpi_skip(m))
        self.keywords.update({m.name: m for m in self.own_markers})
        self.user_properties = original.user_properties
        self.job_sections: list[tuple[str, str]] = []    # the test's captured output in the job

    def reportinfo(self):
        return self._reportinfo

    def runtest(self) -> None:
        from ..launch.spawn import mpiexec_argv, run_job

        config = self.config
        title = f"mpiexec -n {self.ranks}"
        with tempfile.TemporaryDirectory(prefix="hpcpar-pytest-") as tmp:
            result = os.path.join(tmp, "result.jsonl")
            args = [sys.executable, "-m", "pytest", "--with-mpi", "-p", "no:cacheprovider",
                    "--rootdir", str(config.rootpath)]
            if config.inipath is not None:
                args += ["-c", str(config.inipath)]
            args += [f"--mpi-timeout={self.limit:g}", f"--mpi-report={config.getoption('--mpi-report')}",
                     f"--mpi-result={result}", self.nodeid]
            wall = self.limit + STARTUP_ALLOWANCE if self.limit > 0 else None
            job = run_job(mpiexec_argv(self.ranks, args), timeout=wall, cwd=str(config.rootpath))
            records = []
            if os.path.exists(result):
                with open(result) as f:
                    records = [json.loads(line) for line in f if line.strip()]
        self.add_report_section("call", f"output of {title}", job.output)
        if job.returncode is None:
            raise _SpawnFailed(f"{title}: the job did not end within {wall:g} s and was killed "
                               f"(the test's timeout {self.limit:g} s plus {STARTUP_ALLOWANCE:g} s "
                               "to start); "
                               f"its output:\n{job.output}")
        if records:     # the last report of a test carries the output of all its phases
            self.job_sections = [(f"{name} (in {title})", content)
                                 for name, content in records[-1]["sections"]]
        for rec in records:
            if rec["outcome"] == "failed":
                raise _SpawnFailed(f"{title}: {rec['when']} failed in the job (exit status "
                                   f"{job.returncode}):\n{rec['longrepr']}", rec["crash"])
        skipped = [rec for rec in records if rec["outcome"] == "skipped"]
        ran = any(rec["when"] == "call" and rec["outcome"] == "passed" for rec in records)
        if skipped and not ran:
            raise pytest.skip.Exception(f"in {title}: {skipped[0]['reason']}", _use_item_location=True)
        if not ran:
            raise _SpawnFailed(f"{title}: the job ended with status {job.returncode} without finishing "
                               f"the test; its output:\n{job.output}")
        if job.returncode != 0:
            raise _SpawnFailed(f"{title}: the test passed but the job ended with status "
                               f"{job.returncode}; its output:\n{job.output}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, _SpawnFailed):
            text, crash = (excinfo.value.args + ("",))[:2]
            return RankFailure(text, f"[mpiexec -n {self.ranks}] {crash}" if crash else text.split("\n")[0])
        return super().repr_failure(excinfo, style=style)
