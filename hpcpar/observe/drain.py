"""Letting a report reach the launcher before the job is torn down. **Local**; no MPI.

``MPI_Abort`` ends every process of the job at once, the launcher's output relays
included: whatever a rank wrote that its relay (Hydra's proxy, Open MPI's daemon) has
not yet read from the rank's stdout or stderr pipe is lost. On a loaded node the relay
may be seconds behind, and the lost part is the end of the report: the summary, the
line that says why. :func:`drain` waits until the relay has read everything this
process wrote, then a short grace for the relay to pass it on.
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import stat
import sys
import termios
import time

from .. import env

__all__ = ["drain", "flush", "unread"]

# Seconds between two looks at the pipes.
_POLL = 0.01


def unread(fd: int) -> int:
    """Bytes written to ``fd`` that its reader has not read yet. **Local**.

    A pipe's or a socket's queue (``FIONREAD``, ``SIOCOUTQ``); 0 for anything else
    (a file or a terminal keeps nothing back), for an fd that cannot be asked, and
    where the reader is gone (nothing will read the rest: a launcher that was killed).
    """
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            request = termios.FIONREAD
        elif stat.S_ISSOCK(mode):
            request = termios.TIOCOUTQ      # SIOCOUTQ: what the peer has not received
        else:
            return 0
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0)):
            return 0
        n = array.array("i", [0])
        fcntl.ioctl(fd, request, n, True)
        return max(0, n[0])
    except (OSError, ValueError):
        return 0


def flush() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr`` and the original streams. **Local**.

    ``MPI_Abort`` and ``os._exit`` end the process without flushing Python's buffers.
    """
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def drain(limit: float = 10.0) -> None:
    """Flush stdout and stderr, wait until their readers have read them, then a grace. **Local**.

    Waits at most ``limit`` seconds for the readers (a relay that is gone or stuck
    must not keep a failing rank alive), then ``HPCPAR_ABORT_GRACE`` seconds (default
    0.2) for the relay to pass the text on. Call it right before ``MPI_Abort``.
    """
    flush()
    deadline = time.monotonic() + limit
    while (unread(1) or unread(2)) and time.monotonic() < deadline:
        time.sleep(_POLL)
    time.sleep(env.get_float(env.HPCPAR_ABORT_GRACE, 0.2))
