"""A dynamic task farm: independent tasks spread over every rank, uneven costs balanced.

Root owns the task list and hands out *chunks* of ``chunksize`` consecutive
tasks on request; each worker asks for more (carrying the results so far) just
before it starts the last task it holds, so the reply travels while that task
runs. A worker that still ran dry before the reply came asks for twice as many
chunks next time (root grants at most a ``1 / (2 * size)`` share of what is
left, so the end of the farm stays balanced). Root computes tasks too: between
two of its own tasks it probes for requests (an ``MPI_Iprobe``, about a
microsecond) and answers those waiting, and while one of its tasks runs a helper
thread answers them too (when MPI provides ``MPI_THREAD_MULTIPLE``, which mpi4py
asks for by default). Nothing spins for long: the helper thread, an idle root
and a waiting worker sleep between probes (20 us doubling to 0.5 ms; 2 ms for the
helper), because a blocking ``MPI_Recv`` busy-polls a core that the computing
ranks need.

Every farm runs on its own duplicate of the context's communicator, freed at the
end, so farm messages never meet the user's messages, and an aborted farm leaves
nothing behind.
"""

from __future__ import annotations

import math
import pickle
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from mpi4py import MPI

from ..errors import TaskError

__all__ = ["farm", "farm_iter", "TaskError"]

_TAG = 7  # every farm message uses one tag on the farm's private communicator
_REQ, _RES = 0, 1  # worker -> root kinds: "results, and give me more" / "results only"
_MAX_WANT = 64  # the most chunks a worker asks for at once
#: Answer requests from a helper thread while root computes (needs MPI_THREAD_MULTIPLE).
_USE_HELPER = True
_IDLE_MIN, _IDLE_MAX = 20e-6, 5e-4  # a waiting rank sleeps between probes (seconds)
_HELPER_MAX = 2e-3  # the most root's helper thread sleeps between probes (seconds)
_OWN_SLICE = 5e-3  # root yields results at least this often while computing (seconds)
_SPIN = 50e-6  # probe without sleeping this long first (seconds)
_ERRORS = ("raise", "collect")


class _Failure:
    """What a rank sends back for a task that raised: picklable in every case."""

    __slots__ = ("index", "rank", "exc", "exc_type", "text", "tb")

    def __init__(self, index: int, rank: int, exc: BaseException):
        self.index, self.rank = index, rank
        self.exc_type = type(exc).__name__
        self.text = str(exc)
        self.tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.exc = exc

    def __getstate__(self):
        try:
            exc = pickle.loads(pickle.dumps(self.exc))
        except Exception:  # noqa: BLE001 - an unpicklable exception travels as text
            exc = None
        return (self.index, self.rank, exc, self.exc_type, self.text, self.tb)

    def __setstate__(self, state):
        self.index, self.rank, self.exc, self.exc_type, self.text, self.tb = state

    def error(self) -> TaskError:
        err = TaskError(
            f"task {self.index} raised {self.exc_type} on rank {self.rank}: {self.text}\n"
            f"remote traceback (rank {self.rank}):\n{self.tb}",
            self.index, self.rank, self.exc_type, self.tb)
        err.__cause__ = self.exc
        return err

    def collected(self) -> BaseException:
        """The exception object that takes the task's place with ``errors="collect"``."""
        exc = self.exc if self.exc is not None else self.error()
        try:
            exc.task_index, exc.rank, exc.remote_traceback = self.index, self.rank, self.tb
        except Exception:  # noqa: BLE001 - e.g. exceptions with __slots__
            pass
        return exc


def default_chunksize(ntasks: int, nranks: int) -> int:
    """``ceil(ntasks / (4 * nranks))``, at least 1 (the rule of ``mpi4py.util.pool``). **Local**."""
    return max(1, math.ceil(ntasks / (4 * max(1, nranks))))


