"""Collective assertions for tests of SPMD code.

A plain ``assert`` that fails on one rank lets that rank leave the test while the
others wait for it in the next collective: the run hangs. These assertions are
**collective**: every rank evaluates its own condition, the outcomes are combined,
and every rank fails together with a message naming the ranks that failed.

:func:`run_spmd` runs a function on N ranks from a serial process (plain
``pytest``): the way to test multi-rank code without starting pytest under
``mpiexec``. The pytest plugin (:mod:`hpcpar.testing.plugin`) does the same for
whole tests marked ``@pytest.mark.mpi(n=N)``.
"""

from __future__ import annotations

import inspect
import os
import pickle
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import gather_problems

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["assert_all", "assert_allclose_all", "assert_equal_all", "run_spmd"]

_DEFAULT: Context | None = None


def _context(ctx: Context | None) -> Context:
    if ctx is None:
        from ..core.context import Context
        global _DEFAULT
        if _DEFAULT is None:
            _DEFAULT = Context()
        return _DEFAULT
    return ctx


def assert_all(cond: Any, msg: str = "", ctx: Context | None = None) -> None:
    """Fail on every rank if ``cond`` is false on any rank. **Collective**.

    Args:
        cond: this rank's condition.
        msg: this rank's explanation, shown for the ranks where ``cond`` is false.
        ctx: the :class:`hpcpar.Context` of the test (a world context when None).

    Raises:
        AssertionError: on every rank, listing each failing rank and its message.
    """
    ctx = _context(ctx)
    mine = None if bool(cond) else ("AssertionError", msg or "condition is false")
    failures = gather_problems(ctx.comm, mine)  # one Allreduce of one int when all pass
    if failures is not None:
        bad = [(r, p[1]) for r, p in enumerate(failures) if p is not None]
        raise AssertionError(
            f"failed on {len(bad)} of {ctx.size} ranks: "
            + "; ".join(f"rank {r}: {m}" for r, m in bad))


def assert_allclose_all(actual: Any, desired: Any, rtol: float = 1e-7, atol: float = 0.0,
                        msg: str = "", ctx: Context | None = None) -> None:
    """``numpy.testing.assert_allclose`` on every rank, failing together. **Collective**."""
    try:
        np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol)
        problem = None
    except AssertionError as exc:
        problem = (msg + ": " if msg else "") + str(exc).strip()
    assert_all(problem is None, problem or "", ctx=ctx)


def assert_equal_all(actual: Any, desired: Any, msg: str = "", ctx: Context | None = None) -> None:
    """``numpy.testing.assert_array_equal`` on every rank, failing together. **Collective**."""
    try:
        np.testing.assert_array_equal(actual, desired)
        problem = None
    except AssertionError as exc:
        problem = (msg + ": " if msg else "") + str(exc).strip()
    assert_all(problem is None, problem or "", ctx=ctx)


def run_spmd(fn: Callable[..., Any], n: int = 3, args: tuple = (), kwargs: dict | None = None,
             timeout: float = 60.0) -> list[Any]:
    """Run ``fn(ctx, *args, **kwargs)`` on ``n`` ranks; return every rank's result, by rank.

    From a serial process (plain ``pytest``, a notebook) it is **local**: it starts a
    fresh ``mpiexec -n n`` job (the launcher of :func:`hpcpar.launch.launcher`),
    which imports ``fn`` by module and name, calls it on every rank with a new
    :class:`hpcpar.Context`, and sends the results back. Inside a job of exactly
    ``n`` ranks it is **collective**: every rank calls ``fn`` in place and gets the
    list of results.

    Args:
        fn: a module-level function (the job imports it; no lambdas or closures).
        n: the number of ranks.
        args, kwargs: picklable arguments passed to ``fn`` on every rank.
        timeout: seconds the job may take before it is killed.

    Returns:
        ``[result of rank 0, result of rank 1, ...]`` (results must be picklable).

    Raises:
        AssertionError: when ``fn`` raised on some rank (the message holds every
            failed rank's traceback), the job failed or it ran past ``timeout``.
        ValueError: for a ``fn`` the job cannot import, or when called in a job
            whose size is not ``n``.
    """
    __tracebackhide__ = True
    kwargs = dict(kwargs or {})
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"run_spmd: n must be a positive int, got {n!r}")
    qualname = getattr(fn, "__qualname__", "")
    if not callable(fn) or not qualname or "<" in qualname:
        raise ValueError(f"run_spmd needs a module-level function (the job imports it by name), "
                         f"got {fn!r}; move it to the top level of its module")
    from mpi4py import MPI

    size = MPI.COMM_WORLD.Get_size()
    if size > 1 or n == 1:
        if size != n:
            raise ValueError(f"run_spmd(fn, n={n}) called on rank {MPI.COMM_WORLD.Get_rank()} of a "
                             f"{size}-rank job; call it from a serial process or in a job of {n} ranks")
        from ..core.context import Context
        with Context() as ctx:
            result = fn(ctx, *args, **kwargs)
            return ctx.comm.allgather(result)
    return _spawn_spmd(fn, n, args, kwargs, timeout)


def _spawn_spmd(fn: Callable[..., Any], n: int, args: tuple, kwargs: dict, timeout: float) -> list[Any]:
    __tracebackhide__ = True
    from ..launch.spawn import mpiexec_argv, run_job

    try:
        file = inspect.getsourcefile(fn) or ""
    except TypeError:
        file = ""
    spec = {"module": fn.__module__, "qualname": fn.__qualname__, "file": file,
            "path": [p for p in sys.path if p and os.path.isdir(p)],
            "args": pickle.dumps((tuple(args), kwargs))}
    name = f"run_spmd({fn.__qualname__}, n={n})"
    with tempfile.TemporaryDirectory(prefix="hpcpar-spmd-") as folder:
        with open(os.path.join(folder, "call.pkl"), "wb") as f:
            pickle.dump(spec, f)
        job = run_job(mpiexec_argv(n, [sys.executable, "-m", "hpcpar.testing.spmd", folder]), timeout=timeout)
        # The job's output goes where this process's output goes (pytest captures it).
        sys.stdout.write(job.output)
        failed = {}
        for r in range(n):
            path = os.path.join(folder, f"rank-{r}.txt")
            if os.path.exists(path):
                with open(path) as f:
                    failed[r] = f.read()
        if failed:
            texts: dict[str, list[int]] = {}
            for r, text in failed.items():
                texts.setdefault(text, []).append(r)
            ranks = ", ".join(map(str, failed))
            last = next(iter(failed.values())).rstrip().split("\n")[-1]
            raise AssertionError(
                f"{name} failed on rank{'s' if len(failed) > 1 else ''} {ranks}: {last}\n"
                + "\n".join(f"---- rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))} ----\n{t}"
                            for t, rs in texts.items()))
        if job.returncode is None:
            raise AssertionError(f"{name} did not end within {timeout:g} s and was killed; "
                                 f"its output:\n{job.output}")
        result = os.path.join(folder, "result.pkl")
        if job.returncode != 0 or not os.path.exists(result):
            raise AssertionError(f"{name}: the job ended with status {job.returncode}; "
                                 f"its output:\n{job.output}")
        with open(result, "rb") as f:
            return pickle.load(f)
