"""Fibonacci numbers for thousands of inputs of mixed sizes: a farm over ranks, a pool under each.

The inputs are drawn log-uniformly between 10 and ``--max-n`` (so costs differ by
orders of magnitude: the plain addition loop for F(n) costs about n^2 bit
operations), cut into chunks, and farmed across the ranks; each rank computes
the numbers of a chunk in its own process pool (:func:`hpcpar.local_pool`,
sized by :func:`hpcpar.local_cpus`). The results are exact Python integers;
``--verify`` checks each against the fast-doubling formula, computed
independently on root.

    mpiexec -n 2 python jobs/fibonacci.py --count 3000 --max-n 20000 --verify
    hpcpar run -n 4 jobs/fibonacci.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import hpcpar


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=3000, help="how many inputs (default 3000)")
    p.add_argument("--max-n", type=int, default=20000, help="largest n (default 20000)")
    p.add_argument("--seed", type=int, default=5, help="seed of the inputs")
    p.add_argument("--chunk", type=int, default=50, help="inputs per farm task (default 50)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes per rank (default: this rank's share of the node, local_cpus())")
    p.add_argument("--verify", action="store_true", help="check every result by fast doubling on root")
    return p.parse_args(argv)


def fib(n: int) -> int:
    """F(n) by the plain addition loop (the work being farmed)."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def fib_doubling(n: int) -> int:
    """F(n) by fast doubling: F(2k) = F(k)(2F(k+1) - F(k)), F(2k+1) = F(k)^2 + F(k+1)^2."""
    def pair(k):
        if k == 0:
            return 0, 1
        a, b = pair(k >> 1)
        c = a * (2 * b - a)
        d = a * a + b * b
        return (d, c + d) if k & 1 else (c, d)
    return pair(n)[0]


def inputs(count: int, max_n: int, seed: int) -> list[int]:
    """``count`` values of n, log-uniform in [10, max_n], the same on every rank count."""
    rng = np.random.default_rng(seed)
    hi = max(10, max_n)
    return [int(x) for x in np.exp(rng.uniform(np.log(10), np.log(hi), size=count)).round()]


def compute(ctx: hpcpar.Context, ns: list[int] | None, chunk: int = 50,
            workers: int | None = None) -> list[int] | None:
    """F(n) for every n of root's ``ns``. **Collective**; the list on root, None elsewhere.

    Tasks are chunks of ``chunk`` inputs; the farm hands them out one at a time
    (``chunksize=1``) because their costs differ widely. Each rank's chunk runs in
    its process pool.
    """
    if workers is None:
        workers = hpcpar.local_cpus(ctx)
    tasks = [ns[i:i + chunk] for i in range(0, len(ns), chunk)] if ctx.is_root else None
    with hpcpar.local_pool(workers) as pool:
        parts = hpcpar.farm(ctx, lambda part: list(pool.map(fib, part)), tasks, chunksize=1)
    return [x for part in parts for x in part] if ctx.is_root else None


def main(ctx: hpcpar.Context, argv=None) -> list[int] | None:
    args = parse_args(argv)
    ns = inputs(args.count, args.max_n, args.seed) if ctx.is_root else None
    t0 = time.perf_counter()
    results = compute(ctx, ns, args.chunk, args.workers)
    elapsed = time.perf_counter() - t0
    if ctx.is_root:
        digits = sum(len(str(x)) for x in results)
        print(f"fibonacci: {len(results)} numbers, n up to {max(ns, default=0)}, "
              f"{digits:,} decimal digits in all, on {ctx.size} ranks in {elapsed:.2f} s")
        if args.verify:
            bad = [n for n, x in zip(ns, results) if x != fib_doubling(n)]
            if bad:
                raise SystemExit(f"fibonacci: {len(bad)} wrong results, first for n={bad[0]}")
            print("fibonacci: every result verified by fast doubling")
    return results


if __name__ == "__main__":
    hpcpar.run(main)