def farm(ctx, fn: Callable[[Any], Any], tasks: Iterable[Any] | None, chunksize: int | None = None,
         ordered: bool = True, progress: bool = False, errors: str = "raise") -> list | None:
    """Apply ``fn`` to every task, spreading the tasks over all ranks; results on root.

    **Collective**: every rank of ``ctx`` calls it with its own ``fn`` (the function
    is never sent, so lambdas and closures work). Only root's ``tasks`` is read;
    other ranks may pass None. Tasks and results travel by pickle. Root hands out
    chunks of ``chunksize`` consecutive tasks on request, so a rank that drew
    cheap tasks comes back for more; root computes tasks as well.

    Args:
        ctx: the :class:`hpcpar.Context`.
        fn: called as ``fn(task)`` on whichever rank gets the task.
        tasks: on root, an iterable of tasks (it is consumed into a list first).
        chunksize: tasks per chunk, the unit root hands out; None gives
            ``ceil(n / (4 * size))``. Use 1 when task costs vary a lot. A
            worker that waits for replies asks for several chunks at once.
        ordered: results in task order (True) or in completion order.
        progress: show a progress bar on root's stderr (tqdm when installed),
            silent when stderr is not a terminal.
        errors: ``"raise"``: after every rank has left the farm, root raises
            :class:`TaskError` for the first failed task (by task order), naming
            its index, rank and remote traceback; no new tasks start once one
            has failed. ``"collect"``: the exception objects take the failed
            tasks' places in the results.

    Returns:
        On root, the list of results; on other ranks None (also when a task
        failed with ``errors="raise"``: only root raises, and the context stays
        usable on every rank).

    Raises:
        ValueError: on every rank, when root's arguments are unusable.
        TaskError: on root only, see ``errors``.
    """
    out = list(farm_iter(ctx, fn, tasks, chunksize=chunksize, ordered=ordered,
                         progress=progress, errors=errors))
    return out if ctx.is_root else None


def farm_iter(ctx, fn: Callable[[Any], Any], tasks: Iterable[Any] | None,
              chunksize: int | None = None, ordered: bool = True, progress: bool = False,
              errors: str = "raise") -> Iterator[Any]:
    """Like :func:`farm`, but yield results on root as they arrive.

    **Collective**: every rank must iterate the generator to its end (a plain
    ``for`` loop); on ranks other than root it yields nothing and ends when the
    farm does. If root stops early (``break``, or the generator is closed), no
    new tasks start, the running ones finish, and the farm ends cleanly on
    every rank. With ``ordered=True`` a result is yielded once all earlier ones
    have been; with ``ordered=False`` as soon as it arrives. ``errors="raise"``
    raises :class:`TaskError` on root after the farm has ended everywhere.
    """
    comm = ctx.comm
    if ctx.is_root:
        problem = _check_args(tasks, chunksize, errors)
        if problem is None:
            try:
                tasks = list(tasks)
            except Exception as exc:  # noqa: BLE001 - reported on every rank below
                problem = f"iterating root's tasks raised {type(exc).__name__}: {exc}"
    else:
        problem = None
    if not callable(fn):
        problem = (problem + "; " if problem else "") + f"fn must be callable, got {fn!r}"
    heads = comm.allgather((problem, errors))  # one exchange: every rank's problem, root's mode
    bad = [f"rank {r}: {p}" for r, (p, _) in enumerate(heads) if p]
    if bad:
        raise ValueError("hpcpar.farm: " + "; ".join(bad))
    errors = heads[ctx.root][1]
    fcomm = comm.Dup()
    try:
        if ctx.is_root:
            n = len(tasks)
            cs = chunksize if chunksize is not None else default_chunksize(n, ctx.size)
            yield from _Root(fcomm, fn, tasks, cs, ordered, progress, errors).run()
        else:
            _work(fcomm, fn, ctx.root, errors)
    finally:
        fcomm.Free()


def _check_args(tasks, chunksize, errors) -> str | None:
    if tasks is None:
        return "root must pass its tasks (an iterable), got None"
    if isinstance(tasks, (str, bytes)) or not hasattr(tasks, "__iter__"):
        return f"tasks on root must be an iterable of tasks, got {type(tasks).__name__}"
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        return f"chunksize must be a positive int or None, got {chunksize!r}"
    if errors not in _ERRORS:
        return f"errors must be 'raise' or 'collect', got {errors!r}"
    return None


