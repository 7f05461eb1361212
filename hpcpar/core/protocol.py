"""The checked-call protocol: calls, payload kinds, plans, and the detailed header exchange.

A checked collective first runs the fixed-size agreement of
:mod:`hpcpar.core.agreement` (one ``Allreduce``, O(log P)). When that shows that the
ranks disagree, or that some rank has a problem with its own arguments, every rank
runs :class:`Exchange`: an ``Allgather`` of one full header per rank
(:class:`Field` lists its slots, 592 bytes), and the same checks on the same
headers (:meth:`Exchange.check`), so the same error, naming what each rank passed,
is raised on **every** rank. That path is O(P) and taken only on the way to an error
(or for the rare call that disagrees harmlessly, such as ``axis=-1`` on one rank
and ``axis=1`` on another).
"""

from __future__ import annotations

import math
import operator
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from mpi4py import MPI

from ..errors import CollectiveMismatchError, Problem, raise_problems
from .callsite import site_code

__all__ = ["Call", "Kind", "Field", "MAXDIM", "NO_ARRAY", "CUSTOM", "DTYPES", "OPS", "Plan",
           "Exchange", "pack", "unpack", "shape_of", "call_desc", "describe", "fast_key", "Head"]

#: Reduction operations accepted by name in :meth:`Context.reduce` / :meth:`Context.allreduce`.
OPS = {
    "sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX,
    "land": MPI.LAND, "lor": MPI.LOR, "lxor": MPI.LXOR,
    "band": MPI.BAND, "bor": MPI.BOR, "bxor": MPI.BXOR,
}
_OPNAMES = {op.py2f(): name for name, op in OPS.items()}


class Call(IntEnum):
    """The collective a header announces.

    Hot paths pass the plain ``int`` (``int(Call.SCATTER)``): the values key
    caches looked up on every call, and an enum member hashes several times slower.
    """

    SCATTER = 1
    GATHER = 2
    ALLGATHER = 3
    BCAST = 4
    REDUCE = 5
    ALLREDUCE = 6
    BARRIER = 7
    FINISH = 8  #: the runner's final check: this rank returned from main

    @property
    def label(self) -> str:
        """The public name: ``"scatter"``, ..., ``"finish"`` (the watchdog's FINISH)."""
        return self.name.lower()

    @property
    def reduces(self) -> bool:
        """Whether the ranks must also agree on the reduction op."""
        return self in (Call.REDUCE, Call.ALLREDUCE)


_CALL_VALUES = frozenset(int(c) for c in Call)


class Kind:
    """What a rank passes to bcast or a reduction (plain ints: read on every call)."""

    NONE = 0  #: nothing (bcast on a rank other than root)
    ARRAY = 1  #: a NumPy array or scalar, travelling by buffer
    OBJECT = 2  #: any other object, pickled


#: The most dimensions an array in a checked collective may have.
MAXDIM = 32


class Field:
    """The slots of a header: one signed 64-bit int each, every slot meaning one thing.

    Plain int constants (class attributes read on every call), not an enum.
    """

    CALL = 0  #: a :class:`Call`
    ROOT = 1  #: the root rank, -1 for calls without one
    PROBLEM = 2  #: 1 when this rank found a problem with its own arguments
    AXIS = 3  #: the axis argument as given (0 when not an int)
    KIND = 4  #: a :class:`Kind` (bcast and reductions)
    OP = 5  #: the reduction op (``MPI.Op.py2f()``, -1 when unusable)
    NDIM = 6  #: dimensions of the array, -1 for none
    DTYPE = 7  #: dtype code of the array (:data:`DTYPES`, :data:`CUSTOM`, :data:`NO_ARRAY`)
    ONDIM = 8  #: dimensions of ``out``, -1 for none
    ODTYPE = 9  #: dtype code of ``out``
    SITE = 10  #: debug mode: a code of the calling function; 0 when debug mode is off
    SHAPE = 11  #: the array's shape, MAXDIM slots
    OSHAPE = 11 + MAXDIM  #: the shape of ``out``, MAXDIM slots


_HEADER = struct.Struct(f"={Field.OSHAPE + MAXDIM}q")
_PAD = (0,) * MAXDIM

NO_ARRAY = -2  #: dtype code: this rank passes no array
CUSTOM = -1  #: dtype code: a structured or non-native dtype, agreed by a second exchange

#: dtype code (``dtype.num``) -> dtype, for every builtin dtype without Python objects.
DTYPES: dict[int, np.dtype] = {}
for _t in set(np.sctypeDict.values()):
    _d = np.dtype(_t)
    if _d.isbuiltin == 1 and not _d.hasobject:
        DTYPES[_d.num] = _d


