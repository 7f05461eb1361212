"""Root's geometry, and small payloads, in one fixed-size ``Bcast``: the unchecked bcast and scatter.

Without the agreement step, ranks other than root still need to know the shape
and dtype of what root sends. Root broadcasts one message of :data:`SIZE` bytes
(4 KiB): a header of :data:`HEADER` int64 slots (kind, dtype code, ndim, axis,
payload length, shape) followed by the payload itself when it fits
(:data:`INLINE` bytes or less). A small bcast is therefore one ``Bcast``, as a raw
mpi4py call with a known shape is; a small scatter is one ``Bcast`` of the whole
array, from which every rank takes its block. A larger payload follows in a
second call. Structured dtypes travel pickled in one more ``Bcast``.

The header is always written whole (dimensions past ``ndim`` are zero), so the
same geometry gives the same :data:`HEADER_BYTES` bytes on every call: the
unchecked fast path (:mod:`hpcpar.core.unchecked`) keeps a header per geometry
on root and recognises one seen before on the other ranks by those bytes.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from mpi4py import MPI

from .protocol import DTYPES, MAXDIM

__all__ = ["SIZE", "HEADER", "HEADER_BYTES", "INLINE", "Announcement", "announce", "header", "parse",
           "builtin"]

#: Bytes of every announcement.
SIZE = 4096
#: int64 slots before the payload: kind, dtype code, ndim, axis, payload bytes (-1: not
#: inline), then MAXDIM dimensions.
HEADER = 5 + MAXDIM
#: Bytes of the header.
HEADER_BYTES = 8 * HEADER
#: The largest payload that travels inside the announcement.
INLINE = SIZE - HEADER_BYTES

_HEAD = struct.Struct(f"=5q{MAXDIM}q")
_PAD = (0,) * MAXDIM


class Announcement:
    """What root announced: kind, dtype, shape, axis, and the payload when it was inline."""

    __slots__ = ("kind", "dtype", "shape", "axis", "payload", "inline")

    def __init__(self, kind: int, dtype: np.dtype | None, shape: tuple[int, ...], axis: int,
                 payload: np.ndarray | None, inline: bool):
        self.kind, self.dtype, self.shape, self.axis = kind, dtype, shape, axis
        #: root's array (on root), or its copy when it travelled inline, else None
        self.payload = payload
        #: whether the payload travelled inside the announcement (the same on every rank)
        self.inline = inline


def header(kind: int, arr: np.ndarray | None, axis: int = 0, inline: bool = True) -> bytes:
    """The :data:`HEADER_BYTES` header announcing ``arr`` (None: no array). **Local**.

    The payload travels inline when ``inline`` and it fits; a dtype that is not one
    of :data:`~hpcpar.core.protocol.DTYPES` has code -1 (it follows pickled).
    """
    if arr is None:
        return _HEAD.pack(kind, 0, -1, axis, -1, *_PAD)
    dt = arr.dtype
    custom = not (dt.isbuiltin == 1 and DTYPES.get(dt.num) == dt)
    n = arr.nbytes if inline and arr.nbytes <= INLINE else -1
    return _HEAD.pack(kind, -1 if custom else dt.num, arr.ndim, axis, n, *(arr.shape + _PAD)[:MAXDIM])


def announce(comm: MPI.Intracomm, root: int, kind: int = 0, arr: np.ndarray | None = None,
             axis: int = 0, inline: bool = True) -> Announcement:
    """Broadcast root's kind, ``arr``'s dtype and shape, and ``arr`` itself when small. **Collective**.

    Only root's arguments are read. With ``inline=False`` the payload never travels
    inside (the caller moves it itself). On root the announcement's payload is
    ``arr``; elsewhere it is a new array holding the received bytes (None when the
    payload did not fit).
    """
    buf = bytearray(SIZE)
    if comm.Get_rank() != root:
        comm.Bcast(buf, root=root)
        return parse(comm, root, buf)
    head = header(kind, arr, axis, inline)
    buf[:HEADER_BYTES] = head
    if arr is None:
        comm.Bcast(buf, root=root)
        return Announcement(kind, None, (), axis, None, False)
    n = _HEAD.unpack_from(head)[4]
    if n > 0:
        flat = arr if arr.flags.c_contiguous and arr.ndim else np.ascontiguousarray(arr).reshape(-1)
        try:
            buf[HEADER_BYTES:HEADER_BYTES + n] = flat.data.cast("B")
        except (TypeError, ValueError):  # formats memoryview cannot cast (structured dtypes)
            buf[HEADER_BYTES:HEADER_BYTES + n] = flat.view(np.uint8).tobytes()
    comm.Bcast(buf, root=root)
    if _HEAD.unpack_from(head)[1] < 0:  # a custom dtype follows pickled
        comm.bcast(arr.dtype, root=root)
    return Announcement(kind, arr.dtype, arr.shape, axis, arr, n >= 0)


def parse(comm: MPI.Intracomm, root: int, buf: bytearray) -> Announcement:
    """What root announced in ``buf`` (just received); the payload is a view of ``buf``.

    **Collective** when the dtype is custom (it follows pickled from root), else
    **Local**. Called on the ranks other than root.
    """
    head = _HEAD.unpack_from(buf)
    kind, code, ndim, axis, n = head[:5]
    if ndim < 0:
        return Announcement(kind, None, (), axis, None, False)
    dtype: Any = DTYPES.get(code) if code >= 0 else comm.bcast(None, root=root)
    shape = head[5:5 + ndim]
    payload = None
    if n >= 0:
        payload = np.frombuffer(buf, dtype, offset=HEADER_BYTES,
                                count=n // dtype.itemsize if dtype.itemsize else 0).reshape(shape)
    return Announcement(kind, dtype, shape, axis, payload, n >= 0)


def builtin(head: bytes) -> bool:
    """Whether the header ``head`` announces an array of a builtin dtype (no pickled dtype follows)."""
    return _HEAD.unpack_from(head)[1] >= 0
