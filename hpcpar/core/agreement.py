"""The agreement step of a checked collective: one fixed-size ``Allreduce``, whatever the rank count.

Before a checked collective moves data, every rank contributes one vector of
:data:`SIZE` signed 64-bit integers (520 bytes) to one ``MPI_Allreduce`` with
``MPI_MAX``. The vector has three kinds of slots (:class:`Slot`):

* **pairs** (``CALL``, ``ROOT``, ``OP``, ``KIND``, ``AXIS``, ``DTYPE``, ``NDIM``,
  ``DIM0..DIM3``, ``DIMS``, ``OUTLEN``, ``SITE``): a rank that has a value ``v``
  writes ``v`` in the pair's first half and ``-v`` in its second half; a rank that
  has none writes :data:`NONE` in both. After the ``MAX`` each rank holds the
  largest value and minus the smallest, so every rank sees the same answer to
  "do all ranks that have a value agree?": ``max == -max(-v)``.
* **maxima** (``PROBLEM``, ``CHANGED``, ``LO``, ``NHI``, ``DETAIL``): plain maxima (some rank
  found a problem with its own arguments; some rank's block count changed; the
  bounds that the ``out`` arrays of a scatter put on root's length).
* **root's geometry** (``SHAPE``, :data:`~hpcpar.core.protocol.MAXDIM` slots):
  written by root only, :data:`NONE` elsewhere, so the ``MAX`` delivers root's
  shape to every rank (a broadcast inside the same call).

Dimensions beyond the first four travel as a 59-bit hash (``DIMS``), as do
structured dtypes (a negative ``DTYPE`` code): equal values always agree, and
different values agree only by a hash collision.

Cost per checked call and rank: one ``Allreduce`` of 520 bytes, O(log P) time and
bytes, and no Python work that depends on P (the vector is built once per kind of
call and cached; the result is checked by a byte comparison or a cached plan).
Only when something disagrees (every rank sees that in the same result) do the
ranks fall back to :class:`~hpcpar.core.protocol.Exchange`: an ``Allgather`` of
every rank's full header, O(P), which builds the messages naming each rank.
"""

from __future__ import annotations

import hashlib
import numbers
import zlib
from typing import Any

import numpy as np
from mpi4py import MPI

from .cache import BoundedCache
from .protocol import DTYPES, MAXDIM, Exchange, Plan

__all__ = ["Slot", "NONE", "SIZE", "vector", "put", "put_dims", "dtype_code", "object_kind",
           "object_code", "agrees", "Agreement"]

#: The value of a slot that a rank has nothing to say about (the smallest int64).
NONE = int(np.iinfo(np.int64).min)


class Slot:
    """Positions in the agreement vector (plain ints: read on every call)."""

    CALL = 0  #: the :class:`~hpcpar.core.protocol.Call`
    ROOT = 1  #: the root rank, -1 for calls without one
    OP = 2  #: the reduction op's code (reductions)
    KIND = 3  #: the payload :class:`~hpcpar.core.protocol.Kind` (bcast: root only; reductions)
    AXIS = 4  #: the axis (as given on a scatter; normalised on a gather)
    DTYPE = 5  #: :func:`dtype_code` of the data (and of any ``out``)
    NDIM = 6  #: the number of dimensions of the data (and of any ``out``)
    DIM0 = 7  #: the dimensions that must agree: the first four here, the rest hashed in DIMS
    DIMS = 11  #: hash of the dimensions after the fourth (0 when none)
    OUTLEN = 12  #: an ``out`` array's length along the axis (gather: root's; allgather: every out)
    SITE = 13  #: debug mode: a code of the calling function
    NPAIR = 14  #: the number of pairs; a pair's negated half sits at ``slot + NPAIR``

    PROBLEM = 2 * NPAIR  #: 1 when some rank found a problem with its own arguments
    CHANGED = PROBLEM + 1  #: 1 when some rank's block count changed since the last such call
    LO = PROBLEM + 2  #: scatter: the smallest length of root's array that every ``out`` fits
    NHI = PROBLEM + 3  #: scatter: minus the largest such length
    DETAIL = PROBLEM + 4  #: 1 when a rank knows its call fails the checks, which then say why
    SHAPE = PROBLEM + 5  #: root's shape, MAXDIM slots (scatter and bcast)


#: Slots in the vector: 65 int64, 520 bytes.
SIZE = Slot.SHAPE + MAXDIM

_EXACT = 4  # dimensions that travel exactly; the rest are hashed
_TEMPLATE = np.full(SIZE, NONE, np.int64)
_TEMPLATE[Slot.PROBLEM] = 0
_TEMPLATE[Slot.CHANGED] = 0
_TEMPLATE[Slot.DETAIL] = 0


