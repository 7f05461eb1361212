"""The run ledger of ``hpcpar run`` across hosts: where each rank ran and whether it ended.

``hpcpar run --hosts``/``--hostfile`` gives the ranks a directory
(``HPCPAR_RUN_DIR``, under the working directory, which every host must share).
Each rank's guardian writes ``rank-R`` there: ``started HOST PID`` when it starts
its rank, ``ended STATUS`` when the rank ends (or the launcher signals it). A
launcher that gives up on a lost host kills the ranks elsewhere with SIGKILL, so
their guardians cannot write: a tiny witness process beside each guardian (its own
session, out of the launcher's reach) writes ``ended -9`` when its guardian
vanishes. Only a host where every process died (or that went down or off the
network) leaves ranks that started and never ended. When the job fails,
``hpcpar run`` reads the ledger and names those ranks and their host, which MPI
launchers do not; ranks that never started are named too.

Pure file I/O: this module imports nothing of hpcpar and no MPI (the guardian
loads it as a file beside itself).
"""

from __future__ import annotations

import os
import time

__all__ = ["RUN_DIR", "started", "ended", "witness", "read", "hosts", "settle", "lost_ranks_text",
           "unfinished"]

#: The variable naming the ledger directory (registered in :mod:`hpcpar.env`).
RUN_DIR = "HPCPAR_RUN_DIR"


def _path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"rank-{rank}")


def _append(directory: str | None, rank: int | None, line: str) -> None:
    if not directory or rank is None:
        return
    try:
        with open(_path(directory, rank), "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        pass  # a ledger that cannot be written only costs the diagnosis


def started(directory: str | None, rank: int | None, pid: int) -> None:
    """Record that ``rank`` started on this host as process ``pid``. **Local**."""
    _append(directory, rank, f"started {os.uname().nodename} {pid}")


def ended(directory: str | None, rank: int | None, status: int) -> None:
    """Record that ``rank`` ended with ``status`` (negative: a signal). **Local**."""
    _append(directory, rank, f"ended {status}")


def witness(directory: str | None, rank: int | None) -> int | None:
    """Start the witness of this guardian: it writes ``ended -9`` once every copy of the
    returned pipe end is closed (the guardian ended or was killed). **Local**.

    The caller keeps the returned file descriptor open for its lifetime (and passes
    it to no child). None when there is no ledger or the witness cannot start.
    """
    if not directory or rank is None:
        return None
    r, w = os.pipe()
    try:
        import subprocess  # only with a ledger (hpcpar run --hosts): every rank's start pays for it

        subprocess.Popen(["/bin/sh", "-c", 'read _ ; echo "ended -9" >> "$0"', _path(directory, rank)],
                         stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    except OSError:
        os.close(w)
        return None
    finally:
        os.close(r)
    return w


def _entry(directory: str, rank: int) -> tuple[str, int, bool] | None:
    """``(host, pid, ended)`` of ``rank``, or None when it left no line."""
    try:
        with open(_path(directory, rank)) as fh:
            lines = fh.read().split("\n")
    except OSError:
        return None
    host, pid, done = "?", 0, False
    for line in lines:
        words = line.split()
        if len(words) == 3 and words[0] == "started":
            host, pid = words[1], int(words[2]) if words[2].isdigit() else 0
        elif words[:1] == ["ended"]:
            done = True
    return host, pid, done


def read(directory: str, size: int) -> dict[int, tuple[str, int, bool]]:
    """``{rank: (host, pid, ended)}`` of the ranks that started. **Local**."""
    out = {}
    for rank in range(size):
        entry = _entry(directory, rank)
        if entry is not None:
            out[rank] = entry
    return out


def hosts(directory: str | None, ranks: list[int]) -> dict[int, str]:
    """``{rank: host}`` of those of ``ranks`` that the ledger saw start. **Local**.

    Reads one small file per rank asked about (the watchdog asks, on its error path,
    for the ranks that did not answer it); an empty dict without a ledger.
    """
    if not directory:
        return {}
    out = {}
    for rank in ranks:
        entry = _entry(directory, rank)
        if entry is not None and entry[0] != "?":
            out[rank] = entry[0]
    return out


def unfinished(directory: str, size: int) -> list[int]:
    """The ranks that did not end with status 0: never started, never ended, or whose
    first ``ended`` line (the guardian's; the witness adds ``ended -9`` after it) is not
    ``ended 0``. **Local**; reads one small file per rank (once per run, at its end).
    """
    out = []
    for rank in range(size):
        try:
            with open(_path(directory, rank)) as fh:
                ends = [line.split() for line in fh.read().split("\n") if line.startswith("ended")]
        except OSError:
            ends = []
        if not ends or ends[0] != ["ended", "0"]:
            out.append(rank)
    return out


def settle(directory: str, size: int, timeout: float = 5.0, quiet: float = 2.0) -> None:
    """Wait until every rank that started has ended, or nothing changed for ``quiet``
    seconds, at most ``timeout`` seconds. **Local**.

    The launcher may return before it (or the host's proxy) has ended the other
    ranks, and their witnesses write a moment later.
    """
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = read(directory, size)
        if now and all(v[2] for v in now.values()):
            return
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


def lost_ranks_text(directory: str, size: int) -> str | None:
    """What to tell the user about ranks that vanished or never started, or None. **Local**.

    Only ranks that started and left no end are named as lost, by host; when every
    rank is in that state (the launcher killed them all at once) nothing can be told
    apart and None is returned, as when nothing is missing.
    """
    seen = read(directory, size)
    lost = {r: v for r, v in seen.items() if not v[2]}
    never = [r for r in range(size) if r not in seen]
    lines = []
    if lost and len(lost) < len(seen):
        by_host: dict[str, list[int]] = {}
        for r, (host, _, _) in sorted(lost.items()):
            by_host.setdefault(host, []).append(r)
        for host, ranks in by_host.items():
            which = ", ".join(f"{r} (pid {lost[r][1]})" for r in ranks)
            lines.append(f"hpcpar: rank{'s' if len(ranks) > 1 else ''} {which} of {size} on host {host} "
                         "ended without a word: every process of that host was killed, or the host went "
                         f"down or off the network (check it: ssh {host} true; its kernel log for the "
                         "OOM killer)")
    if never and seen:
        lines.append(f"hpcpar: rank{'s' if len(never) > 1 else ''} {', '.join(map(str, never))} of {size} "
                     "never started: their host could not be reached or refused the launcher "
                     "(see the launcher's message above)")
    return "\n".join(lines) or None
