"""What the pytest plugin reads from a test's markers, and the failure report it builds.

Shared by the ``--with-mpi`` protocol (:mod:`hpcpar.testing.plugin`) and the tests
spawned from a plain run (:mod:`hpcpar.testing.spawned`). No MPI.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

__all__ = ["ranks_wanted", "session_limit", "time_limit", "take_over_timeout", "format_ranks", "RankFailure"]


def ranks_wanted(item: pytest.Item) -> int | None:
    """K of the closest ``mpi(n=K)`` marker, or None."""
    for mark in item.iter_markers("mpi"):
        if "n" in mark.kwargs:
            n = mark.kwargs["n"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise pytest.UsageError(f"{item.nodeid}: mpi(n=...) needs a positive int, got {n!r}")
            return n
    return None


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
