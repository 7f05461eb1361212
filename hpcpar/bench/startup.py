"""``hpcpar bench startup``: start-up time of ``hpcpar run`` vs plain ``mpiexec python``.

Serial (no MPI in this process): it launches a small mpi4py hello program again and
again, alternating ``mpiexec -n N python hello.py`` and ``hpcpar run -n N hello.py``
(interleaved, so that a busy machine slows both alike), and prints the best and the
median wall time of each, their difference and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from ..launch.command import launch_argv

__all__ = ["SERIAL", "HELLO", "add_arguments", "measure", "main"]

#: Run by ``hpcpar bench`` as it is, not under the MPI runner: it only starts jobs.
SERIAL = True

#: The program both launchers start.
HELLO = "from mpi4py import MPI\nprint('hello from rank', MPI.COMM_WORLD.Get_rank())\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options. **Local**."""
    p.add_argument("-n", "--ranks", type=int, default=3, help="ranks of the hello program (default 3)")
    p.add_argument("--repeats", type=int, default=10, help="launches of each kind (default 10)")
    p.add_argument("--target", type=float, default=0.3,
                   help="the overhead allowed over mpiexec, in seconds (default 0.3)")


def _once(cmd: list[str], timeout: float) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {r.returncode}: "
                           f"{r.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def measure(ranks: int, repeats: int, timeout: float = 120.0) -> dict[str, list[float]]:
    """Wall times of ``repeats`` launches of the hello program on ``ranks`` ranks under
    ``mpiexec`` and under ``hpcpar run``, interleaved. **Local**; starts MPI jobs."""
    with tempfile.TemporaryDirectory(prefix="hpcpar-startup-") as tmp:
        hello = os.path.join(tmp, "hello.py")
        with open(hello, "w") as fh:
            fh.write(HELLO)
        cmds = {"mpiexec": launch_argv(ranks, [sys.executable, hello]),
                "hpcpar run": [sys.executable, "-m", "hpcpar", "run", "-n", str(ranks), hello]}
        times: dict[str, list[float]] = {name: [] for name in cmds}
        _once(cmds["mpiexec"], timeout)  # warm the file system caches
        for i in range(repeats):
            for name in (list(cmds) if i % 2 == 0 else list(reversed(cmds))):
                times[name].append(_once(cmds[name], timeout))
    return times


def main(args: argparse.Namespace) -> int:
    """Measure and print the table. **Local**; returns 0 (1 when a launch failed)."""
    from . import format_table

    try:
        times = measure(args.ranks, max(1, args.repeats))
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"hpcpar bench startup: {exc}", file=sys.stderr)
        return 1
    base, ours = times["mpiexec"], times["hpcpar run"]
    rows = [[name, f"{min(t):.3f}", f"{statistics.median(t):.3f}"] for name, t in times.items()]
    print(f"start-up of a {args.ranks}-rank mpi4py hello, {len(base)} interleaved launches each")
    print(format_table(["launcher", "best s", "median s"], rows))
    best, median = min(ours) - min(base), statistics.median(ours) - statistics.median(base)
    print(f"hpcpar run - mpiexec: best {best:+.3f} s, median {median:+.3f} s; ratio of medians "
          f"{statistics.median(ours) / statistics.median(base):.2f}; target <= {args.target:.2f} s: "
          f"{'met' if median <= args.target else 'NOT met'}")
    return 0
