"""Root's geometry, and small payloads, in one fixed-size ``Bcast``: the unchecked bcast and scatter.

Without the agreement step, ranks other than root still need to know the shape
and dtype of what root sends. Root broadcasts one message of :data:`SIZE` bytes
(4 KiB): a header of :data:`HEADER` int64 slots (kind, dtype code, ndim, axis,
payload length, shape) followed by the payload itself when it fits
(:data:`INLINE` bytes or less). A small bcast is therefore one ``Bcast``, as a raw
mpi4py call with a known shape is; a small scatter is one ``Bcast`` of the whole
array, from which every rank takes its block. A larger payload follows in a
second call. Structured dtypes travel pickled in one more ``Bcast``.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from mpi4py import MPI

from .protocol import DTYPES, MAXDIM

__all__ = ["SIZE", "HEADER", "INLINE", "Announcement", "announce"]

#: Bytes of every announcement.
SIZE = 4096
#: int64 slots before the payload: kind, dtype code, ndim, axis, payload bytes (-1: not
#: inline), then MAXDIM dimensions.
HEADER = 5 + MAXDIM
#: The largest payload that travels inside the announcement.
INLINE = SIZE - 8 * HEADER

_HEAD = struct.Struct(f"=5q{MAXDIM}q")
_LEAD = [struct.Struct(f"=5q{n}q") for n in range(MAXDIM + 1)]  # the header up to ndim dimensions


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


def announce(comm: MPI.Intracomm, root: int, kind: int = 0, arr: np.ndarray | None = None,
             axis: int = 0, inline: bool = True) -> Announcement:
    """Broadcast root's kind, ``arr``'s dtype and shape, and ``arr`` itself when small. **Collective**.

    Only root's arguments are read. With ``inline=False`` the payload never travels
    inside (the caller moves it itself). On root the announcement's payload is
    ``arr``; elsewhere it is a new array holding the received bytes (None when the
    payload did not fit).
    """
    buf = bytearray(SIZE)
    if comm.Get_rank() == root:
        if arr is None:
            _LEAD[0].pack_into(buf, 0, kind, 0, -1, axis, -1)
        else:
            dt = arr.dtype
            custom = not (dt.isbuiltin == 1 and DTYPES.get(dt.num) == dt)
            n = arr.nbytes if inline and arr.nbytes <= INLINE else -1
            _LEAD[arr.ndim].pack_into(buf, 0, kind, -1 if custom else dt.num, arr.ndim, axis, n, *arr.shape)
            if n > 0:
                flat = arr if arr.flags.c_contiguous and arr.ndim else np.ascontiguousarray(arr).reshape(-1)
                try:
                    buf[_HEAD.size:_HEAD.size + n] = flat.data.cast("B")
                except (TypeError, ValueError):  # formats memoryview cannot cast (structured dtypes)
                    buf[_HEAD.size:_HEAD.size + n] = flat.view(np.uint8).tobytes()
        comm.Bcast(buf, root=root)
        if arr is not None and custom:
            comm.bcast(dt, root=root)
        return Announcement(kind, None if arr is None else arr.dtype, () if arr is None else arr.shape,
                            axis, arr, arr is not None and n >= 0)
    comm.Bcast(buf, root=root)
    head = _HEAD.unpack_from(buf)
    kind, code, ndim, axis, n = head[:5]
    if ndim < 0:
        return Announcement(kind, None, (), axis, None, False)
    dtype: Any = DTYPES.get(code) if code >= 0 else comm.bcast(None, root=root)
    shape = head[5:5 + ndim]
    payload = None
    if n >= 0:
        payload = np.frombuffer(buf, dtype, offset=_HEAD.size, count=n // dtype.itemsize if dtype.itemsize
                                else 0).reshape(shape)
    return Announcement(kind, dtype, shape, axis, payload, n >= 0)