def _code(dt: np.dtype | None) -> int:
    if dt is None:
        return NO_ARRAY
    return dt.num if dt.isbuiltin == 1 and dt.num in DTYPES else CUSTOM


Head = tuple[int, ...]


def pack(call: int, root: Any, axis: Any, problem: bool, arr: np.ndarray | None,
         out: np.ndarray | None, kind: int = 0, op: int = 0, site: int = 0) -> bytes:
    """One rank's header as bytes. **Local**; arrays have at most :data:`MAXDIM` dimensions."""
    ndim, shape = (arr.ndim, arr.shape) if arr is not None else (-1, ())
    ondim, oshape = (out.ndim, out.shape) if out is not None else (-1, ())
    root = int(root) if isinstance(root, (int, np.integer)) else -1
    axis = operator.index(axis) if hasattr(axis, "__index__") else 0
    return _HEADER.pack(
        call, root, 1 if problem else 0, axis, kind, op, ndim,
        _code(arr.dtype if arr is not None else None), ondim,
        _code(out.dtype if out is not None else None), site,
        *shape, *_PAD[max(ndim, 0):], *oshape, *_PAD[max(ondim, 0):])


def unpack(raw: bytes, rank: int | None = None) -> Any:
    """Every rank's header from the exchanged bytes, or only ``rank``'s. **Local**."""
    n = _HEADER.size
    if rank is not None:
        return _HEADER.unpack_from(raw, rank * n)
    return [_HEADER.unpack_from(raw, r * n) for r in range(len(raw) // n)]


def shape_of(h: Head, out: bool = False) -> tuple[int, ...]:
    """The array's shape in header ``h`` (``out``'s with ``out=True``); () for none."""
    if out:
        return tuple(h[Field.OSHAPE:Field.OSHAPE + h[Field.ONDIM]]) if h[Field.ONDIM] >= 0 else ()
    return tuple(h[Field.SHAPE:Field.SHAPE + h[Field.NDIM]]) if h[Field.NDIM] >= 0 else ()


def describe(shape: tuple[int, ...], dtype: Any) -> str:
    """``float64[4, 2]``: an array's dtype and shape, for messages."""
    return f"{dtype}{list(shape)}"


def call_desc(h: Head) -> str:
    """The call in header ``h`` as a user wrote it, e.g. ``reduce(root=0, float64, op=sum)``."""
    if h[Field.CALL] == Call.FINISH:
        return "returned from main (finished)"
    name = Call(h[Field.CALL]).label if h[Field.CALL] in _CALL_VALUES else "?"
    root = "" if h[Field.ROOT] < 0 else f"root={h[Field.ROOT]}"
    dt = DTYPES.get(h[Field.DTYPE])
    op = (f"op={_OPNAMES.get(h[Field.OP], h[Field.OP])}"
          if h[Field.CALL] in (Call.REDUCE, Call.ALLREDUCE) else "")
    parts = [p for p in (root, str(dt) if dt is not None else "", op) if p]
    return f"{name}({', '.join(parts)})"


def fast_key(call: int, root: Any, axis: Any, arr: Any, out: Any, debug: bool) -> tuple | None:
    """A key for the local arguments of a scatter/gather call, or None when the call
    must take the full checks (debug mode, or arguments that are not plain arrays).

    Validation depends only on what the key holds, so a key seen before with a
    valid call needs no new local checks; the agreement step still runs.
    """
    if debug or not isinstance(axis, (int, np.integer)) or not (
            root is None or isinstance(root, (int, np.integer))):
        return None  # an unhashable root or axis, say, gets the full checks' message
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


@dataclass(slots=True)
class Plan:
    """The validated geometry of one call, cached by its exchanged headers.

    Attributes:
        axis: the normalised axis (scatter/gather calls).
        kind: the payload :class:`Kind` (bcast and reductions).
        dtype: the dtype of the data.
        shapes: each rank's block shape.
        gshape: the whole array's shape.
        bcounts, bdispls: each rank's block size and offset, in bytes.
    """

    axis: int = 0
    kind: int = 0  # Kind.NONE
    dtype: Any = None
    shapes: list = field(default_factory=list)
    gshape: tuple = ()
    bcounts: list = field(default_factory=list)
    bdispls: list = field(default_factory=list)

    @classmethod
    def blocks(cls, axis: int, dtype: np.dtype, counts: list[int] | tuple[int, ...],
               shape: tuple[int, ...]) -> Plan:
        """The plan of blocks of ``counts[r]`` rows along ``axis`` of an array like ``shape``."""
        rest = shape[:axis] + shape[axis + 1:]
        row = dtype.itemsize * math.prod(rest)
        bcounts = [c * row for c in counts]
        displs, acc = [], 0
        for c in bcounts:
            displs.append(acc)
            acc += c
        return cls(axis=axis, dtype=dtype,
                   shapes=[shape[:axis] + (c,) + shape[axis + 1:] for c in counts],
                   gshape=shape[:axis] + (sum(counts),) + shape[axis + 1:],
                   bcounts=bcounts, bdispls=displs)


class Exchange:
    """The detailed exchange: every rank's full header, and the checks that name each rank.

    **Collective** calls; O(P) bytes per rank. Run only after the fixed-size
    agreement (:mod:`hpcpar.core.agreement`) found that something disagrees, or that
    some rank has a problem: then every rank runs it, and its messages name what
    each rank passed.

    Args:
        comm: the context's private communicator.
        debug: the headers also carry (a code of) the calling function.
    """

    def __init__(self, comm: MPI.Intracomm, debug: bool):
        self.comm, self.debug = comm, debug

    def detail(self, call: int, root: Any, axis: Any, problem: Problem | None,
               arr: np.ndarray | None, out: Any, kind: int = 0, op: int = 0,
               site: str | None = None) -> list[Head]:
        """Exchange every rank's full header; raise on every rank if anything is wrong.

        Args:
            call: the :class:`Call`, as a plain int.
            root, axis: the arguments as the user passed them.
            problem: what this rank found wrong with its own arguments, or None.
            arr, out: the data and output arrays (None for none).
            kind, op: the :class:`Kind` and reduction op code (bcast and reductions).
            site: debug mode: this rank's calling function.

        Returns every rank's header, for checks that depend on the call (the plan builders).
        """
        isout = isinstance(out, np.ndarray)
        if problem is None and ((arr is not None and arr.ndim > MAXDIM) or (isout and out.ndim > MAXDIM)):
            problem = ("ValueError", f"arrays of more than {MAXDIM} dimensions are not supported")
        if problem is not None:
            arr, isout = None, False
        hdr = pack(call, root, axis, problem is not None, arr, out if isout else None,
                   kind, op, site_code(site))
        raw = bytearray(_HEADER.size * self.comm.Get_size())
        self.comm.Allgather([hdr, MPI.BYTE], [raw, MPI.BYTE])
        return self.check(call, bytes(raw), problem, site)

    def check(self, call: int, raw: bytes, problem: Problem | None,
              site: str | None) -> list[Head]:
        """The checks every rank runs on the exchanged headers; raises the same error everywhere."""
        heads = unpack(raw)
        call = Call(call)
        if any(h[Field.PROBLEM] for h in heads):
            raise_problems(f"hpcpar.{call.label}", self.comm.allgather(problem), name_ranks=True)
        first = heads[0]
        if any(h[Field.CALL] != first[Field.CALL] or h[Field.ROOT] != first[Field.ROOT]
               or (call.reduces and h[Field.OP] != first[Field.OP]) for h in heads):
            sites = self._sites(heads, site)
            raise CollectiveMismatchError(
                "hpcpar: ranks are in different collectives: "
                + "; ".join(f"rank {r}: {call_desc(h)}{sites[r]}" for r, h in enumerate(heads))
                + ". Every rank must make the same collective calls in the same order; "
                "a collective inside `if ctx.rank == ...:`, or a rank that returned early, "
                "is the usual cause.")
        if all(h[Field.SITE] for h in heads) and any(h[Field.SITE] != first[Field.SITE] for h in heads):
            sites = self._sites(heads, site)
            raise CollectiveMismatchError(
                f"hpcpar.{call.label} (debug mode): ranks reached this collective from "
                "different functions: "
                + "; ".join(f"rank {r}: {call_desc(h)}{sites[r]}" for r, h in enumerate(heads))
                + ". Usually some ranks skipped a collective (or made an extra one) earlier, "
                "so this call pairs up calls that were meant to be different.")
        return heads

    def _sites(self, heads: list[Head], site: str | None) -> list[str]:
        """Each rank's caller (debug mode), for error messages; one pickled exchange."""
        if not any(h[Field.SITE] for h in heads):
            return [""] * len(heads)
        return [f" from {s}" if s else "" for s in self.comm.allgather(site)]

    def dtypes(self, heads: list[Head], arr: np.ndarray | None,
               out: Any) -> list[tuple[np.dtype | None, np.dtype | None]]:
        """(array dtype, out dtype) of every rank; one pickled exchange for custom dtypes."""
        if any(h[Field.DTYPE] == CUSTOM or h[Field.ODTYPE] == CUSTOM for h in heads):
            return self.comm.allgather((None if arr is None else arr.dtype,
                                        out.dtype if isinstance(out, np.ndarray) else None))
        return [(DTYPES.get(h[Field.DTYPE]), DTYPES.get(h[Field.ODTYPE])) for h in heads]
