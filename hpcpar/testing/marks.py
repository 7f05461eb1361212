"""What the pytest plugin reads from a test's markers, and the failure report it builds.

Shared by the ``--with-mpi`` protocol (:mod:`hpcpar.testing.plugin`) and the tests
spawned from a plain run (:mod:`hpcpar.testing.spawned`). No MPI.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

__all__ = ["RANKS_PARAM", "ranks_wanted", "parametrize_ranks", "session_limit", "time_limit",
           "take_over_timeout", "format_ranks", "RankFailure"]


#: The parameter that ``mpi(n=[K1, K2])`` adds: the rank count of each copy of the test.
RANKS_PARAM = "_hpcpar_mpi_n"


def _rank_counts(item_id: str, n: object) -> list[int]:
    given = list(n) if isinstance(n, (list, tuple)) else [n]
    ns = [k for k in given if isinstance(k, int) and not isinstance(k, bool) and k >= 1]
    if not ns or len(ns) != len(given):
        raise pytest.UsageError(f"{item_id}: mpi(n=...) needs a positive int or a list of them, got {n!r}")
    return ns


def ranks_wanted(item: pytest.Item) -> int | None:
    """K of the closest ``mpi(n=K)`` marker (this copy's K for ``n=[K1, K2]``), or None."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and RANKS_PARAM in callspec.params:
        return int(callspec.params[RANKS_PARAM])
    for mark in item.iter_markers("mpi"):
        if "n" in mark.kwargs:
            ns = _rank_counts(item.nodeid, mark.kwargs["n"])
            if len(ns) > 1 or not isinstance(mark.kwargs["n"], int):
                raise pytest.UsageError(f"{item.nodeid}: mpi(n={mark.kwargs['n']!r}) on a test that "
                                        "pytest did not parametrize (not a test function?)")
            return ns[0]
    return None


def parametrize_ranks(metafunc: pytest.Metafunc) -> None:
    """``mpi(n=[K1, K2, ...])``: one copy of the test per rank count, ids ``nK1``, ``nK2``.

    Each copy is then run or skipped as one marked ``mpi(n=K)``.
    """
    mark = next((m for m in metafunc.definition.iter_markers("mpi") if "n" in m.kwargs), None)
    if mark is None or isinstance(mark.kwargs["n"], int):
        return
    ns = _rank_counts(metafunc.definition.nodeid, mark.kwargs["n"])
    metafunc.fixturenames.append(RANKS_PARAM)    # a parameter the test function does not take
    metafunc.parametrize(RANKS_PARAM, ns, ids=[f"n{k}" for k in ns])


def session_limit(config: pytest.Config) -> tuple[float, str]:
    """The session's per-test limit in seconds (0: none) and where it comes from.

    In order: an explicit ``--mpi-timeout``; pytest-timeout's ``--timeout``, its
    ``PYTEST_TIMEOUT`` environment variable, its ``timeout`` ini option; else none,
    as with pytest-timeout when nothing is configured.
    """
    explicit = config.getoption("--mpi-timeout", default=None)
    if explicit is not None:
        return max(float(explicit), 0.0), "--mpi-timeout"
    candidates: list[tuple[Any, str]] = [(config.getoption("timeout", default=None), "--timeout"),
                                         (os.environ.get("PYTEST_TIMEOUT") or None, "PYTEST_TIMEOUT")]
    try:
        candidates.append((config.getini("timeout") or None, "ini timeout"))
    except ValueError:      # pytest-timeout not active: no such ini option
        pass
    for value, source in candidates:
        if value is not None:
            try:
                return max(float(value), 0.0), source
            except ValueError:
                raise pytest.UsageError(f"invalid timeout {value!r} from {source}") from None
    return 0.0, "no timeout configured"


def time_limit(item: pytest.Item, default: tuple[float, str]) -> tuple[float, str]:
    """The test's limit and its source: its ``timeout`` marker if it has one, else ``default``."""
    mark = item.get_closest_marker("timeout")
    if mark is not None:
        value = mark.args[0] if mark.args else mark.kwargs.get("timeout")
        if value is not None:
            return max(float(value), 0.0), "timeout marker"
    return default


def take_over_timeout(item: pytest.Item) -> None:
    """Keep pytest-timeout out of this test: one rank ending alone leaves no stacks of the others."""
    if item.config.pluginmanager.has_plugin("timeout"):
        item.add_marker(pytest.mark.timeout(0), append=False)


def format_ranks(ranks: list[int]) -> str:
    """``rank 2`` or ``ranks 0, 2``."""
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


class RankFailure:
    """A failure report made of several ranks' reports, or of a spawned job's (a ``longrepr``)."""

    def __init__(self, text: str, crash: str) -> None:
        self.text = text
        self.reprcrash = SimpleNamespace(message=crash)

    def toterminal(self, out: Any) -> None:
        for line in self.text.split("\n"):
            out.line(line)

    def __str__(self) -> str:
        return self.text
