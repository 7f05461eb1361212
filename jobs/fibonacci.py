"""Fibonacci numbers for thousands of inputs of mixed sizes: a farm over ranks, a pool under each.

The inputs are drawn log-uniformly between 10 and ``--max-n`` (so costs differ by
orders of magnitude: the plain addition loop for F(n) costs about n^2 bit
operations), cut into chunks, and farmed across the ranks; each rank computes
the numbers of a chunk in its own process pool (:func:`hpcpar.local_pool`,
sized by :func:`hpcpar.local_cpus`). The results are exact Python integers;
``--verify`` checks each against the fast-doubling formula, computed
independently on root.

``--checkpoint FILE`` makes the job resumable: root records each finished task
and every ``--every`` tasks atomically replaces FILE with all results so far; a
job started again with the same options and FILE farms only the tasks missing
from it, and its results are identical to an uninterrupted run's. FILE is
written by root alone (format: :func:`save_results`).

    mpiexec -n 2 python jobs/fibonacci.py --count 3000 --max-n 20000 --verify
    mpiexec -n 2 python jobs/fibonacci.py --checkpoint fib.ckpt --every 5
    hpcpar run -n 4 jobs/fibonacci.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
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
    p.add_argument("--checkpoint", metavar="FILE",
                   help="resume from FILE when it exists, and keep the finished tasks' results in it")
    p.add_argument("--every", type=int, default=10, metavar="K",
                   help="with --checkpoint: save after every K finished tasks (default 10), and at the end")
    # Testing only: root kills itself (SIGKILL) once a save holds at least M tasks.
    p.add_argument("--crash-after", type=int, default=None, metavar="M", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.every < 1:
        p.error(f"--every must be at least 1, got {args.every}")
    if args.chunk < 1:
        p.error(f"--chunk must be at least 1, got {args.chunk}")
    return args


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


#: First line of a checkpoint file, followed by `` sha256=<hex digest of the rest>``.
CHECKPOINT_MAGIC = "hpcpar-fibonacci-checkpoint 1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: corrupt, truncated, or from other inputs."""


