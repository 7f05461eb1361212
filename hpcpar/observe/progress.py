"""Progress on long loops: a bar on root only, plain lines in batch logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from .. import env

__all__ = ["progress", "meter", "Meter"]

T = TypeVar("T")


def _enabled(is_root: bool) -> bool:
    return is_root and env.get(env.HPCPAR_PROGRESS, "1") != "0"


def _tqdm(stream: IO[str]) -> Any:
    """tqdm's class when ``stream`` is a terminal and tqdm is installed, else None."""
    if not getattr(stream, "isatty", lambda: False)():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             is_root: bool = True, stream: IO[str] | None = None) -> Iterable[T]:
    """Wrap ``iterable`` with a progress display on root. **Local**: no communication.

    On root: a tqdm bar when stderr is a terminal and tqdm is installed; otherwise
    a plain line every ``HPCPAR_PROGRESS_EVERY`` seconds (default 10) and at the
    end, so Slurm output files stay readable. On other ranks the iterable comes
    back untouched. ``HPCPAR_PROGRESS=0`` turns progress off everywhere.
    """
    if not _enabled(is_root):
        return iterable
    stream = stream or sys.stderr
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    tqdm = _tqdm(stream)
    if tqdm is not None:
        return tqdm(iterable, total=total, desc=desc or None, file=stream, dynamic_ncols=True)
    return _lines(iterable, Meter(total, desc, stream))


def _lines(iterable: Iterable[T], shown: Meter) -> Iterator[T]:
    for item in iterable:
        yield item
        shown.update(1)
    shown.close()


class Meter:
    """A progress display advanced by hand (``update(n)``), as plain lines. Made by :func:`meter`.

    **Local**. Writes a line every ``HPCPAR_PROGRESS_EVERY`` seconds and one at
    :meth:`close`; a meter that is off writes nothing.
    """

    def __init__(self, total: int | None, desc: str = "", stream: IO[str] | None = None,
                 on: bool = True):
        self.total, self.count, self.on = total, 0, on
        self.stream = stream or sys.stderr
        self.label = f"{desc}: " if desc else ""
        self.every = env.get_float(env.HPCPAR_PROGRESS_EVERY, 10.0)
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.count += n
        if not self.on:
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._write(_status(self.count, self.total, now - self.start))

    def close(self) -> None:
        """Write the final line (once)."""
        if self.on:
            self.on = False
            self._write(_status(self.count, self.total, time.monotonic() - self.start) + " done")

    def _write(self, text: str) -> None:
        self.stream.write(self.label + text + "\n")
        self.stream.flush()

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Bar(Meter):
    """A meter shown as a tqdm bar (stderr is a terminal)."""

    def __init__(self, tqdm: Any, total: int | None, desc: str, stream: IO[str]):
        super().__init__(total, desc, stream)
        self.bar = tqdm(total=total, desc=desc or None, file=stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.count += n
        self.bar.update(n)

    def close(self) -> None:
        if self.on:
            self.on = False
            self.bar.close()


def meter(total: int | None = None, desc: str = "", is_root: bool = True,
          stream: IO[str] | None = None) -> Meter:
    """A progress display advanced by hand, on root. **Local**: no communication.

    The same display as :func:`progress` (a tqdm bar on a terminal, plain lines in
    batch logs, nothing on other ranks or with ``HPCPAR_PROGRESS=0``), for loops
    that are not one iterable, e.g. results arriving from other ranks::

        with meter(n, "tasks") as shown:
            ...
            shown.update(k)
    """
    stream = stream or sys.stderr
    if not _enabled(is_root):
        return Meter(total, desc, stream, on=False)
    tqdm = _tqdm(stream)
    if tqdm is not None:
        return _Bar(tqdm, total, desc, stream)
    return Meter(total, desc, stream)


def _status(done: int, total: int | None, elapsed: float) -> str:
    if total:
        pct = 100.0 * done / total
        eta = elapsed / done * (total - done) if done else float("nan")
        return f"{done}/{total} ({pct:.0f}%) {elapsed:.1f} s elapsed, ETA {eta:.1f} s"
    return f"{done} {elapsed:.1f} s elapsed"
