"""The SPMD context: a private communicator plus NumPy-aware, buffer-based collectives.

Every collective here is *checked*. Before any data moves, the ranks exchange a
small fixed-size header (call, root, axis, dtype, shapes, local problems) with one
``Allgather`` of a few hundred bytes. Each rank runs the same checks on the same
headers, so a bad argument on any rank raises the same ``ValueError`` on **every**
rank, instead of leaving the others blocked in a mismatched MPI call. Repeated
calls with the same geometry reuse a cached plan, so a time-step loop pays only
the header exchange. Array data always travels by buffer (the uppercase mpi4py
calls, in bytes, so every dtype works); it is never pickled.

Every collective also marks itself in :mod:`hpcpar.watchdog` while it runs, so a
rank blocked too long in one is reported (``HPCPAR_TIMEOUT``). In debug mode
(``HPCPAR_DEBUG=1`` or ``Context(debug=True)``) the header also carries the
function each rank called from, and ranks that reach the same collective from
different functions (a collective skipped by some ranks and paired with a later
one) raise :class:`CollectiveMismatchError` instead of mixing up data.
"""

from __future__ import annotations

import functools
import math
import os
import struct
import sys
import zlib
from typing import Any

import numpy as np
from mpi4py import MPI

from .. import env
from ..errors import CollectiveMismatchError
from ..decomp import partition
from . import preempt, watchdog
from ..observe import timing
from ..observe.progress import progress as _progress

__all__ = ["Context", "CollectiveMismatchError", "OPS"]

#: Reduction operations accepted by name in :meth:`Context.reduce` / :meth:`Context.allreduce`.
OPS = {
    "sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX,
    "land": MPI.LAND, "lor": MPI.LOR, "lxor": MPI.LXOR,
    "band": MPI.BAND, "bor": MPI.BOR, "bxor": MPI.BXOR,
}

_INT_MAX = 2**31 - 1
#: True when the MPI library has the MPI-4 large-count calls, which mpi4py uses
#: by itself for counts beyond ``2**31 - 1``; otherwise big messages travel in
#: units of a derived datatype.
LARGE_COUNT = MPI.Get_version() >= (4, 0)

# ---- the header every checked collective exchanges ---------------------------
_MAXDIM = 32
_CALLS = ("?", "scatter", "gather", "allgather", "bcast", "reduce", "allreduce", "barrier",
          watchdog.FINISH)
_FINISH_CALL = 8
_CALL, _ROOT, _STATUS, _AXIS, _NDIM, _DTYPE, _AUX, _ONDIM, _ODTYPE, _SITE = range(10)
_SHAPE = 10
_OSHAPE = _SHAPE + _MAXDIM
_HFMT = struct.Struct(f"={_OSHAPE + _MAXDIM}q")
_PAD = (0,) * _MAXDIM
_NONE = -2  # dtype code: this rank passes no array
_CUSTOM = -1  # dtype code: structured or non-native dtype, agreed by a second exchange
_KIND_NONE, _KIND_ARRAY, _KIND_OBJECT = 0, 1, 2  # bcast/reduce payload kinds

_DTYPES: dict[int, np.dtype] = {}
for _t in set(np.sctypeDict.values()):
    _d = np.dtype(_t)
    if _d.isbuiltin == 1 and not _d.hasobject:
        _DTYPES[_d.num] = _d


def _code(dt: np.dtype | None) -> int:
    if dt is None:
        return _NONE
    return dt.num if dt.isbuiltin == 1 and dt.num in _DTYPES else _CUSTOM


_OPNAMES = {op.py2f(): name for name, op in OPS.items()}
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the hpcpar package


def _array_index() -> int | None:
    """``SLURM_ARRAY_TASK_ID`` as an int; None outside a Slurm job array."""
    value = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
    return int(value) if value.isdigit() else None


def _watched(name: str):
    """Mark the decorated collective in the watchdog while it runs (a few hundred ns)."""
    state = watchdog._S
    mono = watchdog._monotonic

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            prev = state.now
            if prev is None:
                state.now = (name, mono(), self)
            try:
                return fn(self, *args, **kwargs)
            finally:
                if prev is None:
                    state.now = None
        return wrapper
    return deco


def _debug_default() -> bool:
    return (env.get(env.HPCPAR_DEBUG, "0") or "0").lower() not in ("0", "false", "no", "off")


