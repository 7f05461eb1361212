"""Tests marked ``mpi(n=K)`` in a plain pytest run: they run in ``mpiexec -n K`` jobs.

When the first test that needs K ranks runs, one job runs every selected test
that needs K ranks: ``mpiexec -n K python -m pytest --with-mpi NODEID...`` (one start
of MPI, Python and pytest for all of them). Each test's outcome, failure report and
captured output, read back from the job's result file, are reported as the test's
own. A test that the job did not finish (a hang ended by its limit aborts the job,
a crash ends it) runs again alone in a fresh job, so one bad test costs the others
nothing but time. This process starts no MPI.
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
    """A plain run: tests marked ``mpi(n=K)`` run in ``mpiexec -n K`` jobs, one job per K."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.limit = session_limit(config)
        self.batches: dict[int, _Batch] = {}

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
            batch = self.batches.setdefault(n, _Batch(n, self.limit[0]))
            spawned = _SpawnedItem.from_parent(item.parent, name=item.name, original=item, ranks=n,
                                               limit=time_limit(item, self.limit)[0], batch=batch)
            take_over_timeout(spawned)
            batch.items.append(spawned)
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


class _Job:
    """One ``mpiexec -n K python -m pytest --with-mpi NODEID...`` job and the records it wrote."""

    def __init__(self, config: pytest.Config, ranks: int, nodeids: list[str], limit: float,
                 wall: float | None) -> None:
        from ..launch.spawn import mpiexec_argv, run_job

        self.title = f"mpiexec -n {ranks}"
        self.wall = wall
        with tempfile.TemporaryDirectory(prefix="hpcpar-pytest-") as tmp:
            result = os.path.join(tmp, "result.jsonl")
            args = [sys.executable, "-m", "pytest", "--with-mpi", "-p", "no:cacheprovider",
                    "--rootdir", str(config.rootpath)]
            if config.inipath is not None:
                args += ["-c", str(config.inipath)]
            args += [f"--mpi-timeout={limit:g}", f"--mpi-report={config.getoption('--mpi-report')}",
                     f"--mpi-result={result}", *nodeids]
            job = run_job(mpiexec_argv(ranks, args), timeout=wall, cwd=str(config.rootpath))
            self.records: dict[str, list[dict]] = {}
            if os.path.exists(result):
                with open(result) as f:
                    for line in f:
                        if line.strip():
                            rec = json.loads(line)
                            self.records.setdefault(rec["nodeid"], []).append(rec)
        self.output: str = job.output
        self.returncode: int | None = job.returncode

    def finished(self, nodeid: str) -> bool:
        """Whether the job ran the test to its end (a teardown record, or a skip in setup)."""
        recs = self.records.get(nodeid, [])
        return any(r["when"] == "teardown" for r in recs) or any(
            r["when"] == "setup" and r["outcome"] != "passed" for r in recs)


class _Batch:
    """The tests of one rank count K, run together in one job the first time one of them runs."""

    def __init__(self, ranks: int, limit: float) -> None:
        self.ranks = ranks
        self.limit = limit
        self.items: list[_SpawnedItem] = []
        self.job: _Job | None = None

    def job_for(self, item: _SpawnedItem) -> _Job | None:
        """The batch's job, started on first use; None when it holds one test (it runs alone)."""
        if len(self.items) < 2:
            return None
        if self.job is None:
            limits = [i.limit for i in self.items]
            wall = None if min(limits) <= 0 else sum(limits) + STARTUP_ALLOWANCE
            self.job = _Job(item.config, self.ranks, [i.nodeid for i in self.items], self.limit, wall)
        return self.job


class _SpawnedItem(pytest.Item):
    """A test marked ``mpi(n=K)``, run in its batch's ``mpiexec -n K`` job (or alone)."""

    def __init__(self, *, original: pytest.Function, ranks: int, limit: float, batch: _Batch, **kw: Any):
        super().__init__(**kw)
        self.ranks = ranks
        self.limit = limit
        self.batch = batch
        self._reportinfo = original.reportinfo()
        self.own_markers.extend(m for m in original.own_markers if not _is_pytest_mpi_skip(m))
        self.keywords.update({m.name: m for m in self.own_markers})
        self.user_properties = original.user_properties
        self.job_sections: list[tuple[str, str]] = []    # the test's captured output in the job

    def reportinfo(self):
        return self._reportinfo

    def runtest(self) -> None:
        job = self.batch.job_for(self)
        if job is None or not job.finished(self.nodeid):
            # alone: the only test of its rank count, or one its batch's job did not finish
            wall = self.limit + STARTUP_ALLOWANCE if self.limit > 0 else None
            job = _Job(self.config, self.ranks, [self.nodeid], self.limit, wall)
            alone = True
        else:
            alone = False
        self._judge(job, alone)

    def _judge(self, job: _Job, alone: bool) -> None:
        """Raise the test's outcome in ``job``: a failure, a skip, or nothing when it passed."""
        title = job.title
        records = job.records.get(self.nodeid, [])
        if alone or not records:
            self.add_report_section("call", f"output of {title}", job.output)
        if job.returncode is None and not (records and job.finished(self.nodeid)):
            raise _SpawnFailed(f"{title}: the job did not end within {job.wall:g} s and was killed "
                               f"(the test's timeout {self.limit:g} s plus {STARTUP_ALLOWANCE:g} s "
                               "to start); "
                               f"its output:\n{job.output}")
        if records:     # the last report of a test carries the output of all its phases
            self.job_sections = [(f"{name} (in {title})", content)
                                 for name, content in records[-1]["sections"]]
        for rec in records:
            if rec["outcome"] == "failed":
                how = (f"exit status {job.returncode}" if alone
                       else f"one job for {len(self.batch.items)} tests")
                raise _SpawnFailed(f"{title}: {rec['when']} failed in the job ({how}):\n"
                                   f"{rec['longrepr']}", rec["crash"])
        skipped = [rec for rec in records if rec["outcome"] == "skipped"]
        ran = any(rec["when"] == "call" and rec["outcome"] == "passed" for rec in records)
        if skipped and not ran:
            raise pytest.skip.Exception(f"in {title}: {skipped[0]['reason']}", _use_item_location=True)
        if not ran:
            raise _SpawnFailed(f"{title}: the job ended with status {job.returncode} without finishing "
                               f"the test; its output:\n{job.output}")
        if alone:
            bad = job.returncode != 0
        else:   # a batch ends with 1 when some test failed; a later test's end is that test's
            last = self.batch.items[-1]
            bad = (self is last and job.returncode not in (0, 1)
                   and all(job.finished(i.nodeid) for i in self.batch.items))
        if bad:
            raise _SpawnFailed(f"{title}: the test passed but the job ended with status "
                               f"{job.returncode}; its output:\n{job.output}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, _SpawnFailed):
            text, crash = (excinfo.value.args + ("",))[:2]
            return RankFailure(text, f"[mpiexec -n {self.ranks}] {crash}" if crash else text.split("\n")[0])
        return super().repr_failure(excinfo, style=style)