# ---------------------------------------------------------------- workers
def _await(comm: MPI.Comm, source: int) -> None:
    """Return when a farm message from ``source`` is waiting.

    Probes without pause for ``_SPIN`` seconds (a reply to a request usually
    arrives within microseconds), then sleeps between probes, 20 us doubling to
    0.5 ms: a blocking ``MPI_Recv`` would spin a core for as long as root takes to
    answer, a core that root's own tasks (or other ranks on the node) need.
    """
    if comm.iprobe(source=source, tag=_TAG):
        return
    t_end = time.perf_counter() + _SPIN
    while time.perf_counter() < t_end:
        if comm.iprobe(source=source, tag=_TAG):
            return
    pause = _IDLE_MIN
    while not comm.iprobe(source=source, tag=_TAG):
        time.sleep(pause)
        pause = min(2 * pause, _IDLE_MAX)


def _run_one(fn, i, task, rank):
    try:
        return True, fn(task)
    except Exception as exc:  # noqa: BLE001 - reported to root with its traceback
        return False, _Failure(i, rank, exc)


def _picklable(item, rank):
    i, ok, value = item
    try:
        pickle.dumps(value)
        return item
    except Exception as exc:  # noqa: BLE001
        err = TypeError(f"the result of task {i} cannot be sent to root: {type(exc).__name__}: {exc}")
        return i, False, _Failure(i, rank, err)


def _work(comm: MPI.Comm, fn, root: int, errors: str) -> None:
    """A worker's loop: ask, compute, ask again before the last task it holds.

    One request is outstanding at a time. A request asks for ``want`` chunks;
    ``want`` starts at 1 and doubles (up to ``_MAX_WANT``) whenever the worker
    ran out of tasks before the reply came, i.e. when root answers more slowly
    than this worker computes (root busy with a long task of its own, or tasks
    far shorter than a message round trip). Root caps each grant so the end of
    the farm stays balanced.
    """
    rank = comm.Get_rank()
    sends: list[MPI.Request] = []
    done: list = []  # (index, ok, value) not yet reported
    queue: deque = deque()  # (index, task) received, not yet run
    want, asked, dry, failed = 1, False, False, False

    def post(kind):
        nonlocal done
        try:
            sends.append(comm.isend((kind, done, want), dest=root, tag=_TAG))
        except Exception:  # noqa: BLE001 - some result cannot be pickled: report it as the task's error
            done = [_picklable(item, rank) for item in done]
            sends.append(comm.isend((kind, done, want), dest=root, tag=_TAG))
        done = []
        if len(sends) > 8:
            sends[:] = [r for r in sends if not r.Test()]

    post(_REQ)
    asked = True
    while True:
        if asked and (not queue or comm.iprobe(source=root, tag=_TAG)):
            if not queue and not comm.iprobe(source=root, tag=_TAG):
                want = min(2 * want, _MAX_WANT)  # it will have to wait: ask for more next time
                _await(comm, root)
            chunks = comm.recv(source=root, tag=_TAG)
            asked = False
            if not chunks:
                dry = True
            for start, items in chunks:
                queue.extend(enumerate(items, start))
        if not queue:
            break  # dry: root has nothing more
        if len(queue) == 1 and not asked and not dry:
            post(_REQ)  # the reply travels while the last task runs
            asked = True
        i, task = queue.popleft()
        if failed:
            done.append((i, None, None))  # skipped: the farm is failing
            continue
        ok, value = _run_one(fn, i, task, rank)
        done.append((i, ok, value))
        failed = failed or (not ok and errors == "raise")
    if done:
        post(_RES)
    MPI.Request.Waitall(sends)


