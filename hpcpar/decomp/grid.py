"""A Cartesian process grid with halo (ghost-cell) exchange for stencil codes.

The geometry (local shapes, global slices, neighbours, halo regions) is the pure
:class:`hpcpar.partition.GridLayout`; :class:`Grid` adds the communication: a
Cartesian communicator, halo exchange with MPI subarray datatypes (no copies in
Python, no per-element loops), and scatter/gather of whole domains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from mpi4py import MPI

from ..core import watchdog
from ..core.agreement import Slot, agrees, dtype_code, put, vector
from ..core.context import Context
from ..errors import Problem, agree, agree_equal, attempt, fail, raise_problems
from ..observe.trace import EXCHANGE, traced
from . import partition

__all__ = ["Grid"]

#: Tag of the point-to-point messages of :meth:`Grid.scatter` and :meth:`Grid.gather`;
#: halo messages use tags ``0 .. 3**ndim - 1`` (the index of their offset).
_TAG_DOMAIN = 1 << 12


class Grid:
    """An N-d array decomposed in blocks over a Cartesian process grid, with halos.

    Creating a Grid is **collective** over ``ctx``: every rank passes the same
    arguments. The ranks first compare their arguments (one small ``allgather``),
    so arguments that differ between ranks, malformed arguments, or a shape too
    small for the process grid raise the same ``ValueError`` on every rank (a
    ``TypeError`` too for arguments of the wrong type).

    Args:
        ctx: the :class:`hpcpar.Context` whose ranks share the grid.
        shape: the global interior shape (1-D, 2-D or 3-D; more axes work too).
        dims: processes per axis; by default :func:`hpcpar.partition.dims_create`
            (balanced, non-increasing). Their product must be ``ctx.size``.
        periodic: one bool for all axes, or one per axis.
        halo: ghost-cell width on every side of every axis (>= 1). Every block
            must hold at least ``halo`` cells along an axis that exchanges.

    Attributes:
        ctx, shape, ndim, halo, periodic, dims: as given (normalised to tuples).
        comm: the Cartesian ``mpi4py`` communicator (``Create_cart``, not reordered:
            a rank's number is its ``ctx.rank``).
        rank: this rank in ``comm`` (the same as ``ctx.rank``).
        layout: the pure :class:`hpcpar.partition.GridLayout`.
        coords: this rank's process-grid coordinates.
        local_shape: this rank's interior shape (without halo).
        halo_shape: the shape of a local array with halo, ``local_shape + 2*halo``.
        global_slices: where this rank's interior sits in the global array.
        neighbors: per axis, ``(lower, upper)`` neighbour ranks, ``MPI.PROC_NULL`` at walls.
        world_ranks: the ``COMM_WORLD`` ranks a halo exchange of this rank waits for
            (its neighbours, diagonal ones included, and itself): the hang watchdog
            reads them.
    """

    def __init__(self, ctx: Context, shape: Sequence[int], dims: Sequence[int] | None = None,
                 periodic: bool | Sequence[bool] = False, halo: int = 1):
        if not isinstance(ctx, Context):
            fail("hpcpar.Grid", f"ctx must be an hpcpar.Context, got {ctx!r}", TypeError)
        mine, problem = attempt(_normalise, shape, dims, periodic, halo, ctx.size)
        agree(ctx.comm, "hpcpar.Grid", problem, name_ranks=True)
        agree_equal(ctx.comm, "hpcpar.Grid", mine, "shape, dims, periodic and halo",
                    lambda m: f"shape={m[0]}, dims={m[1]}, periodic={m[2]}, halo={m[3]}")
        assert mine is not None  # agree raised on every rank otherwise
        shape, dims, periodic, halo = mine
        layout, problem = attempt(partition.GridLayout, shape, dims, periodic, halo)
        raise_problems("hpcpar.Grid", [problem])  # the same on every rank: the arguments agree
        assert layout is not None  # raise_problems raised otherwise
        self.ctx = ctx
        self.layout: partition.GridLayout = layout
        self.shape: tuple[int, ...] = layout.shape
        self.ndim: int = layout.ndim
        self.dims: tuple[int, ...] = layout.dims
        self.periodic: tuple[bool, ...] = layout.periodic
        self.halo: int = layout.halo
        self.comm: MPI.Cartcomm = ctx.comm.Create_cart(list(self.dims), list(self.periodic),
                                                       reorder=False)
        self.rank: int = self.comm.Get_rank()
        self.coords: tuple[int, ...] = tuple(self.comm.Get_coords(self.rank))
        self.local_shape: tuple[int, ...] = layout.local_shape(self.coords)
        self.halo_shape: tuple[int, ...] = layout.halo_shape(self.coords)
        self.global_slices: tuple[slice, ...] = layout.global_slices(self.coords)
        self.neighbors: tuple[tuple[int, int], ...] = tuple(
            (MPI.PROC_NULL if lo is None else lo, MPI.PROC_NULL if hi is None else hi)
            for lo, hi in layout.neighbors(self.coords))
        self._interior = tuple(slice(self.halo, self.halo + n) for n in self.local_shape)
        self._offsets = layout.offsets(corners=True)
        self._tag = {o: i for i, o in enumerate(self._offsets)}
        self._plans: dict[tuple[np.dtype, bool], list] = {}
        # checked mode: the agreement vector of a fitting array, per (dtype, corners)
        self._vectors: dict[tuple[np.dtype, bool], np.ndarray] = {}
        self._reduced = vector()  # the Allreduce's receive buffer
        peers = {peer for off in self._offsets
                 if (peer := layout.neighbor(self.coords, off)) is not None}
        self.world_ranks: list[int] = sorted({ctx.world_ranks[r] for r in peers}
                                             | {ctx.world_ranks[self.rank]})
        self._pending: list[MPI.Request] | None = None
        self._pending_array: np.ndarray | None = None

    # ------------------------------------------------------------------ lifetime
    def free(self) -> None:
        """Release the Cartesian communicator and the datatypes. **Collective**; safe to call twice."""
        for plan in self._plans.values():
            for _, _, stype, _, rtype in plan:
                stype.Free()
                rtype.Free()
        self._plans.clear()
        if self.comm != MPI.COMM_NULL and not MPI.Is_finalized():
            self.comm.Free()

    def __enter__(self) -> Grid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        return (f"<hpcpar.Grid shape={self.shape} dims={self.dims} periodic={self.periodic} "
                f"halo={self.halo}; rank {self.rank} at {self.coords} owns "
                f"{self.local_shape} at {_fmt_slices(self.global_slices)}>")

    # ------------------------------------------------------------------ local arrays
    def zeros(self, dtype: npt.DTypeLike = float) -> np.ndarray:
        """A zero-filled local array with halo, shape :attr:`halo_shape`. **Local**."""
        return np.zeros(self.halo_shape, dtype)

    def empty(self, dtype: npt.DTypeLike = float) -> np.ndarray:
        """An uninitialised local array with halo, shape :attr:`halo_shape`. **Local**."""
        return np.empty(self.halo_shape, dtype)

    def interior(self, a: np.ndarray) -> np.ndarray:
        """The view of ``a`` without its halo (shape :attr:`local_shape`). **Local**."""
        self._check_local(a, "interior")
        return a[self._interior]

    # ------------------------------------------------------------------ halo exchange
    @watchdog.marked("Grid.exchange", span=False)
    def exchange(self, a: np.ndarray, corners: bool = True) -> np.ndarray:
        """Fill the ghost cells of ``a`` from the neighbouring ranks. **Collective** over the grid.

        With ``corners`` (the default) edge and corner ghost cells come from the
        diagonal neighbours too, so a 9-point (or 27-point) stencil is correct
        after one call; ``corners=False`` exchanges faces only (enough for a
        5-point stencil, and fewer messages). Periodic axes wrap around. Ghost
        cells beyond a non-periodic wall are never written: they keep whatever
        the rank put there (boundary values, say).

        Args:
            a: a C-contiguous local array of shape :attr:`halo_shape` (see
                :meth:`zeros`); any dtype without Python objects.
            corners: also exchange with diagonal neighbours; every rank passes
                the same value.

        Returns:
            ``a``, its ghost cells filled.

        Raises:
            ValueError: on every rank, when the ranks' dtypes or ``corners`` differ,
                or some rank's array does not fit its block (on the exchanges that
                are checked; see below). RuntimeError when an exchange begun with
                :meth:`exchange_begin` is still pending.

        The first exchange of each dtype and ``corners`` value is checked across the
        ranks before any message moves (one ``Allreduce`` of a fixed-size vector, 520
        bytes, whatever the number of ranks). A grid that exchanges one kind of array
        (the usual stencil code) pays nothing more. With checks on (the context's
        ``checks``, the default), once a grid has exchanged more than one kind, every
        exchange is checked (the vector cached per kind), so a rank that switches to
        another dtype it has exchanged before is caught at that exchange. Unchecked
        (``HPCPAR_CHECKS=0``), every rank must switch to a new dtype at the same
        exchange; a later array that does not fit raises on its own rank only (the
        job's runner then ends the job), as with one kind checked.
        """
        self.exchange_begin(a, corners)
        self.exchange_end()
        return a

    @watchdog.marked("Grid.exchange_begin", span=False)
    @traced(EXCHANGE, "exchange_begin", lambda self, a, corners=True: self._sent(a, corners))
    def exchange_begin(self, a: np.ndarray, corners: bool = True) -> None:
        """Start filling the ghost cells of ``a``; return at once. **Collective** over the grid.

        The messages travel while this rank computes. Until :meth:`exchange_end`
        returns, do not write the cells within ``halo`` of the interior's edge (they
        are being sent) and do not read the ghost cells (they are being received);
        updating the deep interior into another array is the intended use. One
        exchange may be pending per Grid. Arguments as for :meth:`exchange`.
        """
        if self._pending is not None:
            raise RuntimeError("hpcpar.Grid.exchange_begin: an exchange is already pending on "
                               f"rank {self.rank}; call exchange_end() first")
        plan = self._plans.get((a.dtype, corners)) if isinstance(a, np.ndarray) else None
        if self.ctx.checks and len(self._plans) > 1:
            # several kinds exchanged: check every exchange (one rank may switch alone)
            self._agree_layout(a, corners)
            if plan is None:
                plan = self._plan(a.dtype, corners)
        elif plan is None:
            if not self._plans:  # the first exchange: every rank checks, also a misfit
                self._agree_layout(a, corners)
            self._check_local(a, "exchange_begin", contiguous=True)
            if self._plans:
                self._agree_layout(a, corners)
            plan = self._plan(a.dtype, corners)
        else:
            self._check_local(a, "exchange_begin", contiguous=True)
        reqs = []
        for peer, rtag, _, _, rtype in plan:
            reqs.append(self.comm.Irecv([a, 1, rtype], peer, rtag))
        for peer, _, stype, stag, _ in plan:
            reqs.append(self.comm.Isend([a, 1, stype], peer, stag))
        self._pending = reqs
        self._pending_array = a

    def _agree_layout(self, a: Any, corners: bool) -> None:
        """Check that every rank exchanges an array that fits, of the same dtype. **Collective**.

        One ``Allreduce`` of the agreement vector (:mod:`hpcpar.core.agreement`), cached
        per dtype and ``corners`` for arrays that fit: when every rank sent the same
        vector the result equals it (one byte comparison). Only when the ranks disagree
        are their dtypes gathered to name them (O(P), error path). While it waits, the
        hang watchdog counts every rank of the grid as one this exchange depends on.
        """
        key = (a.dtype, bool(corners)) if isinstance(a, np.ndarray) else None
        v = self._vectors.get(key) if key is not None else None
        if v is not None and (a.shape != self.halo_shape or not a.flags.c_contiguous):
            v = None  # this array does not fit: the full checks say why
        if v is not None:
            if self._reduce(v).tobytes() == v.tobytes():
                return
            self._disagree(a, corners, None)
            return
        problem: Problem | None = None
        if not isinstance(a, np.ndarray):
            problem = "TypeError", f"expected a NumPy array, got {type(a).__name__}"
        elif a.shape != self.halo_shape:
            problem = ("ValueError", f"array of shape {a.shape} does not fit its local shape with "
                       f"halo {self.halo_shape}; make it with grid.zeros() or grid.empty()")
        elif not a.flags.c_contiguous or a.dtype.hasobject:
            problem = ("ValueError", f"the array must be C-contiguous and hold no Python objects "
                       f"(got dtype {a.dtype}, C-contiguous={a.flags.c_contiguous})")
        v = vector()
        put(v, Slot.CALL, 1)
        put(v, Slot.KIND, int(bool(corners)))
        if problem is None:
            put(v, Slot.DTYPE, dtype_code(a.dtype))
            put(v, Slot.NDIM, a.ndim)
        else:
            v[Slot.PROBLEM] = 1
        if agrees(self._reduce(v)):
            if problem is None and key is not None:
                self._vectors[key] = v
            return
        self._disagree(a, corners, problem)

    def _reduce(self, v: np.ndarray) -> np.ndarray:
        """Every rank's agreement vector ``v`` reduced (``MAX``), in a buffer of this grid.
        **Collective**; meanwhile the hang watchdog counts every rank of the grid as one
        this exchange depends on, not only the neighbours."""
        neighbours, self.world_ranks = self.world_ranks, self.ctx.world_ranks
        try:
            self.comm.Allreduce(v, self._reduced, MPI.MAX)
        finally:
            self.world_ranks = neighbours
        return self._reduced

    def _disagree(self, a: Any, corners: bool, problem: Problem | None) -> None:
        """The ranks' vectors differ: raise, naming each rank's problem or dtype. **Collective**."""
        where = "hpcpar.Grid.exchange"
        agree(self.comm, where, problem, name_ranks=True)
        agree_equal(self.comm, where, (getattr(a, "dtype", None), bool(corners)), "dtype and corners",
                    lambda m: f"dtype {m[0]}, corners={m[1]}")

    @watchdog.marked("Grid.exchange_end", span=False)
    @traced(EXCHANGE, "exchange_end")
    def exchange_end(self) -> np.ndarray | None:
        """Wait for the exchange started by :meth:`exchange_begin`. **Collective** over the grid.

        Returns:
            The array whose ghost cells are now filled (None if nothing was pending).
        """
        reqs, a = self._pending, self._pending_array
        self._pending = self._pending_array = None
        if reqs:
            MPI.Request.Waitall(reqs)
        return a

    def _sent(self, a: np.ndarray, corners: bool) -> tuple[int, int, int]:
        """(bytes sent, neighbours, -1) of an exchange of ``a``: the trace's details."""
        plan = self._plans.get((a.dtype, corners), []) if isinstance(a, np.ndarray) else []
        return sum(p[2].Get_size() for p in plan), len(plan), -1  # (none for a refused exchange)

    def _plan(self, dtype: np.dtype, corners: bool) -> list:
        """Per neighbour: (peer, recv tag, send type, send tag, recv type); built once per dtype."""
        key = (dtype, corners)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        lay, coords = self.layout, self.coords
        plan = []
        for off in lay.offsets(corners):
            peer = lay.neighbor(coords, off)
            if peer is None:
                continue
            send, recv = lay.halo_regions(coords, off)
            back = tuple(-o for o in off)
            # The message to the neighbour at `off` carries tag(off); the one that
            # fills the ghost cells facing `off` comes from there with tag(-off).
            plan.append((peer, self._tag[back], self._subarray(self.halo_shape, send, dtype),
                         self._tag[off], self._subarray(self.halo_shape, recv, dtype)))
        self._plans[key] = plan
        return plan

    @staticmethod
    def _subarray(shape: Sequence[int], region: Sequence[slice], dtype: np.dtype) -> MPI.Datatype:
        """A committed MPI datatype for ``array[region]`` of a C-ordered array, counted in bytes."""
        sizes = list(shape)
        subsizes = [s.stop - s.start for s in region]
        starts = [s.start for s in region]
        isz = dtype.itemsize
        sizes[-1] *= isz
        subsizes[-1] *= isz
        starts[-1] *= isz
        return MPI.BYTE.Create_subarray(sizes, subsizes, starts, order=MPI.ORDER_C).Commit()

    # ------------------------------------------------------------------ whole domains
    def scatter(self, array: np.ndarray | None, root: int = 0) -> np.ndarray:
        """Split root's global array into the ranks' blocks. **Collective**.

        Args:
            array: on root, an array of the global :attr:`shape` (any dtype without
                Python objects); ignored on other ranks (pass None).
            root: the rank holding ``array``.

        Returns:
            On every rank a new local array with halo (shape :attr:`halo_shape`,
            root's dtype): the interior holds this rank's block, ghost cells are 0.

        Raises:
            ValueError: on every rank, when root's array is missing or its shape
                is not the grid's.
        """
        with watchdog.watching("Grid.scatter", self._peers(root)):
            return self._scatter(array, root)

    def _scatter(self, array: np.ndarray | None, root: int) -> np.ndarray:
        where = "hpcpar.Grid.scatter"
        self._check_root(root, where)
        problem: Problem | None = None
        dtype = None
        if self.rank == root:
            if not isinstance(array, np.ndarray):
                problem = ("TypeError",
                           f"root's array must be a NumPy array, got {type(array).__name__}")
            elif array.shape != self.shape:
                problem = ("ValueError", f"root's array has shape {array.shape}, the grid's shape "
                           f"is {self.shape}")
            elif array.dtype.hasobject:
                problem = ("TypeError",
                           f"root's array has dtype {array.dtype}, which holds Python objects")
            else:
                dtype = array.dtype
        problem, dtype = self.comm.bcast((problem, dtype), root=root)
        raise_problems(where, [problem if r == root else None for r in range(self.ctx.size)])
        local = self.zeros(dtype)
        itype = self._subarray(self.halo_shape, self._interior, dtype)
        try:
            if self.rank != root:
                self.comm.Recv([local, 1, itype], root, _TAG_DOMAIN)
                return local
            src = np.ascontiguousarray(array)
            local[self._interior] = src[self.global_slices]
            self._root_transfer(src, dtype, root, send=True)
            return local
        finally:
            itype.Free()

    def gather(self, a: np.ndarray, root: int = 0) -> np.ndarray | None:
        """Assemble the ranks' interiors into the global array on root. **Collective**.

        Args:
            a: this rank's local array, with halo (:attr:`halo_shape`) or without
                (:attr:`local_shape`); every rank passes the same dtype.
            root: the rank that receives the global array.

        Returns:
            On root a new array of the global :attr:`shape`; None on other ranks.

        Raises:
            ValueError: on every rank, when some rank's array has the wrong shape
                or the dtypes differ between ranks.
        """
        with watchdog.watching("Grid.gather", self._peers(root)):
            return self._gather(a, root)

    def _gather(self, a: np.ndarray, root: int) -> np.ndarray | None:
        where = "hpcpar.Grid.gather"
        self._check_root(root, where)
        problem: Problem | None = None
        if not isinstance(a, np.ndarray):
            problem = "TypeError", f"expected a NumPy array, got {type(a).__name__}"
        elif a.shape not in (self.halo_shape, self.local_shape):
            problem = ("ValueError", f"array of shape {a.shape} fits neither the local shape with "
                       f"halo {self.halo_shape} nor without {self.local_shape}")
        elif a.dtype.hasobject:
            problem = "TypeError", f"dtype {a.dtype} holds Python objects"
        agree(self.comm, where, problem, name_ranks=True)
        dtype = a.dtype
        agree_equal(self.comm, where, dtype, "dtype")
        block = a[self._interior] if a.shape == self.halo_shape else a
        if self.rank != root:
            self.comm.Send([np.ascontiguousarray(block), MPI.BYTE], root, _TAG_DOMAIN)
            return None
        out = np.empty(self.shape, dtype)
        out[self.global_slices] = block
        self._root_transfer(out, dtype, root, send=False)
        return out

    def _root_transfer(self, full: np.ndarray, dtype: np.dtype, root: int, send: bool) -> None:
        """Root's side of scatter/gather: one message per other rank, by subarray datatype."""
        lay = self.layout
        reqs, types = [], []
        try:
            for r in range(self.ctx.size):
                if r == root:
                    continue
                region = lay.global_slices(lay.coords(r))
                t = self._subarray(self.shape, region, dtype)
                types.append(t)
                if send:
                    reqs.append(self.comm.Isend([full, 1, t], r, _TAG_DOMAIN))
                else:
                    reqs.append(self.comm.Irecv([full, 1, t], r, _TAG_DOMAIN))
            MPI.Request.Waitall(reqs)
        finally:
            for t in types:
                t.Free()

    # ------------------------------------------------------------------ checks
    def _peers(self, root: Any) -> Any:
        """The ranks scatter/gather waits for: every rank on root, root elsewhere (watchdog)."""
        world = self.ctx.world_ranks
        if root == self.rank or not isinstance(root, int) or not 0 <= root < len(world):
            return self.ctx
        return watchdog.Peers([world[self.rank], world[root]])

    def _check_root(self, root: object, where: str) -> None:
        """Raise when ``root`` is not a rank; every rank passes the same root, so all raise alike."""
        if not (isinstance(root, (int, np.integer)) and not isinstance(root, bool)
                and 0 <= root < self.ctx.size):
            fail(where, f"root={root!r} is not a rank of this {self.ctx.size}-rank grid",
                 ValueError if isinstance(root, (int, np.integer)) else TypeError)

    def _check_local(self, a: object, where: str, contiguous: bool = False) -> None:
        if not isinstance(a, np.ndarray) or a.shape != self.halo_shape:
            got = f"shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(
                f"hpcpar.Grid.{where}: rank {self.rank} expects a local array with halo of shape "
                f"{self.halo_shape}, got {got}; make it with grid.zeros() or grid.empty()")
        if contiguous and (not a.flags.c_contiguous or a.dtype.hasobject):
            raise ValueError(
                f"hpcpar.Grid.{where}: rank {self.rank}: the array must be C-contiguous and hold "
                f"no Python objects (got dtype {a.dtype}, C-contiguous={a.flags.c_contiguous})")


