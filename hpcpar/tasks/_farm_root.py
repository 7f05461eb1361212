"""The root side of :func:`hpcpar.farm`: the task queue, answers to requests, root's own tasks.

Also the farm's wire format, shared with the workers in :mod:`hpcpar.tasks.farm`:
every message uses :data:`TAG` on the farm's private communicator; a worker sends
``(kind, results, want, host)`` with kind :data:`REQ` ("results, and give me more") or
:data:`RES` ("results only") and its host name in its first message only (None
later), and root answers a request with a list of chunks ``(start, tasks)``
(empty: no more).
"""

from __future__ import annotations

import pickle
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from mpi4py import MPI

from ..core import watchdog
from ..errors import TaskError
from ..observe import trace
from ..observe.progress import meter

__all__ = ["Root", "Failure", "TAG", "REQ", "RES", "IDLE_MIN", "IDLE_MAX", "HOST", "pack",
           "sendable"]

TAG = 7  #: every farm message uses one tag on the farm's private communicator
REQ, RES = 0, 1  #: worker -> root kinds: "results, and give me more" / "results only"
IDLE_MIN, IDLE_MAX = 20e-6, 5e-4  #: a waiting rank sleeps between probes (seconds)
#: Answer requests from a helper thread while root computes (needs MPI_THREAD_MULTIPLE).
USE_HELPER = True
_HELPER_MAX = 2e-3  # the most root's helper thread sleeps between probes (seconds)
_OWN_SLICE = 5e-3  # root yields results at least this often while computing (seconds)
#: This process's host name, as failures name it.
HOST = socket.gethostname()


class Failure:
    """What a rank sends back for a task that raised: picklable in every case."""

    __slots__ = ("index", "rank", "host", "exc", "exc_type", "text", "tb")

    def __init__(self, index: int, rank: int, exc: BaseException, host: str = HOST):
        self.index, self.rank, self.host = index, rank, host
        self.exc_type = type(exc).__name__
        self.text = str(exc)
        self.tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.exc = exc

    def __getstate__(self):
        try:
            exc = pickle.loads(pickle.dumps(self.exc))
        except Exception:
            exc = None
        return (self.index, self.rank, self.host, exc, self.exc_type, self.text, self.tb)

    def __setstate__(self, state):
        self.index, self.rank, self.host, self.exc, self.exc_type, self.text, self.tb = state

    def error(self) -> TaskError:
        err = TaskError(
            f"task {self.index} raised {self.exc_type} on rank {self.rank} (host {self.host}): "
            f"{self.text}\nremote traceback (rank {self.rank}):\n{self.tb}",
            self.index, self.rank, self.exc_type, self.tb, host=self.host)
        err.__cause__ = self.exc
        return err

    def collected(self) -> BaseException:
        """The exception object that takes the task's place with ``errors="collect"``."""
        exc = self.exc if self.exc is not None else self.error()
        try:
            for attr, value in (("task_index", self.index), ("rank", self.rank),
                                ("remote_traceback", self.tb)):
                setattr(exc, attr, value)
        except Exception:
            pass
        return exc



def pack(i: int, ok: bool | None, value: Any, rank: int) -> tuple:
    """A result as it travels: ``(index, ok, pickled value)``; a Failure if it cannot be pickled.

    Each result is pickled on its own, so that root can unpickle each on its own
    too: one result that cannot be sent, or cannot be unpickled on root, fails its
    own task and nothing else.
    """
    if ok is None:
        return i, None, None
    try:
        return i, ok, pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        err = TypeError(f"the result of task {i} cannot be sent to root: {type(exc).__name__}: {exc}")
        return i, False, pickle.dumps(Failure(i, rank, err), pickle.HIGHEST_PROTOCOL)


def _unpack(item: tuple, source: int, host: str) -> tuple:
    """Root's side of :func:`pack`: ``(index, ok, value)``; ``host``: the source's host."""
    i, ok, payload = item
    if ok is None:
        return item
    try:
        return i, ok, pickle.loads(payload)
    except Exception as exc:
        err = TypeError(f"the result of task {i} from rank {source} cannot be unpickled on root: "
                        f"{type(exc).__name__}: {exc} (an exception class whose __init__ takes "
                        "other arguments than its args, say; make it picklable or return "
                        "plain data)")
        return i, False, Failure(i, source, err, host)


def sendable(i: int, task: Any, rank: int, dest: int) -> Any:
    """``task`` if it pickles, else a Failure that takes its place (the worker reports it)."""
    try:
        pickle.dumps(task, pickle.HIGHEST_PROTOCOL)
        return task
    except Exception as exc:
        return Failure(i, rank, TypeError(f"task {i} cannot be sent from root (rank {rank}) to "
                                          f"rank {dest}: {type(exc).__name__}: {exc}"))


