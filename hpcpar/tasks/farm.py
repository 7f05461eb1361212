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
nothing behind. When it has ended, root's verdict reaches every rank in one
fixed-size broadcast (:mod:`hpcpar.tasks.outcome`), so a failed task raises the
same :class:`TaskError` on every rank.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from mpi4py import MPI

from ..core import watchdog
from ..errors import Problem, TaskError, agree, problem_of
from ..observe import trace
from ._farm_root import HOST, IDLE_MAX, IDLE_MIN, REQ, RES, TAG, Failure, Root, pack
from .outcome import share

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["farm", "farm_iter", "default_chunksize", "TaskError"]

_MAX_WANT = 64  # the most chunks a worker asks for at once
_SPIN = 50e-6  # probe without sleeping this long first (seconds)
_ERRORS = ("raise", "collect")


def default_chunksize(ntasks: int, nranks: int) -> int:
    """``ceil(ntasks / (4 * nranks))``, at least 1 (the rule of ``mpi4py.util.pool``). **Local**."""
    return max(1, math.ceil(ntasks / (4 * max(1, nranks))))


def farm(ctx: Context, fn: Callable[[Any], Any], tasks: Iterable[Any] | None, chunksize: int | None = None,
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
        progress: show progress on root's stderr, as :func:`hpcpar.observe.progress.meter`
            does: a tqdm bar on a terminal, plain lines in batch logs
            (``HPCPAR_PROGRESS_EVERY``), nothing with ``HPCPAR_PROGRESS=0``.
        errors: ``"raise"``: once the farm has ended on every rank, every
            rank raises the same :class:`TaskError` for the first failed task
            (by task order), naming its index, the rank that ran it and that
            rank's host, with the remote traceback; no new tasks start once one
            has failed. ``"collect"``: the exception objects take the failed
            tasks' places in the results.

    Returns:
        On root, the list of results; on other ranks None.

    Raises:
        ValueError: on every rank, when root's arguments are unusable (a
            ``TypeError`` too when they are of the wrong type).
        TaskError: on every rank, see ``errors``; the context stays usable.
    """
    out = list(farm_iter(ctx, fn, tasks, chunksize=chunksize, ordered=ordered,
                         progress=progress, errors=errors))
    return out if ctx.is_root else None


def farm_iter(ctx: Context, fn: Callable[[Any], Any], tasks: Iterable[Any] | None,
              chunksize: int | None = None, ordered: bool = True, progress: bool = False,
              errors: str = "raise") -> Iterator[Any]:
    """Like :func:`farm`, but yield results on root as they arrive.

    **Collective**: every rank must iterate the generator to its end (a plain
    ``for`` loop); on ranks other than root it yields nothing and ends when the
    farm does. If root stops early (``break``, or the generator is closed), no
    new tasks start, the running ones finish, and the farm ends cleanly on
    every rank. With ``ordered=True`` a result is yielded once all earlier ones
    have been; with ``ordered=False`` as soon as it arrives. ``errors="raise"``
    raises the same :class:`TaskError` on every rank after the farm has ended
    everywhere (root yields the results that came before the failure first). A
    root that stops early raises nothing, and neither do the other ranks.
    """
    comm = ctx.comm
    problem: Problem | None = None
    items: list[Any] = []
    if ctx.is_root:
        problem = _check_args(tasks, chunksize, errors)
        if problem is None:
            assert tasks is not None  # _check_args rejects None
            try:
                items = list(tasks)
            except Exception as exc:
                problem = (problem_of(exc)[0],
                           f"iterating root's tasks raised {type(exc).__name__}: {exc}")
    if not callable(fn):
        text = f"fn must be callable, got {fn!r}"
        problem = ("TypeError", text) if problem is None else (problem[0], f"{problem[1]}; {text}")
    agree(comm, "hpcpar.farm", problem, name_ranks=True)
    errors = comm.bcast(errors, root=ctx.root)  # root's mode governs the workers too
    fcomm = comm.Dup()
    watch = watchdog.Peers([ctx.world_ranks[ctx.rank], ctx.world_ranks[ctx.root]])
    ending = "farm (waiting for root's verdict at the end)"
    error = None
    try:
        if ctx.is_root:
            n = len(items)
            cs = chunksize if chunksize is not None else default_chunksize(n, ctx.size)
            root = Root(fcomm, fn, items, cs, ordered, progress, errors, ctx.world_ranks)
            try:
                yield from root.run()
            except GeneratorExit:  # stopped early: the workers have left; nothing failed
                share(fcomm, ctx.root, None, ending, watch)
                raise
            error = root.error
        else:
            _work(fcomm, fn, ctx.root, errors, watch)
        error = share(fcomm, ctx.root, error, ending, watch)
    finally:
        fcomm.Free()
    if error is not None:
        raise error


def _check_args(tasks: Any, chunksize: Any, errors: Any) -> Problem | None:
    if tasks is None:
        return "TypeError", "root must pass its tasks (an iterable), got None"
    if isinstance(tasks, (str, bytes)) or not hasattr(tasks, "__iter__"):
        return "TypeError", f"tasks on root must be an iterable of tasks, got {type(tasks).__name__}"
    if chunksize is not None and (isinstance(chunksize, bool) or not isinstance(chunksize, int)):
        return "TypeError", f"chunksize must be a positive int or None, got {chunksize!r}"
    if chunksize is not None and chunksize < 1:
        return "ValueError", f"chunksize must be a positive int or None, got {chunksize!r}"
    if errors not in _ERRORS:
        return "ValueError", f"errors must be 'raise' or 'collect', got {errors!r}"
    return None


# ---------------------------------------------------------------- workers
def _await(comm: MPI.Intracomm, source: int) -> None:
    """Return when a farm message from ``source`` is waiting.

    Probes without pause for ``_SPIN`` seconds (a reply to a request usually
    arrives within microseconds), then sleeps between probes, 20 us doubling to
    0.5 ms: a blocking ``MPI_Recv`` would spin a core for as long as root takes to
    answer, a core that root's own tasks (or other ranks on the node) need.
    """
    if comm.iprobe(source=source, tag=TAG):
        return
    t_end = time.perf_counter() + _SPIN
    while time.perf_counter() < t_end:
        if comm.iprobe(source=source, tag=TAG):
            return
    pause = IDLE_MIN
    while not comm.iprobe(source=source, tag=TAG):
        time.sleep(pause)
        pause = min(2 * pause, IDLE_MAX)


def _run_one(fn: Callable[[Any], Any], i: int, task: Any, rank: int) -> tuple[bool, Any]:
    try:
        return True, trace.task(fn, task, i, rank)
    except Exception as exc:
        return False, Failure(i, rank, exc, HOST)


def _work(comm: MPI.Intracomm, fn: Callable[[Any], Any], root: int, errors: str,
          watch: Any = None) -> None:
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
    host: str | None = HOST  # sent with the first message only

    def post(kind):
        nonlocal done, host
        sends.append(comm.isend((kind, done, want, host), dest=root, tag=TAG))
        done, host = [], None
        if len(sends) > 8:
            sends[:] = [r for r in sends if not r.Test()]

    post(REQ)
    asked = True
    while True:
        if asked and (not queue or comm.iprobe(source=root, tag=TAG)):
            if not queue and not comm.iprobe(source=root, tag=TAG):
                want = min(2 * want, _MAX_WANT)  # it will have to wait: ask for more next time
                with watchdog.watching("farm (worker waiting for tasks from root)", watch):
                    _await(comm, root)
            chunks = comm.recv(source=root, tag=TAG)
            asked = False
            if not chunks:
                dry = True
            for start, items in chunks:
                queue.extend(enumerate(items, start))
        if not queue:
            break  # dry: root has nothing more
        if len(queue) == 1 and not asked and not dry:
            post(REQ)  # the reply travels while the last task runs
            asked = True
        i, task = queue.popleft()
        if failed:
            done.append((i, None, None))  # skipped: the farm is failing
            continue
        if isinstance(task, Failure):  # root could not send this task
            ok, value = False, task
        else:
            ok, value = _run_one(fn, i, task, rank)
        done.append(pack(i, ok, value, rank))
        failed = failed or (not ok and errors == "raise")
    if done:
        post(RES)
    with watchdog.watching("farm (worker sending results)", watch):
        MPI.Request.Waitall(sends)
