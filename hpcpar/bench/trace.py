"""Benchmark: what a traced span costs (``HPCPAR_TRACE``), and what tracing off costs.

For each hook it times, on every rank, the hooked call with tracing off and on
and prints the difference per call: the price of one span. The hooks timed are
a method marked like the collectives (:func:`hpcpar.watchdog.marked`), a timer
region (``ctx.timer``), a farm task (:func:`hpcpar.observe.trace.task`) and a
method decorated with :func:`hpcpar.observe.trace.traced` (Grid exchanges, Output
writes, checkpoint saves); and one real ``ctx.allreduce`` of 8 bytes. Each figure
is the best of ``--repeats`` batches, off and on taken in turns, on the slowest
rank. The recorder is sized so that no span is dropped while measuring.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import watchdog
from ..observe import timing, trace
from . import format_table

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["add_arguments", "main", "measure"]

#: The budget per span the trace must stay within (seconds).
BUDGET = 2e-6


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=7, help="timed batches per measurement (best is kept)")
    p.add_argument("--calls", type=int, default=20_000, help="calls per batch")


class _Marked:
    @watchdog.marked("bench")
    def call(self) -> None:
        pass

    @trace.traced(trace.IO, "bench")
    def io(self) -> None:
        pass


def _per_call(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def measure(ctx: Context, repeats: int, calls: int) -> list[dict[str, Any]]:
    """Per hook, seconds per call with tracing off and on. **Collective**."""
    from mpi4py import MPI

    rec = trace.RECORDER
    obj = _Marked()
    region = timing.Timers()("bench")
    one = np.ones(1)

    def in_region() -> None:
        with region:
            pass

    cases: dict[str, Callable[[], Any]] = {
        "marked call (collectives)": obj.call,
        "timer region": in_region,
        "farm task": lambda: trace.task(int, 1, 0, 0),
        "traced method (exchange, write)": obj.io,
        "ctx.allreduce 8 B": lambda: ctx.allreduce(one),
    }
    rows = []
    for name, fn in cases.items():
        best = {False: float("inf"), True: float("inf")}
        for _ in range(repeats):
            for on in (False, True):
                rec.reset(calls + trace.CHUNK, ctx.size)
                rec.on = on
                ctx.comm.Barrier()
                try:
                    t = _per_call(fn, calls)
                finally:
                    rec.on = False
                best[on] = min(best[on], ctx.comm.allreduce(t, op=MPI.MAX))
        rows.append({"hook": name, "off": best[False], "on": best[True],
                     "span": max(0.0, best[True] - best[False])})
    rec.reset(trace.CHUNK, 1)
    return rows


def main(ctx: Context, args: argparse.Namespace) -> None:
    rows = measure(ctx, args.repeats, args.calls)
    if not ctx.is_root:
        return
    print(f"hpcpar bench trace: {ctx.size} ranks; ns per call, best of {args.repeats} batches of "
          f"{args.calls} (slowest rank); span = on - off, budget {BUDGET * 1e9:.0f} ns")
    print(format_table(["hook", "off ns", "on ns", "span ns"],
                       [[r["hook"], f"{r['off'] * 1e9:.0f}", f"{r['on'] * 1e9:.0f}",
                         f"{r['span'] * 1e9:.0f}" + ("" if r["span"] <= BUDGET else " OVER")]
                        for r in rows]))
    print(f"memory: {trace.EVENT.itemsize} bytes per kept span; "
          f"{trace.DEFAULT_EVENTS} spans per rank by default (HPCPAR_TRACE_EVENTS)")
