"""The SPMD context: a private communicator plus NumPy-aware, buffer-based collectives.

Every collective here is *checked*. Before any data moves, the ranks exchange a
small fixed-size header (call, root, axis, dtype, shapes, local problems; see
:mod:`hpcpar.core.protocol`). Each rank runs the same checks on the same headers,
so a bad argument on any rank raises the same ``ValueError`` on **every** rank,
instead of leaving the others blocked in a mismatched MPI call. Repeated calls
with the same geometry reuse a cached plan, so a time-step loop pays only the
header exchange. Array data always travels by buffer (the uppercase mpi4py
calls, in bytes, so every dtype works); it is never pickled.

Every collective also marks itself in :mod:`hpcpar.watchdog` while it runs, so a
rank blocked too long in one is reported (``HPCPAR_TIMEOUT``). In debug mode
(``HPCPAR_DEBUG=1`` or ``Context(debug=True)``) the header also carries the
function each rank called from, and ranks that reach the same collective from
different functions (a collective skipped by some ranks and paired with a later
one) raise :class:`CollectiveMismatchError` instead of mixing up data.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from mpi4py import MPI

from .. import env
from ..decomp import partition
from ..errors import CollectiveMismatchError, Problem, attempt, fail
from ..observe import timing
from ..observe.progress import progress as _progress
from . import preempt, watchdog
from .largecount import LARGE_COUNT, vcall
from .protocol import DTYPES, OPS, Call, Exchange, Field, Kind, Plan, describe, fast_key, shape_of, unpack

__all__ = ["Context", "CollectiveMismatchError", "OPS", "LARGE_COUNT"]

# The calls as plain ints: they key caches looked up on every call (see protocol.Call).
_SCATTER, _GATHER, _ALLGATHER, _BCAST, _REDUCE, _ALLREDUCE, _BARRIER, _FINISH = (
    int(c) for c in (Call.SCATTER, Call.GATHER, Call.ALLGATHER, Call.BCAST, Call.REDUCE,
                     Call.ALLREDUCE, Call.BARRIER, Call.FINISH))


def _array_index() -> int | None:
    """``SLURM_ARRAY_TASK_ID`` as an int; None outside a Slurm job array."""
    value = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
    return int(value) if value.isdigit() else None


def _debug_default() -> bool:
    return (env.get(env.HPCPAR_DEBUG, "0") or "0").lower() not in ("0", "false", "no", "off")


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
        comm: the private ``mpi4py.MPI.Intracomm`` (use it for point-to-point calls).
        rank: this rank, ``0 <= rank < size``.
        size: the number of ranks.
        root: the rank that does root-only work (0).
        is_root: ``rank == root``.
        debug: whether debug checks are on.
        world_ranks: the ``COMM_WORLD`` rank of each rank of this context.
        array_index: this task's index in a Slurm job array (``SLURM_ARRAY_TASK_ID``),
            None outside job arrays.
    """

    def __init__(self, comm: MPI.Intracomm | None = None, debug: bool | None = None):
        base = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(base, MPI.Intracomm) or base == MPI.COMM_NULL:
            fail("hpcpar.Context", f"needs an mpi4py intracommunicator, got {comm!r}", TypeError)
        self.comm: MPI.Intracomm = base.Dup()
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.root: int = 0
        self.is_root: bool = self.rank == self.root
        self.debug: bool = _debug_default() if debug is None else bool(debug)
        world = MPI.COMM_WORLD
        is_world = base == world or MPI.Comm.Compare(base, world) in (MPI.IDENT, MPI.CONGRUENT)
        if is_world:
            self.world_ranks: list[int] = list(range(self.size))
        else:
            group, wgroup = self.comm.Get_group(), world.Get_group()
            self.world_ranks = list(MPI.Group.Translate_ranks(group, list(range(self.size)), wgroup))
            group.Free()
            wgroup.Free()
        watchdog.start(world=is_world)
        self.array_index: int | None = _array_index()
        self._x = Exchange(self.comm, self.debug)

    def free(self) -> None:
        """Release the private communicator. **Collective**; safe to call twice."""
        if self.comm != MPI.COMM_NULL and not MPI.Is_finalized():
            self.comm.Free()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        return f"<hpcpar.Context rank {self.rank} of {self.size}>"

    def timer(self, name: str) -> timing.Region:
        """The wall-time region ``name`` of this rank: ``with ctx.timer("halo"):``. **Local**.

        Also a decorator (``@ctx.timer("compute")``). At the end of :func:`hpcpar.run`
        root prints min/mean/max over ranks and the imbalance of every region.
        """
        return timing.REGISTRY(name)

    def progress(self, iterable: Iterable, total: int | None = None, desc: str = "") -> Iterable:
        """``iterable`` with a progress bar on root (plain lines when not a terminal). **Local**."""
        return _progress(iterable, total=total, desc=desc, is_root=self.is_root)

    def should_stop(self, every: int = 1) -> bool:
        """True on every rank once any rank got SIGUSR1 (Slurm's time-limit warning). **Collective**.

        Call it once per time step on every rank; then save a checkpoint and end
        (under Slurm, root may :func:`hpcpar.slurm.requeue` the job). It exchanges
        one integer on every ``every``-th call; see :func:`hpcpar.preempt.should_stop`.
        """
        return preempt.should_stop(self, every)

    @watchdog.marked("barrier")
    def barrier(self) -> None:
        """Return once every rank has called it. **Collective** and checked like the others."""
        raw, heads = self._x.agree(_BARRIER, -1, 0, None, None, None)
        if heads is not None:  # remember the agreed headers: the next barrier skips the checks
            self._x.remember(raw, heads, Plan())

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
            self._x.agree(_FINISH, -1, 0, None, None, None)
            completed = self.size == MPI.COMM_WORLD.Get_size()
        finally:
            watchdog.leave_finish(prev, completed)

    # ------------------------------------------------------------------ scatter
    @watchdog.marked("scatter")
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
                match its block (a ``TypeError`` too when an argument has the wrong type).
        """
        me, x = self.rank, self._x
        mine = array if me == root else None
        fkey = fast_key(_SCATTER, root, axis, mine, out, self.debug)
        seen = x.repeat(fkey)
        if seen is not None:  # a repeat of a call this rank has already validated
            arr = mine
            raw, plan = seen
            if plan is None:
                plan = self._plan_scatter(raw, x.check(_SCATTER, raw, None, None), root, arr, out)
        else:
            problem = self._check_root(root)
            arr = None
            if problem is None and me == root:
                problem = _check_array(array, "the array on root")
                if problem is None:
                    arr = array
                    problem = attempt(partition.normalize_axis, axis, array.ndim)[1]  # type: ignore[union-attr]  # checked by _check_array
            problem = problem or _check_out(out)
            raw, heads = x.agree(_SCATTER, root, axis, problem, arr, out)
            plan = x.plan(raw) or self._plan_scatter(raw, heads or unpack(raw), root, arr, out)
            x.see(fkey)
        ax = plan.axis
        send = None
        if me == root:
            assert arr is not None  # root's array was checked above, or the call raised
            send = [_contig(arr, ax), plan.bcounts, plan.bdispls, MPI.BYTE]
        recv, direct = _recv_buffer(plan.shapes[me], plan.dtype, ax, out)
        vcall(self.comm.Scatterv, send, [recv, plan.bcounts[me], MPI.BYTE], root=root)
        return _finish(recv, ax, out, direct)

    def _plan_scatter(self, raw: bytes, heads: list, root: int, arr: np.ndarray | None,
                      out: np.ndarray | None) -> Plan:
        h = heads[root]
        shape = shape_of(h)
        nd = len(shape)
        ax = h[Field.AXIS] % nd
        axes = [hr[Field.AXIS] % nd if -nd <= hr[Field.AXIS] < nd else hr[Field.AXIS] for hr in heads]
        if any(a != ax for a in axes):
            fail("hpcpar.scatter", "ranks passed different axes: "
                 + "; ".join(f"rank {r}: axis={a}" for r, a in enumerate(axes))
                 + "; every rank must pass root's axis")
        dtypes = self._x.dtypes(heads, arr, out)
        dtype = dtypes[root][0]
        assert dtype is not None  # root passed an array, or the call raised on every rank
        plan = Plan.blocks(ax, dtype, partition.block_counts(shape[ax], self.size), shape)
        bad = [f"rank {r}: out {describe(shape_of(hr, True), dtypes[r][1])} does not fit "
               f"its block {describe(plan.shapes[r], dtype)}"
               for r, hr in enumerate(heads)
               if hr[Field.ONDIM] >= 0 and (shape_of(hr, True) != plan.shapes[r] or dtypes[r][1] != dtype)]
        if bad:
            fail("hpcpar.scatter", "; ".join(bad))
        return self._x.remember(raw, heads, plan)

    # ------------------------------------------------------------------ gather
    @watchdog.marked("gather")
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
        return self._gather(_GATHER, local, root, axis, out)

    @watchdog.marked("allgather")
    def allgather(self, local: np.ndarray, axis: int = 0,
                  out: np.ndarray | None = None) -> np.ndarray:
        """Concatenate every rank's block along ``axis`` on every rank.

        **Collective**. The same rules as :meth:`gather`; every rank receives the
        whole array (into its own ``out`` when given).
        """
        whole = self._gather(_ALLGATHER, local, None, axis, out)
        assert whole is not None  # every rank receives the whole array
        return whole

    def _gather(self, call: int, local: Any, root: int | None, axis: Any,
                out: Any) -> np.ndarray | None:
        x = self._x
        takes_out = root is None or self.rank == root
        if out is not None and not takes_out:
            out = None  # only root receives; other ranks' out is ignored
        fkey = fast_key(call, root, axis, local, out, self.debug)
        seen = x.repeat(fkey)
        if seen is not None:  # a repeat of a call this rank has already validated
            arr = local
            raw, plan = seen
            if plan is None:
                plan = self._plan_gather(call, raw, x.check(call, raw, None, None), arr, out)
        else:
            problem = self._check_root(root) if root is not None else None
            problem = problem or _check_array(local, "the local block")
            arr = local if problem is None else None
            if arr is not None:
                problem = attempt(partition.normalize_axis, axis, arr.ndim)[1]
            problem = problem or _check_out(out)
            raw, heads = x.agree(call, -1 if root is None else root, axis, problem, arr, out)
            plan = x.plan(raw) or self._plan_gather(call, raw, heads or unpack(raw), arr, out)
            x.see(fkey)
        ax = plan.axis
        send = [_contig(arr, ax), plan.bcounts[self.rank], MPI.BYTE]
        if not takes_out:
            vcall(self.comm.Gatherv, send, None, root=root)
            return None
        recv, direct = _recv_buffer(plan.gshape, plan.dtype, ax, out)
        rspec = [recv, plan.bcounts, plan.bdispls, MPI.BYTE]
        if root is None:
            vcall(self.comm.Allgatherv, send, rspec)
        else:
            vcall(self.comm.Gatherv, send, rspec, root=root)
        return _finish(recv, ax, out, direct)

    def _plan_gather(self, call: int, raw: bytes, heads: list, arr: np.ndarray | None,
                     out: np.ndarray | None) -> Plan:
        where = f"hpcpar.{Call(call).label}"
        dtypes = self._x.dtypes(heads, arr, out)
        shapes = [shape_of(h) for h in heads]
        ax = heads[0][Field.AXIS] % max(len(shapes[0]), 1)
        axes = [h[Field.AXIS] % max(len(s), 1) for h, s in zip(heads, shapes, strict=True)]
        if any(a != ax for a in axes):
            fail(where, "ranks passed different axes: "
                 + "; ".join(f"rank {r}: axis={a}" for r, a in enumerate(axes)))
        rest = [s[:ax] + s[ax + 1:] if len(s) == len(shapes[0]) else None for s in shapes]
        if any(r != rest[0] for r in rest) or any(d[0] != dtypes[0][0] for d in dtypes):
            fail(where, f"blocks must agree in dtype and in every dimension but axis {ax}; got "
                 + "; ".join(f"rank {r}: {describe(s, d[0])}"
                             for r, (s, d) in enumerate(zip(shapes, dtypes, strict=True))))
        dtype = dtypes[0][0]
        assert dtype is not None  # every rank passed an array, or the call raised on every rank
        plan = Plan.blocks(ax, dtype, [s[ax] for s in shapes], shapes[0])
        bad = [f"rank {r}: out {describe(shape_of(h, True), dtypes[r][1])} does not fit the "
               f"gathered {describe(plan.gshape, dtype)}"
               for r, h in enumerate(heads)
               if h[Field.ONDIM] >= 0 and (shape_of(h, True) != plan.gshape or dtypes[r][1] != dtype)]
        if bad:
            fail(where, "; ".join(bad))
        return self._x.remember(raw, heads, plan)

    # ------------------------------------------------------------------ bcast
    @watchdog.marked("bcast")
    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Send root's ``obj`` to every rank.

        **Collective**. NumPy arrays travel by buffer (shape and dtype first, so other
        ranks need not know them); any other object is pickled.

        Returns:
            Root's object: on root the object itself, elsewhere a copy.
        """
        x = self._x
        problem = self._check_root(root)
        arr, kind = None, Kind.NONE
        if problem is None and self.rank == root:
            if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
                arr, kind = obj, Kind.ARRAY
            else:
                kind = Kind.OBJECT
        raw, heads = x.agree(_BCAST, root, 0, problem, arr, None, kind=kind)
        h = heads[root] if heads is not None else unpack(raw, root)
        if h[Field.KIND] == Kind.OBJECT:
            return self.comm.bcast(obj, root=root)
        plan = x.plan(raw)
        if plan is None:
            heads = heads or unpack(raw)
            plan = Plan(kind=Kind.ARRAY, dtype=x.dtypes(heads, arr, None)[root][0], gshape=shape_of(h))
            x.remember(raw, heads, plan)
        if self.rank == root:
            assert arr is not None  # root's array kind was agreed above
            self.comm.Bcast([_contig(arr, 0), MPI.BYTE], root=root)
            return obj
        recv = np.empty(plan.gshape, plan.dtype)
        self.comm.Bcast([recv, MPI.BYTE], root=root)
        return recv

    # ------------------------------------------------------------------ reductions
    @watchdog.marked("reduce")
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
        return self._reduce(_REDUCE, x, op, root)

    @watchdog.marked("allreduce")
    def allreduce(self, x: Any, op: str | MPI.Op = "sum") -> Any:
        """Combine every rank's ``x`` with ``op``; every rank gets the result.

        **Collective**. The same rules as :meth:`reduce`.
        """
        return self._reduce(_ALLREDUCE, x, op, None)

    def _reduce(self, call: int, value: Any, op: Any, root: int | None) -> Any:
        x = self._x
        problem = self._check_root(root) if root is not None else None
        mop = OPS.get(op) if isinstance(op, str) else op
        if not isinstance(mop, MPI.Op):
            problem = problem or ("ValueError", f"op={op!r} is not one of {sorted(OPS)} or an MPI.Op")
            mop = MPI.OP_NULL
        arr, kind = None, Kind.OBJECT
        if isinstance(value, (np.ndarray, np.generic)):
            kind = Kind.ARRAY
            arr = np.asarray(value)
            if arr.dtype.kind not in "biufc":
                problem = problem or ("TypeError",
                                      f"cannot reduce dtype {arr.dtype}; it must be numeric or bool")
                arr = None
        opcode = mop.py2f() if mop != MPI.OP_NULL else -1
        raw, heads = x.agree(call, -1 if root is None else root, 0, problem, arr, None,
                             kind=kind, op=opcode)
        plan = x.plan(raw)
        if plan is None:
            plan = self._plan_reduce(call, raw, heads or unpack(raw))
        if plan.kind == Kind.OBJECT:
            if root is None:
                return self.comm.allreduce(value, op=mop)
            return self.comm.reduce(value, op=mop, root=root)
        assert arr is not None  # every rank passes an array once the kind is ARRAY
        send = arr if arr.flags.c_contiguous else arr.copy()
        recv = np.empty_like(send) if root is None or self.rank == root else None
        if root is None:
            self.comm.Allreduce(send, recv, op=mop)
        else:
            self.comm.Reduce(send, recv, op=mop, root=root)
        if recv is None:
            return None
        return recv[()] if isinstance(value, np.generic) else recv

    def _plan_reduce(self, call: int, raw: bytes, heads: list) -> Plan:
        kinds = {h[Field.KIND] for h in heads}
        shapes = [shape_of(h) for h in heads]
        codes = [h[Field.DTYPE] for h in heads]
        if len(kinds) > 1 or any(s != shapes[0] for s in shapes) or len(set(codes)) > 1:
            fail(f"hpcpar.{Call(call).label}",
                 "every rank must pass the same kind of value, with the same shape and dtype "
                 "for arrays; got "
                 + "; ".join(f"rank {r}: " + (describe(s, DTYPES.get(c)) if h[Field.KIND] == Kind.ARRAY
                                              else "a Python object")
                             for r, (s, c, h) in enumerate(zip(shapes, codes, heads, strict=True))))
        return self._x.remember(raw, heads, Plan(kind=kinds.pop()))

    # ------------------------------------------------------------------ checks
    def _check_root(self, root: Any) -> Problem | None:
        if isinstance(root, (int, np.integer)) and not isinstance(root, bool) and 0 <= root < self.size:
            return None
        kind = "ValueError" if isinstance(root, (int, np.integer)) else "TypeError"
        return kind, f"root={root!r} is not a rank of this {self.size}-rank context"


