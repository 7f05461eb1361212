"""Fibonacci numbers for thousands of inputs of mixed sizes: a farm over ranks, a pool under each.

The inputs are drawn log-uniformly between 10 and ``--max-n`` (so costs differ by
orders of magnitude: the plain addition loop for F(n) costs about n^2 bit
operations), cut into chunks, and farmed across the ranks; each rank computes
the numbers of a chunk in its own process pool (:func:`hpcpar.local_pool`,
sized by :func:`hpcpar.local_cpus`). The results are exact Python integers;
``--verify`` checks each against the fast-doubling formula, computed
independently on root.

``--checkpoint FILE`` makes the job resumable: root records each finished task
and every ``--every`` tasks atomically replaces FILE with all results so far
(:class:`hpcpar.Checkpoint`, written by root alone; format: :func:`encode`); a
job started again with the same options and FILE farms only the tasks missing
from it, and its results are identical to an uninterrupted run's.

    mpiexec -n 2 python jobs/fibonacci.py --count 3000 --max-n 20000 --verify
    mpiexec -n 2 python jobs/fibonacci.py --checkpoint fib.ckpt --every 5
    hpcpar run -n 4 jobs/fibonacci.py
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import time
from typing import Any

import numpy as np

import hpcpar
from hpcpar.launch.options import job_args, parse_checked


def parser() -> argparse.ArgumentParser:
    """The job's options."""
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
    return p


#: Output-file options, checked before the job starts (directory exists and is writable).
OUTPUTS: tuple[str, ...] = ('checkpoint',)


def check(args: argparse.Namespace) -> str | None:
    """The first problem with the options, or None (the same on every rank)."""
    if args.count < 0:
        return f"--count must be >= 0, got {args.count}"
    if args.max_n < 0:
        return f"--max-n must be >= 0, got {args.max_n}"
    if args.chunk < 1:
        return f"--chunk must be >= 1, got {args.chunk}"
    if args.every < 1:
        return f"--every must be >= 1, got {args.every}"
    if args.workers is not None and args.workers < 1:
        return f"--workers must be >= 1, got {args.workers}"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked (without the output-path checks of :func:`main`)."""
    return parse_checked(parser(), check, argv)


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


#: The ``format`` field of a checkpoint of this job.
CHECKPOINT_FORMAT = "hpcpar-fibonacci-checkpoint 1"
#: What to do about an unusable checkpoint (the end of every CheckpointError).
_FIX = "delete it to start from scratch, or restore a good copy"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: corrupt, truncated, or from other inputs."""


def _fields_digest(fields: dict[str, Any]) -> str:
    """sha256 (hex) of the checkpoint's fields other than ``sha256`` itself."""
    h = hashlib.sha256(CHECKPOINT_FORMAT.encode())
    h.update(np.int64(int(fields["chunk"])).astype("<i8").tobytes())
    for key in ("ns", "tasks", "lengths"):
        h.update(np.asarray(fields[key]).astype("<i8").tobytes())
    h.update(np.asarray(fields["values"], np.uint8).tobytes())
    return h.hexdigest()


def _text(value: Any) -> str:
    """A text field (a 0-d bytes array or NumPy bytes, as HDF5 gives it back)."""
    return np.asarray(value).tobytes().rstrip(b"\0").decode(errors="replace")


