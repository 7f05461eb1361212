"""Benchmark: hpcpar.farm vs mpi4py.futures.MPICommExecutor vs multiprocessing.Pool, and two efficiencies.

1. Throughput on ``--tasks`` tiny tasks, at chunksize 1 and at each method's best
   chunksize of ``--chunksizes``: ``hpcpar.farm`` and ``MPICommExecutor`` on the
   same ranks (MPICommExecutor's root only dispatches; the farm's root computes
   too), and ``multiprocessing.Pool`` with as many processes as there are ranks,
   started from root with the spawn method (pool start-up is not timed).
2. Mandelbrot: parallel efficiency ``T_serial / (size * T_parallel)`` of the dynamic
   farm and of the static block partition. Each is compared with one process doing
   the same work the same way: the farm's tasks of ``--rows`` rows one after the
   other, and the whole image in one call for the static blocks (NumPy's per-call
   cost on small row tasks is then part of both sides, not counted as imbalance).
3. ``local_pool`` speedup on a CPU-bound pure-Python task, on root with the
   other ranks idle, with as many workers as root may use CPUs.

While root runs a one-process measurement the other ranks wait in a sleeping
barrier, so they leave the CPUs alone.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from ..observe.info import mpi_library
from . import format_table
from .kernels import mandelbrot_rows

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["add_arguments", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int, default=10_000, help="tiny tasks per throughput run (default 10000)")
    p.add_argument("--chunksizes", default="1,8,64,256", help="chunksizes to try (default 1,8,64,256)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    p.add_argument("--size", default="1200x900", help="Mandelbrot image WxH (default 1200x900)")
    p.add_argument("--max-iter", type=int, default=300, help="Mandelbrot iterations (default 300)")
    p.add_argument("--cpu-tasks", type=int, default=16, help="CPU-bound tasks for the local_pool run")


def tiny(x: int) -> int:
    """The tiny task: a few hundred nanoseconds of work."""
    return x * x + 1


def spin(n: int) -> int:
    """A CPU-bound pure-Python task."""
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


def _idle_barrier(comm) -> None:
    """A barrier that sleeps instead of spinning (MPI barriers busy-poll a core)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(1e-3)


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _farm_rate(ctx, n, cs, repeats):
    from mpi4py import MPI

    from ..tasks.farm import farm

    tasks = range(n) if ctx.is_root else None
    farm(ctx, tiny, tasks, chunksize=cs)  # warm up
    best = float("inf")
    for _ in range(repeats):
        ctx.comm.Barrier()
        t0 = time.perf_counter()
        farm(ctx, tiny, tasks, chunksize=cs)
        best = min(best, ctx.comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    return n / best


def _farm_counts(ctx, n):
    """Tasks each rank ran in one farm at chunksize 1."""
    from ..tasks.farm import farm

    count = 0

    def counted(x):
        nonlocal count
        count += 1
        return tiny(x)

    farm(ctx, counted, range(n) if ctx.is_root else None, chunksize=1)
    return ctx.comm.gather(count, root=0)


def _executor_rate(ctx, n, cs, repeats):
    from mpi4py.futures import MPICommExecutor

    comm = ctx.comm.Dup()
    try:
        with MPICommExecutor(comm, root=0) as ex:
            if ex is None:
                return None  # a worker: serves until root leaves the with-block
            run = ex.map  # type: ignore[attr-defined]  # mpi4py's stubs lack Executor.map
            list(run(tiny, range(min(n, 1000)), chunksize=cs))  # warm up
            return n / _best(lambda: list(run(tiny, range(n), chunksize=cs)), repeats)
    finally:
        comm.Free()


def _pool_rate(pool, n, cs, repeats):
    pool.map(tiny, range(1000), chunksize=cs)
    return n / _best(lambda: pool.map(tiny, range(n), chunksize=cs), repeats)


def _mandelbrot(ctx, width, height, max_iter, repeats, per_task=8):
    """(T_serial whole image, T_serial by tasks, T_static, T_farm) on root; best of ``repeats``."""
    from mpi4py import MPI

    from ..decomp import partition
    from ..tasks.farm import farm

    rows = mandelbrot_rows
    t_serial = t_tasks = None
    if ctx.is_root:
        t_serial = _best(lambda: rows(0, height, width, height, max_iter), repeats)
        t_tasks = _best(lambda: [rows(y, min(height, y + per_task), width, height, max_iter)
                                 for y in range(0, height, per_task)], repeats)
    _idle_barrier(ctx.comm)

    def static():
        r = partition.block_range(height, ctx.size, ctx.rank)
        ctx.gather(rows(r.start, r.stop, width, height, max_iter))

    def dynamic():
        out = farm(ctx, lambda y: rows(y, min(height, y + per_task), width, height, max_iter),
                   range(0, height, per_task) if ctx.is_root else None, chunksize=1)
        if out is not None:
            sum(len(part) for part in out)

    times = []
    for fn in (static, dynamic):
        best = float("inf")
        for _ in range(repeats):
            ctx.comm.Barrier()
            t0 = time.perf_counter()
            fn()
            best = min(best, ctx.comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        times.append(best)
    return t_serial, t_tasks, times[0], times[1]


def main(ctx: Context, args: argparse.Namespace) -> None:
    from mpi4py import MPI

    from ..tasks.local import WorkerContext as _Context
    from ..tasks.local import available_cpus, local_pool

    n, reps = args.tasks, args.repeats
    sizes = [int(s) for s in args.chunksizes.split(",") if s.strip()]
    if 1 not in sizes:
        sizes.insert(0, 1)
    say = (lambda *a: print(*a, flush=True)) if ctx.is_root else (lambda *a: None)
    say(f"hpcpar bench farm: {ctx.size} ranks, {n:,} tiny tasks, "
        f"{mpi_library()}, thread level "
        f"{'MULTIPLE' if MPI.Query_thread() == MPI.THREAD_MULTIPLE else MPI.Query_thread()}")

    rates: dict[str, dict[int, float]] = {"hpcpar.farm": {}, "MPICommExecutor": {},
                                          "multiprocessing.Pool": {}}
    for cs in sizes:
        rates["hpcpar.farm"][cs] = _farm_rate(ctx, n, cs, reps)
        say(f"  hpcpar.farm          chunksize {cs:4d}: {rates['hpcpar.farm'][cs]:12,.0f} tasks/s")
    counts = _farm_counts(ctx, n)
    if ctx.size > 1:
        for cs in sizes:
            r = _executor_rate(ctx, n, cs, 1 if cs == 1 else reps)
            rates["MPICommExecutor"][cs] = r
            if r is not None:
                say(f"  MPICommExecutor      chunksize {cs:4d}: {r:12,.0f} tasks/s")
    if ctx.is_root:
        with _Context().Pool(ctx.size) as pool:  # spawn: never fork an MPI process
            for cs in sizes:
                rates["multiprocessing.Pool"][cs] = _pool_rate(pool, n, cs, reps)
                say(f"  multiprocessing.Pool chunksize {cs:4d}: "
                    f"{rates['multiprocessing.Pool'][cs]:12,.0f} tasks/s")
    _idle_barrier(ctx.comm)

    w, h = (int(x) for x in args.size.lower().split("x"))
    t_serial, t_tasks, t_static, t_farm = _mandelbrot(ctx, w, h, args.max_iter, reps)

    speedup = workers = None
    if ctx.is_root:
        workers = available_cpus()
        work = [200_000] * args.cpu_tasks
        t1 = _best(lambda: [spin(k) for k in work], 1)
        with local_pool(workers) as lpool:
            list(lpool.map(spin, [10] * workers))  # start the workers
            tp = _best(lambda: list(lpool.map(spin, work)), 2)
        speedup = t1 / tp
    _idle_barrier(ctx.comm)
    if not ctx.is_root:
        return

    def best(name):
        r = rates[name]
        cs = max(r, key=lambda k: r[k])
        return r[cs], cs

    rows = []
    for name, r in rates.items():
        if not r:
            rows.append([name, "n/a (needs 2+ ranks)", "", "", ""])
            continue
        b, bcs = best(name)
        rows.append([name, f"{r[1]:,.0f}", f"{b:,.0f}", str(bcs),
                     f"{rates['hpcpar.farm'][1] / r[1]:.1f}" if name != "hpcpar.farm" else "1.0"])
    print()
    print("throughput, tasks/s (best of runs); ratio = hpcpar.farm / baseline at chunksize 1")
    print(format_table(["method", "chunksize 1", "best", "best chunksize", "farm ratio at 1"], rows))
    print()
    print(f"tasks per rank in one hpcpar.farm at chunksize 1: {counts} (every rank computes)")
    fb, fcs = best("hpcpar.farm")
    for name in ("MPICommExecutor", "multiprocessing.Pool"):
        if rates[name]:
            b, bcs = best(name)
            print(f"best vs best: hpcpar.farm {fb:,.0f}/s (chunksize {fcs}) / {name} {b:,.0f}/s "
                  f"(chunksize {bcs}) = {fb / b:.2f}x")
    print()
    print(f"Mandelbrot {w}x{h}, max_iter {args.max_iter}: static blocks {t_static:.3f} s vs one "
          f"process {t_serial:.3f} s (efficiency {t_serial / (ctx.size * t_static):.2f}); "
          f"dynamic farm of 8-row tasks {t_farm:.3f} s vs one process doing the same tasks "
          f"{t_tasks:.3f} s (efficiency {t_tasks / (ctx.size * t_farm):.2f})")
    print(f"local_pool: {args.cpu_tasks} CPU-bound tasks, {workers} process workers on root: "
          f"speedup {speedup:.2f}x over one process")
