"""A rank pipeline: each rank runs some stages, items stream from rank to rank.

Stage ``i`` of ``k`` runs on rank ``i`` when ``k == size``. With more stages than
ranks, consecutive stages share a rank (the blocks of
:func:`hpcpar.partition.block_range`); with fewer, the ranks beyond the last
stage take no part and return at once. Root feeds the items, runs the first
stage(s), and receives the outputs from the last stage's rank; at most
``window`` items are inside the pipeline at any time (back-pressure: root reads
the next input only when an output has come back), so no rank's queue grows
without bound. Messages travel on a private duplicate of the context's
communicator, freed at the end; each rank's first message to the next carries
its host name, so that a failure can name the host of the rank at fault. When
the pipeline has ended, root's verdict reaches every rank (also those beyond the
last stage) in one fixed-size broadcast (:mod:`hpcpar.tasks.outcome`), so a
failed stage raises the same :class:`TaskError` on every rank.
"""

from __future__ import annotations

import pickle
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mpi4py import MPI

from ..core import watchdog
from ..decomp import partition
from ..errors import Problem, TaskError, agree, agree_equal
from ..observe import trace
from ._farm_root import HOST
from .outcome import share

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["pipeline"]

_TAG = 11
_EOS = ("eos",)  # end of stream
_IDLE_MIN, _IDLE_MAX = 20e-6, 5e-4  # sleep between probes while waiting (seconds)


class _StageFailure:
    """An exception in a stage, travelling downstream to root in the item's place."""

    __slots__ = ("index", "stage", "rank", "host", "exc_type", "text", "tb")

    def __init__(self, index, stage, rank, exc, host=HOST):
        self.index, self.stage, self.rank, self.host = index, stage, rank, host
        self.exc_type, self.text = type(exc).__name__, str(exc)
        self.tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def __getstate__(self):
        return (self.index, self.stage, self.rank, self.host, self.exc_type, self.text, self.tb)

    def __setstate__(self, state):
        self.index, self.stage, self.rank, self.host, self.exc_type, self.text, self.tb = state

    def error(self) -> TaskError:
        where = (f"pipeline stage {self.stage} raised" if self.stage is not None
                 else "pipeline: reading root's items raised")
        return TaskError(
            f"{where} {self.exc_type} on rank {self.rank} (host {self.host}, item {self.index}): "
            f"{self.text}\nremote traceback (rank {self.rank}):\n{self.tb}",
            self.index, self.rank, self.exc_type, self.tb, stage=self.stage, host=self.host)


