"""Rank-local pools: processes or threads under one rank, sized to the CPUs it may use.

A process pool here is safe in an MPI job. Its workers are started with the
``spawn`` method: each is a fresh interpreter, never a ``fork`` of the
MPI-initialised rank (which MPI libraries forbid or handle badly), and each
starts with ``MPI4PY_RC_INITIALIZE=0`` in its environment, so importing mpi4py
or hpcpar in a worker (to unpickle a function defined in a module that imports
them, or the job script itself) loads MPI without initialising it. A worker
therefore must not communicate. ``spawn`` rather than ``forkserver``: the
forkserver is shared by the whole interpreter and keeps the environment it was
started with, while spawn sets the environment of every worker it starts.
Starting a worker costs a fresh interpreter (about 0.1-0.3 s): create a pool
once per rank and reuse it, also across farm tasks.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing.context as mpc
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any

import numpy as np

from ..decomp import partition
from ..errors import attempt, raise_problems

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["local_cpus", "available_cpus", "local_pool", "LocalPool", "WorkerContext"]

#: What every worker process of a pool finds in its environment.
CHILD_ENV = {"MPI4PY_RC_INITIALIZE": "0"}

_ENV_LOCK = threading.Lock()
_WORLD: list[int] = []  # local_cpus() for COMM_WORLD, once computed
_CACHE: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()  # per Context


def available_cpus() -> int:
    """CPUs this process may run on: its affinity set, capped by ``SLURM_CPUS_PER_TASK``. **Local**."""
    n = _affinity_count()
    slurm = _slurm_cpus()
    return max(1, min(n, slurm) if slurm else n)


def _affinity() -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset(range(os.cpu_count() or 1))


def _affinity_count() -> int:
    return len(_affinity())


def _slurm_cpus() -> int | None:
    value = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    try:
        return int(value) if value else None
    except ValueError:
        return None


def local_cpus(ctx: Context | None = None) -> int:
    """The number of CPUs this rank may use for its own workers.

    **Collective** over ``ctx`` (``COMM_WORLD`` when None) the first time it is
    called for that Context (or for ``COMM_WORLD``); later calls are local and
    return the cached value. The ranks that run on the same node (an
    ``MPI_COMM_TYPE_SHARED`` split) and have the same affinity set share that
    set evenly (the first ``n % k`` of them get one more CPU); the share is then
    capped by ``SLURM_CPUS_PER_TASK`` when set, and is at least 1. So with 2
    ranks on a 2-core node each gets 1; with ranks bound to their own cores,
    each gets its own. Once computed for ``COMM_WORLD`` (or a Context over all
    of its ranks) it is the default size of :func:`local_pool`.

    Returns:
        This rank's share; it may differ between ranks.
    """
    from mpi4py import MPI

    if ctx is None and _WORLD:
        return _WORLD[0]
    if ctx is not None and ctx in _CACHE:
        return _CACHE[ctx]
    comm = MPI.COMM_WORLD if ctx is None else ctx.comm
    mine = _affinity()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        me = node.Get_rank()
        sets = node.allgather(sorted(mine))
    finally:
        node.Free()
    same = [r for r, s in enumerate(sets) if frozenset(s) == mine]
    position, k = same.index(me), len(same)
    share = len(mine) // k + (1 if position < len(mine) % k else 0)
    slurm = _slurm_cpus()
    n = max(1, min(share, slurm) if slurm else share)
    if ctx is not None:
        _CACHE[ctx] = n
    if ctx is None or (not _WORLD and ctx.size == MPI.COMM_WORLD.Get_size()):
        _WORLD[:] = [n]
    return n


def _default_workers() -> int:
    """local_cpus() when already computed; otherwise a local estimate from the launcher."""
    if _WORLD:
        return _WORLD[0]
    local_ranks = 1
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            local_ranks = int(value)
            break
    share = max(1, _affinity_count() // local_ranks)
    slurm = _slurm_cpus()
    return max(1, min(share, slurm) if slurm else share)


# ------------------------------------------------------------------ process start
class _Process(mpc.SpawnProcess):
    """A spawned process whose environment tells mpi4py not to initialise MPI."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with _ENV_LOCK:
            saved = {k: os.environ.get(k) for k in CHILD_ENV}
            os.environ.update(CHILD_ENV)
            try:
                return mpc.SpawnProcess._Popen(process_obj)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


class WorkerContext(mpc.SpawnContext):
    """The ``multiprocessing`` context of process pools: ``spawn``, and workers never
    initialise MPI (see the module notes). **Local**; ``WorkerContext().Pool(n)`` works too."""

    Process = _Process