# ---- pure helpers -----------------------------------------------------------------
def _contig(a: np.ndarray, ax: int) -> np.ndarray:
    """``a`` with ``ax`` moved first, C-contiguous; ``a`` itself when it already is."""
    if ax:
        a = np.moveaxis(a, ax, 0)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _recv_buffer(shape: tuple, dtype: np.dtype, ax: int, out: Any) -> tuple[np.ndarray, bool]:
    """The receive buffer; ``out`` itself when it can receive in place."""
    if out is not None and ax == 0 and out.flags.c_contiguous:
        return out, True
    if ax:
        shape = (shape[ax],) + shape[:ax] + shape[ax + 1:]
    return np.empty(shape, dtype), False


def _finish(recv: np.ndarray, ax: int, out: Any, direct: bool) -> np.ndarray:
    if direct:
        return out
    res = np.moveaxis(recv, 0, ax) if ax else recv
    if out is not None:
        out[...] = res
        return out
    return np.ascontiguousarray(res) if ax else res


def _check_array(a: Any, what: str) -> Problem | None:
    if not isinstance(a, np.ndarray):
        return "TypeError", f"{what} must be a NumPy array, got {type(a).__name__}"
    if a.dtype.hasobject:
        return ("TypeError",
                f"{what} has dtype {a.dtype}, which holds Python objects and cannot travel as a buffer")
    return None


def _check_out(out: Any) -> Problem | None:
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        return "TypeError", f"out must be a NumPy array, got {type(out).__name__}"
    if not out.flags.writeable:
        return "ValueError", "out is read-only"
    if out.dtype.hasobject:
        return "TypeError", f"out has dtype {out.dtype}, which holds Python objects"
    return None