def pipeline(ctx: Context, stages: Sequence[Callable[[Any], Any]], items: Iterable[Any] | None,
             window: int | None = None) -> list | None:
    """Stream ``items`` through ``stages`` spread over the ranks; outputs in input order on root.

    **Collective**: every rank calls it with the same number of stages (each
    rank calls only its own, so they need not be picklable). Only root's
    ``items`` is read (lazily, as back-pressure allows); other ranks may pass
    None. Items and intermediate values travel by pickle.

    Args:
        ctx: the :class:`hpcpar.Context`.
        stages: callables; the output of stage ``i`` is the input of stage ``i+1``.
        items: on root, an iterable of inputs.
        window: the most items inside the pipeline at once (default ``2 * ranks used``).

    Returns:
        On root, ``[stages[-1](...stages[0](item)) for item in items]``; None elsewhere.

    Raises:
        ValueError: on every rank, when the arguments are unusable on any rank (a
            ``TypeError`` too when they are of the wrong type).
        TaskError: on every rank, the same error, for the first item whose stage
            raised (or when reading root's items raised, with ``stage`` None),
            naming the stage, the rank and its host, and the item index
            (``.stage``, ``.rank``, ``.host``, ``.index``) with the remote
            traceback; root then stops reading items, the items already inside
            drain, and every rank leaves the pipeline before raising. Ranks
            beyond the last stage wait for the end to learn the verdict.
    """
    comm = ctx.comm
    where = "hpcpar.pipeline"
    problems = []
    try:
        nstages = len(stages)
        if nstages < 1 or not all(callable(s) for s in stages):
            problems.append(("TypeError", "stages must be a non-empty sequence of callables"))
    except TypeError:
        nstages = -1
        problems.append(("TypeError",
                         f"stages must be a sequence of callables, got {type(stages).__name__}"))
    if ctx.is_root:
        if items is None or isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
            problems.append(("TypeError", "root must pass an iterable of items"))
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            problems.append(("ValueError", f"window must be a positive int, got {window!r}"))
    agree(comm, where, _joined(problems), name_ranks=True)
    agree_equal(comm, where, nstages, "number of stages")
    used = min(ctx.size, nstages)
    window = comm.bcast(window if window is not None else 2 * used, root=ctx.root)
    world = ctx.world_ranks
    out: list | None = None
    error: TaskError | None = None
    if used == 1:
        if ctx.is_root:
            out, error = _serial(stages, items)
    else:
        pcomm = comm.Dup()
        try:
            if ctx.rank < used:
                mine = list(partition.block_range(nstages, used, ctx.rank))
                # what the hang watchdog records while this rank waits: itself and the rank it waits for
                watch = watchdog.Peers([world[ctx.rank], world[(ctx.rank - 1) % used]])
                if ctx.is_root:
                    out, error = _root(pcomm, stages, mine, items, window, used, watch)
                else:
                    _middle(pcomm, stages, mine, used, watch)
        finally:
            pcomm.Free()
    error = share(comm, ctx.root, error, "pipeline (waiting for root's verdict at the end)",
                  watchdog.Peers([world[ctx.rank], world[ctx.root]]))
    if error is not None:
        raise error
    return out


def _joined(problems: list[Problem]) -> Problem | None:
    """This rank's problems as one: their common type (else ValueError), messages joined."""
    if not problems:
        return None
    kinds = {k for k, _ in problems}
    return (kinds.pop() if len(kinds) == 1 else "ValueError"), "; ".join(m for _, m in problems)


def _apply(stages, mine, index, value, rank):
    for s in mine:
        try:
            value = trace.task(stages[s], value, index, s, trace.ITEM, "item")
        except Exception as exc:
            return _StageFailure(index, s, rank, exc)
    return value


def _serial(stages, items) -> tuple[list | None, TaskError | None]:
    """Every stage on root: ``(outputs, None)``, or ``(None, the error)``."""
    out: list = []
    it = iter(items)
    i = 0
    while True:
        try:
            item = next(it)
        except StopIteration:
            return out, None
        except Exception as exc:
            return None, _StageFailure(i, None, 0, exc).error()
        value = _apply(stages, range(len(stages)), i, item, 0)
        if isinstance(value, _StageFailure):
            return None, value.error()
        out.append(value)
        i += 1


def _wait(comm, source, watch) -> None:
    """Block until a message from ``source`` is waiting, sleeping rather than spinning.

    ``watch``: what the hang watchdog records meanwhile (:class:`hpcpar.core.watchdog.Peers`).
    """
    if comm.iprobe(source=source, tag=_TAG):
        return
    with watchdog.watching("pipeline (waiting for the previous stage)", watch):
        pause = _IDLE_MIN
        while not comm.iprobe(source=source, tag=_TAG):
            time.sleep(pause)
            pause = min(2 * pause, _IDLE_MAX)


def _dump(index: int, value: Any, stage: int, rank: int, dest: int,
          host: str | None) -> tuple[int, bytes, str | None]:
    """An item as it travels: ``(index, pickled value, host)``; a failure of ``stage`` if it
    cannot. ``host``: this rank's host name in its first message, else None."""
    try:
        return index, pickle.dumps(value, pickle.HIGHEST_PROTOCOL), host
    except Exception as exc:
        err = TypeError(f"the output of stage {stage} cannot be sent to rank {dest}: "
                        f"{type(exc).__name__}: {exc}")
        return index, pickle.dumps(_StageFailure(index, stage, rank, err), pickle.HIGHEST_PROTOCOL), host


