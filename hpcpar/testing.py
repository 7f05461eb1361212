"""Collective assertions for tests of SPMD code.

A plain ``assert`` that fails on one rank lets that rank leave the test while the
others wait for it in the next collective: the run hangs. These assertions are
**collective**: every rank evaluates its own condition, the outcomes are combined,
and every rank fails together with a message naming the ranks that failed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["assert_all", "assert_allclose_all", "assert_equal_all"]


def _context(ctx):
    if ctx is None:
        from .comm import Context
        global _DEFAULT
        try:
            return _DEFAULT
        except NameError:
            _DEFAULT = Context()
            return _DEFAULT
    return ctx


def assert_all(cond: Any, msg: str = "", ctx=None) -> None:
    """Fail on every rank if ``cond`` is false on any rank. **Collective**.

    Args:
        cond: this rank's condition.
        msg: this rank's explanation, shown for the ranks where ``cond`` is false.
        ctx: the :class:`hpcpar.Context` of the test (a world context when None).

    Raises:
        AssertionError: on every rank, listing each failing rank and its message.
    """
    ctx = _context(ctx)
    ok = bool(cond)
    failures = ctx.comm.allgather(None if ok else (msg or "condition is false"))
    bad = [(r, m) for r, m in enumerate(failures) if m is not None]
    if bad:
        raise AssertionError(
            f"failed on {len(bad)} of {ctx.size} ranks: "
            + "; ".join(f"rank {r}: {m}" for r, m in bad))


def assert_allclose_all(actual: Any, desired: Any, rtol: float = 1e-7, atol: float = 0.0,
                        msg: str = "", ctx=None) -> None:
    """``numpy.testing.assert_allclose`` on every rank, failing together. **Collective**."""
    try:
        np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol)
        problem = None
    except AssertionError as exc:
        problem = (msg + ": " if msg else "") + str(exc).strip()
    assert_all(problem is None, problem or "", ctx=ctx)


def assert_equal_all(actual: Any, desired: Any, msg: str = "", ctx=None) -> None:
    """``numpy.testing.assert_array_equal`` on every rank, failing together. **Collective**."""
    try:
        np.testing.assert_array_equal(actual, desired)
        problem = None
    except AssertionError as exc:
        problem = (msg + ": " if msg else "") + str(exc).strip()
    assert_all(problem is None, problem or "", ctx=ctx)