def _normalise(shape: Any, dims: Any, periodic: Any, halo: Any,
               size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[bool, ...], int]:
    """(shape, dims, periodic, halo) as plain tuples/ints; TypeError or ValueError when unusable."""
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"shape must hold one or more positive ints, got {shape}")
    if dims is None:
        dims = partition.dims_create(size, len(shape))
    else:
        try:
            dims = tuple(int(d) for d in dims)
        except (TypeError, ValueError):
            raise TypeError(f"dims must be a sequence of ints, got {dims!r}") from None
        if len(dims) != len(shape) or any(d < 1 for d in dims):
            raise ValueError(f"dims {dims} must hold one positive int per axis of shape {shape}")
        prod = 1
        for d in dims:
            prod *= d
        if prod != size:
            raise ValueError(f"dims {dims} make a grid of {prod} processes, but the context has "
                             f"{size} ranks; pass dims whose product is the number of ranks, or "
                             "dims=None")
    try:
        periodic = tuple(bool(p) for p in periodic)
    except TypeError:
        periodic = (bool(periodic),) * len(shape)
    if len(periodic) != len(shape):
        raise ValueError(f"periodic {periodic} must be one bool or one per axis of shape {shape}")
    if not isinstance(halo, (int, np.integer)) or isinstance(halo, bool):
        raise TypeError(f"halo must be an int >= 1, got {halo!r}")
    if halo < 1:
        raise ValueError(f"halo must be an int >= 1, got {halo!r}")
    return shape, dims, periodic, int(halo)


def _fmt_slices(slices: Sequence[slice]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in slices) + "]"