def save_results(path: str, ns: list[int], chunk: int, done: dict[int, list[int]]) -> None:
    """Atomically replace ``path`` with the results of the finished tasks. **Local** (root).

    Format: a first line ``hpcpar-fibonacci-checkpoint 1 sha256=<hex>``, then one
    line of JSON ``{"chunk": chunk, "ns": [n, ...], "done": {"<task index>":
    ["<F(n) in hex>", ...]}}`` (hex, because Python limits decimal conversion of
    huge integers); the digest covers that JSON line, so a truncated or altered
    file is detected. Task ``i`` is ``ns[i*chunk:(i+1)*chunk]``. The file is
    written as ``path.tmp``, flushed and fsynced, renamed over ``path``, and the
    directory fsynced: a crash leaves the previous file or the new one.
    """
    body = json.dumps({"chunk": chunk, "ns": ns,
                       "done": {str(i): [format(x, "x") for x in done[i]] for i in sorted(done)}},
                      separators=(",", ":")).encode()
    data = f"{CHECKPOINT_MAGIC} sha256={hashlib.sha256(body).hexdigest()}\n".encode() + body + b"\n"
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_results(path: str, ns: list[int], chunk: int) -> dict[int, list[int]]:
    """The finished tasks' results ``{task index: [F(n), ...]}`` of ``path``. **Local** (root).

    Raises:
        CheckpointError: the file is truncated or corrupt (its digest does not
            match), not a checkpoint of this job, or was written for other inputs
            (``--count``, ``--max-n``, ``--seed``, ``--chunk``).
    """
    with open(path, "rb") as f:
        data = f.read()
    what = f"checkpoint {path!r}"
    fix = "delete it to start from scratch, or restore a good copy"
    head, _, rest = data.partition(b"\n")
    prefix = f"{CHECKPOINT_MAGIC} sha256=".encode()
    if not head.startswith(prefix):
        raise CheckpointError(f"{what} is not a fibonacci checkpoint (its first line is "
                              f"{head[:60]!r}, expected {CHECKPOINT_MAGIC!r}): {fix}")
    body = rest[:-1] if rest.endswith(b"\n") else rest
    if not rest.endswith(b"\n") or hashlib.sha256(body).hexdigest() != head[len(prefix):].decode(errors="replace"):
        raise CheckpointError(f"{what} is truncated or corrupt (its sha256 digest does not match "
                              f"its {len(body)} bytes of data): {fix}")
    state = json.loads(body)
    if state["chunk"] != chunk or state["ns"] != ns:
        raise CheckpointError(f"{what} was written for other inputs (chunk {state['chunk']}, "
                              f"{len(state['ns'])} inputs; now chunk {chunk}, {len(ns)} inputs): run with "
                              f"the options that wrote it (--count, --max-n, --seed, --chunk), or {fix}")
    ntasks = -(-len(ns) // chunk)
    done = {int(i): [int(x, 16) for x in xs] for i, xs in state["done"].items()}
    for i, xs in done.items():
        if not 0 <= i < ntasks or len(xs) != len(ns[i * chunk:(i + 1) * chunk]):
            raise CheckpointError(f"{what} holds a bad entry for task {i}: {fix}")
    return done


def compute(ctx: hpcpar.Context, ns: list[int] | None, chunk: int = 50,
            workers: int | None = None) -> list[int] | None:
    """F(n) for every n of root's ``ns``. **Collective**; the list on root, None elsewhere.

    Tasks are chunks of ``chunk`` inputs; the farm hands them out one at a time
    (``chunksize=1``) because their costs differ widely. Each rank's chunk runs in
    its process pool.
    """
    return compute_resumable(ctx, ns, chunk, workers)[0]


def compute_resumable(ctx: hpcpar.Context, ns: list[int] | None, chunk: int = 50,
                      workers: int | None = None, checkpoint: str | None = None, every: int = 10,
                      crash_after: int | None = None) -> tuple[list[int] | None, int | None]:
    """Like :func:`compute`, resumable from root's ``checkpoint`` file. **Collective**.

    Returns ``(results, tasks farmed)`` on root, ``(None, None)`` elsewhere. With
    a ``checkpoint`` path, root first loads the results it holds (when the file
    exists) and farms only the other tasks; as results arrive (in completion
    order, each task carrying its index) it saves them all every ``every`` tasks
    and at the end (:func:`save_results`). ``crash_after`` (tests) makes root kill
    itself with SIGKILL once a save holds at least that many tasks.

    Raises:
        CheckpointError: on every rank, when root's checkpoint file is unusable.
    """
    if workers is None:
        workers = hpcpar.local_cpus(ctx)
    done: dict[int, list[int]] = {}
    todo = problem = None
    if ctx.is_root:
        parts = [ns[i:i + chunk] for i in range(0, len(ns), chunk)]
        if checkpoint and os.path.exists(checkpoint):
            try:
                done = load_results(checkpoint, ns, chunk)
            except (CheckpointError, OSError, ValueError, KeyError, TypeError) as exc:
                problem = str(exc) if isinstance(exc, CheckpointError) else \
                    f"checkpoint {checkpoint!r} cannot be read ({type(exc).__name__}: {exc})"
        todo = [(i, part) for i, part in enumerate(parts) if i not in done]
    problem = ctx.comm.bcast(problem, root=ctx.root)
    if problem:
        raise CheckpointError(f"rank {ctx.root}: {problem}")

    def task(item):
        i, part = item
        return i, list(pool.map(fib, part))

    farmed = 0
    with hpcpar.local_pool(workers) as pool:
        for i, values in hpcpar.farm_iter(ctx, task, todo, chunksize=1, ordered=False):
            done[i] = values
            farmed += 1
            if checkpoint and (farmed % every == 0 or farmed == len(todo)):
                save_results(checkpoint, ns, chunk, done)
                if crash_after is not None and len(done) >= crash_after:
                    sys.stdout.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
    if not ctx.is_root:
        return None, None
    if checkpoint and not todo and not os.path.exists(checkpoint):
        save_results(checkpoint, ns, chunk, done)  # no tasks at all: still leave a file
    return [x for i in range(len(parts)) for x in done[i]], farmed


def digest(results: list[int]) -> str:
    """A short hex digest of the results, to compare runs."""
    h = hashlib.sha256()
    for x in results:
        h.update(format(x, "x").encode() + b",")
    return h.hexdigest()[:16]


def main(ctx: hpcpar.Context, argv=None) -> list[int] | None:
    args = parse_args(argv)
    ns = inputs(args.count, args.max_n, args.seed) if ctx.is_root else None
    t0 = time.perf_counter()
    try:
        results, farmed = compute_resumable(ctx, ns, args.chunk, args.workers, args.checkpoint,
                                            args.every, args.crash_after)
    except CheckpointError as exc:  # raised on every rank: root says why, once
        raise SystemExit(f"fibonacci: {exc}" if ctx.is_root else 1) from None
    elapsed = time.perf_counter() - t0
    if ctx.is_root:
        ntasks = -(-len(ns) // args.chunk)
        if args.checkpoint:
            print(f"fibonacci: farmed {farmed} of {ntasks} tasks "
                  f"({ntasks - farmed} done already in {args.checkpoint})")
        bits = sum(x.bit_length() for x in results)
        print(f"fibonacci: {len(results)} numbers, n up to {max(ns, default=0)}, "
              f"{bits:,} bits in all, digest {digest(results)}, on {ctx.size} ranks in {elapsed:.2f} s")
        if args.verify:
            bad = [n for n, x in zip(ns, results) if x != fib_doubling(n)]
            if bad:
                raise SystemExit(f"fibonacci: {len(bad)} wrong results, first for n={bad[0]}")
            print("fibonacci: every result verified by fast doubling")
    return results


if __name__ == "__main__":
    hpcpar.run(main)
