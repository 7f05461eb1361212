"""The hang watchdog: a rank blocked too long in one hpcpar call ends the job loudly.

Every checked collective of :class:`hpcpar.Context`, and every blocking wait of
the grids, the sort, farms, pipelines, the serial output path and local pools,
marks the time it is entered and left in this module's per-process state (a few
attribute stores, no thread start, no system call). A mark records the object
waited on: a context, or :class:`Peers` naming the only ranks the wait depends
on. One daemon thread per process wakes a few times a second and looks at that
state:

* **Timeout** (``HPCPAR_TIMEOUT=SECONDS``, ``hpcpar.run(main, timeout=...)`` or
  ``hpcpar run --timeout``): a rank blocked in one call longer than that dumps
  the Python stack of each of its threads to stderr, every line prefixed
  ``[rank R]``; asks every other rank to dump theirs and to say which call it is
  in; then ends the job with ``MPI_Abort`` and a message naming which call each
  rank was waiting in.
* **Plain waits**: with a timeout set, while no call is marked the thread samples
  the main thread's innermost frame (:mod:`hpcpar.core.plainwait`); the same frame
  at the same instruction, in a blocking mpi4py call, for longer than the timeout
  fires the same way. Nothing is added to any call for this.
* **Finished peers**: a rank that has finished its main function and has waited
  for the others for a moment tells them so. A rank blocked in a collective on
  a context that includes a finished rank can never complete it; it ends the job
  at once, naming both ranks, with no timeout needed.

The messages travel on a private duplicate of ``COMM_WORLD`` made when the first
world :class:`~hpcpar.Context` is created, and only when the MPI library offers
``MPI_THREAD_MULTIPLE`` (mpi4py asks for it by default); otherwise the timeout
still works, each rank reporting only for itself. A rank busy in C code that holds
the GIL cannot run its watchdog; MPI calls made through mpi4py release it.

Messages, for P ranks (O(P) per event, never O(P²); :mod:`hpcpar.core.watchnet`
has the details): they go through a coordinator, world rank 0, and down a tree
(4 children per rank, about log4(P) hops).

* Finished notice, per final check: at most P-1 messages to the coordinator plus
  P-1 down the tree for its one push (none when every rank finished), so at most
  2(P-1); plus, for a rank blocked in a collective of a sub-communicator none of
  whose ranks it knows to have finished, 1 question to the coordinator per
  context and at most 1 answer.
* Dump request, once per job: at most P-1 requests to the coordinator, P-1 down
  the tree, P-1 reports to the rank that asked: 3(P-1). When ranks cannot answer
  (the coordinator itself, or a rank inside the tree, busy holding the GIL), a
  backup round from world rank 1 and direct questions to the missing ranks add
  at most 5(P-1). A rank that timed out and hears nothing still ends the job
  after its wait, naming the ranks that did not answer.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from mpi4py import MPI

from .. import env
from ..observe import stacks
from ..observe.trace import COLLECTIVE, MARK, RECORDER
from . import plainwait, watchnet
from .abort import abort

if TYPE_CHECKING:
    from .context import Context

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["STATE", "clock", "thread_ident",
           "watching", "Peers", "marked", "enter", "leave", "set_timeout", "get_timeout", "start", "stop",
           "current", "messages", "format_stacks", "EXIT_HANG", "FINISH"]

#: Exit status of a job ended by the watchdog (as ``timeout(1)`` reports a time-out):
#: :data:`hpcpar.observe.stacks.EXIT_TIMEOUT`.
EXIT_HANG = stacks.EXIT_TIMEOUT

#: The call name a rank shows while it waits, after its main function returned,
#: for the other ranks to finish theirs.
FINISH = "finish"

#: Seconds a finished rank waits for the others before it tells them it finished.
_FINISH_NOTICE = 1.0
#: Seconds a rank may stay in a collective that includes a finished rank.
_FINISHED_GRACE = 1.0
#: Seconds the rank that fires waits for the other ranks' reports (plus the tree's hops).
_COLLECT = 2.0

_monotonic = time.monotonic
_ident = threading.get_ident


class _State:
    """What this process is doing: the current call as ``(name, since, context)``."""

    __slots__ = ("now", "tid", "timeout", "thread", "stopping", "net", "finished", "ahead", "asked",
                 "dumped", "fired", "notified", "explicit", "epoch", "lock", "spot")

    def __init__(self) -> None:
        self.now: tuple | None = None
        self.tid = 0  # the thread that made the current mark
        self.timeout: float | None = None
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.net: watchnet.Net | None = None
        self.finished: set[int] = set()  # ranks waiting in this rank's current final check
        self.ahead: dict[int, set[int]] = {}  # ranks waiting in later final checks, by epoch
        self.asked: set[tuple[int, ...]] = set()  # contexts asked about in this final check
        self.dumped = False
        self.fired = False
        self.notified = False
        self.explicit = False
        self.epoch = 0  # final checks (finish) this rank has completed
        self.lock = threading.Lock()  # epoch, finished, ahead, asked, notified and leaving a finish
        self.spot: plainwait.Spot | None = None  # where the main thread stood at the last tick


_S = _State()
#: This process's marking state. A fast path may mark a call itself, as :func:`marked`
#: does: when ``STATE.now`` is None, set ``STATE.now = (name, clock(), context)`` and
#: ``STATE.tid = thread_ident()`` before the MPI call and ``STATE.now = None`` after it
#: (in a ``finally``); otherwise (a call nested in another) leave the mark alone.
STATE = _S
#: The clock of the marks (``time.monotonic``).
clock = _monotonic
#: The thread identity of the marks (``threading.get_ident``).
thread_ident = _ident


# ---- marking calls: the hot path ---------------------------------------------------
def enter(name: str, ctx: Context | Peers | Any = None) -> tuple | None:
    """Mark this rank as blocked in ``name`` from now on. **Local**, a few hundred ns.

    Returns the previous mark, to be passed to :func:`leave`. A call entered while
    another is marked (a helper built on collectives) keeps the outer mark.
    """
    prev = _S.now
    if prev is None:
        _S.now = (name, _monotonic(), ctx)
        _S.tid = _ident()
    return prev


def leave(prev: tuple | None) -> None:
    """End the mark made by the :func:`enter` that returned ``prev``. **Local**."""
    if prev is None:
        _S.now = None


class watching:
    """``with watching("halo exchange", ctx):`` marks a blocking region. **Local**.

    Use it around point-to-point exchanges or plain mpi4py calls that may block,
    so that the watchdog's timeout and its report cover them too. ``ctx``: the
    context, or :class:`Peers` naming the ranks the wait depends on (any object
    with ``world_ranks``); None: every rank.
    """

    __slots__ = ("name", "ctx", "prev", "t0")

    def __init__(self, name: str, ctx: Context | Peers | Any = None):
        self.name, self.ctx = name, ctx

    def __enter__(self) -> watching:
        self.prev = enter(self.name, self.ctx)
        self.t0 = time.perf_counter() if RECORDER.on and self.prev is None else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        leave(self.prev)
        if self.t0:  # traced (HPCPAR_TRACE)
            RECORDER.add(MARK, self.name, self.t0, time.perf_counter())


class Peers:
    """The ranks a wait depends on, for :class:`watching`: ``Peers([0, 3])``. **Local**.

    The watchdog ends the job at once when a rank waits more than a moment for a
    rank that has finished its main function; a wait that depends on some ranks
    only (a neighbour, root) names them, so that a rank that finished legitimately
    elsewhere is not taken for the cause. ``world_ranks`` may be replaced while
    the wait lasts (as the ranks it waits for change).
    """

    __slots__ = ("world_ranks",)

    def __init__(self, world_ranks: list[int]):
        self.world_ranks = list(world_ranks)


def marked(name: str, span: bool = True) -> Callable[[F], F]:
    """Decorate a method so that it is marked as ``name`` while it runs. **Local**.

    The method's ``self`` is recorded as the context (the watchdog reads its
    ``world_ranks``). Costs a few hundred ns per call; calls made inside an
    already marked call keep the outer mark, as with :func:`enter`. A second
    thread that calls a marked method of the same object while the first is
    inside one gets a ``RuntimeError`` at once (MPI state is not shared safely
    between two threads in one communicator's collectives).

    While tracing (``HPCPAR_TRACE``) an outermost marked call is recorded as a
    collective span; ``span=False`` leaves that to the method (Grid exchanges
    record one exchange span each with :func:`hpcpar.observe.trace.traced`).
    """
    state, mono, ident, rec = _S, _monotonic, _ident, RECORDER
    i = rec.name_id(COLLECTIVE, name) if span else -1

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            prev = state.now
            if prev is None:
                entry = mono()
                state.now = (name, entry, self)
                state.tid = ident()
                try:
                    if rec.on and span:  # tracing (HPCPAR_TRACE): record the call's span
                        try:
                            return fn(self, *args, **kwargs)
                        finally:
                            rec.collective(i, self, entry, args)
                    return fn(self, *args, **kwargs)
                finally:
                    state.now = None
            if prev[2] is self and state.tid != ident():
                _concurrent(name, prev, self)
            return fn(self, *args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return deco


def _concurrent(name: str, prev: tuple, obj: Any) -> None:
    """A second thread entered ``name`` on ``obj`` while another thread is in ``prev``."""
    raise RuntimeError(
        f"hpcpar: {type(obj).__name__}.{name} was called from thread "
        f"{threading.current_thread().name!r} of rank {MPI.COMM_WORLD.Get_rank()} while another "
        f"thread of this rank is inside {prev[0]} on the same object; one {type(obj).__name__} "
        "serves one thread at a time. Give each thread its own Context (created in the same "
        "order on every rank), or serialise the calls with a lock.")


def current() -> tuple[str, float] | None:
    """``(call name, seconds blocked so far)`` of this rank, or None. **Local**."""
    now = _S.now
    return None if now is None else (now[0], _monotonic() - now[1])


def messages() -> int:
    """Messages this rank's watchdog has sent to other ranks so far. **Local**."""
    net = _S.net
    return 0 if net is None else net.sent


# ---- configuration -----------------------------------------------------------------
def set_timeout(seconds: float | None) -> None:
    """Set the hang timeout of this rank (None or 0: none) and start the thread. **Local**.

    Every rank should use the same value; ``hpcpar.run(main, timeout=...)`` does.
    """
    if seconds is not None and not seconds > 0:
        seconds = None
    _S.timeout = None if seconds is None else float(seconds)
    _S.explicit = True
    start()


def get_timeout() -> float | None:
    """The hang timeout in seconds, or None. **Local**."""
    return _S.timeout


def _env_timeout() -> float | None:
    value = env.get_float(env.HPCPAR_TIMEOUT, 0.0)
    return value if value > 0 else None


def start(world: bool = False) -> None:
    """Start this process's watchdog thread if it is not running. **Local**, except that
    ``world=True`` (used by the first world Context) also duplicates ``COMM_WORLD`` for the
    watchdog's messages, which is **collective** over ``COMM_WORLD``.

    The timeout comes from ``HPCPAR_TIMEOUT`` unless :func:`set_timeout` set one.
    """
    if not _S.explicit:
        _S.timeout = _env_timeout()
    if world and _S.net is None and MPI.COMM_WORLD.Get_size() > 1 \
            and MPI.Query_thread() == MPI.THREAD_MULTIPLE:
        _S.net = watchnet.Net(MPI.COMM_WORLD.Dup(), _learn, _answer)
    if (_S.thread is None or not _S.thread.is_alive()) and (_S.timeout or _S.net is not None):
        _S.stopping.clear()
        _S.thread = threading.Thread(target=_loop, name="hpcpar-watchdog", daemon=True)
        _S.thread.start()


def stop() -> None:
    """Stop the watchdog thread (before ``MPI_Finalize``). **Local**; registered with atexit."""
    t = _S.thread
    if t is not None and t.is_alive() and t is not threading.current_thread():
        _S.stopping.set()
        t.join(timeout=2.0)
    _S.thread = None
    net = _S.net
    if net is not None and not MPI.Is_finalized():
        net.close()


def leave_finish(prev: tuple | None, completed: bool) -> None:
    """Leave a final check (:data:`FINISH`); ``completed`` when it passed on every rank. **Local**.

    Notices that ranks had finished belong to that round; a completed check forgets
    them, so that a script running ``hpcpar.run`` twice is not taken for an early exit.
    """
    with _S.lock:
        leave(prev)
        if completed:
            _S.epoch += 1
            _S.finished = _S.ahead.pop(_S.epoch, set())
            for old in [e for e in _S.ahead if e < _S.epoch]:
                del _S.ahead[old]
            _S.asked.clear()
            _S.notified = False


def _learn(epoch: int, ranks: list[int]) -> None:
    """The watchdog's messages say that ``ranks`` wait in final check ``epoch``."""
    with _S.lock:
        if epoch == _S.epoch:
            _S.finished.update(ranks)
        elif epoch > _S.epoch:  # a check this rank has yet to leave: keep for the next round
            _S.ahead.setdefault(epoch, set()).update(ranks)
        # else a notice from a round this rank has completed


atexit.register(stop)


# ---- the thread ---------------------------------------------------------------------
def _tick() -> float:
    t = _S.timeout
    return 0.2 if t is None else max(0.02, min(0.2, t / 10))


def _loop() -> None:
    while not _S.stopping.wait(_tick()):
        try:
            _check()
        except Exception as exc:
            _write(f"hpcpar watchdog: internal error {type(exc).__name__}: {exc}\n")
            return


def _check() -> None:
    net = _S.net
    if net is not None:
        net.serve(_S.epoch)
    with _S.lock:
        now, epoch, finished = _S.now, _S.epoch, set(_S.finished)
        if now is not None:
            name, since, ctx = now
            waited = _monotonic() - since
            notify = (name == FINISH and net is not None and not _S.notified
                      and waited > _FINISH_NOTICE)
            if notify:
                _S.notified = True
    if now is None:
        _check_plain()
        return
    _S.spot = None
    if notify:
        assert net is not None  # notify requires it
        net.notice(epoch)
    elif name != FINISH and finished and waited > _FINISHED_GRACE:
        ranks = tuple(_world_ranks(ctx))
        gone = sorted(finished.intersection(ranks))
        if gone:
            _fire_finished(name, waited, gone)
        elif net is not None and ranks not in _S.asked:
            # some rank has finished, none of this context's that this rank knows of:
            # ask the coordinator, which has heard of every one
            _S.asked.add(ranks)
            net.ask(epoch, ranks)
    timeout = _S.timeout
    if timeout is not None and waited > timeout and not _S.fired:
        _fire(name, waited, timeout)


def _check_plain() -> None:
    """No hpcpar call is marked: a main thread blocked in one mpi4py call times out too."""
    timeout = _S.timeout
    if timeout is None:
        _S.spot = None
        return
    now = _monotonic()
    spot = _S.spot = plainwait.sample(_S.spot, now)
    if spot is not None and spot.call is not None and not _S.fired and now - spot.since > timeout:
        _fire(f"a plain MPI call ({spot.call} at {spot.where})", now - spot.since, timeout)


def _world_ranks(ctx: Any) -> list[int]:
    """The COMM_WORLD ranks of a context (all ranks when unknown)."""
    ranks = getattr(ctx, "world_ranks", None)
    return list(range(MPI.COMM_WORLD.Get_size())) if ranks is None else ranks


def _answer(origin: int) -> tuple[str, str]:
    """A dump round from ``origin`` reached this rank: dump the stacks once, say what it does
    and on which host."""
    _S.fired = True  # one rank reports for the job; this one only answers
    doing = _doing()
    if not _S.dumped:
        _S.dumped = True
        _write(f"[rank {MPI.COMM_WORLD.Get_rank()}] hpcpar watchdog: rank {origin} asked for "
               f"this rank's stacks; this rank is {doing}\n" + format_stacks())
    return doing, _host()


@functools.lru_cache(maxsize=1)
def _host() -> str:
    try:
        return MPI.Get_processor_name()
    except Exception:
        import socket
        return socket.gethostname()


def _doing() -> str:
    cur = current()
    if cur is None:
        now = _monotonic()
        spot = _S.spot if _S.spot is not None else plainwait.sample(None, now)
        if spot is not None and spot.call is not None:
            return f"not in an hpcpar call: main thread {spot.describe()}"
        where = "" if spot is None else f"; main thread {spot.describe()}"
        return f"not in an hpcpar call (computing, or in a plain MPI call){where}"
    name, waited = cur
    if name == FINISH:
        return "finished the main function, waiting for the others"
    return f"waiting in {name}"


def _fire(name: str, waited: float, timeout: float) -> None:
    """The timeout expired: dump stacks here and on every rank, then end the job."""
    _S.fired = True
    net, me = _S.net, MPI.COMM_WORLD.Get_rank()
    size = MPI.COMM_WORLD.Get_size()
    head = (f"hpcpar watchdog: rank {me} of {size} blocked {waited:.1f} s in {name} "
            f"(timeout {timeout:g} s, set by {env.HPCPAR_TIMEOUT} or run(timeout=))")
    if not _S.dumped:
        _S.dumped = True
        _write(f"[rank {me}] {head}; stacks of every thread:\n" + format_stacks())
    lines: dict[int, tuple[str, str]] = {me: (_doing(), _host())}
    if net is not None:
        _collect(net, lines)
    silent = _silent(lines, size)
    groups: dict[str, list[int]] = {}
    hosts: dict[str, dict[str, list[int]]] = {}
    for r in range(size):
        what, host = lines[r]
        groups.setdefault(what, []).append(r)
        if host:
            hosts.setdefault(what, {}).setdefault(host, []).append(r)
    report = "; ".join(f"{'ranks' if len(rs) > 1 else 'rank'} {', '.join(map(str, rs))}: {what}"
                       + _on_hosts(hosts.get(what, {}), rs) for what, rs in groups.items())
    cut = ""
    if silent:
        where = sorted({lines[r][1] for r in silent if lines[r][1]})
        cut = (" A rank that does not answer while the others wait for it may also be cut off from "
               "the network: check that " + (f"host{'s' if len(where) > 1 else ''} {', '.join(where)}"
                                             if where else "its host") +
               f" can be reached (ssh {where[0] if where else 'HOST'} true) and the links between the hosts.")
    abort(f"{head}. {report}. Ranks blocked in different calls, or waiting for a rank that "
           "is not in a call, usually mean a collective that only some ranks make (inside "
           f"`if ctx.rank == ...:` or a loop whose length differs between ranks).{cut}", EXIT_HANG)


#: What the report says of a rank that sent no report.
_NO_ANSWER = "no answer (exited, busy in C code holding the GIL, or unreachable)"


def _silent(lines: dict[int, tuple[str, str]], size: int) -> list[int]:
    """Fill ``lines`` for the ranks that did not answer, with their host from the run ledger of
    ``hpcpar run --hosts`` when there is one; return those ranks. On the error path only
    (O(P), one small file read per silent rank)."""
    from ..launch import ledger  # pure file I/O; loaded only on this path

    silent = [r for r in range(size) if r not in lines]
    where = ledger.hosts(os.environ.get(env.HPCPAR_RUN_DIR), silent) if silent else {}
    for r in silent:
        lines[r] = (_NO_ANSWER, where.get(r, ""))
    return silent


def _on_hosts(hosts: dict[str, list[int]], ranks: list[int]) -> str:
    """`` (on host h)``, or `` (on hosts h1: ranks 0, 1; h2: rank 2)`` for ranks on several."""
    if not hosts:
        return ""
    if len(hosts) == 1:
        return f" (on host {next(iter(hosts))})"
    return " (on hosts " + "; ".join(
        f"{h}: {'ranks' if len(rs) > 1 else 'rank'} {', '.join(map(str, rs))}"
        for h, rs in hosts.items()) + ")"


def _collect(net: watchnet.Net, lines: dict[int, tuple[str, str]]) -> None:
    """Ask for a dump round and gather the reports into ``lines`` (rank -> what it does).

    A phase is the time a round takes to reach every rank through the tree. After
    one phase with no sign of a round (the coordinator cannot answer) the request
    goes to the backup coordinator; after two, an origin asks the ranks still
    missing (the ones below a rank that cannot answer) directly; after two phases
    and ``_COLLECT / 2`` it stops waiting. A rank that learned that the round
    answers to another rank waits ``_COLLECT`` longer: that rank reports for the job.
    """
    size = net.size
    phase = _COLLECT / 4 + (watchnet.depth(size) + 1) * (_tick() + 0.05)
    start = _monotonic()
    net.request(watchnet.COORDINATOR)
    backup = repaired = False
    while len(lines) < size:
        net.serve(_S.epoch)
        lines.update(net.reports)
        t = _monotonic() - start
        origin = net.origin()
        if t > phase and not backup and not net.heard():
            backup = True
            net.request(watchnet.BACKUP)
        if t > 2 * phase and not repaired and origin:
            repaired = True
            net.repair([r for r in range(size) if r not in lines])
        if t > 2 * phase + _COLLECT / 2 + (0 if origin else _COLLECT):
            break
        time.sleep(0.02)


def _fire_finished(name: str, waited: float, gone: list[int]) -> None:
    _S.fired = True
    me, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    who = ", ".join(map(str, gone))
    abort(f"hpcpar: rank {me} of {size} is blocked in {name} ({waited:.1f} s) but rank"
           f"{'s' if len(gone) > 1 else ''} {who} already finished the main function and will "
           "never join it. Every rank must make the same collective calls; a rank that "
           "returns or calls sys.exit() early is the usual cause.", 1)


# ---- output --------------------------------------------------------------------------
def format_stacks() -> str:
    """Every other thread's Python stack, each line prefixed ``[rank R]``
    (:func:`hpcpar.observe.stacks.format_stacks`). **Local**."""
    return stacks.format_stacks(prefix=f"[rank {MPI.COMM_WORLD.Get_rank()}] ")


def _write(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:
        os.write(2, text.encode("utf-8", "replace"))
