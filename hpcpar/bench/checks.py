"""Benchmark: the cost of hpcpar's safety checks on small (latency-bound) collectives.

For barrier, an 8-byte allreduce, a 1 KB bcast and a small allgather it times
the raw mpi4py buffer call, the checked hpcpar call (header exchange + watchdog
mark) and the same call in debug mode (caller-function check), all in one MPI
job. It also times the watchdog mark alone (entering and leaving a call, local).
The difference between hpcpar and raw is the per-call price of the checks.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core import watchdog
from ..core.context import Context
from . import format_table, timeit

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=5, help="timed batches per measurement (best is kept)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timed batch")


def _cases(ctx: Context) -> dict[str, tuple[Callable[[], Any], Callable[[Context], Any]]]:
    from mpi4py import MPI

    """name -> (raw callable, hpcpar callable taking a Context)."""
    comm, rank, size = ctx.comm, ctx.rank, ctx.size
    one = np.ones(1)
    res = np.empty(1)
    kb = np.arange(128.0)
    kbuf = np.empty(128)
    loc = np.full(16, float(rank))
    full = np.empty(16 * size)
    return {
        "barrier": (lambda: comm.Barrier(), lambda c: c.barrier()),
        "allreduce 8 B": (lambda: comm.Allreduce(one, res, op=MPI.SUM),
                          lambda c: c.allreduce(one)),
        "bcast 1 KB": (lambda: comm.Bcast(kb if rank == 0 else kbuf, root=0),
                       lambda c: c.bcast(kb if c.rank == 0 else None)),
        "allgather 16x8 B": (lambda: comm.Allgather(loc, full),
                             lambda c: c.allgather(loc, out=full)),
    }


class _Marked:
    @watchdog.marked("bench")
    def call(self) -> None:
        pass


def _mark_cost(n: int = 200_000) -> float:
    """Seconds per call of a method marked with :func:`watchdog.marked`, as the collectives are,
    minus the same call unmarked. **Local**."""
    marked = _Marked().call
    plain = _Marked.call.__wrapped__.__get__(_Marked())  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for _ in range(n):
        marked()
    t1 = time.perf_counter()
    for _ in range(n):
        plain()
    t2 = time.perf_counter()
    return max(0.0, (t1 - t0) - (t2 - t1)) / n


def main(ctx: Context, args: argparse.Namespace) -> None:
    from mpi4py import MPI

    dctx = Context(ctx.comm, debug=True)
    pctx = Context(ctx.comm, debug=False)
    rows = []
    try:
        for name, (raw, checked) in _cases(ctx).items():
            t_raw = timeit(ctx, raw, min_time=args.min_time, repeats=args.repeats)
            t_chk = timeit(ctx, lambda: checked(pctx), min_time=args.min_time, repeats=args.repeats)
            t_dbg = timeit(ctx, lambda: checked(dctx), min_time=args.min_time, repeats=args.repeats)
            rows.append([name, f"{t_raw * 1e6:.2f}", f"{t_chk * 1e6:.2f}", f"{t_dbg * 1e6:.2f}",
                         f"{(t_chk - t_raw) * 1e6:+.2f}", f"{(t_dbg - t_chk) * 1e6:+.2f}",
                         f"{t_raw / t_chk:.2f}"])
        mark = min(_mark_cost() for _ in range(3))
        mark = ctx.comm.allreduce(mark, op=MPI.MAX)
    finally:
        dctx.free()
        pctx.free()
    if not ctx.is_root:
        return
    print(f"hpcpar bench checks: {ctx.size} ranks, {MPI.Get_library_version().splitlines()[0].strip()}")
    print("times are microseconds per call (best of batches, slowest rank); ratio = raw / hpcpar")
    print()
    print(format_table(["call", "raw", "hpcpar", "hpcpar debug", "checks cost", "debug cost",
                        "raw/hpcpar"], rows))
    print()
    print(f"watchdog mark (enter + leave, local): {mark * 1e9:.0f} ns per call")
