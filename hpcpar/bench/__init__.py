"""Benchmarks: hpcpar against baselines measured in the same MPI job.

Each benchmark is a module of this package with ``add_arguments(parser)`` and
``main(ctx, args)``; :data:`BENCHMARKS` maps the name used on the command line
to the module. The modules import MPI; :func:`configure` imports one only when
its benchmark is chosen (or its ``--help`` asked for), so building the ``hpcpar``
command's parser starts no MPI. A benchmark is **collective**: start it on every rank, e.g.
``mpiexec -n 2 hpcpar bench collectives``. Only root prints.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["BENCHMARKS", "configure", "main", "timeit", "timeit_interleaved", "mode_contexts",
           "format_table", "size_label", "parse_size"]

#: name on the command line -> (module, one-line description)
BENCHMARKS = {
    "collectives": ("hpcpar.bench.collectives",
                    "scatter/gather/allgather vs raw mpi4py buffer calls and pickle calls"),
    "checks": ("hpcpar.bench.checks",
               "per-call cost of checked, unchecked and debug collectives vs raw mpi4py, "
               "and of the watchdog mark"),
    "output": ("hpcpar.bench.output",
               "one shared HDF5 file: mpio / serial fallback vs one process writing with plain h5py"),
    "halo": ("hpcpar.bench.halo",
             "heat step on Grid vs hand-written Sendrecv vs 1 rank; sample sort vs np.sort"),
    "farm": ("hpcpar.bench.farm",
             "task farm vs MPICommExecutor and multiprocessing.Pool; Mandelbrot efficiency; "
             "local_pool speedup"),
    "trace": ("hpcpar.bench.trace",
              "the cost of one traced span (HPCPAR_TRACE) per hook, and of tracing off"),
    "scale": ("hpcpar.bench.scale",
              "MPI calls and bytes per rank of each checked collective vs raw mpi4py, per rank count"),
    "startup": ("hpcpar.bench.startup",
                "start-up of hpcpar run vs plain mpiexec python (a 3-rank hello); run it without mpiexec"),
}


class _BenchParser(argparse.ArgumentParser):
    """A benchmark's sub-parser: its options are added from its module on first use."""

    def __init__(self, *args: Any, module: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._module: str | None = module

    def _load(self) -> None:
        if self._module is not None:
            module, self._module = self._module, None
            importlib.import_module(module).add_arguments(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._load()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._load()
        return super().format_help()

    def format_usage(self) -> str:
        self._load()
        return super().format_usage()


def configure(parser: argparse.ArgumentParser) -> None:
    """Add one sub-parser per benchmark to ``parser``. **Local**.

    A benchmark's module (which imports MPI) is imported only when its
    sub-parser is used.
    """
    sub = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True,
                                parser_class=_BenchParser)
    for name, (modname, help_) in BENCHMARKS.items():
        sub.add_parser(name, help=help_, description=help_, module=modname)


def main(args: argparse.Namespace) -> int:
    """Run the benchmark named by ``args.bench`` under the hpcpar runner. **Collective**,
    except for a benchmark whose module sets ``SERIAL`` (it starts jobs itself)."""
    module = importlib.import_module(BENCHMARKS[args.bench][0])
    if getattr(module, "SERIAL", False):
        return int(module.main(args))
    from ..core.runner import run

    return run(module.main, args) or 0


def mode_contexts(comm: Any, debug: bool = False) -> dict[str, Context]:
    """Contexts over ``comm`` for each mode of the collectives: ``checked`` and ``unchecked``
    (``Context(checks=False)``), and with ``debug`` also ``debug`` (checked, debug checks on).
    **Collective**; free them when done.

    Every mode is set explicitly, so ``HPCPAR_CHECKS`` and ``HPCPAR_DEBUG`` in the
    environment do not change what a benchmark measures under each name.
    """
    from ..core.context import Context

    # unused-ignore: the ignore is needed only before Context takes checks= (the core rewrite)
    out = {"checked": Context(comm, debug=False, checks=True),
           "unchecked": Context(comm, debug=False, checks=False)}
    if debug:
        out["debug"] = Context(comm, debug=True, checks=True)
    return out


def timeit(ctx: Context, fn: Callable[[], object], min_time: float = 0.2, repeats: int = 5,
           max_calls: int = 100_000) -> float:
    """Seconds per call of ``fn``, the best of ``repeats`` timed batches. **Collective**.

    The number of calls per batch is chosen on root (so that a batch lasts about
    ``min_time``) and broadcast, so all ranks call ``fn`` equally often: ``fn`` may
    itself be collective. Each batch starts after a barrier and its time is the
    slowest rank's.
    """
    comm = ctx.comm
    fn()  # warm up (allocations, plan caches, connections)
    comm.Barrier()
    t0 = time.perf_counter()
    fn()
    one = comm.allreduce(time.perf_counter() - t0, op=_max())
    calls = max(1, min(max_calls, int(min_time / max(one, 1e-9))))
    calls = comm.bcast(calls, root=0)
    best = float("inf")
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        dt = comm.allreduce(time.perf_counter() - t0, op=_max())
        best = min(best, dt / calls)
    return best


def timeit_interleaved(ctx: Context, fns: Sequence[Callable[[], object]], min_time: float = 0.2,
                       repeats: int = 5, max_calls: int = 100_000) -> list[float]:
    """Seconds per call of each of ``fns``, timed in turns; the best batch of each. **Collective**.

    Each of the ``repeats`` rounds times one batch of every function, in order, so
    a burst of load on a shared machine slows the batches of all of them alike
    instead of one function's whole measurement; the best of its batches is kept
    for each. As in :func:`timeit`, the calls per batch (about ``min_time`` each)
    are the same on every rank, every batch starts after a barrier and its time is
    the slowest rank's, so the functions may be collective.
    """
    comm = ctx.comm
    calls = []
    for fn in fns:
        fn()  # warm up (allocations, plan caches, connections)
        n = 1
        while True:  # grow the trial batch until it lasts a tenth of a batch: one call is too noisy
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            dt = comm.allreduce(time.perf_counter() - t0, op=_max())
            if dt >= min_time / 10 or n >= max_calls:
                break
            n *= 4
        calls.append(max(1, min(max_calls, int(n * min_time / max(dt, 1e-9)))))
    calls = comm.bcast(calls, root=0)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, (fn, k) in enumerate(zip(fns, calls)):
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            dt = comm.allreduce(time.perf_counter() - t0, op=_max())
            best[i] = min(best[i], dt / k)
    return best


def parse_size(text: str) -> int:
    """``"16M"`` -> 16777216 (K, M, G are powers of 1024; a trailing B is allowed). **Local**."""
    text = text.strip().upper().rstrip("B")
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * mult)


def _max():
    from mpi4py import MPI

    return MPI.MAX


def size_label(nbytes: int) -> str:
    """``1 KB``, ``256 MB`` … (powers of 1024)."""
    size: float = nbytes
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:g} {unit}"
        size /= 1024
    return str(size)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table whose columns line up in a terminal too."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
