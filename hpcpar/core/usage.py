"""A program's argument-parsing output, printed once for the whole job under ``hpcpar run``.

Every rank of ``hpcpar run`` gets the same arguments, so ``--help`` or a usage
error would print the same text once per rank. With ``HPCPAR_RELAY=1`` (set by
``hpcpar run``) rank 0 prints what ``argparse`` prints as usual; the other ranks
hold it. When ``argparse`` ends the program, every rank writes one marked line
with a digest of its text to stderr, and the other ranks their held text, marked
too; the launcher's relay (:mod:`hpcpar.launch.relay`) prints a rank's text only
when it differs from rank 0's, so nothing that differs between ranks is lost.
Importing this module loads no MPI.
"""

from __future__ import annotations

import argparse
import io
import sys

TYPE_CHECKING = False  # typing is not imported at run time: every rank would pay for it at start-up
if TYPE_CHECKING:
    from typing import IO, Any

__all__ = ["MARK", "hold", "held", "report"]

#: Marks a line of the wire format on stderr: ``MARK digest RANK SHA`` or
#: ``MARK text RANK LINE`` (the relay removes these lines).
MARK = "\x1ehpcpar-usage"

_S: dict[str, Any] = {"rank": 0, "depth": 0, "text": None}


def _sink(file: IO[str] | None, fallback: IO[str]) -> IO[str]:
    """Where argparse output goes: a buffer while held, else ``file``."""
    if _S["depth"] and _S["text"] is not None:
        return _S["text"]
    return file if file is not None else fallback


def hold(rank: int) -> None:
    """Hold (ranks other than 0) or record (rank 0) what ``argparse`` prints while it parses.
    **Local**; call it once before the program runs."""
    if _S["text"] is not None:
        return
    _S["rank"] = rank
    _S["text"] = io.StringIO()
    cls = argparse.ArgumentParser
    print_help, print_usage, exit_ = cls.print_help, cls.print_usage, cls.exit

    def tee(text: str, file: IO[str]) -> None:
        _S["text"].write(text)
        if _S["rank"] == 0:
            file.write(text)

    class _Tee(io.StringIO):
        def __init__(self, file: IO[str]):
            super().__init__()
            self.file = file

        def write(self, text: str) -> int:
            tee(text, self.file)
            return len(text)

    def parsing(parse: Any) -> Any:
        def method(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
            _S["depth"] += 1
            try:
                return parse(self, *args, **kwargs)
            finally:
                _S["depth"] -= 1
        return method

    def wrap(fn: Any, default: IO[str] | None) -> Any:
        def method(self: argparse.ArgumentParser, file: IO[str] | None = None) -> None:
            if not _S["depth"]:
                return fn(self, file)
            return fn(self, _Tee(file or default or sys.stdout))
        return method

    def exit_held(self: argparse.ArgumentParser, status: int = 0, message: str | None = None) -> Any:
        if _S["depth"] and message:
            tee(message, sys.stderr)
            message = None
        return exit_(self, status, message)

    for name in ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args"):
        if hasattr(cls, name):
            setattr(cls, name, parsing(getattr(cls, name)))
    cls.print_help = wrap(print_help, None)  # type: ignore[method-assign]
    cls.print_usage = wrap(print_usage, None)  # type: ignore[method-assign]
    cls.exit = exit_held  # type: ignore[method-assign]


def held() -> str:
    """What ``argparse`` printed (rank 0) or held (other ranks) so far. **Local**."""
    return "" if _S["text"] is None else _S["text"].getvalue()


def report() -> None:
    """After ``argparse`` ended the program: write the marked digest (and, on ranks other
    than 0, the held text) to stderr for the launcher's relay. **Local**."""
    import hashlib

    text = held()
    rank = _S["rank"]
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    out = [f"{MARK} digest {rank} {digest}\n"]
    if rank != 0:
        out += [f"{MARK} text {rank} {line}\n" for line in text.rstrip("\n").split("\n")]
    sys.stderr.write("".join(out))
    sys.stderr.flush()
