"""Benchmark: hpcpar scatter/gather/allgather vs raw mpi4py buffer calls and pickle calls.

Like for like: raw calls that allocate their receive buffer are compared with
hpcpar's allocating calls, and raw calls into a preallocated buffer with hpcpar's
``out=`` calls. The raw calls get their counts and displacements built by hand
before timing starts, as a hand-tuned code would. Message size is the size of
the whole (global) float64 array.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from ..decomp import partition
from ..observe.info import mpi_library

if TYPE_CHECKING:
    from ..core.context import Context
from . import format_table, parse_size, size_label, timeit

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-size", default="1K", help="smallest global array size (default 1K)")
    p.add_argument("--max-size", default="256M", help="largest global array size (default 256M)")
    p.add_argument("--ops", default="scatter,gather,allgather", help="comma-separated operations")
    p.add_argument("--repeats", type=int, default=3, help="timed batches per measurement (best is kept)")
    p.add_argument("--min-time", type=float, default=0.1, help="seconds per timed batch")


def _sizes(lo: int, hi: int) -> list[int]:
    out, s = [], lo
    while s <= hi:
        out.append(s)
        s *= 4
    return out


def _variants(ctx: Context, op: str, nbytes: int) -> dict[str, Any]:
    from mpi4py import MPI

    """name -> zero-argument callable, for one op and size."""
    comm, rank, size = ctx.comm, ctx.rank, ctx.size
    n = nbytes // 8
    counts = partition.block_counts(n, size)
    displs = partition.block_displs(n, size)
    mine = counts[rank]
    full = np.arange(n, dtype=np.float64) if (rank == 0 or op == "allgather") else None
    if op == "scatter":
        data = full if rank == 0 else None
        chunks = [full[d:d + c] for c, d in zip(counts, displs)] if full is not None and rank == 0 else None
        buf: np.ndarray | None = np.empty(mine)
        sendspec = [data, counts, displs, MPI.DOUBLE] if rank == 0 else None

        def raw():
            recv = np.empty(mine)
            comm.Scatterv(sendspec, recv, root=0)
            return recv

        return {
            "hpcpar": lambda: ctx.scatter(data),
            "raw": raw,
            "hpcpar out=": lambda: ctx.scatter(data, out=buf),
            "raw prealloc": lambda: comm.Scatterv(sendspec, buf, root=0),
            "pickle": lambda: comm.scatter(chunks, root=0),
        }
    local = np.full(mine, float(rank))
    buf = np.empty(n) if (rank == 0 or op == "allgather") else None
    if op == "gather":
        def raw():
            recv = np.empty(n) if rank == 0 else None
            comm.Gatherv(local, [recv, counts, displs, MPI.DOUBLE] if rank == 0 else None, root=0)
            return recv

        def pickled():
            parts = comm.gather(local, root=0)
            return np.concatenate(parts) if parts is not None else None

        return {
            "hpcpar": lambda: ctx.gather(local),
            "raw": raw,
            "hpcpar out=": lambda: ctx.gather(local, out=buf),
            "raw prealloc": lambda: comm.Gatherv(
                local, [buf, counts, displs, MPI.DOUBLE] if rank == 0 else None, root=0),
            "pickle": pickled,
        }

    def raw_all():
        recv = np.empty(n)
        comm.Allgatherv(local, [recv, counts, displs, MPI.DOUBLE])
        return recv

    return {
        "hpcpar": lambda: ctx.allgather(local),
        "raw": raw_all,
        "hpcpar out=": lambda: ctx.allgather(local, out=buf),
        "raw prealloc": lambda: comm.Allgatherv(local, [buf, counts, displs, MPI.DOUBLE]),
        "pickle": lambda: np.concatenate(comm.allgather(local)),
    }


def main(ctx: Context, args: argparse.Namespace) -> None:
    sizes = _sizes(parse_size(args.min_size), parse_size(args.max_size))
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    rows, overhead = [], {}
    for op in ops:
        for nbytes in sizes:
            fns = _variants(ctx, op, nbytes)
            t = {name: timeit(ctx, fn, min_time=args.min_time, repeats=args.repeats)
                 for name, fn in fns.items()}
            del fns
            if nbytes == sizes[0]:
                overhead[op] = (t["hpcpar"] - t["raw"], t["hpcpar out="] - t["raw prealloc"])
            mbs = lambda s: f"{nbytes / s / 1e6:,.0f}"  # noqa: E731
            rows.append([
                op, size_label(nbytes),
                f"{t['hpcpar'] * 1e6:,.1f}", f"{t['raw'] * 1e6:,.1f}", f"{t['raw'] / t['hpcpar']:.2f}",
                f"{t['hpcpar out='] * 1e6:,.1f}", f"{t['raw prealloc'] * 1e6:,.1f}",
                f"{t['raw prealloc'] / t['hpcpar out=']:.2f}",
                f"{t['pickle'] * 1e6:,.1f}", f"{t['pickle'] / t['hpcpar']:.1f}", mbs(t["hpcpar"]),
            ])
            if ctx.is_root:
                print(f"  {op:9s} {size_label(nbytes):>7s} done", flush=True)
    if not ctx.is_root:
        return
    print()
    print(f"hpcpar bench collectives: {ctx.size} ranks, {mpi_library()}")
    print("times are microseconds per call (best of batches, slowest rank); "
          "ratio = baseline time / hpcpar time (>1 means hpcpar is faster)")
    print()
    print(format_table(
        ["op", "size", "hpcpar", "raw", "raw/hpcpar", "hpcpar out=", "raw prealloc",
         "prealloc/out=", "pickle", "pickle/hpcpar", "hpcpar MB/s"], rows))
    print()
    smallest = size_label(sizes[0])
    for op, (alloc, pre) in overhead.items():
        print(f"per-call overhead over raw at {smallest}, {op}: "
              f"{alloc * 1e6:+.1f} us allocating, {pre * 1e6:+.1f} us with out=")