class _Plan:
    """The validated geometry of one call; cached by its header bytes."""

    __slots__ = ("axis", "dtype", "shapes", "gshape", "bcounts", "bdispls")


class Context:
    """An SPMD context: a private duplicate of a communicator, and checked collectives.

    Creating a Context is **collective** over ``comm`` (it calls ``MPI_Comm_dup``):
    every rank creates its contexts in the same order. A script started without
    ``mpiexec`` runs as a one-rank job.

    Args:
        comm: the communicator to duplicate; ``MPI.COMM_WORLD`` when None.
        debug: also check, before every collective, that all ranks call it from
            the same function (costs a stack walk per call, about a microsecond);
            None reads ``HPCPAR_DEBUG``. Every rank should pass the same value.

    Attributes:
        comm: the private ``mpi4py.MPI.Comm`` (use it for point-to-point calls).
        rank: this rank, ``0 <= rank < size``.
        size: the number of ranks.
        root: the rank that does root-only work (0).
        is_root: ``rank == root``.
        debug: whether debug checks are on.
        array_index: this task's index in a Slurm job array (``SLURM_ARRAY_TASK_ID``),
            None outside job arrays.
    """

    def __init__(self, comm: MPI.Comm | None = None, debug: bool | None = None):
        base = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(base, MPI.Comm) or base == MPI.COMM_NULL:
            raise ValueError(f"Context needs an mpi4py communicator, got {comm!r}")
        self.comm: MPI.Comm = base.Dup()
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.root: int = 0
        self.is_root: bool = self.rank == self.root
        self.debug: bool = _debug_default() if debug is None else bool(debug)
        world = MPI.COMM_WORLD
        is_world = base == world or MPI.Comm.Compare(base, world) in (MPI.IDENT, MPI.CONGRUENT)
        if is_world:
            self._world_ranks = list(range(self.size))
        else:
            group, wgroup = self.comm.Get_group(), world.Get_group()
            self._world_ranks = list(MPI.Group.Translate_ranks(group, list(range(self.size)), wgroup))
            group.Free()
            wgroup.Free()
        watchdog.start(world=is_world)
        self.array_index: int | None = _array_index()
        self._packed: dict[tuple, bytes] = {}
        self._seen: dict[tuple, bytes] = {}  # fast key of a validated call -> its header
        self._last_hdr: bytes | None = None
        self._hdr_all = bytearray(_HFMT.size * self.size)
        self._plans: dict[bytes, _Plan] = {}

    def free(self) -> None:
        """Release the private communicator. **Collective**; safe to call twice."""
        if self.comm != MPI.COMM_NULL and not MPI.Is_finalized():
            self.comm.Free()

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        return f"<hpcpar.Context rank {self.rank} of {self.size}>"

    def timer(self, name: str):
        """The wall-time region ``name`` of this rank: ``with ctx.timer("halo"):``. **Local**.

        Also a decorator (``@ctx.timer("compute")``). At the end of :func:`hpcpar.run`
        root prints min/mean/max over ranks and the imbalance of every region.
        """
        return timing.REGISTRY(name)

    def progress(self, iterable, total: int | None = None, desc: str = ""):
        """``iterable`` with a progress bar on root (plain lines when not a terminal). **Local**."""
        return _progress(iterable, total=total, desc=desc, is_root=self.is_root)

    def should_stop(self, every: int = 1) -> bool:
        """True on every rank once any rank got SIGUSR1 (Slurm's time-limit warning). **Collective**.

        Call it once per time step on every rank; then save a checkpoint and end
        (under Slurm, root may :func:`hpcpar.slurm.requeue` the job). It exchanges
        one integer on every ``every``-th call; see :func:`hpcpar.preempt.should_stop`.
        """
        return preempt.should_stop(self, every)

    @_watched("barrier")
    def barrier(self) -> None:
        """Return once every rank has called it. **Collective** and checked like the others."""
        raw, heads = self._agree(7, -1, 0, None, None, None)
        if heads is not None:  # remember the agreed headers: the next barrier skips the checks
            self._remember(raw, heads, _Plan())

    def finish(self) -> None:
        """Return once every rank has finished its work. **Collective**; the runner's final check.

        ``hpcpar.run`` calls it after ``main`` returns. A rank still in another
        collective of this context makes it raise :class:`CollectiveMismatchError`
        on every rank ("rank 0: returned from main; rank 1: gather(...)"); while a
        rank waits here, the watchdog tells ranks blocked in collectives of other
        contexts that it has finished, and they end the job instead of hanging.
        """
        prev = watchdog.enter(watchdog.FINISH, self)
        completed = False
        try:
            self._agree(_FINISH_CALL, -1, 0, None, None, None)
            completed = self.size == MPI.COMM_WORLD.Get_size()
        finally:
            watchdog.leave_finish(prev, completed)

    # ------------------------------------------------------------------ scatter
    @_watched("scatter")
    def scatter(self, array: np.ndarray | None, root: int = 0, axis: int = 0,
                out: np.ndarray | None = None) -> np.ndarray:
        """Split root's array into blocks along ``axis``; return this rank's block.

        **Collective**: every rank calls it with the same ``root`` and ``axis``. Only
        root's ``array`` is read; other ranks pass None. Block sizes follow
        :func:`hpcpar.partition.block_counts` (the first ``n % size`` ranks get one
        more row; blocks may be empty). N-d arrays and every dtype without Python
        objects work, bool, complex and structured included.

        Args:
            array: the whole array on root; ignored on other ranks.
            root: the rank holding ``array``.
            axis: the axis to split.
            out: optional array to receive into, with the block's shape and dtype;
                with ``axis=0`` and a C-contiguous ``out`` no memory is allocated.

        Returns:
            This rank's block, C-contiguous (``out`` when given).

        Raises:
            ValueError: on every rank, when root's array is missing or unusable,
                ``axis`` or ``root`` is out of range, or some rank's ``out`` does not
                match its block.
        """
        me = self.rank
        mine = array if me == root else None
        fkey = _fast_key(1, root, axis, mine, out, self.debug)
        hdr = self._seen.get(fkey) if fkey is not None else None
        if hdr is not None:  # a repeat of a call this rank has already validated
            arr = mine
            raw, plan = self._repeat(1, hdr)
            if plan is None:
                plan = self._plan_scatter(raw, self._check(1, raw, None, None), root, arr, out)
        else:
            status = self._check_root(root)
            arr = None
            if status is None and me == root:
                status = _check_array(array, "the array on root")
                if status is None:
                    arr = array
                    status = _check_axis(axis, arr.ndim)
            status = status or _check_out(out)
            raw, heads = self._agree(1, root, axis, status, arr, out)
            plan = self._plans.get(raw) or self._plan_scatter(raw, heads, root, arr, out)
            self._see(fkey)
        ax = plan.axis
        send = None
        if me == root:
            send = [_contig(arr, ax), plan.bcounts, plan.bdispls, MPI.BYTE]
        recv, direct = self._recv_buffer(plan.shapes[me], plan.dtype, ax, out)
        if LARGE_COUNT:
            self.comm.Scatterv(send, [recv, plan.bcounts[me], MPI.BYTE], root=root)
        else:
            self._vcall(self.comm.Scatterv, send, [recv, plan.bcounts[me], MPI.BYTE], root=root)
        return self._finish(recv, ax, out, direct)

    def _plan_scatter(self, raw, heads, root, arr, out) -> _Plan:
        h = heads[root]
        shape = _shape(h)
        ax = h[_AXIS] % len(shape)
        axes = [hr[_AXIS] % len(shape) if -len(shape) <= hr[_AXIS] < len(shape) else hr[_AXIS]
                for hr in heads]
        if any(a != ax for a in axes):
            raise ValueError("hpcpar.scatter: ranks passed different axes: "
                             + "; ".join(f"rank {r}: axis={a}" for r, a in enumerate(axes))
                             + "; every rank must pass root's axis")
        dtypes = self._dtypes(heads, arr, out)
        dtype = dtypes[root][0]
        counts = partition.block_counts(shape[ax], self.size)
        plan = _block_plan(ax, dtype, counts, shape)
        bad = [f"rank {r}: out {_desc(_shape(hr, True), dtypes[r][1])} does not fit "
               f"its block {_desc(plan.shapes[r], dtype)}"
               for r, hr in enumerate(heads)
               if hr[_ONDIM] >= 0 and (_shape(hr, True) != plan.shapes[r] or dtypes[r][1] != dtype)]
        if bad:
            raise ValueError("hpcpar.scatter: " + "; ".join(bad))
        return self._remember(raw, heads, plan)

    # ------------------------------------------------------------------ gather
    @_watched("gather")
    def gather(self, local: np.ndarray, root: int = 0, axis: int = 0,
               out: np.ndarray | None = None) -> np.ndarray | None:
        """Concatenate every rank's block along ``axis`` on root.

        **Collective**: every rank calls it with the same ``root`` and ``axis``.
        Block sizes come from the ranks themselves, so uneven and empty blocks
        work; dtypes and the other dimensions must agree.

        Args:
            local: this rank's block.
            root: the rank that receives the whole array.
            axis: the axis to concatenate along.
            out: on root, optional array of the global shape and dtype to fill.

        Returns:
            The whole array on root (``out`` when given), None on other ranks.

        Raises:
            ValueError: on every rank, when a block is not an array, dtypes or
                trailing shapes differ across ranks, or root's ``out`` does not fit.
        """
        return self._gather(2, local, root, axis, out)

    @_watched("allgather")
    def allgather(self, local: np.ndarray, axis: int = 0,
                  out: np.ndarray | None = None) -> np.ndarray:
        """Concatenate every rank's block along ``axis`` on every rank.

        **Collective**. The same rules as :meth:`gather`; every rank receives the
        whole array (into its own ``out`` when given).
        """
        return self._gather(3, local, None, axis, out)

    def _gather(self, call, local, root, axis, out):
        takes_out = root is None or self.rank == root
        if out is not None and not takes_out:
            out = None  # only root receives; other ranks' out is ignored
        fkey = _fast_key(call, root, axis, local, out, self.debug)
        hdr = self._seen.get(fkey) if fkey is not None else None
        if hdr is not None:  # a repeat of a call this rank has already validated
            arr = local
            raw, plan = self._repeat(call, hdr)
            if plan is None:
                plan = self._plan_gather(call, raw, self._check(call, raw, None, None), arr, out)
        else:
            status = self._check_root(root) if root is not None else None
            status = status or _check_array(local, "the local block")
            arr = local if status is None else None
            if arr is not None:
                status = _check_axis(axis, arr.ndim)
            status = status or _check_out(out)
            raw, heads = self._agree(call, -1 if root is None else root, axis, status, arr, out)
            plan = self._plans.get(raw) or self._plan_gather(call, raw, heads, arr, out)
            self._see(fkey)
        ax = plan.axis
        send = [_contig(arr, ax), plan.bcounts[self.rank], MPI.BYTE]
        vcall = _direct if LARGE_COUNT else self._vcall
        if not takes_out:
            vcall(self.comm.Gatherv, send, None, root=root)
            return None
        recv, direct = self._recv_buffer(plan.gshape, plan.dtype, ax, out)
        rspec = [recv, plan.bcounts, plan.bdispls, MPI.BYTE]
        if root is None:
            vcall(self.comm.Allgatherv, send, rspec)
        else:
            vcall(self.comm.Gatherv, send, rspec, root=root)
        return self._finish(recv, ax, out, direct)

    def _plan_gather(self, call, raw, heads, arr, out) -> _Plan:
        name = _CALLS[call]
        dtypes = self._dtypes(heads, arr, out)
        shapes = [_shape(h) for h in heads]
        ax = heads[0][_AXIS] % max(len(shapes[0]), 1)
        axes = [h[_AXIS] % max(len(s), 1) for h, s in zip(heads, shapes)]
        if any(a != ax for a in axes):
            raise ValueError(f"hpcpar.{name}: ranks passed different axes: "
                             + "; ".join(f"rank {r}: axis={a}" for r, a in enumerate(axes)))
        rest = [s[:ax] + s[ax + 1:] if len(s) == len(shapes[0]) else None for s in shapes]
        if any(r != rest[0] for r in rest) or any(d[0] != dtypes[0][0] for d in dtypes):
            raise ValueError(
                f"hpcpar.{name}: blocks must agree in dtype and in every dimension but axis "
                f"{ax}; got " + "; ".join(f"rank {r}: {_desc(s, d[0])}"
                                          for r, (s, d) in enumerate(zip(shapes, dtypes))))
        dtype = dtypes[0][0]
        counts = [s[ax] for s in shapes]
        plan = _block_plan(ax, dtype, counts, shapes[0])
        bad = [f"rank {r}: out {_desc(_shape(h, True), dtypes[r][1])} does not fit the "
               f"gathered {_desc(plan.gshape, dtype)}"
               for r, h in enumerate(heads)
               if h[_ONDIM] >= 0 and (_shape(h, True) != plan.gshape or dtypes[r][1] != dtype)]
        if bad:
            raise ValueError(f"hpcpar.{name}: " + "; ".join(bad))
        return self._remember(raw, heads, plan)

    # ------------------------------------------------------------------ bcast
    @_watched("bcast")
    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Send root's ``obj`` to every rank.

        **Collective**. NumPy arrays travel by buffer (shape and dtype first, so other
        ranks need not know them); any other object is pickled.

        Returns:
            Root's object: on root the object itself, elsewhere a copy.
        """
        status = self._check_root(root)
        arr, kind = None, _KIND_NONE
        if status is None and self.rank == root:
            if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
                arr, kind = obj, _KIND_ARRAY
            else:
                kind = _KIND_OBJECT
        raw, heads = self._agree(4, root, 0, status, arr, None, aux=kind)
        h = heads[root] if heads is not None else _HFMT.unpack_from(raw, root * _HFMT.size)
        if h[_AUX] == _KIND_OBJECT:
            return self.comm.bcast(obj, root=root)
        plan = self._plans.get(raw)
        if plan is None:
            heads = heads or _heads(raw)
            plan = _Plan()
            plan.dtype = self._dtypes(heads, arr, None)[root][0]
            plan.gshape = _shape(h)
            self._remember(raw, heads, plan)
        if self.rank == root:
            self.comm.Bcast([_contig(arr, 0), MPI.BYTE], root=root)
            return obj
        recv = np.empty(plan.gshape, plan.dtype)
        self.comm.Bcast([recv, MPI.BYTE], root=root)
        return recv

    # ------------------------------------------------------------------ reductions
    @_watched("reduce")
    def reduce(self, x: Any, op: str | MPI.Op = "sum", root: int = 0) -> Any:
        """Combine every rank's ``x`` with ``op``; the result goes to root.

        **Collective**. Arrays and NumPy scalars are reduced element-wise by buffer
        (same shape and dtype on every rank); Python numbers and other objects are
        pickled and reduced exactly (arbitrary-size ints stay exact).

        Args:
            x: this rank's contribution.
            op: ``"sum"``, ``"prod"``, ``"min"``, ``"max"``, a logical/bitwise name
                of :data:`OPS`, or an ``MPI.Op``.
            root: the rank that receives the result.

        Returns:
            The result on root, None elsewhere.
        """
        return self._reduce(5, x, op, root)

    @_watched("allreduce")
    def allreduce(self, x: Any, op: str | MPI.Op = "sum") -> Any:
        """Combine every rank's ``x`` with ``op``; every rank gets the result.

        **Collective**. The same rules as :meth:`reduce`.
        """
        return self._reduce(6, x, op, None)

    def _reduce(self, call, x, op, root):
        status = self._check_root(root) if root is not None else None
        mop = OPS.get(op) if isinstance(op, str) else op
        if not isinstance(mop, MPI.Op):
            status = status or f"op={op!r} is not one of {sorted(OPS)} or an MPI.Op"
            mop = MPI.OP_NULL
        arr, kind = None, _KIND_OBJECT
        if isinstance(x, (np.ndarray, np.generic)):
            kind = _KIND_ARRAY
            arr = np.asarray(x)
            if arr.dtype.kind not in "biufc":
                status = status or f"cannot reduce dtype {arr.dtype}; it must be numeric or bool"
                arr = None
        opcode = mop.py2f() if mop != MPI.OP_NULL else -1
        raw, heads = self._agree(call, -1 if root is None else root, kind, status, arr, None,
                                 aux=opcode)
        plan = self._plans.get(raw)
        if plan is None:
            heads = heads or _heads(raw)
            kinds = {h[_AXIS] for h in heads}
            shapes = [_shape(h) for h in heads]
            codes = [h[_DTYPE] for h in heads]
            if len(kinds) > 1 or any(s != shapes[0] for s in shapes) or len(set(codes)) > 1:
                raise ValueError(
                    f"hpcpar.{_CALLS[call]}: every rank must pass the same kind of value, "
                    "with the same shape and dtype for arrays; got "
                    + "; ".join(f"rank {r}: " + (_desc(s, _DTYPES.get(c)) if k == _KIND_ARRAY
                                                 else "a Python object")
                                for r, (s, c, k) in enumerate(
                                    zip(shapes, codes, (h[_AXIS] for h in heads)))))
            plan = _Plan()
            plan.axis = kinds.pop()
            self._remember(raw, heads, plan)
        if plan.axis == _KIND_OBJECT:
            if root is None:
                return self.comm.allreduce(x, op=mop)
            return self.comm.reduce(x, op=mop, root=root)
        send = arr if arr.flags.c_contiguous else arr.copy()
        recv = np.empty_like(send) if root is None or self.rank == root else None
        if root is None:
            self.comm.Allreduce(send, recv, op=mop)
        else:
            self.comm.Reduce(send, recv, op=mop, root=root)
        if recv is None:
            return None
        return recv[()] if isinstance(x, np.generic) else recv

    # ------------------------------------------------------------------ machinery
    def _check_root(self, root: Any) -> str | None:
        if isinstance(root, (int, np.integer)) and not isinstance(root, bool) and 0 <= root < self.size:
            return None
        return f"root={root!r} is not a rank of this {self.size}-rank context"

    def _agree(self, call, root, axis, status, arr, out, aux=0):
        """Allgather this rank's header; raise on every rank if anything is wrong.

        Returns the raw header bytes (the plan-cache key) and the unpacked headers
        (None when the key is already cached and nothing needs unpacking).
        """
        isout = out.__class__ is np.ndarray or isinstance(out, np.ndarray)
        site = _caller_site() if self.debug else None
        key = (call, root, axis, aux, None if arr is None else (arr.shape, arr.dtype),
               (out.shape, out.dtype) if isout else None, site)
        hdr = self._packed.get(key) if status is None else None
        if hdr is None:
            hdr = self._pack(call, root, axis, status, arr, out if isout else None, aux,
                             _site_code(site))
            if status is None:
                if len(self._packed) >= 256:
                    self._packed.clear()
                self._packed[key] = hdr
        self._last_hdr = hdr if status is None else None
        self.comm.Allgather([hdr, MPI.BYTE], [self._hdr_all, MPI.BYTE])
        raw = bytes(self._hdr_all)
        if raw in self._plans:
            return raw, None
        return raw, self._check(call, raw, status, site)

    def _repeat(self, call, hdr):
        """Exchange a header this rank validated before: (raw, cached plan or None)."""
        self.comm.Allgather([hdr, MPI.BYTE], [self._hdr_all, MPI.BYTE])
        raw = bytes(self._hdr_all)
        return raw, self._plans.get(raw)

    def _see(self, fkey) -> None:
        """Remember the header of the call just validated under its fast key."""
        if fkey is not None and self._last_hdr is not None:
            if len(self._seen) >= 256:
                self._seen.clear()
            self._seen[fkey] = self._last_hdr

    def _check(self, call, raw, status, site):
        """The checks every rank runs on the exchanged headers; raises the same error everywhere."""
        heads = _heads(raw)
        if any(h[_STATUS] for h in heads):
            msgs = self.comm.allgather(status)
            raise ValueError(f"hpcpar.{_CALLS[call]}: "
                             + "; ".join(f"rank {r}: {m}" for r, m in enumerate(msgs) if m))
        first = heads[0]
        check_op = call in (5, 6)  # reductions must also agree on the op
        if any(h[_CALL] != first[_CALL] or h[_ROOT] != first[_ROOT]
               or (check_op and h[_AUX] != first[_AUX]) for h in heads):
            sites = self._sites(heads, site)
            raise CollectiveMismatchError(
                "hpcpar: ranks are in different collectives: "
                + "; ".join(f"rank {r}: {_call_desc(h)}{sites[r]}" for r, h in enumerate(heads))
                + ". Every rank must make the same collective calls in the same order; "
                "a collective inside `if ctx.rank == ...:`, or a rank that returned early, "
                "is the usual cause.")
        if all(h[_SITE] for h in heads) and any(h[_SITE] != first[_SITE] for h in heads):
            sites = self._sites(heads, site)
            raise CollectiveMismatchError(
                f"hpcpar.{_CALLS[call]} (debug mode): ranks reached this collective from "
                "different functions: "
                + "; ".join(f"rank {r}: {_call_desc(h)}{sites[r]}" for r, h in enumerate(heads))
                + ". Usually some ranks skipped a collective (or made an extra one) earlier, "
                "so this call pairs up calls that were meant to be different.")
        return heads

    def _sites(self, heads, site) -> list[str]:
        """Each rank's caller (debug mode), for error messages; one pickled exchange."""
        if not any(h[_SITE] for h in heads):
            return [""] * len(heads)
        return [f" from {s}" if s else "" for s in self.comm.allgather(site)]

    @staticmethod
    def _pack(call, root, axis, status, arr, out, aux, site=0) -> bytes:
        """This rank's header as bytes (see the field offsets at the top of the module)."""
        ndim, shape = (arr.ndim, arr.shape) if arr is not None else (-1, ())
        ondim, oshape = (out.ndim, out.shape) if out is not None else (-1, ())
        if ndim > _MAXDIM or ondim > _MAXDIM:
            status = status or f"arrays of more than {_MAXDIM} dimensions are not supported"
            ndim, shape, ondim, oshape = -1, (), -1, ()
        root = int(root) if isinstance(root, (int, np.integer)) else -1
        axis = int(axis) if isinstance(axis, (int, np.integer)) else 0
        return _HFMT.pack(
            call, root, 1 if status else 0, axis, ndim,
            _code(arr.dtype if arr is not None else None), aux, ondim,
            _code(out.dtype if out is not None else None), site,
            *shape, *_PAD[max(ndim, 0):], *oshape, *_PAD[max(ondim, 0):])

    def _dtypes(self, heads, arr, out) -> list[tuple[np.dtype | None, np.dtype | None]]:
        """(array dtype, out dtype) of every rank; one pickled exchange for custom dtypes."""
        if any(h[_DTYPE] == _CUSTOM or h[_ODTYPE] == _CUSTOM for h in heads):
            return self.comm.allgather((None if arr is None else arr.dtype,
                                        out.dtype if isinstance(out, np.ndarray) else None))
        return [(_DTYPES.get(h[_DTYPE]), _DTYPES.get(h[_ODTYPE])) for h in heads]

    def _remember(self, raw, heads, plan: _Plan) -> _Plan:
        if all(h[_DTYPE] != _CUSTOM and h[_ODTYPE] != _CUSTOM for h in heads):
            if len(self._plans) >= 128:
                self._plans.clear()
            self._plans[raw] = plan
        return plan

    @staticmethod
    def _recv_buffer(shape, dtype, ax, out):
        """The receive buffer; ``out`` itself when it can receive in place."""
        if out is not None and ax == 0 and out.flags.c_contiguous:
            return out, True
        if ax:
            shape = (shape[ax],) + shape[:ax] + shape[ax + 1:]
        return np.empty(shape, dtype), False

    @staticmethod
    def _finish(recv, ax, out, direct):
        if direct:
            return out
        res = np.moveaxis(recv, 0, ax) if ax else recv
        if out is not None:
            out[...] = res
            return out
        return np.ascontiguousarray(res) if ax else res

    def _vcall(self, fn, send, recv, **kw):
        """Run a v-collective whose specs count bytes.

        With MPI-4 large counts mpi4py handles any size itself. Otherwise counts
        beyond ``2**31 - 1`` travel in units of a derived contiguous datatype (the
        gcd of all counts and displacements).
        """
        if LARGE_COUNT:
            fn(send, recv, **kw)
            return
        counts = []
        for spec in (send, recv):
            for v in spec[1:-1] if spec is not None else ():
                counts.extend(v if isinstance(v, list) else (v,))
        if max(counts, default=0) <= _INT_MAX:
            fn(send, recv, **kw)
            return
        unit = 0
        for c in counts:
            unit = math.gcd(unit, c)
        dt = MPI.BYTE.Create_contiguous(unit).Commit()

        def scale(spec):
            if spec is None:
                return None
            return [spec[0], *([c // unit for c in v] if isinstance(v, list) else v // unit
                               for v in spec[1:-1]), dt]
        try:
            fn(scale(send), scale(recv), **kw)
        finally:
            dt.Free()


# ---- pure helpers -----------------------------------------------------------------
def _heads(raw: bytes) -> list[tuple[int, ...]]:
    n = _HFMT.size
    return [_HFMT.unpack_from(raw, r * n) for r in range(len(raw) // n)]


def _shape(h, out: bool = False) -> tuple[int, ...]:
    if out:
        return tuple(h[_OSHAPE:_OSHAPE + h[_ONDIM]]) if h[_ONDIM] >= 0 else ()
    return tuple(h[_SHAPE:_SHAPE + h[_NDIM]]) if h[_NDIM] >= 0 else ()


def _fast_key(call, root, axis, arr, out, debug):
    """A key for the local arguments of a scatter/gather call, or None when the call
    must take the full checks (debug mode, or arguments that are not plain arrays).

    Validation depends only on what the key holds, so a key seen before with a
    valid call needs no new local checks; the header exchange still runs.
    """
    if debug:
        return None
    if arr is not None:
        if arr.__class__ is not np.ndarray:
            return None
        akey = (arr.shape, arr.dtype)
    else:
        akey = None
    if out is not None:
        if out.__class__ is not np.ndarray:
            return None
        flags = out.flags
        okey = (out.shape, out.dtype, flags.writeable, flags.c_contiguous)
    else:
        okey = None
    return (call, root, root.__class__, axis, axis.__class__, akey, okey)


def _direct(fn, send, recv, **kw):
    """Call a v-collective as is (MPI-4 large counts: mpi4py handles any size)."""
    fn(send, recv, **kw)


def _contig(a: np.ndarray, ax: int) -> np.ndarray:
    """``a`` with ``ax`` moved first, C-contiguous; ``a`` itself when it already is."""
    if ax:
        a = np.moveaxis(a, ax, 0)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _desc(shape, dtype) -> str:
    return f"{dtype}{list(shape)}"


def _call_desc(h) -> str:
    if h[_CALL] == _FINISH_CALL:
        return "returned from main (finished)"
    name = _CALLS[h[_CALL]] if 0 < h[_CALL] < len(_CALLS) else "?"
    root = "" if h[_ROOT] < 0 else f"root={h[_ROOT]}"
    dt = _DTYPES.get(h[_DTYPE])
    op = f"op={_OPNAMES.get(h[_AUX], h[_AUX])}" if h[_CALL] in (5, 6) else ""
    parts = [p for p in (root, str(dt) if dt is not None else "", op) if p]
    return f"{name}({', '.join(parts)})"


def _caller_site() -> str:
    """``file:function`` of the nearest caller outside the hpcpar package (debug mode)."""
    f = sys._getframe(2)
    while f is not None:
        code = f.f_code
        site = _SITE_NAMES.get(code)
        if site is not None:
            return site
        if not code.co_filename.startswith(_HERE):
            if len(_SITE_NAMES) > 4096:
                _SITE_NAMES.clear()
            site = _SITE_NAMES[code] = f"{os.path.basename(code.co_filename)}:{code.co_name}"
            return site
        f = f.f_back
    return "?"


_SITE_NAMES: dict = {}  # code object -> "file:function", for code outside hpcpar


def _site_code(site: str | None) -> int:
    return 0 if site is None else (zlib.crc32(site.encode()) or 1)


def _block_plan(ax, dtype, counts, shape) -> _Plan:
    p = _Plan()
    p.axis, p.dtype = ax, dtype
    rest = shape[:ax] + shape[ax + 1:]
    row = dtype.itemsize * math.prod(rest)
    p.shapes = [shape[:ax] + (c,) + shape[ax + 1:] for c in counts]
    p.gshape = shape[:ax] + (sum(counts),) + shape[ax + 1:]
    p.bcounts = [c * row for c in counts]
    displs, acc = [], 0
    for c in p.bcounts:
        displs.append(acc)
        acc += c
    p.bdispls = displs
    return p


def _check_array(a: Any, what: str) -> str | None:
    if not isinstance(a, np.ndarray):
        return f"{what} must be a NumPy array, got {type(a).__name__}"
    if a.dtype.hasobject:
        return f"{what} has dtype {a.dtype}, which holds Python objects and cannot travel as a buffer"
    return None


def _check_axis(axis: Any, ndim: int) -> str | None:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        return f"axis must be an int, got {axis!r}"
    if ndim == 0:
        return "a 0-d array has no axis to split or join; pass an array of at least 1 dimension"
    if not -ndim <= axis < ndim:
        return f"axis={axis} is out of range for an array of {ndim} dimensions"
    return None


def _check_out(out: Any) -> str | None:
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        return f"out must be a NumPy array, got {type(out).__name__}"
    if not out.flags.writeable:
        return "out is read-only"
    if out.dtype.hasobject:
        return f"out has dtype {out.dtype}, which holds Python objects"
    return None