def vector() -> np.ndarray:
    """A fresh vector with every slot empty. **Local**."""
    return _TEMPLATE.copy()


def put(v: np.ndarray, slot: int, value: int) -> None:
    """Write ``value`` into pair ``slot`` of ``v`` (both halves). **Local**."""
    v[slot] = value
    v[slot + Slot.NPAIR] = -value


def _hash59(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 5


def put_dims(v: np.ndarray, dims: tuple[int, ...]) -> None:
    """Write the dimensions that must agree (the first four exactly, a hash of the rest)."""
    for i in range(_EXACT):
        put(v, Slot.DIM0 + i, dims[i] if i < len(dims) else -1)
    put(v, Slot.DIMS, _hash59(repr(dims[_EXACT:])) if len(dims) > _EXACT else 0)


_CODES: dict[np.dtype, int] = {}


def dtype_code(dt: np.dtype) -> int:
    """``dt.num`` for a builtin dtype; a negative 59-bit hash of its description otherwise."""
    code = _CODES.get(dt)
    if code is None:
        if dt.isbuiltin == 1 and dt.num in DTYPES and DTYPES[dt.num] == dt:
            code = dt.num
        else:
            code = -1 - _hash59(repr((dt.descr, dt.itemsize, dt.alignment)))
        if len(_CODES) < 1024:
            _CODES[dt] = code
    return code


#: Builtin families whose members combine with each other (``1 + 2.5``, ``{1} | frozenset()``).
_FAMILIES = ((numbers.Number, "number"), (str, "str"), ((bytes, bytearray), "bytes"),
             (list, "list"), (tuple, "tuple"), (dict, "dict"), ((set, frozenset), "set"))
_OBJECT_CODES: dict[type, int] = {}


def object_kind(value: Any) -> str:
    """The family of a Python object for reductions: "number", "str", ..., or its class name."""
    for types, family in _FAMILIES:
        if isinstance(value, types):
            return family
    cls = value.__class__
    return f"{cls.__module__}.{cls.__qualname__}"


def object_code(value: Any) -> int:
    """A code of :func:`object_kind`, the same on every rank (cached per class). **Local**."""
    cls = value.__class__
    code = _OBJECT_CODES.get(cls)
    if code is None:
        code = zlib.crc32(object_kind(value).encode())
        if len(_OBJECT_CODES) < 1024:
            _OBJECT_CODES[cls] = code
    return code


def agrees(r: np.ndarray) -> bool:
    """Whether every rank agrees in the reduced vector ``r`` (same answer on every rank). **Local**."""
    if r[Slot.PROBLEM] or r[Slot.DETAIL]:
        return False
    hi, neg = r[:Slot.NPAIR], r[Slot.NPAIR:2 * Slot.NPAIR]
    return not ((hi != NONE) & (hi + neg != 0)).any()


class Agreement:
    """The agreement step of one context, its caches, and the detailed fallback. **Collective** calls.

    Args:
        comm: the context's private communicator.
        debug: ranks also agree on the calling function (and say it in errors).

    Attributes:
        detail: the :class:`~hpcpar.core.protocol.Exchange` run when ranks disagree.
        plans: verified reduced vectors -> the plan they describe; identical on every
            rank (same keys, same order of insertion), so it also caches decisions.
        vectors: a call's local arguments -> its vector, for calls made before.
    """

    def __init__(self, comm: MPI.Intracomm, debug: bool):
        self.comm, self.debug = comm, debug
        self.detail = Exchange(comm, debug)
        self.result = np.empty(SIZE, np.int64)
        self.plans: BoundedCache[bytes, Any] = BoundedCache(128)
        self.vectors: BoundedCache[tuple, np.ndarray] = BoundedCache(256)
        self._allreduce = comm.Allreduce
        self._max = MPI.MAX

    def run(self, v: np.ndarray) -> np.ndarray:
        """Reduce this rank's vector ``v`` with every rank's; the result (a shared buffer). **Collective**."""
        self._allreduce(v, self.result, self._max)
        return self.result

    def same(self, v: np.ndarray, vb: bytes | None = None) -> bool:
        """Run ``v`` and return whether the ranks agree (:func:`agrees`). **Collective**.

        ``vb``: ``v.tobytes()`` when ``v`` has no problem and no DETAIL flag. Then the
        usual case, every rank sent exactly ``v``, is found by one byte comparison
        (it implies :func:`agrees`); the answer is the same on every rank.
        """
        r = self.result
        self._allreduce(v, r, self._max)
        if vb is not None and r.tobytes() == vb:
            return True
        return agrees(r)

    def plan_for(self, r: np.ndarray) -> tuple[bytes, Plan | None]:
        """The key of the reduced vector ``r`` and its cached plan (None: not seen yet)."""
        key = r.tobytes()
        return key, self.plans.get(key)
