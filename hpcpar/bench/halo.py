"""Benchmark: a heat step on hpcpar.Grid vs hand-written mpi4py Sendrecv vs one rank; sample sort vs np.sort.

Heat: every variant applies the same NumPy 5-point stencil to an N x N grid
(default 4096 x 4096) with Dirichlet walls, decomposed over the same process
grid. (a) ``hpcpar``: ``grid.exchange(u, corners=False)`` then the update;
(b) ``hpcpar overlap``: ``exchange_begin``, the deep interior, ``exchange_end``,
the rim (as ``jobs/heat.py`` does); (c) ``hand-written``: a Cartesian
communicator and blocking ``Sendrecv`` of packed columns, then whole rows
(contiguous, corners included), none on an axis without neighbours, written as a
hand-tuned mpi4py code would (:func:`hpcpar.bench.kernels.hand_written_halo`);
(d) ``1 rank``: the whole grid on root alone, the other ranks idle (sleeping,
not spinning).

Sort: ``hpcpar.sort.sample_sort`` of N random keys spread over the ranks, against
``np.sort`` of the same N keys on root alone.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..decomp import partition
from ..decomp.grid import Grid
from ..decomp.sort import sample_sort
from ..observe.info import mpi_library
from . import format_table, timeit
from .kernels import hand_written_halo, heat_stencil

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["add_arguments", "main"]

_R = 0.2  # alpha dt / h^2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=4096, help="grid points per side (default 4096)")
    p.add_argument("--dims", default=None, help="process grid as RxC (default: balanced)")
    p.add_argument("--sort-keys", type=float, default=1e7,
                   help="keys for the sort benchmark (default 1e7; 0 skips it)")
    p.add_argument("--sort-dtypes", default="int64,float64", help="comma-separated key dtypes")
    p.add_argument("--repeats", type=int, default=3, help="timed batches per measurement (best is kept)")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per timed batch")


def _update(u, out) -> None:
    n0, n1 = u.shape[0] - 2, u.shape[1] - 2
    heat_stencil(u, out, _R, slice(1, n0 + 1), slice(1, n1 + 1))


def _initial(shape, slices) -> np.ndarray:
    u = np.zeros(tuple(n + 2 for n in (s.stop - s.start for s in slices)))
    x = [np.sin(np.pi * np.arange(s.start + 1, s.stop + 1) / (n + 1)) for s, n in zip(slices, shape)]
    u[1:-1, 1:-1] = x[0][:, None] * x[1][None, :]
    return u


class _Stepper:
    """Double-buffered time stepping with one of the exchange variants."""

    def __init__(self, u, exchange, overlap_grid=None):
        self.u, self.v = u, np.zeros_like(u)
        self.exchange = exchange
        self.grid = overlap_grid

    def __call__(self):
        u, v = self.u, self.v
        if self.grid is None:
            self.exchange(u)
            _update(u, v)
        else:
            n0, n1 = u.shape[0] - 2, u.shape[1] - 2
            self.grid.exchange_begin(u, corners=False)
            heat_stencil(u, v, _R, slice(2, n0), slice(2, n1))
            self.grid.exchange_end()
            heat_stencil(u, v, _R, slice(1, 2), slice(1, n1 + 1))
            heat_stencil(u, v, _R, slice(max(n0, 2), n0 + 1), slice(1, n1 + 1))
            heat_stencil(u, v, _R, slice(2, n0), slice(1, 2))
            heat_stencil(u, v, _R, slice(2, n0), slice(max(n1, 2), n1 + 1))
        self.u, self.v = v, u


def _on_root_alone(ctx: Context, fn: Callable[[], object], min_time: float, repeats: int) -> float:
    """Seconds per call of ``fn`` run on root only; the others sleep in an Ibarrier. **Collective**."""
    best = 0.0
    if ctx.is_root:
        fn()
        t0 = time.perf_counter()
        fn()
        calls = max(1, int(min_time / max(time.perf_counter() - t0, 1e-9)))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best = min(best, (time.perf_counter() - t0) / calls)
    req = ctx.comm.Ibarrier()
    while not req.Test():
        time.sleep(0.005)
    return float(ctx.comm.bcast(best, root=0))


def _heat(ctx: Context, args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]]]:
    n = args.size
    dims = tuple(int(d) for d in args.dims.split("x")) if args.dims else None
    grid = Grid(ctx, (n, n), dims=dims)
    n0, n1 = grid.local_shape
    t = {}
    u = _initial(grid.shape, grid.global_slices)
    t["hpcpar"] = timeit(ctx, _Stepper(u.copy(), lambda a: grid.exchange(a, corners=False)),
                         min_time=args.min_time, repeats=args.repeats)
    t["hpcpar overlap"] = timeit(ctx, _Stepper(u.copy(), None, overlap_grid=grid),
                                 min_time=args.min_time, repeats=args.repeats)
    # whole rows (corners included) and no calls on an axis without neighbours, as hand-tuned code does
    cart, exchange = hand_written_halo(ctx.comm, grid.dims, (n0, n1), corners=True, skip_walls=True)
    t["hand-written"] = timeit(ctx, _Stepper(u, exchange), min_time=args.min_time, repeats=args.repeats)
    # the halo exchange alone, without the stencil
    x = {"hpcpar": timeit(ctx, lambda: grid.exchange(u, corners=False), min_time=0.1, repeats=args.repeats),
         "hpcpar corners": timeit(ctx, lambda: grid.exchange(u), min_time=0.1, repeats=args.repeats),
         "hand-written": timeit(ctx, lambda: exchange(u), min_time=0.1, repeats=args.repeats)}
    del u
    cart.Free()
    grid.free()
    full = (slice(0, n), slice(0, n))
    serial = _Stepper(_initial((n, n), full) if ctx.is_root else np.zeros((3, 3)), lambda a: None)
    t["1 rank"] = _on_root_alone(ctx, serial, args.min_time, args.repeats)
    del serial
    rows = []
    for name in ("hpcpar", "hpcpar overlap", "hand-written", "1 rank"):
        rows.append([name, "x".join(map(str, grid.dims)) if name != "1 rank" else "1x1",
                     f"{t[name] * 1e3:,.2f}", f"{n * n / t[name] / 1e6:,.0f}",
                     f"{t['hand-written'] / t[name]:.3f}", f"{t['1 rank'] / t[name]:.2f}"])
    xrows = [[name, f"{x[name] * 1e6:,.1f}", f"{x['hand-written'] / x[name]:.3f}"] for name in x]
    return rows, xrows


def _sort(ctx: Context, args: argparse.Namespace) -> list[list[str]]:
    n = int(args.sort_keys)
    rows = []
    for name in [d.strip() for d in args.sort_dtypes.split(",") if d.strip()]:
        dt = np.dtype(name)
        r = partition.block_range(n, ctx.size, ctx.rank)
        rng = np.random.default_rng([11, ctx.rank])
        if dt.kind == "f":
            keys = rng.standard_normal(len(r)).astype(dt)
        else:
            keys = rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, len(r), dtype=dt)
        t_par = timeit(ctx, lambda: sample_sort(ctx, keys), min_time=0.0, repeats=args.repeats)
        everything = ctx.gather(keys)
        t_np = _on_root_alone(ctx, lambda: np.sort(everything) if everything is not None else None,
                              0.0, args.repeats)
        del everything, keys
        rows.append([name, f"{n:,}", f"{t_par:.3f}", f"{n / t_par / 1e6:,.1f}",
                     f"{t_np:.3f}", f"{n / t_np / 1e6:,.1f}", f"{t_np / t_par:.2f}"])
    return rows


def main(ctx: Context, args: argparse.Namespace) -> None:
    if args.size < 3:
        raise ValueError(f"--size must be at least 3, got {args.size}")
    heat_rows, exchange_rows = _heat(ctx, args)
    sort_rows = _sort(ctx, args) if args.sort_keys >= 1 else []
    if not ctx.is_root:
        return
    print(f"hpcpar bench halo: {ctx.size} ranks, {mpi_library()}")
    print(f"heat step (5-point stencil, Dirichlet walls) on {args.size} x {args.size} float64; "
          "best of batches, slowest rank")
    print("vs hand-written = hand-written time / variant time (>= 1: at least as fast); "
          "speedup = 1-rank time / variant time")
    print()
    print(format_table(["variant", "dims", "ms/step", "M cells/s", "vs hand-written", "speedup vs 1 rank"],
                       heat_rows))
    print()
    print("the halo exchange alone (faces only unless named 'corners')")
    print()
    print(format_table(["exchange", "us/call", "vs hand-written"], exchange_rows))
    if sort_rows:
        print()
        print(f"sample sort on {ctx.size} ranks vs np.sort of all keys on one rank "
              "(ratio = np.sort time / sample_sort time)")
        print()
        print(format_table(["dtype", "keys", "sample_sort s", "M keys/s", "np.sort s", "M keys/s",
                            "ratio"], sort_rows))
