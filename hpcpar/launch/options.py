"""A job's command-line options, checked on every rank before any work: one ``error:`` line, exit status 2.

``parse_checked`` parses ``argv`` and runs the job's own checks in one process
(no MPI: a test or a login node), ending with argparse's ``error:`` and status 2.

``job_args`` parses ``argv`` with the job's :class:`argparse.ArgumentParser` on
every rank, runs the job's own checks (ranges, combinations: every rank decides
alike), and has root check that the directory of every output file exists and is
writable (the ranks then agree on root's verdict). Any problem is printed once,
by root, in argparse's form (``usage: ...`` then ``PROG: error: ...``), and
every rank leaves with ``SystemExit(2)``, before the job computes anything.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["job_args", "parse_checked", "Check", "writable_problem", "count"]

#: A job's checks of its parsed options: the first problem as a sentence naming the
#: option, or None; it must decide alike on every rank.
Check = Callable[[argparse.Namespace], "str | None"]


class _Bad(Exception):
    """An option problem found while parsing (argparse's own or the job's)."""


def writable_problem(option: str, path: str) -> str | None:
    """Why the output file ``path`` (given as ``option``) cannot be written, or None. **Local**."""
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{option} {path}: is a directory, not a file"
    if not os.path.isdir(d):
        return f"{option} {path}: directory {d} does not exist; create it first"
    if not os.access(d, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"{option} {path}: not writable here; choose a writable location"
    return None


def count(text: str) -> int:
    """An argparse ``type``: a whole number, also written like ``4e7``; fractions are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def parse_checked(parser: argparse.ArgumentParser, check: Check | None = None,
                  argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``parser``, then run the job's ``check``. **Local** (no MPI).

    Args:
        parser: the job's parser.
        check: the job's checks of the parsed options (see :func:`job_args`).
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        The options.

    Raises:
        SystemExit: with status 2 through ``parser.error`` (usage and the problem on
            stderr), for argparse's own problems and the first one ``check`` finds.
    """
    args = parser.parse_args(argv)
    why = check(args) if check is not None else None
    if why:
        parser.error(why)
    return args


def job_args(ctx: Context, parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
             check: Check | None = None, outputs: Sequence[str] = ()) -> argparse.Namespace:
    """Parse and check the job's options. **Collective**: every rank calls it with the same ``argv``.

    Args:
        ctx: the job's context.
        parser: the job's parser.
        argv: the arguments (None: ``sys.argv[1:]``).
        check: the job's checks of the parsed options: the first problem as a
            sentence naming the option, or None; it must decide alike on every rank.
        outputs: attribute names of output-file options (e.g. ``"out"``); root
            checks that each given one can be written.

    Returns:
        The options, the same on every rank.

    Raises:
        SystemExit: with status 2 on every rank, after root printed the problem.
    """
    def error(message: str) -> NoReturn:
        raise _Bad(message)

    parser.error = error  # type: ignore[method-assign]
    args: Any = None
    why: str | None = None
    try:
        args = parse_checked(parser, check, argv)
    except _Bad as exc:
        why = str(exc)
    if why is None and ctx.is_root:
        for name in outputs:
            path = getattr(args, name, None)
            if path:
                why = writable_problem("--" + name.replace("_", "-"), str(path))
                if why:
                    break
    why = ctx.comm.bcast(why, root=ctx.root)
    if why is not None:
        if ctx.is_root:
            parser.print_usage(sys.stderr)
            sys.stderr.write(f"{parser.prog}: error: {why}\n")
            sys.stderr.flush()
        raise SystemExit(2)
    return args
