"""Starting a trace, aligning the ranks' clocks, and writing one Chrome Trace Event file on root.

:func:`begin` (collective, at the start of :func:`hpcpar.run`) checks that root can
write the file, aligns the clocks and switches the recorder of
:mod:`hpcpar.observe.trace` on. :func:`end` (collective, after the final check)
computes how long each rank waited in each collective, then streams every rank's
spans to root, one rank at a time, into the file.

Clocks: ranks on root's host share its monotonic clock (offset 0). A rank on
another host estimates its offset from 7 barriers (root's exit time, broadcast,
minus its own; the median), and the ranks of one host take their median.

Waits: the k-th collective of a context that spans the job is the same call on
every rank; one ``MPI_Allreduce(MAX)`` of the aligned entry times gives the last
arrival of each, and a rank's wait is that minus its own entry. Collectives of
contexts smaller than the job show no wait.

Cost at the end: root receives P-1 header messages and every rank's chunks in turn
(O(P) messages at root, by nature), holding one chunk (at most
:data:`~hpcpar.observe.trace.CHUNK` spans) of another rank at a time; each rank
holds only its own spans.

The file follows the Trace Event format: one process per host (``pid``, named by a
``process_name`` metadata event), one thread per rank (``tid`` = rank); spans are
complete events (``ph: "X"``, ``ts`` and ``dur`` in microseconds from the start);
a collective's wait is a nested ``wait`` span at its start. Perfetto
(https://ui.perfetto.dev) and chrome://tracing open it, gzip-compressed or not.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import statistics
import sys
import time
from typing import IO, Any

import numpy as np

from .. import env
from . import trace

__all__ = ["begin", "end", "read", "LARGE", "ROUNDS"]

#: Barriers used to estimate a remote host's clock offset.
ROUNDS = 7
#: Spans in all beyond which the file is gzip-compressed (``FILE.gz``) even without ``.gz``.
LARGE = 500_000
_GO, _DATA = 0x7ACE, 0x7ACF

_STATE: dict[str, Any] = {}


def _fail_everywhere(comm: Any, problem: str | None) -> None:
    """Raise ``problem`` (root's) on every rank, or return if root had none."""
    problem = comm.bcast(problem, root=0)
    if problem:
        raise ValueError(problem)


def begin(ctx: Any, path: str | None = None) -> bool:
    """Start tracing to ``path`` (None: ``HPCPAR_TRACE``). **Collective** over ``ctx``.

    Returns whether tracing is on. Every rank must agree; root's path is used.
    Raises ValueError on every rank when ranks disagree, when root cannot write the
    file, or when ``HPCPAR_TRACE_EVENTS`` is not a positive integer.
    """
    from mpi4py import MPI

    comm = ctx.comm
    path = path if path else env.get(env.HPCPAR_TRACE)
    on = bool(path)
    if comm.allreduce(on, op=MPI.LOR) != comm.allreduce(on, op=MPI.LAND):
        raise ValueError(f"tracing is on for some ranks only (rank {comm.Get_rank()}: "
                         f"{path or 'off'}); set {env.HPCPAR_TRACE} (or run(trace=)) on every rank")
    if not on:
        return False
    assert path is not None  # on
    raw = env.get(env.HPCPAR_TRACE_EVENTS, str(trace.DEFAULT_EVENTS))
    cap = int(raw) if raw is not None and raw.isdigit() and int(raw) > 0 else 0
    problem = None
    if comm.Get_rank() == 0:
        if not cap:
            problem = f"{env.HPCPAR_TRACE_EVENTS}={raw!r} is not a positive number of spans"
        else:
            try:
                with open(path, "a"):
                    pass
            except OSError as exc:
                problem = (f"cannot write the trace {path!r} on rank 0 ({socket.gethostname()}): "
                           f"{exc.strerror or exc}; set {env.HPCPAR_TRACE} to a writable path")
    _fail_everywhere(comm, problem)
    offset, host = _align(comm)
    path = comm.bcast(os.path.abspath(path), root=0)
    comm.Barrier()
    rec = trace.RECORDER
    rec.reset(cap, comm.Get_size())
    _STATE.update(path=path, offset=offset, host=host, origin=comm.bcast(time.perf_counter(), root=0))
    rec.on = True
    return True


def _align(comm: Any) -> tuple[float, str]:
    """This rank's clock offset to root's (add it to a local time) and its host name."""
    from mpi4py import MPI

    offsets = []
    for _ in range(ROUNDS):
        comm.Barrier()
        mine = time.perf_counter()
        offsets.append(comm.bcast(mine, root=0) - mine)
    offset = statistics.median(offsets)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        if node.allreduce(comm.Get_rank() == 0, op=MPI.LOR):
            offset = 0.0  # root's host: the same monotonic clock
        else:
            offset = statistics.median(node.allgather(offset))
    finally:
        node.Free()
    return offset, MPI.Get_processor_name()


def end(ctx: Any, stream: IO[str] | None = None) -> str | None:
    """Stop tracing and write the file on root. **Collective** over ``ctx``.

    Returns the path written on root (``FILE.gz`` when the trace is large), None
    elsewhere and when tracing was off.
    """
    rec = trace.RECORDER
    if not rec.on:
        return None
    rec.on = False
    comm = ctx.comm
    ev = rec.events()
    wait = _waits(comm, ev, rec, _STATE["offset"])
    from mpi4py import MPI

    total = comm.allreduce(len(ev), op=MPI.SUM)
    dropped = comm.gather(rec.dropped, root=0)
    me = comm.Get_rank()
    head = {"rank": me, "host": _STATE["host"], "names": rec.names, "offset": _STATE["offset"],
            "dropped": rec.dropped, "chunks": (len(ev) + trace.CHUNK - 1) // trace.CHUNK}
    if me != 0:
        comm.recv(source=0, tag=_GO)
        comm.send(head, dest=0, tag=_DATA)
        for i in range(0, len(ev), trace.CHUNK):
            comm.send((ev[i:i + trace.CHUNK], wait[i:i + trace.CHUNK]), dest=0, tag=_DATA)
        rec.reset(trace.CHUNK, 1)
        return None
    path = _STATE["path"]
    if total > LARGE and not path.endswith(".gz"):
        path += ".gz"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        w = _Writer(fh, _STATE["origin"], comm.Get_size())
        w.rank(head, [(ev, wait)])
        for r in range(1, comm.Get_size()):
            comm.send(None, dest=r, tag=_GO)
            other = comm.recv(source=r, tag=_DATA)
            w.rank(other, (comm.recv(source=r, tag=_DATA) for _ in range(other["chunks"])))
        w.close()
    rec.reset(trace.CHUNK, 1)
    out = stream or sys.stderr
    lost = sum(dropped) if dropped else 0
    if lost:
        ranks = [r for r, d in enumerate(dropped or []) if d]
        print(f"hpcpar trace: the buffer of rank(s) {', '.join(map(str, ranks[:10]))} filled up; "
              f"{lost} later spans were not kept (raise {env.HPCPAR_TRACE_EVENTS}, default "
              f"{trace.DEFAULT_EVENTS})", file=out)
    print(f"hpcpar trace: wrote {path} ({total} spans, {comm.Get_size()} ranks); open it in "
          f"https://ui.perfetto.dev or chrome://tracing, or `hpcpar trace {path} --png trace.png`",
          file=out, flush=True)
    return path


def _waits(comm: Any, ev: np.ndarray, rec: trace.Recorder, offset: float) -> np.ndarray:
    """Number the collectives of job-wide contexts (``ev['b']``) and return the seconds each
    span waited for the last rank (-1: not a collective, or unknown; see the module doc)."""
    from mpi4py import MPI

    wait = np.full(len(ev), -1.0)
    nctx = comm.allreduce(rec.serials, op=MPI.MIN)
    kinds = np.array([k for k, _ in rec.names] or [0], dtype=np.int64)
    coll = np.flatnonzero((kinds[ev["what"]] == trace.COLLECTIVE) if len(ev) else np.zeros(0, bool))
    coll = coll[(ev["a"][coll] >= 0) & (ev["a"][coll] < nctx)]
    if nctx == 0:
        return wait
    # the k-th recorded call of a context is its k-th call (spans are dropped only at the end)
    ctxs = ev["a"][coll]
    order = np.argsort(ctxs, kind="stable")
    counts = np.bincount(ctxs, minlength=nctx).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    calls = np.empty(len(coll), np.int64)
    calls[order] = np.arange(len(coll)) - np.repeat(starts, counts)
    ev["b"][coll] = calls
    if comm.Get_size() == 1:  # nobody to wait for
        wait[coll] = 0.0
        return wait
    comm.Allreduce(MPI.IN_PLACE, counts, op=MPI.MIN)
    fits = calls < counts[ctxs]
    keep, ctxs, calls = coll[fits], ctxs[fits], calls[fits]
    # one vector of entry times, context after context
    slot = np.concatenate(([0], np.cumsum(counts)[:-1]))[ctxs] + calls
    entry = np.full(int(counts.sum()), -np.inf)
    entry[slot] = ev["t0"][keep] + offset
    comm.Allreduce(MPI.IN_PLACE, entry, op=MPI.MAX)
    wait[keep] = np.clip(entry[slot] - offset - ev["t0"][keep], 0.0, ev["t1"][keep] - ev["t0"][keep])
    return wait


class _Writer:
    """Streams Trace Event JSON: metadata per host and rank, then each rank's spans."""

    def __init__(self, fh: IO[str], origin: float, size: int):
        self.fh, self.origin = fh, origin
        self.hosts: dict[str, int] = {}
        self.first = True
        head = json.dumps({"generator": "hpcpar", "ranks": size})
        fh.write(f'{{"displayTimeUnit": "ms", "otherData": {head},\n "traceEvents": [\n')

    def _put(self, event: dict) -> None:
        self.fh.write(("" if self.first else ",\n") + json.dumps(event, separators=(",", ":")))
        self.first = False

    def rank(self, head: dict, chunks: Any) -> None:
        host, rank = head["host"], head["rank"]
        pid = self.hosts.get(host)
        if pid is None:
            pid = self.hosts[host] = len(self.hosts)
            self._put({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                       "args": {"name": host}})
            self._put({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                       "args": {"sort_index": pid}})
        self._put({"ph": "M", "name": "thread_name", "pid": pid, "tid": rank,
                   "args": {"name": f"rank {rank}"}})
        self._put({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": rank,
                   "args": {"sort_index": rank}})
        names = head["names"]
        zero = self.origin - head["offset"]  # root's start, on this rank's clock
        for chunk, wait in chunks:
            self._spans(chunk, wait, names, zero, pid, rank)

    def _spans(self, ev: np.ndarray, waits: np.ndarray, table: list[tuple[int, str]], zero: float,
               pid: int, rank: int) -> None:
        ts = np.round((ev["t0"] - zero) * 1e6, 3).tolist()
        dur = np.round((ev["t1"] - ev["t0"]) * 1e6, 3).tolist()
        wait = np.where(waits >= 0, np.round(waits * 1e6, 3), -1.0).tolist()
        rows = zip(ts, dur, wait, ev["what"].tolist(), ev["nbytes"].tolist(),
                   ev["a"].tolist(), ev["b"].tolist())
        for t, d, w, what, nbytes, a, b in rows:
            kind, name = table[what]
            args: dict[str, Any] = {}
            if nbytes:
                args["bytes"] = nbytes
            ka, kb = trace.ARGS[kind]
            if ka is not None and a >= 0:
                args[ka] = a
            if kb is not None and b >= 0:
                args[kb] = b
            if w >= 0:
                args["wait_us"] = w
            cat = trace.KINDS[kind]
            self._put({"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": rank,
                       "ts": t, "dur": d, "args": args})
            if w > 0:
                self._put({"ph": "X", "name": "wait", "cat": "wait", "pid": pid, "tid": rank,
                           "ts": t, "dur": w, "args": {"in": name}})

    def close(self) -> None:
        self.fh.write("\n]}\n")


def read(path: str) -> dict:
    """The trace file at ``path`` (plain or gzip JSON) as a dict. **Local**."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except (ValueError, EOFError, OSError) as exc:
        raise ValueError(f"{path} is not a trace file hpcpar can read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise ValueError(f"{path} is not a Trace Event file (no traceEvents list)")
    return data