def _load(msg: tuple[int, bytes, str | None], stage: int, source: int, rank: int,
          hosts: dict[int, str]) -> tuple[int, Any]:
    """The other side of :func:`_dump`; ``stage``: the sender's last stage; ``hosts``: the
    senders' host names seen so far (this message's is added)."""
    index, payload, host = msg
    if host is not None:
        hosts[source] = host
    try:
        return index, pickle.loads(payload)
    except Exception as exc:
        err = TypeError(f"the output of stage {stage} from rank {source} cannot be unpickled on "
                        f"rank {rank}: {type(exc).__name__}: {exc}")
        return index, _StageFailure(index, stage, source, err, hosts.get(source, "?"))


def _middle(comm, stages, mine, used, watch) -> None:
    rank = comm.Get_rank()
    dest = (rank + 1) % used  # the last stage's rank sends to root
    hosts: dict[int, str] = {}
    host: str | None = HOST  # sent with the first item only
    while True:
        _wait(comm, rank - 1, watch)
        msg = comm.recv(source=rank - 1, tag=_TAG)
        if msg is _EOS or msg == _EOS:
            with watchdog.watching("pipeline (sending to the next stage)", watch):
                comm.send(_EOS, dest=dest, tag=_TAG)
            return
        index, value = _load(msg, mine[0] - 1, rank - 1, rank, hosts)
        if not isinstance(value, _StageFailure):
            value = _apply(stages, mine, index, value, rank)
        with watchdog.watching("pipeline (sending to the next stage)", watch):
            comm.send(_dump(index, value, mine[-1], rank, dest, host), dest=dest, tag=_TAG)
        host = None


def _root(comm, stages, mine, items, window, used, watch) -> tuple[list | None, TaskError | None]:
    """Root's side: feed the items, run root's stages, collect the outputs.

    Returns ``(outputs, None)``, or ``(None, the error)`` for the first failed item.
    """
    last = used - 1
    sends: list[MPI.Request] = []
    out: dict[int, Any] = {}
    failure: _StageFailure | None = None
    it = iter(items)
    fed = inflight = 0
    ended = False  # end-of-stream sent
    hosts: dict[int, str] = {}
    host: str | None = HOST  # sent with the first item only

    def end():
        nonlocal ended
        if not ended:
            sends.append(comm.isend(_EOS, dest=1, tag=_TAG))
            ended = True

    def take(msg):
        nonlocal inflight, failure
        index, value = _load(msg, len(stages) - 1, last, 0, hosts)
        inflight -= 1
        if isinstance(value, _StageFailure):
            if failure is None or value.index < failure.index:
                failure = value
            end()
        else:
            out[index] = value

    try:
        while True:
            if not ended and inflight < window:
                try:
                    item = next(it)
                except StopIteration:
                    end()
                    continue
                except Exception as exc:  # root's items raised: no more items, then fail
                    failure = failure or _StageFailure(fed, None, 0, exc)
                    end()
                    continue
                value = _apply(stages, mine, fed, item, 0)
                if isinstance(value, _StageFailure):
                    failure = failure or value
                    end()
                    continue
                sends.append(comm.isend(_dump(fed, value, mine[-1], 0, 1, host), dest=1, tag=_TAG))
                host = None
                fed += 1
                inflight += 1
                if len(sends) > 2 * window:
                    sends = [r for r in sends if not r.Test()]
                while comm.iprobe(source=last, tag=_TAG):
                    msg = comm.recv(source=last, tag=_TAG)
                    if msg == _EOS:
                        raise AssertionError("hpcpar.pipeline: end of stream came back early")
                    take(msg)
                continue
            _wait(comm, last, watch)
            msg = comm.recv(source=last, tag=_TAG)
            if msg == _EOS:
                break
            take(msg)
    finally:
        with watchdog.watching("pipeline (sending)", watch):
            MPI.Request.Waitall(sends)
    if failure is not None:
        return None, failure.error()
    return [out[i] for i in range(fed)], None
