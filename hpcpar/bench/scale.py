"""Benchmark: MPI calls and bytes per rank of each collective, checked and unchecked, vs raw mpi4py, per P.

Counted, not timed: every rank runs under the PMPI counting library
(:mod:`hpcpar.bench.counting`), so the figures are exact and do not depend on the
machine's load; oversubscribed jobs (32 ranks on 2 cores) measure the same.

``hpcpar bench scale --ranks 2,4,8,16,32`` (from a plain shell, one process) builds
the library, starts one job per rank count with it preloaded, and prints one table:
per operation the MPI calls, bytes received and bytes sent per call, the largest
over the ranks, of raw mpi4py, of hpcpar checked (the default) and of hpcpar
unchecked (``Context(checks=False)``) doing the same job, the difference of each
mode to raw (the cost of hpcpar's checks, and what is left without them), and a
fit ``a + b*P`` of the checked mode's extra bytes received per call, projected
to large rank counts. ``mpiexec -n P env LD_PRELOAD=LIB hpcpar
bench scale`` (LIB from ``python -m hpcpar.bench.counting``) measures one rank count.

The operations, each averaged over ``--repeat`` calls after ``--warmup`` calls
(so the one-off plan building of the first call is left out):

=====================  =============================================  =====================================
operation              hpcpar (on a checked and an unchecked ctx)     raw mpi4py
=====================  =============================================  =====================================
allreduce f64          ``ctx.allreduce(np.float64(x))``               ``Allreduce`` of 8 bytes
allreduce object       ``ctx.allreduce(1.0)`` (pickled)               ``comm.allreduce(1.0)``
bcast 1 KB             ``ctx.bcast(array)``                           ``Bcast``
scatter 1 KB/rank      ``ctx.scatter(array)``                         ``Scatterv`` with counts
gather 1 KB/rank       ``ctx.gather(block)``                          ``Gatherv`` with counts
allgather 1 KB/rank    ``ctx.allgather(block)``                       ``Allgatherv`` with counts
barrier                ``ctx.barrier()``                              ``Barrier``
halo 2-D faces         ``Grid.exchange(u, corners=False)``            four ``Sendrecv``: rows, packed columns
output write 1 KB/rank ``Output.write(name, block)`` (a new dataset)  ``Gatherv`` with counts (the data only)
=====================  =============================================  =====================================

``output write`` writes each rank's block to a new dataset of one HDF5 file per
mode in a temporary directory of root's; on the serial path root receives every
block, as in raw mpi4py's ``Gatherv``, so the difference is the agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from . import counting, format_table, mode_contexts
from .kernels import hand_written_halo

__all__ = ["add_arguments", "main", "measure", "fit", "MODES", "PROJECT_TO"]

#: The columns of each operation: raw mpi4py, then hpcpar with and without the checks.
MODES = ("raw", "checked", "unchecked")

#: Rank counts the fitted model is projected to.
PROJECT_TO = (1024, 8192, 65536)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks", default=None,
                   help="rank counts, e.g. 2,4,8,16,32: start one counted job per count (run this "
                        "from one process, not under mpiexec); without it, measure this job")
    p.add_argument("--repeat", type=int, default=50, help="counted calls per operation (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="uncounted calls before them (default 5)")
    p.add_argument("--block", type=int, default=1024, help="bytes per block / broadcast (default 1024)")
    p.add_argument("--side", type=int, default=64,
                   help="grid points per side of each rank's block (default 64)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per job with --ranks (default 300)")
    p.add_argument("--json", default=None, help="also write the rows (and the model) to this JSON file")


def main(ctx: Any, args: argparse.Namespace) -> int:
    """``--ranks``: start the counted jobs (**local**, one rank); else count this job (**collective**)."""
    if args.ranks:
        if ctx.size != 1:
            if ctx.is_root:
                print("hpcpar bench scale: --ranks starts its own jobs; run it as one process "
                      "(`hpcpar bench scale --ranks 2,4`), not under mpiexec", file=sys.stderr)
            return 2
        return _drive(args)
    if not counting.Counters.loaded():
        if ctx.is_root:
            print("hpcpar bench scale: the PMPI counting library is not preloaded; run "
                  "`hpcpar bench scale --ranks 2,4,8`, or start each job with "
                  "`mpiexec -n P env LD_PRELOAD=$(python -m hpcpar.bench.counting) hpcpar bench scale`",
                  file=sys.stderr)
        return 2
    rows = measure(ctx, args.repeat, args.warmup, args.block, args.side)
    if ctx.is_root:
        print(_LEGEND)
        print(format_table(*_table(rows)))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"rows": rows}, fh, indent=2)
    return 0


# ---- inside one job ----------------------------------------------------------------
def measure(ctx: Any, repeat: int = 50, warmup: int = 5, block: int = 1024,
            side: int = 64) -> list[dict[str, Any]]:
    """Per operation, per-call MPI calls and bytes of raw mpi4py and hpcpar in each mode. **Collective**.

    Every rank runs every operation ``warmup`` times uncounted, then ``repeat``
    times counted. The counting library must be preloaded (see :mod:`counting`).
    hpcpar runs on a checked and an unchecked context of its own over ``ctx.comm``
    (:func:`hpcpar.bench.mode_contexts`), whatever ``HPCPAR_CHECKS`` says.

    Returns:
        On root, one dict per operation: ``ranks``, ``op``, and for each of
        :data:`MODES` (``raw``, ``checked``, ``unchecked``) the per-call ``calls``,
        ``recv``, ``sent`` (each the largest over the ranks) and ``funcs`` (MPI
        function -> calls per call, the largest over the ranks); the other ranks
        get an empty list.
    """
    counters = counting.Counters()
    contexts = mode_contexts(ctx.comm)
    rows = []
    try:
        for op, fns, cleanup in _operations(ctx, contexts, block, side):
            row: dict[str, Any] = {"ranks": ctx.size, "op": op}
            for mode in MODES:
                mine = _per_call(counters, fns[mode], repeat, warmup)
                everyone = ctx.comm.gather(mine, root=0)  # after the reading: not counted
                if ctx.is_root:
                    row[mode] = _largest(everyone)
            cleanup()
            rows.append(row)
    finally:
        for c in contexts.values():
            c.free()
    return rows if ctx.is_root else []


def _per_call(counters: counting.Counters, fn: Callable[[], object], repeat: int,
              warmup: int) -> dict[str, counting.Count]:
    for _ in range(warmup):
        fn()
    counters.reset()
    for _ in range(repeat):
        fn()
    snap = counters.read()
    return {name: c.scaled(1 / repeat) for name, c in snap.items()}


def _largest(everyone: list[dict[str, counting.Count]]) -> dict[str, Any]:
    totals = [counting.total(s) for s in everyone]
    funcs: dict[str, float] = {}
    for snap in everyone:
        for name, c in snap.items():
            funcs[name] = max(funcs.get(name, 0.0), c.calls)
    return {"calls": max(t.calls for t in totals), "recv": max(t.recv for t in totals),
            "sent": max(t.sent for t in totals), "funcs": dict(sorted(funcs.items()))}


def _operations(ctx: Any, contexts: dict[str, Any], block: int, side: int):
    """(name, {mode: call}, cleanup) of each measured operation; every rank builds the same."""
    from mpi4py import MPI

    from ..decomp import partition
    from ..decomp.grid import Grid

    comm, size, root = ctx.comm, ctx.size, ctx.is_root
    n = max(1, block // 8)
    one, res = np.ones(1), np.empty(1)
    scalar = np.float64(1.0)
    buf = np.arange(n, dtype=np.float64)
    mine = np.full(n, ctx.rank, dtype=np.float64)
    full = np.zeros(n * size) if root else None
    every = np.zeros(n * size)
    recv = np.empty(n)
    counts = [n] * size
    displs = [n * r for r in range(size)]
    nothing = lambda: None  # noqa: E731
    chk, unc = contexts["checked"], contexts["unchecked"]

    def each(call: Callable[[Any], object], raw: Callable[[], object]) -> dict[str, Callable[[], object]]:
        return {"raw": raw, "checked": lambda: call(chk), "unchecked": lambda: call(unc)}

    def raw_bcast() -> None:
        comm.Bcast(buf if root else recv, root=0)

    yield "allreduce f64", each(lambda c: c.allreduce(scalar), lambda: comm.Allreduce(one, res)), nothing
    yield "allreduce object", each(lambda c: c.allreduce(1.0), lambda: comm.allreduce(1.0)), nothing
    yield f"bcast {_size(block)}", each(lambda c: c.bcast(buf if root else None, root=0), raw_bcast), nothing
    yield (f"scatter {_size(block)}/rank", each(
        lambda c: c.scatter(full, root=0),
        lambda: comm.Scatterv([full, counts, displs, MPI.DOUBLE] if root else None, recv, root=0)), nothing)
    yield (f"gather {_size(block)}/rank", each(
        lambda c: c.gather(mine, root=0),
        lambda: comm.Gatherv(mine, [full, counts, displs, MPI.DOUBLE] if root else None, root=0)), nothing)
    yield (f"allgather {_size(block)}/rank", each(
        lambda c: c.allgather(mine), lambda: comm.Allgatherv(mine, [every, counts, displs, MPI.DOUBLE])),
        nothing)
    yield "barrier", each(lambda c: c.barrier(), comm.Barrier), nothing

    dims = partition.dims_create(size, 2)
    grids = {label: Grid(c, (side * dims[0], side * dims[1]), dims=dims) for label, c in contexts.items()}
    local = grids["checked"].local_shape
    u = {label: g.zeros() for label, g in grids.items()}
    # faces only, and four Sendrecv on every rank (MPI.PROC_NULL at the walls)
    cart, hand = hand_written_halo(comm, dims, local, corners=False, skip_walls=False)
    v = np.zeros(grids["checked"].halo_shape)

    def cleanup() -> None:
        cart.Free()
        for g in grids.values():
            g.free()

    def faces(grid: Any, a: np.ndarray) -> Callable[[], object]:
        return lambda: grid.exchange(a, corners=False)

    yield (f"halo 2-D faces {side}x{side}/rank",
           {"raw": lambda: hand(v), **{label: faces(g, u[label]) for label, g in grids.items()}}, cleanup)
    yield _output_write(ctx, contexts, mine, lambda: comm.Gatherv(
        mine, [full, counts, displs, MPI.DOUBLE] if root else None, root=0), block)


def _output_write(ctx: Any, contexts: dict[str, Any], mine: np.ndarray, raw: Callable[[], object],
                  block: int) -> tuple[str, dict[str, Callable[[], object]], Callable[[], None]]:
    """The ``output write`` operation: a new dataset of ``mine`` per call, one file per mode."""
    import itertools
    import shutil

    from ..io.output import Output

    where = ctx.comm.bcast(tempfile.mkdtemp(prefix="hpcpar-scale-") if ctx.is_root else None, root=0)
    outs = {label: Output(c, os.path.join(where, f"{label}.h5"), provenance=False)
            for label, c in contexts.items()}
    names = itertools.count()

    def write(out: Any) -> Callable[[], object]:
        return lambda: out.write(f"x{next(names)}", mine)

    def cleanup() -> None:
        for out in outs.values():
            out.close()
        if ctx.is_root:
            shutil.rmtree(where, ignore_errors=True)

    return (f"output write {_size(block)}/rank",
            {"raw": raw, **{label: write(out) for label, out in outs.items()}}, cleanup)


def _size(nbytes: int) -> str:
    return f"{nbytes // 1024} KB" if nbytes % 1024 == 0 else f"{nbytes} B"


# ---- the driver: one counted job per rank count ---------------------------------------
def _drive(args: argparse.Namespace) -> int:
    try:
        ranks = [int(x) for x in args.ranks.split(",") if x.strip()]
    except ValueError:
        print(f"hpcpar bench scale: --ranks wants a list like 2,4,8, got {args.ranks!r}", file=sys.stderr)
        return 2
    if not ranks or min(ranks) < 1:
        print("hpcpar bench scale: --ranks needs positive rank counts", file=sys.stderr)
        return 2
    try:
        lib = counting.build()
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"hpcpar bench scale: {exc}", file=sys.stderr)
        return 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in ranks:
            out = os.path.join(tmp, f"{n}.json")
            argv = [sys.executable, "-m", "hpcpar", "bench", "scale", "--repeat", str(args.repeat),
                    "--warmup", str(args.warmup), "--block", str(args.block), "--side", str(args.side),
                    "--json", out]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "HYDRA_"))}
            try:
                proc = subprocess.run(counting.job_command(n, argv, lib), env=env, capture_output=True,
                                      text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"hpcpar bench scale: the job on {n} ranks ran over {args.timeout:g} s "
                      "(--timeout)", file=sys.stderr)
                return 1
            if proc.returncode != 0 or not os.path.exists(out):
                print(f"hpcpar bench scale: the job on {n} ranks failed (exit {proc.returncode}):\n"
                      + (proc.stdout + proc.stderr)[-4000:], file=sys.stderr)
                return 1
            with open(out) as fh:
                rows += json.load(fh)["rows"]
            print(f"  {n:>4} ranks counted", file=sys.stderr, flush=True)
    print(_LEGEND)
    print(format_table(*_table(rows)))
    model = fit(rows)
    print()
    print(format_table(*_model_table(model)))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "model": model}, fh, indent=2)
    return 0


def fit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per operation, the least-squares line ``a + b*P`` of the extra bytes received per call. **Local**.

    The extra bytes are checked hpcpar's minus raw mpi4py's (``recv``, the largest
    over the ranks); the line is projected to :data:`PROJECT_TO`. Operations measured
    at fewer than two rank counts get no line.
    """
    out = []
    for op in dict.fromkeys(r["op"] for r in rows):
        mine = [r for r in rows if r["op"] == op]
        ps = np.array([r["ranks"] for r in mine], dtype=float)
        extra = np.array([r["checked"]["recv"] - r["raw"]["recv"] for r in mine], dtype=float)
        calls = [r["checked"]["calls"] - r["raw"]["calls"] for r in mine]
        if len(set(ps)) < 2:
            continue
        b, a = np.polyfit(ps, extra, 1)
        resid = float(np.max(np.abs(a + b * ps - extra)))
        out.append({"op": op, "a": float(a), "b": float(b), "max_residual": resid,
                    "extra_calls": sorted(set(calls)),
                    "projected": {str(p): float(a + b * p) for p in PROJECT_TO}})
    return out