# ---------------------------------------------------------------- root
class _Root:
    """Root's side: the task queue, the answers to requests, its own tasks."""

    def __init__(self, comm, fn, tasks, chunksize, ordered, progress, errors):
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
        self.first_failure: _Failure | None = None
        self.bar = _Progress(self.n) if progress else None

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
        kind, done, want = msg.recv()
        self._record(done)
        if kind == _REQ:
            chunks = self._grant(want)
            if not chunks:
                self.stopped += 1
            self.sends.append(self.comm.isend(chunks, dest=source, tag=_TAG))
            if len(self.sends) > 16:
                self.sends = [r for r in self.sends if not r.Test()]

    def _serve_pending(self) -> int:
        served, status = 0, self.status
        while True:
            msg = self.comm.improbe(source=MPI.ANY_SOURCE, tag=_TAG, status=status)
            if msg is None:
                return served
            self._serve(msg, status.Get_source())
            served += 1

    def _finished(self) -> bool:
        return self.next >= self.n or self.cancel

    def _helper(self, stop: threading.Event) -> None:
        """Answer requests while root's main thread is busy in a long task."""
        pause = _IDLE_MIN
        while not stop.is_set():
            served = 0
            if self.lock.acquire(blocking=False):
                try:
                    served = self._serve_pending()
                finally:
                    self.lock.release()
            pause = _IDLE_MIN if served else min(2 * pause, _HELPER_MAX)
            stop.wait(pause)

    # -- the main loop
    def run(self) -> Iterator[Any]:
        helper = stop = None
        if self.size > 1 and MPI.Query_thread() == MPI.THREAD_MULTIPLE and _USE_HELPER:
            stop = threading.Event()
            helper = threading.Thread(target=self._helper, args=(stop,), daemon=True,
                                      name="hpcpar-farm")
            helper.start()
        pending: dict[int, Any] = {}
        want = 0  # next index to yield when ordered
        mine = None  # root's own current chunk: (start, items, position)
        idle = _IDLE_MIN
        try:
            while True:
                with self.lock:
                    if self.size > 1:
                        self._serve_pending()
                    if mine is None:
                        chunk = self._take()
                        mine = (chunk[0], chunk[1], 0) if chunk else None
                    ready = list(self.arrived)
                    self.arrived.clear()
                    done = (mine is None and self._finished() and self.outstanding == 0
                            and self.stopped == self.size - 1)
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
                    idle = _IDLE_MIN
                else:
                    # Own share done: wait for the workers without spinning a core.
                    if helper is not None:
                        stop.set()
                        helper.join()
                        helper = None
                    if self.comm.iprobe(source=MPI.ANY_SOURCE, tag=_TAG):
                        idle = _IDLE_MIN
                    else:
                        time.sleep(idle)
                        idle = min(2 * idle, _IDLE_MAX)
        except GeneratorExit:
            if mine is not None:
                start, items, pos = mine
                with self.lock:
                    self._record([(start + k, None, None) for k in range(pos, len(items))])
            self._drain()
            raise
        finally:
            if helper is not None:
                stop.set()
                helper.join()
            if self.bar is not None:
                self.bar.close()
        MPI.Request.Waitall(self.sends)
        if self.errors == "raise" and self.first_failure is not None:
            raise self.first_failure.error()

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
                if multi and comm.iprobe(source=MPI.ANY_SOURCE, tag=_TAG):
                    with self.lock:
                        self._serve_pending()
                    if self.cancel:
                        k = j
                        break
                try:
                    results.append((start + j, True, fn(items[j])))
                except Exception as exc:  # noqa: BLE001 - reported with its traceback
                    results.append((start + j, False, _Failure(start + j, rank, exc)))
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
        idle = _IDLE_MIN
        while True:
            with self.lock:
                self._serve_pending()
                self.arrived.clear()
                if self.outstanding <= 0 and self.stopped == self.size - 1:
                    break
            time.sleep(idle)
            idle = min(2 * idle, _IDLE_MAX)
        MPI.Request.Waitall(self.sends)


class _Progress:
    """A progress bar on root's stderr: tqdm if installed, else one updating line; silent off a terminal."""

    def __init__(self, total: int):
        self.total, self.count, self.bar, self.last = total, 0, None, 0.0
        self.on = bool(getattr(sys.stderr, "isatty", lambda: False)())
        if self.on:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="task", desc="hpcpar.farm")
            except ImportError:
                pass

    def update(self, k: int) -> None:
        self.count += k
        if not self.on:
            return
        if self.bar is not None:
            self.bar.update(k)
            return
        now = time.monotonic()
        if now - self.last > 0.2 or self.count >= self.total:
            self.last = now
            sys.stderr.write(f"\rhpcpar.farm: {self.count}/{self.total} tasks")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.on:
            sys.stderr.write("\n")
            sys.stderr.flush()
