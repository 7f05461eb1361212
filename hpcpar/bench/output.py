"""Benchmark: writing one distributed float64 array to one HDF5 file.

Compares, in the same MPI job and on the same file system:

* ``mpio``: :class:`hpcpar.Output` on the collective MPI-IO path (only where h5py
  is built with MPI, e.g. the ``make test-parallel-hdf5`` venv);
* ``serial token``: the serial fallback passing a token (each rank writes its
  own slab in turn; what large writes use);
* ``serial gather``: the serial fallback gathering every block to root (what
  small writes use), forced for this size;
* ``one process``: the baseline: root alone writes the same bytes with plain
  h5py (``create_dataset(data=...)``) while the other ranks wait.

Each figure is the best of ``--repeats`` runs of open + write + close (+ fsync
with ``--fsync``), timed from a barrier to the slowest rank's finish. The ratio
is baseline time / path time (>= 1 means the path is as fast as one process).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import TYPE_CHECKING

import numpy as np

from ..decomp import partition
from ..io.checkpoint import fsync as fsync_path
from ..io.output import Output, io_mode
from ..observe.info import mpi_library
from . import format_table, parse_size, size_label

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="512M", help="bytes of the global float64 array (default 512M)")
    p.add_argument("--dir", default=None,
                   help="directory for the files (default: the system temporary directory)")
    p.add_argument("--repeats", type=int, default=3, help="runs per path (best is kept)")
    p.add_argument("--fsync", action="store_true", help="include fsync of the file in the time")


def _timed(ctx, fn, path: str, fsync: bool, repeats: int) -> float:
    from mpi4py import MPI

    best = float("inf")
    for _ in range(repeats):
        if ctx.is_root and os.path.exists(path):
            os.unlink(path)
        ctx.comm.Barrier()
        t0 = time.perf_counter()
        fn()
        if fsync and ctx.is_root:
            fsync_path(path)
        dt = ctx.comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        best = min(best, dt)
    if ctx.is_root and os.path.exists(path):
        os.unlink(path)
    return best


def main(ctx: Context, args: argparse.Namespace) -> None:
    import h5py

    nbytes = parse_size(args.size)
    n = max(nbytes // 8, 1)
    nbytes = n * 8
    r = partition.block_range(n, ctx.size, ctx.rank)
    local = np.arange(r.start, r.stop, dtype=np.float64)
    tmp = tempfile.mkdtemp(prefix="hpcpar-bench-", dir=args.dir) if ctx.is_root else None
    tmp = ctx.comm.bcast(tmp, root=0)
    path = os.path.join(tmp, "bench.h5")
    auto = io_mode()
    results = {}
    try:
        def write(io, gather=None):
            kw = {} if gather is None else {"gather_bytes": gather}
            with Output(ctx, path, io=io, provenance=False, **kw) as out:
                out.write("x", local)

        if ctx.is_root:
            print(f"  writing {size_label(nbytes)} from {ctx.size} ranks to {tmp}", flush=True)
        if auto == "mpio":
            results["mpio"] = _timed(ctx, lambda: write("mpio"), path, args.fsync, args.repeats)
        results["serial token"] = _timed(ctx, lambda: write("serial", 0), path, args.fsync, args.repeats)
        results["serial gather"] = _timed(ctx, lambda: write("serial", nbytes), path, args.fsync,
                                          args.repeats)
        del local
        full = np.arange(n, dtype=np.float64) if ctx.is_root else None

        def one_process():
            if ctx.is_root:
                with h5py.File(path, "w") as f:
                    f.create_dataset("x", data=full)

        results["one process"] = _timed(ctx, one_process, path, args.fsync, args.repeats)
    finally:
        ctx.comm.Barrier()
        if ctx.is_root:
            shutil.rmtree(tmp, ignore_errors=True)
    if not ctx.is_root:
        return
    base = results["one process"]
    rows = [[name, f"{t:.3f}", f"{nbytes / t / 1e6:,.0f}", f"{base / t:.2f}"]
            for name, t in results.items()]
    print()
    print(f"hpcpar bench output: {size_label(nbytes)} float64 from {ctx.size} ranks, "
          f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}, MPI: {h5py.get_config().mpi}), "
          f"{mpi_library()}"
          + (", with fsync" if args.fsync else ""))
    print("time = open + write + close, best of runs, slowest rank; "
          "ratio = one-process time / path time (>= 1: as fast as one process)")
    if auto != "mpio":
        print("(no mpio row: this h5py is not built with MPI; run it in the parallel-HDF5 venv)")
    print()
    print(format_table(["path", "seconds", "MB/s", "vs one process"], rows))