# ------------------------------------------------------------------ the pool
class LocalPool:
    """An executor of processes or threads under one rank. Made by :func:`local_pool`.

    All methods are **local**: one rank uses its own pool, e.g. inside a farm task.
    """

    def __init__(self, workers: int, kind: str):
        self.workers, self.kind = workers, kind
        #: what the hang watchdog records while this rank waits for its pool: only itself
        self.world_ranks: list[int] = [_world_rank()]
        if kind == "process":
            self._ex: cf.Executor = cf.ProcessPoolExecutor(workers, mp_context=WorkerContext())
        else:
            self._ex = cf.ThreadPoolExecutor(workers, thread_name_prefix="hpcpar-local")

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` in a worker; a ``concurrent.futures.Future``."""
        return self._ex.submit(fn, *args, **kwargs)

    def map(self, fn: Callable, *iterables: Iterable, chunksize: int = 1,
            timeout: float | None = None) -> Iterator:
        """``fn`` over the items, results in order (as ``Executor.map``).

        Waiting for each result is marked in the hang watchdog (``local pool``).
        """
        if self.kind == "process":
            it = self._ex.map(fn, *iterables, chunksize=chunksize, timeout=timeout)
        else:
            it = self._ex.map(fn, *iterables, timeout=timeout)
        return self._watched(it)

    def _watched(self, it: Iterator) -> Iterator:
        while True:
            with _watching("local pool (waiting for a result)", self):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def _results(self, futs: list[cf.Future]) -> list:
        with _watching("local pool (waiting for results)", self):
            return [f.result() for f in futs]

    def map_array(self, fn: Callable[[np.ndarray], Any], array: np.ndarray, axis: int = 0,
                  blocks: int | None = None) -> list:
        """``fn`` applied to blocks of ``array`` along ``axis``, in parallel; results in block order.

        With a process pool the array is copied once into shared memory and each
        worker maps the block it needs: the data is never pickled (only ``fn``,
        the block bounds and ``fn``'s results are). Blocks follow
        :func:`hpcpar.partition.block_counts`; ``fn`` sees a read-only view.

        Args:
            fn: called as ``fn(block)``; a module-level function for process pools.
            array: a NumPy array without Python objects.
            axis: the axis to split.
            blocks: the number of blocks (default: the number of workers, at most
                the length of ``axis``).

        Returns:
            ``[fn(block0), fn(block1), ...]``.
        """
        arr = np.asarray(array)
        if arr.dtype.hasobject:
            raise ValueError("hpcpar.local_pool.map_array: object arrays cannot go through shared "
                             "memory; use pool.map on a list instead")
        if arr.ndim == 0:
            raise ValueError("hpcpar.local_pool.map_array: needs an array with at least one axis")
        norm_axis, problem = attempt(partition.normalize_axis, axis, arr.ndim)
        raise_problems("hpcpar.local_pool.map_array", [problem])  # a TypeError is a ValueError too
        assert norm_axis is not None  # raise_problems raised otherwise
        axis = norm_axis
        length = arr.shape[axis]
        nblocks = blocks if blocks is not None else min(self.workers, max(1, length))
        if nblocks < 1:
            raise ValueError(f"hpcpar.local_pool.map_array: blocks must be >= 1, got {blocks}")
        bounds = [(r.start, r.stop) for r in
                  (partition.block_range(length, nblocks, i) for i in range(nblocks))]
        if self.kind != "process":
            view = arr.view()
            view.flags.writeable = False
            futs = [self._ex.submit(fn, _take(view, axis, a, b)) for a, b in bounds]
            return self._results(futs)
        shm = shared_memory.SharedMemory(create=True, size=max(1, arr.nbytes))
        try:
            shared = np.ndarray(arr.shape, arr.dtype, buffer=shm.buf)
            shared[...] = arr
            del shared
            spec = (shm.name, arr.shape, arr.dtype.str if not arr.dtype.fields else arr.dtype, axis)
            futs = [self._ex.submit(_apply_block, fn, spec, a, b) for a, b in bounds]
            return self._results(futs)
        finally:
            shm.close()
            shm.unlink()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop the workers (after the queued work when ``wait``)."""
        self._ex.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<hpcpar.LocalPool {self.workers} {self.kind} workers>"


def _world_rank() -> int:
    """This process's ``COMM_WORLD`` rank (0 when MPI is not loaded or not initialised)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return 0
    return int(mpi.COMM_WORLD.Get_rank())


def _watching(name: str, pool: LocalPool) -> contextlib.AbstractContextManager:
    """The hang watchdog's mark for a wait on the pool; nothing when hpcpar's MPI side is not
    loaded (a pool needs no MPI, and marking must not start it)."""
    watchdog = sys.modules.get("hpcpar.core.watchdog")
    return contextlib.nullcontext() if watchdog is None else watchdog.watching(name, pool)


def _take(arr: np.ndarray, axis: int, a: int, b: int) -> np.ndarray:
    index = [slice(None)] * arr.ndim
    index[axis] = slice(a, b)
    return arr[tuple(index)]


def _apply_block(fn: Callable[[np.ndarray], Any], spec: tuple, a: int, b: int) -> Any:
    """In a worker: map the shared array, call ``fn`` on block ``[a, b)``."""
    name, shape, dtype, axis = spec
    shm = shared_memory.SharedMemory(name=name)
    try:
        full = np.ndarray(shape, np.dtype(dtype), buffer=shm.buf)
        full.flags.writeable = False
        result = fn(_take(full, axis, a, b))
        if isinstance(result, np.ndarray) and np.may_share_memory(result, full):
            result = result.copy()  # the mapping goes away below
        del full
        return result
    finally:
        shm.close()


def local_pool(workers: int | None = None, kind: str = "process") -> LocalPool:
    """A pool of workers under this rank: ``submit``, ``map``, ``map_array``, a context manager.

    **Local**: call it on any rank, also inside a farm task. Process workers are
    spawned fresh and never initialise MPI (see the module notes); use
    ``kind="thread"`` for I/O-bound work or code that releases the GIL.

    Args:
        workers: the number of workers; None uses :func:`local_cpus` when it has
            been called (collectively) before, else this rank's share of the
            node's CPUs as the launcher reports the ranks per node
            (``MPI_LOCALNRANKS`` and the like), capped by ``SLURM_CPUS_PER_TASK``.
        kind: ``"process"`` (CPU-bound Python) or ``"thread"``.

    Returns:
        A :class:`LocalPool`; shut it down (or use ``with``) when done.
    """
    if kind not in ("process", "thread"):
        raise ValueError(f"hpcpar.local_pool: kind must be 'process' or 'thread', got {kind!r}")
    if workers is None:
        workers = _default_workers()
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"hpcpar.local_pool: workers must be a positive int or None, got {workers!r}")
    return LocalPool(int(workers), kind)