def encode(ns: list[int], chunk: int, done: dict[int, list[int]]) -> dict[str, Any]:
    """The fields of a checkpoint holding the finished tasks ``done``. **Local**.

    Task ``i`` is ``ns[i*chunk:(i+1)*chunk]``. Fields (for :meth:`hpcpar.Checkpoint.save`):
    ``format`` (:data:`CHECKPOINT_FORMAT`), ``chunk``, ``ns`` (the inputs),
    ``tasks`` (finished task indices, ascending), ``values`` (every result of
    those tasks in order, as little-endian unsigned bytes, concatenated:
    exact for any size, and no slow decimal conversion), ``lengths`` (the bytes
    of each result) and ``sha256`` (hex digest of all the others: HDF5 does not
    checksum raw data, so an altered file is caught here).
    """
    tasks = sorted(done)
    raw = [x.to_bytes((x.bit_length() + 7) // 8, "little") for i in tasks for x in done[i]]
    fields: dict[str, Any] = {
        "format": np.bytes_(CHECKPOINT_FORMAT), "chunk": int(chunk),
        "ns": np.array(ns, dtype=np.int64), "tasks": np.array(tasks, dtype=np.int64),
        "lengths": np.array([len(b) for b in raw], dtype=np.int64),
        "values": np.frombuffer(b"".join(raw), dtype=np.uint8).copy(),
    }
    fields["sha256"] = np.bytes_(_fields_digest(fields))
    return fields


def decode(fields: dict[str, Any], ns: list[int], chunk: int, path: str) -> dict[int, list[int]]:
    """The finished tasks' results ``{task index: [F(n), ...]}`` of a checkpoint's fields. **Local**.

    Raises:
        CheckpointError: naming ``path``, when the fields are not this job's
            (``format``), do not match their digest (altered or cut short), or
            were written for other inputs (``--count``, ``--max-n``, ``--seed``,
            ``--chunk``).
    """
    what = f"checkpoint {path!r}"
    keys = ("format", "chunk", "ns", "tasks", "lengths", "values", "sha256")
    if any(k not in fields for k in keys) or _text(fields["format"]) != CHECKPOINT_FORMAT:
        found = _text(fields["format"]) if "format" in fields else f"fields {sorted(fields)}"
        raise CheckpointError(f"{what} is not a fibonacci checkpoint (it holds {found[:60]!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}): {_FIX}")
    if _fields_digest(fields) != _text(fields["sha256"]):
        raise CheckpointError(f"{what} is truncated or corrupt (its sha256 digest does not match "
                              f"its {np.asarray(fields['values']).size} bytes of results): {_FIX}")
    saved_ns, saved_chunk = [int(n) for n in fields["ns"]], int(fields["chunk"])
    if saved_chunk != chunk or saved_ns != ns:
        raise CheckpointError(f"{what} was written for other inputs (chunk {saved_chunk}, "
                              f"{len(saved_ns)} inputs; now chunk {chunk}, {len(ns)} inputs): run with "
                              f"the options that wrote it (--count, --max-n, --seed, --chunk), or {_FIX}")
    values = np.asarray(fields["values"], np.uint8).tobytes()
    ends = np.cumsum(np.asarray(fields["lengths"], np.int64)).tolist()
    flat = [int.from_bytes(values[a:b], "little") for a, b in zip([0, *ends[:-1]], ends)]
    done, pos, ntasks = {}, 0, -(-len(ns) // chunk)
    for i in (int(t) for t in fields["tasks"]):
        k = len(ns[i * chunk:(i + 1) * chunk]) if 0 <= i < ntasks else 0
        if k == 0 or pos + k > len(flat):
            raise CheckpointError(f"{what} holds a bad entry for task {i}: {_FIX}")
        done[i], pos = flat[pos:pos + k], pos + k
    return done


def save_results(ckpt: hpcpar.Checkpoint, ns: list[int], chunk: int,
                 done: dict[int, list[int]]) -> None:
    """Atomically replace the checkpoint with the finished tasks ``done``. **Collective**
    over the checkpoint's context (root alone, in this job); its step is ``len(done)``."""
    ckpt.save(len(done), **encode(ns, chunk, done))


def load_results(ckpt: hpcpar.Checkpoint, ns: list[int], chunk: int) -> dict[int, list[int]]:
    """The finished tasks of the checkpoint, ``{}`` when there is none. **Collective** over
    its context (root alone, in this job).

    Raises:
        CheckpointError: the file is truncated or corrupt (with no readable
            previous checkpoint ``FILE.prev`` to fall back to), not a checkpoint of
            this job, or was written for other inputs.
    """
    try:
        state = ckpt.load()
    except hpcpar.CollectiveError as exc:
        how = "is truncated or corrupt" if isinstance(exc, OSError) else "is not a fibonacci checkpoint"
        raise CheckpointError(f"checkpoint {ckpt.path!r} {how} ({exc}): {_FIX}") from None
    return {} if state is None else decode(state[1], ns, chunk, ckpt.path)


def compute(ctx: hpcpar.Context, ns: list[int] | None, chunk: int = 50,
            workers: int | None = None) -> list[int] | None:
    """F(n) for every n of root's ``ns``. **Collective**; the list on root, None elsewhere.

    Tasks are chunks of ``chunk`` inputs; the farm hands them out one at a time
    (``chunksize=1``) because their costs differ widely. Each rank's chunk runs in
    its process pool.
    """
    return compute_resumable(ctx, ns, chunk, workers)[0]


def compute_resumable(ctx: hpcpar.Context, ns: list[int] | None, chunk: int = 50,
                      workers: int | None = None, checkpoint: str | None = None,
                      every: int = 10) -> tuple[list[int] | None, int | None]:
    """Like :func:`compute`, resumable from root's ``checkpoint`` file. **Collective**.

    Returns ``(results, tasks farmed)`` on root, ``(None, None)`` elsewhere. With
    a ``checkpoint`` path, root alone holds an :class:`hpcpar.Checkpoint` (on a
    one-rank context: the other ranks only compute). It first loads the results
    the file holds (when it exists) and farms only the other tasks; as results
    arrive (in completion order, each task carrying its index) it saves them all
    every ``every`` tasks and at the end (:func:`save_results`).

    Raises:
        CheckpointError: on every rank, when root's checkpoint file is unusable.
    """
    from mpi4py import MPI

    if workers is None:
        workers = hpcpar.local_cpus(ctx)
    done: dict[int, list[int]] = {}
    todo = problem = ckpt = None
    with contextlib.ExitStack() as stack:
        if ctx.is_root:
            parts = [ns[i:i + chunk] for i in range(0, len(ns), chunk)]
            if checkpoint:
                solo = stack.enter_context(hpcpar.Context(MPI.COMM_SELF))
                ckpt = hpcpar.Checkpoint(solo, checkpoint)
                try:
                    done = load_results(ckpt, ns, chunk)
                except CheckpointError as exc:
                    problem = str(exc)
            todo = [(i, part) for i, part in enumerate(parts) if i not in done]
        problem = ctx.comm.bcast(problem, root=ctx.root)
        if problem:
            raise CheckpointError(f"rank {ctx.root}: {problem}")

        def task(item: tuple[int, list[int]]) -> tuple[int, list[int]]:
            i, part = item
            return i, list(pool.map(fib, part))

        farmed = 0
        with hpcpar.local_pool(workers) as pool:
            for i, values in hpcpar.farm_iter(ctx, task, todo, chunksize=1, ordered=False):
                done[i] = values
                farmed += 1
                if ckpt and (farmed % every == 0 or farmed == len(todo)):
                    save_results(ckpt, ns, chunk, done)
        if not ctx.is_root:
            return None, None
        if ckpt and not todo and not ckpt.exists():
            save_results(ckpt, ns, chunk, done)  # no tasks at all: still leave a file
    return [x for i in range(len(parts)) for x in done[i]], farmed


def digest(results: list[int]) -> str:
    """A short hex digest of the results, to compare runs."""
    h = hashlib.sha256()
    for x in results:
        h.update(format(x, "x").encode() + b",")
    return h.hexdigest()[:16]


def main(ctx: hpcpar.Context, argv: list[str] | None = None) -> list[int] | None:
    args = job_args(ctx, parser(), argv, check, OUTPUTS)
    ns = inputs(args.count, args.max_n, args.seed) if ctx.is_root else None
    t0 = time.perf_counter()
    try:
        results, farmed = compute_resumable(ctx, ns, args.chunk, args.workers, args.checkpoint,
                                            args.every)
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
