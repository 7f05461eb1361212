"""Monte Carlo estimate of pi, the same for any number of ranks.

The samples are cut into fixed chunks of ``--chunk`` samples, each with its own
random stream from ``numpy.random.SeedSequence(seed).spawn(nchunks)``. Chunks are
dealt to ranks in contiguous blocks and the hit counts are summed exactly (int64),
so for a fixed seed and sample count the estimate is bit-identical on 1, 2, 3 or
64 ranks.

    mpiexec -n 4 python jobs/pi.py --samples 40000000
    hpcpar run -n 4 jobs/pi.py
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import hpcpar
from hpcpar import partition
from hpcpar.launch.options import count, job_args, parse_checked


def parser() -> argparse.ArgumentParser:
    """The job's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=count, default=40_000_000, help="total number of samples (default 4e7)")
    p.add_argument("--seed", type=int, default=2024, help="seed of the root SeedSequence")
    p.add_argument("--chunk", type=int, default=1_000_000, help="samples per random stream")
    return p


#: Output-file options, checked before the job starts (directory exists and is writable).
OUTPUTS: tuple[str, ...] = ()


def check(args: argparse.Namespace) -> str | None:
    """The first problem with the options, or None (the same on every rank)."""
    if args.samples < 1:
        return f"--samples must be >= 1, got {args.samples}"
    if args.chunk < 1:
        return f"--chunk must be >= 1, got {args.chunk}"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked (without the output-path checks of :func:`main`)."""
    return parse_checked(parser(), check, argv)


def count_hits(rng: np.random.Generator, n: int, batch: int = 1 << 20) -> int:
    """Points of ``n`` uniform samples in the unit square that fall inside the quarter circle."""
    hits = 0
    while n > 0:
        m = min(n, batch)
        x = rng.random(m)
        y = rng.random(m)
        hits += int(np.count_nonzero(x * x + y * y <= 1.0))
        n -= m
    return hits


def estimate(ctx: hpcpar.Context, samples: int, seed: int, chunk: int) -> tuple[float, int]:
    """Estimate pi. **Collective**: every rank returns the same ``(estimate, hits)``."""
    if samples < 1 or chunk < 1:
        raise ValueError(f"--samples and --chunk must be positive, got {samples} and {chunk}")
    nchunks = -(-samples // chunk)
    streams = np.random.SeedSequence(seed).spawn(nchunks)
    hits = 0
    with ctx.timer("compute"):
        for k in partition.block_range(nchunks, ctx.size, ctx.rank):
            n = min(chunk, samples - k * chunk)
            hits += count_hits(np.random.default_rng(streams[k]), n)
    with ctx.timer("reduce"):
        total = ctx.allreduce(np.int64(hits))
    return 4.0 * int(total) / samples, int(total)


def main(ctx: hpcpar.Context, argv: list[str] | None = None) -> float:
    args = job_args(ctx, parser(), argv, check, OUTPUTS)
    samples = int(args.samples)
    t0 = time.perf_counter()
    pi, hits = estimate(ctx, samples, args.seed, args.chunk)
    elapsed = ctx.allreduce(time.perf_counter() - t0, op="max")
    if ctx.is_root:
        stderr = 4.0 * math.sqrt(math.pi / 4 * (1 - math.pi / 4) / samples)
        print(f"pi ~= {pi:.10f}  (error {pi - math.pi:+.2e}, 1-sigma {stderr:.1e})  "
              f"{samples:,} samples on {ctx.size} ranks in {elapsed:.2f} s "
              f"({samples / elapsed / 1e6:.1f} M samples/s)")
    return pi


if __name__ == "__main__":
    hpcpar.run(main)
