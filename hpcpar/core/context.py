"""The SPMD context: a private communicator plus NumPy-aware, buffer-based collectives.

Every collective here is *checked* by default. Before any data moves, the ranks
agree on the call (call, root, op, dtype, shapes, local problems) with one
``Allreduce`` of a fixed-size vector (:mod:`hpcpar.core.agreement`: O(log P),
whatever the number of ranks). When anything disagrees, every rank sees it in the
same result and raises the same error, naming what each rank passed
(:mod:`hpcpar.core.protocol`), instead of leaving the others blocked in a
mismatched MPI call. Array data always travels by buffer (the uppercase mpi4py
calls, in bytes, so every dtype works); it is never pickled.

With ``HPCPAR_CHECKS=0`` or ``Context(checks=False)`` the collectives are
*unchecked*: they go straight to MPI. What one rank can see is still checked on
that rank, but ranks that disagree are no longer caught before data moves (the
watchdog still ends a job that hangs). Use it for production runs of code already
tested with the checks on.

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
from ..errors import CollectiveMismatchError, Problem, fail
from ..observe import timing
from ..observe.progress import progress as _progress
from . import announce, fastpath, preempt, watchdog
from .agreement import Agreement, Slot, agrees, dtype_code, object_code, object_kind, put, put_dims, vector
from .blocks import Blocks, check_root, contig, raise_local
from .cache import BoundedCache
from .callsite import caller_site, site_code
from .largecount import LARGE_COUNT, bcast_bytes
from .protocol import DTYPES, MAXDIM, OPS, Call, Field, Kind, Plan, describe, shape_of

__all__ = ["Context", "CollectiveMismatchError", "OPS", "LARGE_COUNT"]

# The calls as plain ints: they key caches looked up on every call (see protocol.Call).
_SCATTER, _GATHER, _ALLGATHER, _BCAST, _REDUCE, _ALLREDUCE, _BARRIER, _FINISH = (
    int(c) for c in (Call.SCATTER, Call.GATHER, Call.ALLGATHER, Call.BCAST, Call.REDUCE,
                     Call.ALLREDUCE, Call.BARRIER, Call.FINISH))


def _array_index() -> int | None:
    """``SLURM_ARRAY_TASK_ID`` as an int; None outside a Slurm job array."""
    value = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
    return int(value) if value.isdigit() else None


#: NumPy scalar types that reduce by buffer.
_SCALARS = frozenset(d.type for d in DTYPES.values() if d.kind in "biufc")


#: The dtype kinds MPI defines each builtin reduction for (MPI-4.0, section 6.9.2).
_OP_KINDS = {"sum": "iufc", "prod": "iufc", "max": "iuf", "min": "iuf", "land": "iub",
             "lor": "iub", "lxor": "iub", "band": "iu", "bor": "iu", "bxor": "iu"}
_OP_BY_CODE = {op.py2f(): name for name, op in OPS.items()}


def _op_problem(op: Any, mop: MPI.Op, dtype: np.dtype) -> Problem | None:
    """A problem when MPI does not define the builtin reduction ``op`` for ``dtype``. **Local**."""
    name = op if isinstance(op, str) else _OP_BY_CODE.get(mop.py2f()) if mop in OPS.values() else None
    kinds = _OP_KINDS.get(name) if name is not None else None
    if kinds is None or dtype.kind in kinds:
        return None
    what = {"b": "bool", "c": "complex", "f": "floating-point"}.get(dtype.kind, dtype.kind)
    fits = ", ".join(n for n, k in _OP_KINDS.items() if dtype.kind in k)
    return ("TypeError", f"op={name!r} is not defined for {what} dtype {dtype} in MPI; "
            f"for {dtype} use one of: {fits}" + (" (or convert, e.g. x.astype(np.int64))"
                                                    if dtype.kind == "b" else ""))


def _flag(name: str, default: str) -> bool:
    return (env.get(name, default) or default).lower() not in ("0", "false", "no", "off")


def checks_default() -> bool:
    """Whether new contexts check their collectives: ``HPCPAR_CHECKS`` (default on). **Local**."""
    return _flag(env.HPCPAR_CHECKS, "1")


#: The modes of the contexts created in this process: (checked, debug) -> count. The
#: timing report and ``hpcpar info`` say which ran.
MODES: dict[tuple[bool, bool], int] = {}


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
        checks: run the agreement step before every collective (the default);
            False sends collectives straight to MPI. None reads ``HPCPAR_CHECKS``.
            Every rank must pass the same value.

    Attributes:
        comm: the private ``mpi4py.MPI.Intracomm`` (use it for point-to-point calls).
        rank: this rank, ``0 <= rank < size``.
        size: the number of ranks.
        root: the rank that does root-only work (0).
        is_root: ``rank == root``.
        debug: whether debug checks are on.
        checks: whether collectives are checked (agreement before data).
        world_ranks: the ``COMM_WORLD`` rank of each rank of this context.
        array_index: this task's index in a Slurm job array (``SLURM_ARRAY_TASK_ID``),
            None outside job arrays.
    """

    def __init__(self, comm: MPI.Intracomm | None = None, debug: bool | None = None,
                 checks: bool | None = None):
        base = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(base, MPI.Intracomm) or base == MPI.COMM_NULL:
            fail("hpcpar.Context", f"needs an mpi4py intracommunicator, got {comm!r}", TypeError)
        self.comm: MPI.Intracomm = base.Dup()
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.root: int = 0
        self.is_root: bool = self.rank == self.root
        self.debug: bool = _flag(env.HPCPAR_DEBUG, "0") if debug is None else bool(debug)
        self.checks: bool = checks_default() if checks is None else bool(checks)
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
        self._a = Agreement(self.comm, self.debug)
        self._blocks = Blocks(self.comm, self._a, self.checks)
        # (call, root, op name, type, shape, dtype) of a validated reduction -> (vector, its bytes, op)
        self._reduced: BoundedCache[tuple, tuple] = BoundedCache(256)
        self._simples: BoundedCache[tuple, tuple] = BoundedCache(64)  # barrier, finish: (vector, bytes)
        mode = (self.checks, self.debug)
        MODES[mode] = MODES.get(mode, 0) + 1
        if not self.checks:
            fastpath.install(self, self._blocks)  # the common cases straight to MPI
        elif not self.debug:
            fastpath.install_checked(self, self._a, self._reduced.get, self._reduce_disagreed,
                                     self._bcast_agreed, self._blocks)

    def free(self) -> None:
        """Release the private communicator. **Collective**; safe to call twice."""
        if self.comm != MPI.COMM_NULL and not MPI.Is_finalized():
            self.comm.Free()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        mode = "" if self.checks else ", unchecked"
        return f"<hpcpar.Context rank {self.rank} of {self.size}{mode}>"

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
        if not self.checks:
            self.comm.Barrier()
            return
        self._simple(_BARRIER)  # the agreement's Allreduce is itself a barrier

    def finish(self) -> None:
        """Return once every rank has finished its work. **Collective**; the runner's final check.

        ``hpcpar.run`` calls it after ``main`` returns. A rank still in another
        collective of this context makes it raise :class:`CollectiveMismatchError`
        on every rank ("rank 0: returned from main; rank 1: gather(...)"); while a
        rank waits here, the watchdog tells ranks blocked in collectives of other
        contexts that it has finished, and they end the job instead of hanging.
        Unchecked, it is a barrier (the watchdog still reports a rank that never comes).
        """
        prev = watchdog.enter(watchdog.FINISH, self)
        completed = False
        try:
            if self.checks:
                self._simple(_FINISH)
            else:
                self.comm.Barrier()
            completed = self.size == MPI.COMM_WORLD.Get_size()
        finally:
            watchdog.leave_finish(prev, completed)

    def _simple(self, call: int) -> None:
        """The agreement of a call without arguments (barrier, finish)."""
        site = caller_site() if self.debug else None
        got = self._simples.get((call, site))
        if got is None:
            v = vector()
            put(v, Slot.CALL, call)
            put(v, Slot.ROOT, -1)
            if site is not None:
                put(v, Slot.SITE, site_code(site))
            got = self._simples.put((call, site), (v, v.tobytes()))
        if not self._a.same(*got):
            self._a.detail.detail(call, -1, 0, None, None, None, site=site)

    # ------------------------------------------------------------------ scatter/gather
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
        return self._blocks.scatter(array, root, axis, out)

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
        return self._blocks.gather(_GATHER, local, root, axis, out)

    @watchdog.marked("allgather")
    def allgather(self, local: np.ndarray, axis: int = 0,
                  out: np.ndarray | None = None) -> np.ndarray:
        """Concatenate every rank's block along ``axis`` on every rank.

        **Collective**. The same rules as :meth:`gather`; every rank receives the
        whole array (into its own ``out`` when given).
        """
        whole = self._blocks.gather(_ALLGATHER, local, None, axis, out)
        assert whole is not None  # every rank receives the whole array
        return whole

    # ------------------------------------------------------------------ bcast
    @watchdog.marked("bcast")
    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Send root's ``obj`` to every rank.

        **Collective**. NumPy arrays travel by buffer (shape and dtype first, so other
        ranks need not know them); any other object is pickled.

        Returns:
            Root's object: on root the object itself, elsewhere a copy.
        """
        problem = check_root(root, self.size)
        arr, kind = None, Kind.NONE
        if problem is None and self.rank == root:
            if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
                arr, kind = obj, Kind.ARRAY
                if arr.ndim > MAXDIM:
                    problem = ("ValueError", f"arrays of more than {MAXDIM} dimensions are not supported")
            else:
                kind = Kind.OBJECT
        if not self.checks:
            return self._bcast_unchecked(obj, root, problem, arr, kind)
        site = caller_site() if self.debug else None
        key = (root, kind, None if arr is None else (arr.shape, arr.dtype), site)
        a = self._a
        v = a.vectors.get(key) if problem is None else None
        if v is None:
            v = vector()
            put(v, Slot.CALL, _BCAST)
            put(v, Slot.ROOT, root if problem is None else -1)
            if site is not None:
                put(v, Slot.SITE, site_code(site))
            if problem is not None:
                v[Slot.PROBLEM] = 1
            elif self.rank == root:
                put(v, Slot.KIND, kind)
                if arr is not None:
                    put(v, Slot.DTYPE, dtype_code(arr.dtype))
                    put(v, Slot.NDIM, arr.ndim)
                    v[Slot.SHAPE:Slot.SHAPE + arr.ndim] = arr.shape
            if problem is None:
                a.vectors.put(key, v)
        return self._bcast_agreed(a.run(v), obj, root, problem, arr, kind, site)

    def _bcast_agreed(self, r: np.ndarray, obj: Any, root: int, problem: Problem | None,
                      arr: np.ndarray | None, kind: int, site: str | None) -> Any:
        """The rest of a checked bcast once the agreement gave ``r``. **Collective**."""
        a = self._a
        rkey, plan = a.plan_for(r)
        if plan is None:
            if agrees(r):
                plan = a.plans.put(rkey, self._bcast_plan(r, root, arr))
            else:
                heads = a.detail.detail(_BCAST, root, 0, problem, arr, None, kind=kind, site=site)
                h = heads[root]
                plan = Plan(kind=h[Field.KIND], gshape=shape_of(h),
                            dtype=a.detail.dtypes(heads, arr, None)[root][0])
        if plan.kind == Kind.OBJECT:
            return self.comm.bcast(obj, root=root)
        if self.rank == root:
            assert arr is not None  # root's array kind was agreed above
            bcast_bytes(self.comm, contig(arr, 0), root)
            return obj
        recv = np.empty(plan.gshape, plan.dtype)
        bcast_bytes(self.comm, recv, root)
        return recv

    def _bcast_plan(self, r: np.ndarray, root: int, arr: np.ndarray | None) -> Plan:
        """Root's kind, dtype and shape, from the agreed vector ``r``."""
        kind = int(r[Slot.KIND])
        if kind != Kind.ARRAY:
            return Plan(kind=kind)
        ndim = int(r[Slot.NDIM])
        code = int(r[Slot.DTYPE])
        dtype = DTYPES[code] if code >= 0 else self.comm.bcast(
            arr.dtype if arr is not None else None, root=root)
        return Plan(kind=kind, dtype=dtype, gshape=tuple(int(d) for d in r[Slot.SHAPE:Slot.SHAPE + ndim]))

    def _bcast_unchecked(self, obj: Any, root: int, problem: Problem | None,
                         arr: np.ndarray | None, kind: int) -> Any:
        raise_local(problem, "bcast")
        return fastpath.bcast_rest(self.comm, announce.announce(self.comm, root, kind, arr), obj, root)

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
        cls = value.__class__
        fkey = None
        if (cls is np.ndarray or cls in _SCALARS) and op.__class__ is str and not self.debug:
            # a repeat of a call validated before: only the agreement runs
            fkey = (call, root, op, cls, value.shape, value.dtype)
            got = self._reduced.get(fkey)
            if got is not None:
                v, vb, mop = got
                if v is not None and not self._a.same(v, vb):
                    return self._reduce_disagreed(value, v, mop, call, root)
                return self._reduce_array(value, cls, mop, root)
        problem = check_root(root, self.size) if root is not None else None
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
            elif arr.ndim > MAXDIM:
                problem = problem or ("ValueError",
                                      f"arrays of more than {MAXDIM} dimensions are not supported")
            elif problem is None:
                problem = _op_problem(op, mop, arr.dtype)
        v = None
        if not self.checks:
            raise_local(problem, Call(call).label)
        else:
            opcode = mop.py2f() if mop != MPI.OP_NULL else -1
            site = caller_site() if self.debug else None
            v = self._reduce_vector(call, root, opcode, kind, arr, problem, site)
            if kind == Kind.OBJECT and problem is None:
                put(v, Slot.DTYPE, object_code(value))
            if not self._a.same(v):
                heads = self._a.detail.detail(call, -1 if root is None else root, 0, problem, arr, None,
                                              kind=kind, op=opcode, site=site)
                kind = self._plan_reduce(call, heads)
                if kind == Kind.OBJECT:
                    self._check_objects(call, value)
        if kind == Kind.OBJECT:
            if root is None:
                return self.comm.allreduce(value, op=mop)
            return self.comm.reduce(value, op=mop, root=root)
        if fkey is not None and problem is None:
            self._reduced.put(fkey, (v, None if v is None else v.tobytes(), mop))
        return self._reduce_array(value, cls, mop, root)

    def _reduce_disagreed(self, value: Any, v: np.ndarray, mop: MPI.Op, call: int = _ALLREDUCE,
                          root: int | None = None) -> Any:
        """A repeated reduction whose agreement on ``v`` failed: raise on every rank (or reduce)."""
        self._plan_reduce(call, self._a.detail.detail(call, -1 if root is None else root, 0, None, value,
                                                      None, kind=Kind.ARRAY, op=int(v[Slot.OP])))
        return self._reduce_array(value, value.__class__, mop, root)

    def _reduce_array(self, value: Any, cls: type, mop: MPI.Op, root: int | None) -> Any:
        """Reduce an agreed array or NumPy scalar by buffer."""
        if cls is np.ndarray:
            send = value if value.flags.c_contiguous else value.copy()
        else:
            send = np.asarray(value)
        if root is None:
            recv = np.empty_like(send)
            self.comm.Allreduce(send, recv, mop)
        elif self.rank == root:
            recv = np.empty_like(send)
            self.comm.Reduce(send, recv, mop, root)
        else:
            self.comm.Reduce(send, None, mop, root)
            return None
        return recv if cls is np.ndarray else recv[()]

    @staticmethod
    def _reduce_vector(call: int, root: int | None, opcode: int, kind: int, arr: np.ndarray | None,
                       problem: Problem | None, site: str | None) -> np.ndarray:
        v = vector()
        put(v, Slot.CALL, call)
        put(v, Slot.ROOT, -1 if root is None else root if isinstance(root, (int, np.integer)) else -2)
        put(v, Slot.OP, opcode)
        put(v, Slot.KIND, kind)
        if site is not None:
            put(v, Slot.SITE, site_code(site))
        if problem is not None:
            v[Slot.PROBLEM] = 1
        elif arr is not None:
            put(v, Slot.DTYPE, dtype_code(arr.dtype))
            put(v, Slot.NDIM, arr.ndim)
            put_dims(v, arr.shape)
        return v

    def _check_objects(self, call: int, value: Any) -> None:
        """Raise on every rank when the ranks reduce Python objects of different kinds.

        **Collective**; only run when the agreement failed (an O(P) exchange of names).
        """
        kinds = self.comm.allgather((object_kind(value), type(value).__name__))
        if len({k for k, _ in kinds}) > 1:
            fail(f"hpcpar.{Call(call).label}",
                 "every rank must pass values that combine with each other (numbers with "
                 "numbers, str with str, ...); got "
                 + "; ".join(f"rank {r}: {name}" for r, (_, name) in enumerate(kinds)),
                 TypeError)

    def _plan_reduce(self, call: int, heads: list) -> int:
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
        return kinds.pop()