def _line(a: float, b: float) -> str:
    """``a + b*P`` for the table, without the ``-0.0`` of a fit that came out flat."""
    a, b = (0.0 if abs(v) < 0.05 else v for v in (a, b))
    return f"{a:.1f} {'-' if b < 0 else '+'} {abs(b):.1f}*P"


def _num(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}"


def _funcs(funcs: dict[str, float]) -> str:
    return " ".join(f"{name}x{_num(c)}" if c != 1 else name for name, c in funcs.items())


#: Printed above the table of :func:`_table`.
_LEGEND = ("per call, the largest over the ranks: MPI calls / bytes received / bytes sent; "
           "unchecked = Context(checks=False)")


def _triple(calls: float, recv: float, sent: float, sign: bool = False) -> str:
    fmt = (lambda x: ("+" if x > 0 else "") + _num(x)) if sign else _num
    return f"{fmt(calls)} / {fmt(recv)} / {fmt(sent)}"


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per (P, operation): calls / recv B / sent B per call of each mode and of the differences."""
    header = ["P", "operation", *MODES, "checked - raw",
              "unchecked - raw", "checked MPI calls"]
    body = []
    for r in rows:
        w = r["raw"]
        cells = [_triple(r[m]["calls"], r[m]["recv"], r[m]["sent"]) for m in MODES]
        diffs = [_triple(r[m]["calls"] - w["calls"], r[m]["recv"] - w["recv"], r[m]["sent"] - w["sent"],
                         sign=True) for m in ("checked", "unchecked")]
        body.append([str(r["ranks"]), r["op"], *cells, *diffs, _funcs(r["checked"]["funcs"])])
    return header, body


def _model_table(model: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["operation", "checked extra calls", "extra recv B = a + b*P", "max residual",
              *(f"P={p}" for p in PROJECT_TO)]
    body = [[m["op"], ",".join(_num(c) for c in m["extra_calls"]), _line(m["a"], m["b"]),
             f"{m['max_residual']:.1f}", *(f"{m['projected'][str(p)]:.0f}" for p in PROJECT_TO)]
            for m in model]
    return header, body
