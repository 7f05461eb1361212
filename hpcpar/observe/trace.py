"""Per-rank timeline recording (``HPCPAR_TRACE``): spans of hpcpar calls in a bounded buffer.

While tracing is off, every hook costs one attribute check (``RECORDER.on``).
While it is on, a span costs one clock read and one tuple appended to a list
(about 1 µs, see BENCHMARKS.md); every :data:`CHUNK` spans the list becomes a
NumPy structured array of :data:`EVENT` (44 bytes a span). A rank keeps at most
``HPCPAR_TRACE_EVENTS`` spans (default :data:`DEFAULT_EVENTS`); once the buffer is
full, later spans are counted but not kept (the trace then ends early on that rank,
and root says so). Starting, aligning the clocks and writing the file live in
:mod:`hpcpar.observe.tracefile`.

Hooks, each a line in the module that owns the call:

* :meth:`Recorder.collective` from :func:`hpcpar.watchdog.marked` (every collective);
* :meth:`Recorder.add` from timer regions and ``hpcpar.watchdog.watching``;
* :func:`traced` on Grid exchanges, Output writes and checkpoint saves;
* :func:`task` around each farm task and pipeline stage.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

__all__ = ["KINDS", "REGION", "COLLECTIVE", "EXCHANGE", "TASK", "ITEM", "IO", "CHECKPOINT",
           "MARK", "WAIT", "EVENT", "CHUNK", "DEFAULT_EVENTS", "ARGS", "Recorder", "RECORDER",
           "traced", "task", "array_bytes", "step_bytes"]

F = TypeVar("F", bound=Callable[..., Any])

#: Span kinds, by code: the ``cat`` of each event in the trace file.
KINDS = ("region", "collective", "exchange", "task", "item", "io", "checkpoint", "mark", "wait")
REGION, COLLECTIVE, EXCHANGE, TASK, ITEM, IO, CHECKPOINT, MARK, WAIT = range(len(KINDS))

#: What the two integer fields ``a`` and ``b`` of a span mean, per kind (None: unused).
ARGS: dict[int, tuple[str | None, str | None]] = {
    REGION: (None, None), COLLECTIVE: ("context", "call"), EXCHANGE: ("peers", None),
    TASK: ("index", "worker"), ITEM: ("index", "stage"), IO: (None, None),
    CHECKPOINT: ("step", None), MARK: (None, None), WAIT: (None, None),
}

#: One span: start and end (``time.perf_counter`` of this rank), index into the rank's
#: table of (kind, name) pairs, bytes moved, two kind-specific integers (:data:`ARGS`).
EVENT = np.dtype([("t0", "f8"), ("t1", "f8"), ("what", "i4"), ("nbytes", "i8"), ("a", "i8"),
                  ("b", "i8")])

#: Spans per chunk: the unit of conversion to NumPy and of the transfer to root.
CHUNK = 4096
#: Spans a rank keeps by default (``HPCPAR_TRACE_EVENTS``): about 11 MB.
DEFAULT_EVENTS = 250_000

_clock = time.perf_counter
#: Whether ``time.monotonic`` (the watchdog's entry time, reused for collectives) reads
#: the same clock as ``time.perf_counter`` (true on Linux: both CLOCK_MONOTONIC).
_SAME_CLOCK = (time.get_clock_info("monotonic").implementation
               == time.get_clock_info("perf_counter").implementation)


class Recorder:
    """This process's spans. **Local**; one instance, :data:`RECORDER`."""

    __slots__ = ("on", "cur", "chunks", "cap", "kept", "dropped", "names", "ids", "contexts",
                 "world", "serials")

    def __init__(self) -> None:
        self.on = False
        self.reset(DEFAULT_EVENTS, 1)

    def reset(self, cap: int, world: int) -> None:
        """Forget every span; keep at most ``cap`` from now on (``world``: the job's size)."""
        self.cur: list[tuple] = []
        self.chunks: list[np.ndarray] = []
        self.cap = max(CHUNK, int(cap))
        self.kept = 0
        self.dropped = 0
        self.names: list[tuple[int, str]] = []  # (kind, name) by index
        self.ids: list[dict[str, int]] = [{} for _ in KINDS]  # per kind: name -> index
        self.contexts: dict[int, tuple[Any, int]] = {}  # id(ctx) -> (ctx, serial)
        self.world = world
        self.serials = 0  # contexts spanning the job seen so far

    def name_id(self, kind: int, name: str) -> int:
        """The index of ``(kind, name)`` in this rank's table (added on first use)."""
        ids = self.ids[kind]
        i = ids.get(name)
        if i is None:
            i = ids[name] = len(self.names)
            self.names.append((kind, str(name)))
        return i

    def add(self, kind: int, name: str, t0: float, t1: float, nbytes: int = 0,
            a: int = -1, b: int = -1) -> None:
        """Record a span from ``t0`` to ``t1`` (``time.perf_counter``). **Local**."""
        if self.kept >= self.cap:
            self.dropped += 1
            return
        i = self.ids[kind].get(name)
        if i is None:
            i = self.name_id(kind, name)
        cur = self.cur
        cur.append((t0, t1, i, nbytes, a, b))
        if len(cur) >= CHUNK:
            self.spill()

    def spill(self) -> None:
        """Move the pending spans into a NumPy chunk. **Local**."""
        if self.cur:
            self.chunks.append(np.array(self.cur, dtype=EVENT))
            self.kept += len(self.cur)
            self.cur = []

    def events(self) -> np.ndarray:
        """Every kept span of this rank, in the order recorded. **Local**."""
        self.spill()
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, EVENT)

    def collective(self, name: str, ctx: Any, fn: Callable, args: tuple, kwargs: dict,
                   mark: Any) -> Any:
        """Run ``fn(ctx, *args, **kwargs)`` and record it as a collective span. **Local**.

        ``mark`` is the watchdog's ``(name, entry time, context)`` of this call.

        Contexts that span the whole job are numbered in the order first used
        (``a``); the end of the run numbers each one's calls (``b``) and so matches
        the same call on every rank to compute how long each waited.
        """
        t0 = mark[1] if _SAME_CLOCK else _clock()
        try:
            return fn(ctx, *args, **kwargs)
        finally:
            t1 = _clock()
            got = self.contexts.get(id(ctx))
            if got is None or got[0] is not ctx:
                serial = -1
                if getattr(ctx, "size", 0) == self.world:
                    serial, self.serials = self.serials, self.serials + 1
                got = self.contexts[id(ctx)] = (ctx, serial)
            self.add(COLLECTIVE, name, t0, t1, getattr(args[0], "nbytes", 0) if args else 0, got[1])


