"""Per-rank timeline recording (``HPCPAR_TRACE``): spans of hpcpar calls in a bounded buffer.

While tracing is off, every hook costs one attribute check (``RECORDER.on``).
While it is on, a span costs two clock reads and one :func:`struct.pack_into` of
its 44 bytes (:data:`EVENT`) into a preallocated buffer of :data:`CHUNK` spans,
which becomes a NumPy chunk without a copy when full (figures in BENCHMARKS.md).
A rank keeps at most ``HPCPAR_TRACE_EVENTS`` spans (default :data:`DEFAULT_EVENTS`);
once the buffer is full, later spans are counted but not kept (the trace then ends
early on that rank, and root says so). Starting, aligning the clocks and writing
the file live in :mod:`hpcpar.observe.tracefile`.

Hooks, each a line in the module that owns the call; each looks up its name's
index once (:meth:`Recorder.name_id`) and records with :meth:`Recorder.put`:

* :meth:`Recorder.collective` from :func:`hpcpar.watchdog.marked` (every collective);
* timer regions and ``hpcpar.watchdog.watching``;
* :func:`traced` on Grid exchanges, Output writes and checkpoint saves;
* :func:`task` around each farm task and pipeline stage.
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

__all__ = ["KINDS", "REGION", "COLLECTIVE", "EXCHANGE", "TASK", "ITEM", "IO", "CHECKPOINT",
           "MARK", "WAIT", "EVENT", "PACK", "SIZE", "CHUNK", "DEFAULT_EVENTS", "ARGS", "Recorder", "RECORDER",
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

#: The layout of :data:`EVENT` for :mod:`struct` (little-endian, no padding): a span is
#: packed straight into the current chunk's buffer, with no Python object kept per span.
PACK = struct.Struct("<ddiqqq").pack_into
#: Bytes per span.
SIZE = EVENT.itemsize
#: Spans per chunk: the unit of allocation and of the transfer to root.
CHUNK = 4096
#: Spans a rank keeps by default (``HPCPAR_TRACE_EVENTS``): about 11 MB.
DEFAULT_EVENTS = 250_000

_clock = time.perf_counter
#: Whether ``time.monotonic`` (the watchdog's entry time, reused for collectives) reads
#: the same clock as ``time.perf_counter`` (true on Linux: both CLOCK_MONOTONIC).
_SAME_CLOCK = (time.get_clock_info("monotonic").implementation
               == time.get_clock_info("perf_counter").implementation)


class Recorder:
    """This process's spans. **Local**; one instance, :data:`RECORDER`.

    Spans are packed as they come (:data:`PACK`) into a ``bytearray`` of
    :data:`CHUNK` records; a full one becomes, without a copy, a NumPy chunk of
    :data:`EVENT` and a fresh one is allocated. Once ``cap`` spans are kept, later
    ones go into a scratch buffer that is overwritten and only counted
    (:attr:`dropped`). The table of ``(kind, name)`` pairs outlives :meth:`reset`,
    so a hook may look up its index once (:meth:`name_id`) and pass it to :meth:`put`.
    """

    __slots__ = ("on", "buf", "off", "chunks", "cap", "kept", "lost", "full", "names", "ids",
                 "contexts", "world", "serials")

    def __init__(self) -> None:
        self.on = False
        self.names: list[tuple[int, str]] = []  # (kind, name) by index
        self.ids: list[dict[str, int]] = [{} for _ in KINDS]  # per kind: name -> index
        self.reset(DEFAULT_EVENTS, 1)

    def reset(self, cap: int, world: int) -> None:
        """Forget every span; keep at most ``cap`` from now on (``world``: the job's size)."""
        self.cap = max(CHUNK, int(cap))
        self.chunks: list[np.ndarray] = []
        self.kept = 0  # spans in self.chunks
        self.lost = 0  # spans dropped before the scratch buffer's current round
        self.full = False
        self.buf = bytearray(SIZE * CHUNK)
        self.off = 0  # bytes of self.buf in use
        self.contexts: dict[int, tuple[Any, int]] = {}  # id(ctx) -> (ctx, serial)
        self.world = world
        self.serials = 0  # contexts spanning the job seen so far

    @property
    def dropped(self) -> int:
        """Spans counted but not kept since the buffer filled up."""
        return self.lost + (self.off // SIZE if self.full else 0)

    def name_id(self, kind: int, name: str) -> int:
        """The index of ``(kind, name)`` in this process's table (added on first use). **Local**."""
        ids = self.ids[kind]
        i = ids.get(name)
        if i is None:
            i = ids[name] = len(self.names)
            self.names.append((kind, str(name)))
        return i

    def put(self, i: int, t0: float, t1: float, nbytes: int = 0, a: int = -1, b: int = -1) -> None:
        """Record a span of table entry ``i`` (:meth:`name_id`) from ``t0`` to ``t1``. **Local**."""
        off = self.off
        try:
            PACK(self.buf, off, t0, t1, i, nbytes, a, b)
        except struct.error:  # the buffer is full (once per chunk), or a value does not fit
            self._overflow(i, t0, t1, nbytes, a, b)
            return
        self.off = off + SIZE

    def add(self, kind: int, name: str, t0: float, t1: float, nbytes: int = 0,
            a: int = -1, b: int = -1) -> None:
        """Record a span from ``t0`` to ``t1`` (``time.perf_counter``). **Local**."""
        i = self.ids[kind].get(name)
        if i is None:
            i = self.name_id(kind, name)
        self.put(i, t0, t1, nbytes, a, b)

    def _overflow(self, i: int, t0: float, t1: float, nbytes: Any, a: Any, b: Any) -> None:
        if self.off + SIZE > len(self.buf):
            self.spill()
        # an integer beyond int64 (or not an integer) is recorded as -1
        PACK(self.buf, self.off, float(t0), float(t1), i, _int64(nbytes), _int64(a), _int64(b))
        self.off += SIZE

    def spill(self) -> None:
        """Move the packed spans into a NumPy chunk and start a fresh buffer. **Local**."""
        n = self.off // SIZE
        self.off = 0
        if self.full:  # the scratch buffer: count, overwrite
            self.lost += n
            return
        if n:
            self.chunks.append(np.frombuffer(self.buf, EVENT, count=n))
            self.kept += n
        room = self.cap - self.kept
        self.full = room <= 0
        self.buf = bytearray(SIZE * (CHUNK if self.full else min(CHUNK, room)))

    def events(self) -> np.ndarray:
        """Every kept span of this rank, in the order recorded. **Local**."""
        parts = list(self.chunks)
        if not self.full and self.off:
            parts.append(np.frombuffer(self.buf, EVENT, count=self.off // SIZE).copy())
        return np.concatenate(parts) if parts else np.zeros(0, EVENT)

    def collective(self, i: int, ctx: Any, entry: float, args: tuple) -> None:
        """Record a collective call on ``ctx`` that began at ``entry`` and ends now. **Local**.

        ``i`` is the call's entry in the table (:meth:`name_id` of :data:`COLLECTIVE`),
        ``entry`` the watchdog's entry time of the call (``time.monotonic``), ``args``
        its positional arguments (the first one's ``nbytes``, if any, is recorded).

        Contexts that span the whole job are numbered in the order first used
        (``a``); the end of the run numbers each one's calls (``b``) and so matches
        the same call on every rank to compute how long each waited.
        """
        self.call(i, ctx, entry, getattr(args[0], "nbytes", 0) if args else 0)

    def call(self, i: int, ctx: Any, entry: float, nbytes: int) -> None:
        """:meth:`collective` with the byte count given (the collectives' fast path). **Local**."""
        t1 = _clock()
        got = self.contexts.get(id(ctx))
        if got is None or got[0] is not ctx:
            got = self._number(ctx)
        t0 = entry if _SAME_CLOCK else t1 - (time.monotonic() - entry)
        off = self.off
        try:
            PACK(self.buf, off, t0, t1, i, nbytes, got[1], -1)
        except struct.error:  # the buffer is full (once per chunk), or a value does not fit
            self._overflow(i, t0, t1, nbytes, got[1], -1)
            return
        self.off = off + SIZE

    def _number(self, ctx: Any) -> tuple[Any, int]:
        serial = -1
        if getattr(ctx, "size", 0) == self.world:
            serial, self.serials = self.serials, self.serials + 1
        got = self.contexts[id(ctx)] = (ctx, serial)
        return got


def _int64(x: Any) -> int:
    """``x`` as an int64 field: -1 when it is no integer or does not fit."""
    try:
        v = int(x)
    except (TypeError, ValueError, OverflowError):
        return -1
    return v if -(1 << 63) <= v < (1 << 63) else -1


#: The recorder of this process.
RECORDER = Recorder()
_TASK = RECORDER.name_id(TASK, "task")


def traced(kind: int, name: str, info: Callable[..., tuple[int, int, int]] | None = None
           ) -> Callable[[F], F]:
    """Decorate a method so that each call is recorded as a span of ``kind``. **Local**.

    ``info(self, *args, **kwargs)``, called only while tracing, gives
    ``(bytes, a, b)`` (:data:`ARGS`). With tracing off a call costs one attribute check.
    """
    rec = RECORDER
    put, clock = rec.put, _clock
    i = rec.name_id(kind, name)

    def deco(fn: F) -> F:
        if info is None:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if not rec.on:
                    return fn(*args, **kwargs)
                t0 = clock()
                try:
                    return fn(*args, **kwargs)
                finally:
                    put(i, t0, clock())
        else:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if not rec.on:
                    return fn(*args, **kwargs)
                t0 = clock()
                try:
                    return fn(*args, **kwargs)
                finally:
                    t1 = clock()
                    put(i, t0, t1, *info(*args, **kwargs))
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
        t1 = _clock()
        RECORDER.put(_TASK if kind == TASK and name == "task" else RECORDER.name_id(kind, name),
                     t0, t1, 0, index, b)


def array_bytes(*args: Any, **kwargs: Any) -> tuple[int, int, int]:
    """``(bytes of the NumPy arrays among the arguments, -1, -1)``: a :func:`traced` ``info``."""
    return sum(getattr(x, "nbytes", 0) for x in (*args[1:], *kwargs.values())
               if isinstance(getattr(x, "nbytes", None), int)), -1, -1


def step_bytes(obj: Any, step: Any, **fields: Any) -> tuple[int, int, int]:
    """``(bytes of the fields, step, -1)``: the :func:`traced` ``info`` of a checkpoint save."""
    return array_bytes(obj, **fields)[0], int(step) if isinstance(step, (int, np.integer)) else -1, -1
