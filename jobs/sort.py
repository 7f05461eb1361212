"""Parallel sample sort of 10**7 keys: divide (split by sampled splitters), conquer (sort locally).

Every rank draws its share of random keys, then :func:`hpcpar.sort.sample_sort`
sorts them across the ranks: local sort, regular sampling, splitters, one
``Alltoallv``, local merge. The job then checks the result in parallel: each
part sorted, parts in order across ranks, no key lost (an exact integer checksum
of the key bits); with ``--check`` root also compares against ``np.sort`` of the
gathered input.

    mpiexec -n 4 python jobs/sort.py                      # 10**7 int64 keys
    hpcpar run -n 4 jobs/sort.py --dtype float64 --distinct 1000 --check
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import hpcpar
from hpcpar import partition
from hpcpar.launch.options import count, job_args, parse_checked
from hpcpar.sort import sample_sort

DTYPES = ("int64", "int32", "float64", "float32", "uint8")


def parser() -> argparse.ArgumentParser:
    """The job's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=count, default=10_000_000, help="total number of keys (default 1e7)")
    p.add_argument("--dtype", default="int64", choices=DTYPES, help="key type (default int64)")
    p.add_argument("--distinct", type=int, default=0,
                   help="draw keys from this many distinct values (duplicates); 0: the whole range")
    p.add_argument("--seed", type=int, default=7, help="random seed")
    p.add_argument("--check", action="store_true",
                   help="also gather everything on root and compare with np.sort")
    return p


#: Output-file options, checked before the job starts (directory exists and is writable).
OUTPUTS: tuple[str, ...] = ()


def check(args: argparse.Namespace) -> str | None:
    """The first problem with the options, or None (the same on every rank)."""
    if args.n < 0:
        return f"--n must be >= 0, got {args.n}"
    if args.distinct < 0:
        return f"--distinct must be >= 0, got {args.distinct}"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked (without the output-path checks of :func:`main`)."""
    return parse_checked(parser(), check, argv)


def make_keys(n_total: int, dtype: str, distinct: int, seed: int, size: int, rank: int) -> np.ndarray:
    """This rank's block of random keys. **Local**.

    Key ``i`` of the whole input comes from chunk stream ``i // 2**20``, so the
    global input is the same for any rank count.
    """
    dt = np.dtype(dtype)
    chunk = 1 << 20
    nchunks = -(-n_total // chunk)
    streams = np.random.SeedSequence(seed).spawn(nchunks)
    r = partition.block_range(n_total, size, rank)
    parts = []
    for k in range(r.start // chunk, -(-r.stop // chunk)):
        lo, hi = k * chunk, min((k + 1) * chunk, n_total)
        rng = np.random.default_rng(streams[k])
        if distinct > 0:
            block = rng.integers(0, distinct, hi - lo).astype(dt)
            if dt.kind == "f":
                block /= distinct
        elif dt.kind == "f":
            block = rng.standard_normal(hi - lo).astype(dt)
        else:
            info = np.iinfo(dt)
            block = rng.integers(info.min, info.max, hi - lo, dtype=dt, endpoint=True)
        parts.append(block[max(r.start, lo) - lo:min(r.stop, hi) - lo])
    return np.concatenate(parts) if parts else np.empty(0, dt)


def checksum(keys: np.ndarray) -> tuple[int, int]:
    """(sum of the keys' bit patterns mod 2**64, count): independent of order and split."""
    bits = keys.view(np.dtype(f"u{keys.dtype.itemsize}")).astype(np.uint64)
    return int(bits.sum(dtype=np.uint64)), int(keys.size)


def verify(ctx: hpcpar.Context, keys: np.ndarray, result: np.ndarray) -> str | None:
    """None when ``result`` is a sorted permutation of ``keys`` across the ranks. **Collective**."""
    problem = None
    if result.size > 1 and not np.all(result[:-1] <= result[1:]):
        problem = f"rank {ctx.rank}: its part is not sorted"
    ends = ctx.comm.allgather((result[0], result[-1]) if result.size else None)
    nonempty = [e for e in ends if e is not None]
    for a, b in zip(nonempty, nonempty[1:]):
        if b[0] < a[1]:
            problem = problem or f"parts out of order across ranks: {a[1]} before {b[0]}"
    pairs = ctx.comm.allgather((checksum(keys), checksum(result)))
    s0 = sum(a[0] for a, _ in pairs) % 2**64
    n0 = sum(a[1] for a, _ in pairs)
    s1 = sum(b[0] for _, b in pairs) % 2**64
    n1 = sum(b[1] for _, b in pairs)
    if n0 != n1 or s0 != s1:
        problem = problem or f"keys were lost or changed ({n0:,} keys in, {n1:,} out; checksums differ)"
    problems = ctx.comm.allgather(problem)
    return "; ".join(p for p in problems if p) or None


def main(ctx: hpcpar.Context, argv: list[str] | None = None) -> np.ndarray:
    args = job_args(ctx, parser(), argv, check, OUTPUTS)
    n = int(args.n)
    if n < 0:
        raise ValueError(f"--n must be >= 0, got {args.n}")
    keys = make_keys(n, args.dtype, args.distinct, args.seed, ctx.size, ctx.rank)
    ctx.barrier()
    t0 = time.perf_counter()
    result = sample_sort(ctx, keys)
    elapsed = ctx.allreduce(time.perf_counter() - t0, op="max")
    problem = verify(ctx, keys, result)
    sizes = ctx.comm.gather(result.size, root=0)
    if args.check:
        everything = ctx.gather(keys)
        merged = ctx.gather(result)
        if ctx.is_root and not np.array_equal(merged, np.sort(everything), equal_nan=True):
            problem = problem or "the gathered result differs from np.sort of the gathered input"
        problem = ctx.bcast(problem)
    if ctx.is_root:
        print(f"sort: {n:,} {args.dtype} keys"
              + (f" ({args.distinct} distinct values)" if args.distinct else "")
              + f" on {ctx.size} ranks in {elapsed:.3f} s ({n / max(elapsed, 1e-12) / 1e6:.1f} M keys/s); "
              f"keys per rank {min(sizes):,}..{max(sizes):,}; "
              + ("verified" + (" against np.sort" if args.check else "") if problem is None
                 else f"WRONG: {problem}"))
    if problem is not None:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    hpcpar.run(main)