#: The recorder of this process.
RECORDER = Recorder()


def traced(kind: int, name: str, info: Callable[..., tuple[int, int, int]] | None = None
           ) -> Callable[[F], F]:
    """Decorate a method so that each call is recorded as a span of ``kind``. **Local**.

    ``info(self, *args, **kwargs)``, called only while tracing, gives
    ``(bytes, a, b)`` (:data:`ARGS`). With tracing off a call costs one attribute check.
    """
    rec = RECORDER

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not rec.on:
                return fn(*args, **kwargs)
            t0 = _clock()
            try:
                return fn(*args, **kwargs)
            finally:
                t1 = _clock()
                nbytes, a, b = info(*args, **kwargs) if info is not None else (0, -1, -1)
                rec.add(kind, name, t0, t1, nbytes, a, b)
        return wrapper  # type: ignore[return-value]
    return deco


def task(fn: Callable[[Any], Any], item: Any, index: int, b: int, kind: int = TASK,
         name: str = "task") -> Any:
    """``fn(item)``, recorded as a span of ``kind`` (:data:`TASK`: ``b`` is the worker
    rank; :data:`ITEM`: the pipeline stage). **Local**; one check when tracing is off."""
    if not RECORDER.on:
        return fn(item)
    t0 = _clock()
    try:
        return fn(item)
    finally:
        RECORDER.add(kind, name, t0, _clock(), 0, index, b)


def array_bytes(*args: Any, **kwargs: Any) -> tuple[int, int, int]:
    """``(bytes of the NumPy arrays among the arguments, -1, -1)``: a :func:`traced` ``info``."""
    return sum(getattr(x, "nbytes", 0) for x in (*args[1:], *kwargs.values())
               if isinstance(getattr(x, "nbytes", None), int)), -1, -1


def step_bytes(obj: Any, step: Any, **fields: Any) -> tuple[int, int, int]:
    """``(bytes of the fields, step, -1)``: the :func:`traced` ``info`` of a checkpoint save."""
    return array_bytes(obj, **fields)[0], int(step) if isinstance(step, (int, np.integer)) else -1, -1