class Root:
    """Root's side: the task queue, the answers to requests, its own tasks.

    ``world``: the ``COMM_WORLD`` rank of each rank of the farm. While root waits,
    the hang watchdog records the ranks it waits for: those not yet told to stop.
    """

    def __init__(self, comm: MPI.Intracomm, fn: Callable[[Any], Any], tasks: list,
                 chunksize: int, ordered: bool, progress: bool, errors: str,
                 world: list[int] | None = None):
        self.world = list(range(comm.Get_size())) if world is None else list(world)
        self.watch = watchdog.Peers(self.world)
        self.broken: TaskError | None = None  # the helper thread failed
        self.comm, self.fn, self.tasks = comm, fn, tasks
        self.n, self.cs, self.ordered, self.errors = len(tasks), chunksize, ordered, errors
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.next = 0  # first task not yet handed out
        self.stopped = 0  # workers told to stop
        self.outstanding = 0  # tasks handed out, not yet reported back
        self.cancel = False  # hand out nothing more (a failure, or the caller stopped early)
        self.lock = threading.Lock()
        self.status = MPI.Status()
        self.sends: list[MPI.Request] = []
        self.arrived: deque = deque()  # (index, ok, value) in completion order
        self.first_failure: Failure | None = None
        self.hosts: dict[int, str] = {}  # worker rank -> host, from its first message
        #: What the farm raises on every rank once it has ended (set by :meth:`run`).
        self.error: TaskError | None = None
        self.bar = meter(self.n, "hpcpar.farm") if progress else None

    # -- the queue (called with the lock held)
    def _take(self):
        if self.cancel or self.next >= self.n:
            return None
        start = self.next
        stop = min(self.n, start + self.cs)
        self.next = stop
        self.outstanding += stop - start
        return start, self.tasks[start:stop]

    def _grant(self, want: int) -> list:
        """Up to ``want`` chunks, but no more than a ``1 / (2 * size)`` share of what is left."""
        left = -(-(self.n - self.next) // self.cs)
        k = max(1, min(want, left // (2 * self.size)))
        out = []
        for _ in range(k):
            chunk = self._take()
            if chunk is None:
                break
            out.append(chunk)
        return out

    def _record(self, done):
        for i, ok, value in done:
            self.outstanding -= 1
            if ok is None:
                continue
            if not ok:
                if self.first_failure is None or i < self.first_failure.index:
                    self.first_failure = value
                if self.errors == "raise":
                    self.cancel = True
            self.arrived.append((i, ok, value))
        if self.bar is not None and done:
            self.bar.update(len(done))

    def _serve(self, msg, source: int) -> None:
        kind, done, want, host = msg.recv()
        if host is not None:
            self.hosts[source] = host
        self._record([_unpack(item, source, self.hosts.get(source, "?")) for item in done])
        if kind == REQ:
            chunks = self._grant(want)
            if not chunks:
                self.stopped += 1
                gone = self.world[source]
                self.watch.world_ranks = [r for r in self.watch.world_ranks if r != gone]
            try:
                req = self.comm.isend(chunks, dest=source, tag=TAG)
            except Exception:  # some task cannot be pickled: it fails, the others go
                chunks = [(start, [sendable(start + k, t, self.rank, source)
                                   for k, t in enumerate(items)]) for start, items in chunks]
                req = self.comm.isend(chunks, dest=source, tag=TAG)
            self.sends.append(req)
            if len(self.sends) > 16:
                self.sends = [r for r in self.sends if not r.Test()]

    def _serve_pending(self) -> int:
        served, status = 0, self.status
        while True:
            msg = self.comm.improbe(source=MPI.ANY_SOURCE, tag=TAG, status=status)
            if msg is None:
                return served
            self._serve(msg, status.Get_source())
            served += 1

    def _finished(self) -> bool:
        return self.next >= self.n or self.cancel

    def _helper(self, stop: threading.Event) -> None:
        """Answer requests while root's main thread is busy in a long task.

        Whatever goes wrong here becomes a :class:`TaskError` that every rank raises
        once the farm has ended; the farm stops handing out tasks, and root's main
        thread lets the workers finish.
        """
        pause = IDLE_MIN
        try:
            while not stop.is_set():
                served = 0
                if self.lock.acquire(blocking=False):
                    try:
                        served = self._serve_pending()
                    finally:
                        self.lock.release()
                pause = IDLE_MIN if served else min(2 * pause, _HELPER_MAX)
                stop.wait(pause)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            err = TaskError(f"hpcpar.farm: root's helper thread (rank {self.rank}, host {HOST}) "
                            f"failed with {type(exc).__name__}: {exc}\n{tb}", None, self.rank,
                            type(exc).__name__, tb, host=HOST)
            err.__cause__ = exc
            with self.lock:
                self.broken = err
                self.cancel = True

    # -- the main loop
    def run(self) -> Iterator[Any]:
        """Yield the results as they come (in task order when ``ordered``). When every
        worker has left, :attr:`error` holds what the farm must raise, or None."""
        helper = stop = None
        if self.size > 1 and MPI.Query_thread() == MPI.THREAD_MULTIPLE and USE_HELPER:
            stop = threading.Event()
            helper = threading.Thread(target=self._helper, args=(stop,), daemon=True,
                                      name="hpcpar-farm")
            helper.start()
        pending: dict[int, Any] = {}
        want = 0  # next index to yield when ordered
        mine = None  # root's own current chunk: (start, items, position)
        idle = IDLE_MIN
        waiting, prev = False, None  # root is marked waiting for the workers
        try:
            while True:
                with self.lock:
                    # a broken helper has cancelled the farm: it drains, then fails everywhere
                    served = self._serve_pending() if self.size > 1 else 0
                    if mine is None:
                        chunk = self._take()
                        mine = (chunk[0], chunk[1], 0) if chunk else None
                    ready = list(self.arrived)
                    self.arrived.clear()
                    done = (mine is None and self._finished() and self.outstanding == 0
                            and self.stopped == self.size - 1)
                if waiting and (served or ready or done):
                    watchdog.leave(prev)
                    waiting = False
                for i, ok, value in ready:
                    if ok is False and self.errors == "raise":
                        continue
                    value = value if ok else value.collected()
                    if not self.ordered:
                        yield value
                    else:
                        pending[i] = value
                while self.ordered and want in pending:  # a failed task stops this in "raise" mode
                    yield pending.pop(want)
                    want += 1
                if done:
                    break
                if mine is not None:
                    self._compute_own(mine)
                    mine = None
                    idle = IDLE_MIN
                else:
                    # Own share done: wait for the workers without spinning a core.
                    if helper is not None:
                        assert stop is not None  # set together with helper
                        stop.set()
                        helper.join()
                        helper = None
                    if not waiting:
                        prev, waiting = watchdog.enter("farm (root waiting for results)",
                                                       self.watch), True
                    if self.comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG):
                        idle = IDLE_MIN
                    else:
                        time.sleep(idle)
                        idle = min(2 * idle, IDLE_MAX)
        except GeneratorExit:
            if mine is not None:
                start, items, pos = mine
                with self.lock:
                    self._record([(start + k, None, None) for k in range(pos, len(items))])
            self._drain()
            raise
        finally:
            if waiting:
                watchdog.leave(prev)
            if helper is not None:
                assert stop is not None  # set together with helper
                stop.set()
                helper.join()
            if self.bar is not None:
                self.bar.close()
        with watchdog.watching("farm (root sending)", self.watch):
            MPI.Request.Waitall(self.sends)
        if self.broken is not None:
            self.error = self.broken
        elif self.errors == "raise" and self.first_failure is not None:
            self.error = self.first_failure.error()

    def _compute_own(self, mine) -> None:
        """Run root's current chunk, and the next ones for up to ``_OWN_SLICE`` seconds.

        Requests are answered between any two tasks. Root takes one chunk at a
        time, like a worker, so the load stays balanced; it returns to the main
        loop (which yields results) after each time slice.
        """
        comm, fn, rank, multi = self.comm, self.fn, self.rank, self.size > 1
        raise_ = self.errors == "raise"
        deadline = time.perf_counter() + _OWN_SLICE
        while mine is not None:
            start, items, pos = mine
            results = []
            k = len(items)
            for j in range(pos, len(items)):
                if multi and comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG):
                    with self.lock:
                        self._serve_pending()
                    if self.cancel:
                        k = j
                        break
                try:
                    results.append((start + j, True, trace.task(fn, items[j], start + j, rank)))
                except Exception as exc:
                    results.append((start + j, False, Failure(start + j, rank, exc)))
                    if raise_:
                        k = j + 1
                        break
            with self.lock:
                self._record(results)
                if k < len(items):  # cancelled: the rest of the chunk is skipped
                    self._record([(start + j, None, None) for j in range(k, len(items))])
                if self.cancel or time.perf_counter() > deadline:
                    return
                chunk = self._take()
            mine = (chunk[0], chunk[1], 0) if chunk else None

    def _drain(self) -> None:
        """The caller stopped early: start nothing new, let every worker finish."""
        with self.lock:
            self.cancel = True
        idle = IDLE_MIN
        with watchdog.watching("farm (root stopping early, waiting for the workers)", self.watch):
            while True:
                with self.lock:
                    self._serve_pending()
                    self.arrived.clear()
                    if self.outstanding <= 0 and self.stopped == self.size - 1:
                        break
                time.sleep(idle)
                idle = min(2 * idle, IDLE_MAX)
            MPI.Request.Waitall(self.sends)
