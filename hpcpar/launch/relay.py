"""The stderr relay of ``hpcpar run``: the same failure from several ranks is printed once.

``hpcpar run`` reads the job's stderr (the launcher merges every rank's) and passes
each line on at once, except:

* failure reports (``rank R of N failed: ...`` and the rank's ``[rank R] ...`` lines,
  :mod:`hpcpar.core.failure`): held until the stream has been quiet for
  :data:`QUIET` seconds, then printed once per distinct report. Identical reports
  of several ranks become ``ranks 0-3 of 4 failed with the same error: ...`` and one
  traceback; reports that differ are printed each with its own rank;
* MPICH's ``Abort(N) on node ...: application called MPI_Abort(...) - process R``
  lines of one status: one line naming the ranks;
* the marked lines of :mod:`hpcpar.core.usage`: a rank's ``argparse`` output (which
  rank 0 printed already) is printed at the end, prefixed ``[rank R]``, only when it
  differs from rank 0's.

Pure text handling without MPI; :func:`relay` runs in a thread of the launching process.
"""

from __future__ import annotations

import os
import re
import select
from typing import BinaryIO

from ..core.usage import MARK

__all__ = ["QUIET", "Relay", "relay", "rank_list"]

#: Seconds without new stderr output after which held failure reports are printed.
QUIET = 0.3

_HEADER = re.compile(rb"^rank (\d+) of (\d+) failed: (.*)$")
_LINE = re.compile(rb"^\[rank (\d+)\] ?(.*)$")
_ABORT = re.compile(rb"^Abort\((-?\d+)\) on node \d+ \(rank (\d+) in comm \d+\): "
                    rb"application called MPI_Abort\(([^,]+), -?\d+\) - process \d+$")
_MARK = MARK.encode()


def rank_list(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``. **Local**, pure."""
    out: list[str] = []
    ranks = sorted(set(ranks))
    i = 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        out.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ", ".join(out)


class Relay:
    """Feeds on the job's stderr, line by line, and writes what the user should see. **Local**."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.reports: dict[int, tuple[bytes, bytes, list[bytes]]] = {}  # rank -> (size, what, lines)
        self.aborts: dict[tuple[bytes, bytes], list[int]] = {}  # (status, comm) -> ranks
        self.digests: dict[int, str] = {}
        self.texts: dict[int, list[str]] = {}
        self.where: dict[int, bytes] = {}  # rank -> the host of its report

    def feed(self, line: bytes) -> None:
        """One line of the job's stderr, with its newline."""
        body = line.rstrip(b"\n")
        if body.startswith(_MARK):
            self._usage(body)
            return
        m = _HEADER.match(body)
        if m:
            rank = int(m.group(1))
            self.reports[rank] = (m.group(2), m.group(3), [])
            return
        m = _LINE.match(body)
        if m and int(m.group(1)) in self.reports:
            rank, text = int(m.group(1)), m.group(2)
            if text.startswith(b"on host ") and not self.reports[rank][2] and rank not in self.where:
                self.where[rank] = text[len(b"on host "):].split(b",")[0]
            else:
                self.reports[rank][2].append(text)
            return
        m = _ABORT.match(body)
        if m:
            self.aborts.setdefault((m.group(1), m.group(3)), []).append(int(m.group(2)))
            return
        self.out.write(line)
        self.out.flush()

    def _usage(self, body: bytes) -> None:
        parts = body.decode(errors="replace").split(" ", 3)
        if len(parts) < 3 or not parts[2].isdigit():
            return
        kind, rank = parts[1], int(parts[2])
        rest = parts[3] if len(parts) > 3 else ""
        if kind == "digest":
            self.digests[rank] = rest
        elif kind == "text":
            self.texts.setdefault(rank, []).append(rest)

    def flush(self) -> None:
        """Print the failure reports and abort lines held so far, each distinct one once."""
        groups: dict[tuple[bytes, bytes, tuple[bytes, ...]], list[int]] = {}
        for rank, (size, what, lines) in sorted(self.reports.items()):
            groups.setdefault((size, what, tuple(lines)), []).append(rank)
        out = []
        for (size, what, held_lines), ranks in groups.items():
            hosts = list(dict.fromkeys(self.where[r] for r in ranks if r in self.where))
            if len(ranks) == 1:
                r = str(ranks[0]).encode()
                out.append(b"rank %s of %s failed: %s\n" % (r, size, what))
                if hosts:
                    out.append(b"[rank %s] on host %s\n" % (r, hosts[0]))
                out += [b"[rank %s] %s\n" % (r, line) for line in held_lines]
            else:
                out.append(b"ranks %s of %s failed with the same error: %s\n"
                           % (rank_list(ranks).encode(), size, what))
                if hosts:
                    out.append(b"on host%s %s\n" % (b"s" if len(hosts) > 1 else b"", b", ".join(hosts)))
                out += [line + b"\n" for line in held_lines]
        for (status, comm), ranks in self.aborts.items():
            word = b"rank" if len(ranks) == 1 else b"ranks"
            out.append(b"Abort(%s) on %s %s: application called MPI_Abort(%s, %s)\n"
                       % (status, word, rank_list(ranks).encode(), comm, status))
        self.reports.clear()
        self.aborts.clear()
        self.where.clear()
        if out:
            self.out.write(b"".join(out))
            self.out.flush()

    def close(self) -> None:
        """At the end of the job: the held reports, then ``argparse`` output of the ranks
        whose text differs from rank 0's."""
        self.flush()
        out = []
        for rank, lines in sorted(self.texts.items()):
            if rank != 0 and self.digests.get(rank) != self.digests.get(0):
                out += [f"[rank {rank}] {line}\n" for line in lines]
        if out:
            self.out.write("".join(out).encode())
            self.out.flush()


def relay(fd: int, out: BinaryIO) -> None:
    """Relay the job's stderr from the pipe ``fd`` to ``out`` until end of file. **Local**."""
    r = Relay(out)
    tail = b""
    while True:
        ready, _, _ = select.select([fd], [], [], QUIET)
        if not ready:
            r.flush()
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            r.feed(line + b"\n")
    if tail:
        r.feed(tail)
    r.close()
