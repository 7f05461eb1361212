"""The one stack dumper, and the exit status of a job ended because something ran too long.

Used by the hang watchdog (:mod:`hpcpar.core.watchdog`) and by the pytest plugin's
per-test timeout (:mod:`hpcpar.testing.plugin`). **Local**; no MPI.
"""

from __future__ import annotations

import sys
import threading
import traceback

__all__ = ["EXIT_TIMEOUT", "format_stacks"]

#: Exit status of a job ended because a rank, a call or a test ran past its time
#: limit (the watchdog's ``HPCPAR_TIMEOUT``, the plugin's ``--mpi-timeout``), as GNU
#: ``timeout(1)`` reports a time-out.
EXIT_TIMEOUT = 124


def format_stacks(prefix: str = "", hide: tuple[str, ...] = (), skip_current: bool = True) -> str:
    """Every thread's Python stack, oldest call first, each line starting with ``prefix``. **Local**.

    Each frame reads ``File "PATH", line N in FUNCTION`` (as :mod:`faulthandler`
    writes it) followed by its source line, so a log shows where each thread waits.

    Args:
        prefix: put before every line, e.g. ``"[rank 3] "``.
        hide: leave out frames whose file name starts with one of these (e.g. a test
            runner's own directories).
        skip_current: leave out the calling thread (the watchdog thread that dumps).

    Returns:
        The text, ending in a newline; empty when there is no other thread to show.
    """
    me = threading.get_ident()
    names = {t.ident: t.name for t in threading.enumerate()}
    blocks = []
    for ident, frame in sys._current_frames().items():
        if skip_current and ident == me:
            continue
        lines = [f"Stack of thread {names.get(ident, hex(ident))} (most recent call last):"]
        for entry in traceback.extract_stack(frame):
            if hide and entry.filename.startswith(hide):
                continue
            lines.append(f'  File "{entry.filename}", line {entry.lineno} in {entry.name}')
            if entry.line:
                lines.append(f"    {entry.line.strip()}")
        blocks.append(lines)
    return "".join(f"{prefix}{line}\n" for i, block in enumerate(blocks)
                   for line in ([""] if i else []) + block)
