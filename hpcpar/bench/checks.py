"""Benchmark: the per-call cost of hpcpar's collectives, checked and unchecked, on small calls.

For each call it times, in one MPI job, the raw mpi4py buffer call, the checked
hpcpar call (agreement step + watchdog mark), the unchecked one
(``Context(checks=False)``: straight to MPI, watchdog mark kept) and the checked
one in debug mode (caller-function check). It also times the watchdog mark alone
(entering and leaving a call, local). The ratios to raw are the per-call price of
each mode, printed next to the project's targets (set for 2 ranks). The floor
column times the raw call plus one ``MPI_Allreduce`` of the agreement vector's
size: the least a checked call can cost, whatever its Python. The u-floor column
times what an unchecked call cannot avoid: the MPI calls of its design with no
Python around them (a bcast or small scatter: one ``Bcast`` of the 4 KiB
announcement, the payload, or this rank's block, copied out into a new array; a
gather: the block lengths' ``Gather``/``Allgather`` and the v-call; barrier and
allreduce: the raw call).

The comparison is like for like: the raw call allocates its result wherever
hpcpar does, and hpcpar is called without ``out=``:

=====================  ====================================  ==============================================
call                   hpcpar                                raw mpi4py
=====================  ====================================  ==============================================
barrier                ``ctx.barrier()``                     ``Barrier``
allreduce 8 B          ``ctx.allreduce(a)``, a float64[1]    ``r = np.empty_like(a)``; ``Allreduce(a, r)``
bcast 1 KB             ``ctx.bcast(a if root else None)``    non-root ``np.empty(128)``; ``Bcast``
scatter 1 KB/rank      ``ctx.scatter(a if root else None)``  ``np.empty(128)``; ``Scatterv`` with counts
gather 1 KB/rank       ``ctx.gather(block)``                 root ``np.empty(128 P)``; ``Gatherv`` with counts
allgather 16x8 B/rank  ``ctx.allgather(block)``              ``np.empty(16 P)``; ``Allgatherv`` with counts
=====================  ====================================  ==============================================

The raw code is that of a user who knows the geometry: the receiving shapes and
the counts and displacements of the v-calls are computed once, before the timed
loop, which is fair because hpcpar computes them once too (its plan cache) and
what remains per call is what is compared. Each measurement is the best of
``--repeats`` batches, the batches of all variants taken in turns (so load from
other processes hits them alike), each timed on the slowest rank.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from ..core import watchdog
from ..core.context import Context
from ..observe.info import mpi_library
from . import format_table, mode_contexts, timeit_interleaved

__all__ = ["add_arguments", "main", "TARGETS", "TARGET_RANKS"]

#: The project's targets, per call: (checked / raw, unchecked / raw); None where none is set.
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "allreduce 8 B": (2.0, 1.2),
    "bcast 1 KB": (2.5, 1.2),
    "scatter 1 KB/rank": (2.5, 1.2),
}
#: The rank count the targets are set for; at other counts the ratios are shown, not judged.
TARGET_RANKS = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=10, help="timed batches per measurement (best is kept)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per timed batch")


def _cases(comm: Any) -> dict[str, tuple[Callable[[], Any], Callable[[Context], Any], Callable[[], Any]]]:
    """name -> (raw callable, hpcpar callable taking a Context, the unchecked design's MPI calls
    without Python); every rank builds the same."""
    from mpi4py import MPI

    from ..core.announce import HEADER_BYTES, INLINE, SIZE

    rank, size = comm.Get_rank(), comm.Get_size()
    root = rank == 0
    one = np.ones(1)
    kb = np.arange(128.0)                       # 1 KB
    whole = np.arange(128.0 * size) if root else None
    block = np.full(128, float(rank))
    small = np.full(16, float(rank))
    kcounts, kdispls = [128] * size, [128 * r for r in range(size)]
    scounts, sdispls = [16] * size, [16 * r for r in range(size)]

    def raw_allreduce() -> None:
        recv = np.empty_like(one)
        comm.Allreduce(one, recv, op=MPI.SUM)

    def raw_bcast() -> None:
        comm.Bcast(kb if root else np.empty(128), root=0)

    def raw_scatter() -> None:
        recv = np.empty(128)
        comm.Scatterv([whole, kcounts, kdispls, MPI.DOUBLE] if root else None, recv, root=0)

    def raw_gather() -> None:
        recv = [np.empty(128 * size), kcounts, kdispls, MPI.DOUBLE] if root else None
        comm.Gatherv(block, recv, root=0)

    def raw_allgather() -> None:
        comm.Allgatherv(small, [np.empty(16 * size), scounts, sdispls, MPI.DOUBLE])

    ann, mine, counts = np.zeros(SIZE, np.uint8), np.ones(1, np.int64), np.empty(size, np.int64)
    payload = ann[HEADER_BYTES:HEADER_BYTES + 1024].view(np.float64)  # 128 doubles, the 1 KB

    def announced_bcast() -> None:
        comm.Bcast(ann, root=0)
        if not root:
            payload.copy()

    def announced_scatter() -> None:  # the whole array rides in the announcement when it fits
        comm.Bcast(ann, root=0)
        if 1024 * size <= INLINE:
            ann[HEADER_BYTES + 1024 * rank:HEADER_BYTES + 1024 * (rank + 1)].view(np.float64).copy()
        else:
            raw_scatter()

    def counted_gather() -> None:
        comm.Gather(mine, counts if root else None, root=0)
        raw_gather()

    def counted_allgather() -> None:
        comm.Allgather(mine, counts)
        raw_allgather()

    return {
        "barrier": (comm.Barrier, lambda c: c.barrier(), comm.Barrier),
        "allreduce 8 B": (raw_allreduce, lambda c: c.allreduce(one), raw_allreduce),
        "bcast 1 KB": (raw_bcast, lambda c: c.bcast(kb if root else None), announced_bcast),
        "scatter 1 KB/rank": (raw_scatter, lambda c: c.scatter(whole), announced_scatter),
        "gather 1 KB/rank": (raw_gather, lambda c: c.gather(block), counted_gather),
        "allgather 16x8 B/rank": (raw_allgather, lambda c: c.allgather(small), counted_allgather),
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


def _ratio(t: float, t_raw: float, target: float | None, judged: bool) -> tuple[str, bool]:
    """The cell ``1.83x (<= 2.0x)``, `` MISS`` appended when over a judged target; and whether it missed."""
    r = t / t_raw
    if target is None:
        return f"{r:.2f}x", False
    miss = judged and r > target
    return f"{r:.2f}x (<= {target:.1f}x)" + (" MISS" if miss else ""), miss


def measure(ctx: Context, repeats: int, min_time: float) -> list[dict[str, Any]]:
    """Per call, seconds per call of ``raw``, ``checked``, ``unchecked`` and ``debug``. **Collective**.

    The three hpcpar variants run on contexts of their own (:func:`mode_contexts`),
    so ``HPCPAR_CHECKS`` and ``HPCPAR_DEBUG`` do not change them.
    """
    from mpi4py import MPI

    from ..core.agreement import SIZE

    contexts = mode_contexts(ctx.comm, debug=True)
    vec, res = np.zeros(SIZE, np.int64), np.empty(SIZE, np.int64)
    rows = []
    try:
        for name, (raw, call, ufloor) in _cases(ctx.comm).items():
            def floor(raw: Callable[[], Any] = raw) -> None:  # raw + one agreement-sized Allreduce
                ctx.comm.Allreduce(vec, res, MPI.MAX)
                raw()
            fns: list[Callable[[], Any]] = [raw, floor, ufloor, *(partial(call, c)
                                                                  for c in contexts.values())]
            times = timeit_interleaved(ctx, fns, min_time=min_time, repeats=repeats)
            rows.append({"call": name, **dict(zip(["raw", "floor", "ufloor", *contexts], times))})
    finally:
        for c in contexts.values():
            c.free()
    return rows


def main(ctx: Context, args: argparse.Namespace) -> None:
    from mpi4py import MPI

    rows = measure(ctx, args.repeats, args.min_time)
    mark = min(_mark_cost() for _ in range(3))
    mark = ctx.comm.allreduce(mark, op=MPI.MAX)
    if not ctx.is_root:
        return
    judged = ctx.size == TARGET_RANKS
    table, misses, targets = [], [], 0
    for r in rows:
        goal = TARGETS.get(r["call"], (None, None))
        cells = []
        for mode, target in zip(("checked", "unchecked"), goal):
            cell, miss = _ratio(r[mode], r["raw"], target, judged)
            cells += [f"{r[mode] * 1e6:.2f}", cell]
            targets += target is not None
            if miss:
                misses.append(f"{mode} {r['call']}")
        table.append([r["call"], f"{r['raw'] * 1e6:.2f}", f"{r['floor'] / r['raw']:.2f}x",
                      f"{r['ufloor'] / r['raw']:.2f}x", *cells, f"{r['debug'] * 1e6:.2f}"])
    print(f"hpcpar bench checks: {ctx.size} ranks, {mpi_library()}")
    print("us per call (best of interleaved batches, slowest rank); ratio = hpcpar / raw, "
          f"(<= t) the project's target at {TARGET_RANKS} ranks")
    print()
    print(format_table(["call", "raw us", "floor/raw", "u-floor/raw", "checked us", "checked/raw",
                        "unchecked us", "unchecked/raw", "debug us"], table))
    print()
    print("floor: the raw call plus one MPI_Allreduce of the agreement's size, with no Python around it "
          "(what any checked call costs at least)")
    print("u-floor: the MPI calls of the unchecked design and the copy of the result, with no Python "
          "around them (what any unchecked call costs at least)")
    print(f"watchdog mark (enter + leave, local): {mark * 1e9:.0f} ns per call")
    if not judged:
        print(f"targets not judged: they are set for {TARGET_RANKS} ranks, this job has {ctx.size}")
    elif misses:
        print(f"targets: {targets - len(misses)} of {targets} met; missed: {', '.join(misses)}")
    else:
        print(f"all {targets} targets met")
