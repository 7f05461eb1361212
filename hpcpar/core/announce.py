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

_KIND, _DTYPE, _NDIM, _AXIS, _NBYTES, _SHAPE = 0, 1, 2, 3, 4, 5


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
    ``arr``; elsewhere it is a read-only view of the received bytes (None when
    the payload did not fit).
    """
    buf = np.empty(SIZE, np.uint8)
    head = buf[:8 * HEADER].view(np.int64)
    head[:] = 0
    is_root = comm.Get_rank() == root
    custom = False
    if is_root:
        head[_KIND], head[_AXIS] = kind, axis
        head[_NBYTES] = -1
        if arr is not None:
            dt = arr.dtype
            custom = not (dt.isbuiltin == 1 and DTYPES.get(dt.num) == dt)
            head[_DTYPE] = -1 if custom else dt.num
            head[_NDIM] = arr.ndim
            head[_SHAPE:_SHAPE + arr.ndim] = arr.shape
            if inline and arr.nbytes <= INLINE:
                head[_NBYTES] = arr.nbytes
                buf[8 * HEADER:8 * HEADER + arr.nbytes] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        else:
            head[_NDIM] = -1
    comm.Bcast(buf, root=root)
    ndim = int(head[_NDIM])
    if ndim < 0:
        return Announcement(int(head[_KIND]), None, (), int(head[_AXIS]), None, False)
    code = int(head[_DTYPE])
    mine = arr.dtype if arr is not None and is_root else None
    dtype: Any = mine if is_root else DTYPES.get(code)
    if code < 0:
        dtype = comm.bcast(mine, root=root)
    shape = tuple(int(d) for d in head[_SHAPE:_SHAPE + ndim])
    n = int(head[_NBYTES])
    payload = None
    if is_root:
        payload = arr
    elif n >= 0:
        payload = buf[8 * HEADER:8 * HEADER + n].view(dtype).reshape(shape)
    return Announcement(int(head[_KIND]), dtype, shape, int(head[_AXIS]), payload, n >= 0)
