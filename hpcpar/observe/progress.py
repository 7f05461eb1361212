"""Progress on long loops: a bar on root only, plain lines in batch logs."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from .. import env

__all__ = ["progress"]

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             is_root: bool = True, stream=None) -> Iterable[T]:
    """Wrap ``iterable`` with a progress display on root. **Local**: no communication.

    On root: a tqdm bar when stderr is a terminal and tqdm is installed; otherwise
    a plain line every ``HPCPAR_PROGRESS_EVERY`` seconds (default 10) and at the
    end, so Slurm output files stay readable. On other ranks the iterable comes
    back untouched. ``HPCPAR_PROGRESS=0`` turns progress off everywhere.
    """
    if not is_root or env.get(env.HPCPAR_PROGRESS, "1") == "0":
        return iterable
    stream = stream or sys.stderr
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if getattr(stream, "isatty", lambda: False)():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(iterable, total=total, desc=desc or None, file=stream, dynamic_ncols=True)
    every = env.get_float(env.HPCPAR_PROGRESS_EVERY, 10.0)
    return _lines(iterable, total, desc, stream, every)


def _lines(iterable: Iterable[T], total: int | None, desc: str, stream, every: float) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    label = f"{desc}: " if desc else ""
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every:
            last = now
            stream.write(label + _status(done, total, now - start) + "\n")
            stream.flush()
    stream.write(label + _status(done, total, time.monotonic() - start) + " done\n")
    stream.flush()


def _status(done: int, total: int | None, elapsed: float) -> str:
    if total:
        pct = 100.0 * done / total
        eta = elapsed / done * (total - done) if done else float("nan")
        return f"{done}/{total} ({pct:.0f}%) {elapsed:.1f} s elapsed, ETA {eta:.1f} s"
    return f"{done} {elapsed:.1f} s elapsed"
