"""hpcpar's error types: one base class, and errors raised alike on every rank.

Every error hpcpar raises on purpose is an :class:`HpcparError`. The ones raised
by a collective check are also the built-in type users catch today
(``ValueError``, ``TypeError``, ``OSError``), so ``except ValueError`` keeps
working. Nothing here imports MPI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

__all__ = [
    "HpcparError", "CollectiveError", "CollectiveMismatchError", "UsageError", "TaskError",
    "CollectiveTypeError", "Problem", "problem_of", "attempt", "gather_problems", "agree",
    "agree_equal", "raise_problems", "collective_error", "fail",
]

T = TypeVar("T")

#: What a rank reports about a local failure: (built-in exception class name, message).
#: Picklable and small, so it can travel to the other ranks on the error path.
Problem = tuple[str, str]


class HpcparError(Exception):
    """Base class of every error that hpcpar raises on purpose."""


class CollectiveError(HpcparError):
    """Raised by a **collective** call on every rank of the context, with the same message.

    Attributes:
        ranks: the ranks whose arguments or state caused it (empty when unknown).
    """

    ranks: tuple[int, ...] = ()


class CollectiveMismatchError(CollectiveError, ValueError):
    """Ranks entered different collectives, or the same one with a different root or op
    (or, in debug mode, from different functions)."""


class TaskError(HpcparError):
    """A task (or pipeline stage) raised on some rank.

    Attributes:
        index: the position of the task (or item) in the input.
        rank: the rank it ran on.
        host: that rank's host name ("" when unknown).
        stage: the pipeline stage, or None for a farm task.
        exc_type: the name of the exception's class.
        remote_traceback: the traceback text from the rank that ran it.
    """

    def __init__(self, message: str, index: int | None = None, rank: int | None = None,
                 exc_type: str = "", remote_traceback: str = "", stage: int | None = None,
                 host: str = ""):
        super().__init__(message)
        self.index = index
        self.rank = rank
        self.host = host
        self.stage = stage
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        return (TaskError, (str(self), self.index, self.rank, self.exc_type,
                            self.remote_traceback, self.stage, self.host))


class UsageError(CollectiveError, ValueError):
    """A call was misused in a way every rank sees alike (a wrong argument, a missing grid)."""


# ---------------------------------------------------------------- the same error on every rank
_BUILTINS: dict[str, type[Exception]] = {c.__name__: c for c in (
    ValueError, TypeError, KeyError, OSError, FileNotFoundError, FileExistsError,
    PermissionError, IsADirectoryError, NotADirectoryError, RuntimeError)}


class CollectiveTypeError(UsageError, TypeError):
    """An argument of the wrong type, seen alike on every rank: a ``TypeError`` that is also
    a ``ValueError`` (a :class:`UsageError`), so ``except ValueError`` keeps catching it."""


_CLASSES: dict[type[Exception], type[CollectiveError]] = {ValueError: UsageError,
                                                          TypeError: CollectiveTypeError}


for _b in _BUILTINS.values():  # CollectiveTypeError, CollectiveOSError, ...: module attributes, so picklable
    if _b not in _CLASSES:
        _CLASSES[_b] = globals()[f"Collective{_b.__name__}"] = type(
            f"Collective{_b.__name__}", (CollectiveError, _b),
            {"__module__": __name__,
             "__doc__": f"A :class:`CollectiveError` that is also a ``{_b.__name__}``."})


def collective_error(builtin: type[Exception] | str) -> type[CollectiveError]:
    """The :class:`CollectiveError` subclass that is also ``builtin`` (e.g. ``OSError``). **Local**.

    ``ValueError`` gives :class:`UsageError`; a type hpcpar does not know gives it too.
    """
    if isinstance(builtin, str):
        builtin = _BUILTINS.get(builtin, ValueError)
    return _CLASSES.get(builtin, UsageError)


def problem_of(exc: BaseException) -> Problem:
    """A picklable ``(class name, message)`` of ``exc``, for :func:`agree`. **Local**."""
    name = type(exc).__name__
    if name not in _BUILTINS:
        base = next((c for c in type(exc).__mro__ if c.__name__ in _BUILTINS), ValueError)
        name = base.__name__
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return name, msg or type(exc).__name__


def attempt(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T | None, Problem | None]:
    """``(fn(*args, **kwargs), None)``, or ``(None, problem)`` when it raises. **Local**."""
    try:
        return fn(*args, **kwargs), None
    except Exception as exc:
        return None, problem_of(exc)


def raise_problems(where: str, problems: Sequence[Problem | None], *,
                   name_ranks: bool = False) -> None:
    """Raise one error describing every rank's problem (``problems[r]`` is rank r's); **local**.

    Returns when no rank has a problem. The class is the problems' common built-in
    type made a :class:`CollectiveError` (``ValueError`` when they differ), and the
    message names the ranks, so every rank that calls this with the same list
    raises the same error.

    Args:
        where: what was being done; it starts the message.
        problems: one entry per rank, None where that rank is fine.
        name_ranks: always write ``rank R: message`` for every rank at fault, also
            in a one-rank job and when every rank has the same problem.
    """
    bad = [(r, p) for r, p in enumerate(problems) if p is not None]
    if not bad:
        return
    kinds = {p[0] for _, p in bad}
    cls = collective_error(bad[0][1][0] if len(kinds) == 1 else "ValueError")
    msgs = {p[1] for _, p in bad}
    size = len(problems)
    if name_ranks:
        text = f"{where}: " + "; ".join(f"rank {r}: {p[1]}" for r, p in bad)
    elif size == 1:
        text = f"{where}: {bad[0][1][1]}"
    elif len(msgs) == 1 and len(bad) == size:
        text = f"{where}: on every rank: {bad[0][1][1]}"
    else:
        text = f"{where}: " + "; ".join(f"rank {r}: {p[1]}" for r, p in bad)
    exc = cls(text)
    exc.ranks = tuple(r for r, _ in bad)
    raise exc


def gather_problems(comm: Any, problem: Problem | None, *,
                    root: int | None = None) -> list[Problem | None] | None:
    """Every rank's problem when some rank has one, else None. **Collective**.

    The normal path costs one reduction of one integer (``O(log P)``, the same
    bytes at any number of ranks); only when some rank has a problem are the
    problems gathered, ``[rank 0's, rank 1's, ...]`` on every rank.

    Args:
        comm: the communicator whose ranks must agree (an ``mpi4py`` intracommunicator).
        problem: this rank's :class:`Problem` (anything picklable), or None.
        root: when given, only that rank's problem counts (one broadcast instead).
    """
    size = comm.Get_size()
    if root is not None:
        problem = comm.bcast(problem, root=root) if size > 1 else problem
        return None if problem is None else [problem if r == root else None for r in range(size)]
    if size == 1:
        return None if problem is None else [problem]
    import numpy as np
    from mpi4py import MPI  # a communicator exists, so MPI is initialised already

    flag = np.array([0 if problem is None else 1], dtype=np.intc)
    comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.MAX)
    return comm.allgather(problem) if flag[0] else None


def agree(comm: Any, where: str, problem: Problem | None, *, root: int | None = None,
          name_ranks: bool = False) -> None:
    """Raise the same error on every rank of ``comm`` when any rank has a problem. **Collective**.

    Args:
        comm: the communicator whose ranks must agree (an ``mpi4py`` intracommunicator).
        where: what was being done, e.g. ``"hpcpar.read('a.h5', 'u')"``; it starts the message.
        problem: this rank's :class:`Problem`, or None when all is well here.
        root: when given, only that rank's problem counts (the others pass None).
        name_ranks: see :func:`raise_problems`.

    The normal path costs one reduction of one integer (``O(log P)``, the same bytes
    at any number of ranks); only when some rank has a problem are the problems
    gathered to name every rank at fault.

    Raises:
        CollectiveError: on every rank (also a ``ValueError``, ``OSError``, ... as
            the problem's own type), with a message naming the ranks at fault.
    """
    problems = gather_problems(comm, problem, root=root)
    if problems is not None:
        raise_problems(where, problems, name_ranks=name_ranks)


def agree_equal(comm: Any, where: str, value: Any, what: str,
                describe: Callable[[Any], str] = str) -> None:
    """Raise the same error on every rank unless every rank passed an equal ``value``. **Collective**.

    The normal path costs one reduction of two integers (a hash of ``repr(value)``
    and its negation, maximised); only when they differ are the values gathered
    to name every rank's.

    Args:
        comm: the communicator whose ranks must agree.
        where: what was being done; it starts the message.
        value: this rank's value (its ``repr`` must be the same on ranks that agree).
        what: what the value is, for the message: "every rank must pass the same {what}".
        describe: how one rank's value is written in the message.

    Raises:
        UsageError: on every rank, naming each rank's value.
    """
    if comm.Get_size() == 1:
        return
    import hashlib

    import numpy as np
    from mpi4py import MPI

    h = int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=7).digest(), "little")
    both = np.array([h, -h], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, both, op=MPI.MAX)
    if both[0] == -both[1]:
        return
    values = comm.allgather(value)
    exc = UsageError(f"{where}: every rank must pass the same {what}; got "
                     + "; ".join(f"rank {r}: {describe(v)}" for r, v in enumerate(values)))
    exc.ranks = tuple(r for r, v in enumerate(values) if v != values[0])
    raise exc


def fail(where: str, message: str, cls: type[Exception] | str = ValueError) -> NoReturn:
    """Raise ``message`` as the :class:`CollectiveError` form of ``cls``; **local**.

    For checks whose outcome every rank computes alike (e.g. from agreed headers).
    """
    raise collective_error(cls)(f"{where}: {message}" if where else message)
