"""Collectives whose byte counts may exceed ``2**31 - 1``.

With an MPI-4 library mpi4py uses the large-count calls by itself. Otherwise (Open
MPI 5 reports MPI 3.1) a call whose counts or displacements do not fit a C ``int``
travels in *units* of a derived contiguous datatype: the gcd of all counts and
displacements, in bytes. When that gcd is too small to bring every count under the
limit, the blocks travel as point-to-point messages between root and each rank,
each one in units of a 1 MiB datatype plus a remainder. A broadcast of more than
``2**31 - 1`` bytes goes as 1 MiB units plus a remainder too.

A *rooted* gather of such blocks cannot take that path (the ranks that send do
not know the other ranks' counts), so it is refused, on every rank and before any
data moves: root judges the counts it holds (:func:`gather_problem`) and
broadcasts a fixed-size verdict (:func:`gather_verdict`), which the checked
gather keeps as long as the counts do not change.

``HPCPAR_LARGE_COUNT=0`` (or :func:`force_units`) takes these paths on any
library, so that a machine with an MPI-4 library tests what runs on an MPI-3 one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from .. import env
from ..errors import fail

__all__ = ["LARGE_COUNT", "INT_MAX", "UNIT", "PATHS", "vcall", "bcast_bytes", "force_units",
           "units_forced", "units_live", "gather_problem", "gather_verdict", "raise_gather_problem"]

#: The largest count a pre-MPI-4 call accepts.
INT_MAX = 2**31 - 1
#: True when the MPI library has the MPI-4 large-count calls, which mpi4py uses
#: by itself for counts beyond ``2**31 - 1``; otherwise big messages travel in
#: units of a derived datatype.
LARGE_COUNT = MPI.Get_version() >= (4, 0)
#: Bytes of the datatype that point-to-point messages and broadcasts travel in.
UNIT = 2**20
#: How many calls of this process took each path for messages over ``INT_MAX``
#: bytes: ``units`` (a v-collective in gcd units), ``messages`` (point-to-point),
#: ``bcast`` (a broadcast in :data:`UNIT` s). Read by the tests.
PATHS = {"units": 0, "messages": 0, "bcast": 0}
#: Tag of the point-to-point messages (on a context's private communicator).
_TAG = 0x4C43

#: Whether the unit paths are forced; None until first read from ``HPCPAR_LARGE_COUNT``.
_forced: bool | None = None


def force_units(on: bool | None) -> None:
    """Take the derived-datatype paths even with MPI-4 large counts (``True``), never
    force them (``False``), or follow ``HPCPAR_LARGE_COUNT`` again (``None``: read at the
    next call). **Local**; every rank must set the same value before its next collective.
    """
    global _forced
    _forced = on


def units_forced() -> bool:
    """Whether messages over ``INT_MAX`` bytes take the derived-datatype paths although
    the library may have large counts: :func:`force_units`, else ``HPCPAR_LARGE_COUNT=0``
    (read once, at the first collective that moves data). **Local**.
    """
    global _forced
    if _forced is None:
        _forced = not env.flag(env.HPCPAR_LARGE_COUNT, True)
    return _forced


def units_live() -> bool:
    """Whether messages over ``INT_MAX`` bytes take the derived-datatype paths: a library
    without MPI-4 large counts, or :func:`units_forced`. **Local**."""
    return not LARGE_COUNT or units_forced()


def gather_problem(bcounts: list[int]) -> tuple[int, int, int, int] | None:
    """Why a rooted gather of blocks of ``bcounts[r]`` bytes (placed one after another)
    cannot travel on the derived-datatype path, or None when it can. **Local**.

    It cannot when some count or displacement exceeds ``INT_MAX`` and the gcd of all
    of them (the largest common unit) does not bring every one under it.

    Returns:
        ``(rank with the largest block, its bytes, total bytes, common unit)``, or None.
    """
    total = sum(bcounts)
    if total <= INT_MAX:  # every count and displacement fits
        return None
    unit = 0
    for c in bcounts:
        unit = math.gcd(unit, c)
    last = total - bcounts[-1]  # the largest displacement
    if max(max(bcounts), last) // unit <= INT_MAX:
        return None
    big = max(range(len(bcounts)), key=bcounts.__getitem__)
    return big, bcounts[big], total, unit


def gather_verdict(comm: MPI.Intracomm, root: int,
                   bcounts: list[int] | None) -> tuple[int, int, int, int] | None:
    """Root's :func:`gather_problem` of its ``bcounts``, on every rank. **Collective**.

    Returns None at once on every rank when :func:`units_live` is False (the library
    moves any count by itself). Otherwise root broadcasts four integers (fixed size,
    ``O(log P)``); only root's ``bcounts`` is read (the others pass None).
    """
    if not units_live():
        return None
    verdict = np.zeros(4, np.int64)
    if comm.Get_rank() == root:
        assert bcounts is not None  # root holds every rank's count
        found = gather_problem(bcounts)
        if found is not None:
            verdict[0] = 1 + found[0]
            verdict[1:] = found[1:]
    if comm.Get_size() > 1:
        comm.Bcast(verdict, root=root)
    if not verdict[0]:
        return None
    return int(verdict[0]) - 1, int(verdict[1]), int(verdict[2]), int(verdict[3])


def raise_gather_problem(comm: MPI.Intracomm, root: int,
                         problem: tuple[int, int, int, int] | None, where: str = "hpcpar.gather") -> None:
    """Raise ``problem`` (from :func:`gather_verdict`) as a ``ValueError``. **Collective**
    when ``problem`` is not None: every rank must call it with the same one (the host
    of the rank with the largest block travels, on this error path only)."""
    if problem is None:
        return
    import socket

    big, nbytes, total, unit = problem
    host = socket.gethostname()
    if comm.Get_size() > 1:
        host = comm.bcast(host, root=big)
    fail(f"{where}(root={root})",
         f"the blocks add up to {total} bytes (the largest: {nbytes} bytes from rank {big}, "
         f"host {host}), and their byte sizes share no unit larger than {unit} bytes, which "
         f"leaves counts over 2**31 - 1; this MPI library lacks MPI-4 large counts (or "
         f"HPCPAR_LARGE_COUNT=0 is set), so such a rooted gather cannot travel. Nothing was "
         f"sent; gather blocks whose byte sizes share a larger factor (equal blocks, or "
         f"multiples of 1 MiB), or use allgather", "ValueError")


def vcall(fn: Callable[..., Any], send: list | None, recv: list | None,
          layout: tuple[list[int], list[int]] | None = None, **kw: Any) -> None:
    """Run the v-collective ``fn`` (a bound ``Scatterv``, ``Gatherv`` or ``Allgatherv``)
    whose buffer specs (``[buffer, counts, displs, MPI.BYTE]``, ``[buffer, count,
    MPI.BYTE]``) count bytes, whatever their size. **Collective** as ``fn`` is.

    Args:
        layout: every rank's byte counts and displacements, where every rank knows
            them (a scatter's plan): all ranks then choose the same path. Allgatherv's
            receive spec holds them anyway.

    Raises:
        HpcparError: on root of a rooted gather whose blocks have no common unit that
            brings every count and displacement under ``2**31`` (MPI-3 libraries only);
            callers check such gathers on every rank first (:func:`gather_verdict`).
    """
    if LARGE_COUNT and not units_forced():
        fn(send, recv, **kw)
        return
    numbers: list[int] = []
    for spec in (send, recv):
        for v in spec[1:-1] if spec is not None else ():
            numbers.extend(v if isinstance(v, list) else (v,))
    if layout is not None:
        numbers.extend(layout[0])
        numbers.extend(layout[1])
    if max(numbers, default=0) <= INT_MAX:
        fn(send, recv, **kw)
        return
    unit = 0
    for c in numbers:
        unit = math.gcd(unit, c)
    if max(numbers) // unit > INT_MAX:
        if fn.__name__ == "Gatherv" and layout is None:
            fail("hpcpar.gather", f"blocks of {max(numbers)} bytes have no common unit that "
                 "fits a C int, and this MPI library lacks MPI-4 large counts; gather blocks whose "
                 "byte sizes share a larger factor, or use allgather", "ValueError")
        _messages(fn, send, recv, kw.get("root"))
        return
    PATHS["units"] += 1
    dt = MPI.BYTE.Create_contiguous(unit).Commit()

    def scale(spec: list | None) -> list | None:
        if spec is None:
            return None
        return [spec[0], *([c // unit for c in v] if isinstance(v, list) else v // unit
                           for v in spec[1:-1]), dt]
    try:
        fn(scale(send), scale(recv), **kw)
    finally:
        dt.Free()


def bcast_bytes(comm: MPI.Intracomm, buf: np.ndarray, root: int) -> None:
    """Broadcast root's C-contiguous ``buf`` into every rank's ``buf`` (same size),
    whatever its size. **Collective**.
    """
    nbytes = buf.nbytes
    if nbytes <= INT_MAX or (LARGE_COUNT and not units_forced()):
        comm.Bcast([buf, MPI.BYTE], root=root)
        return
    PATHS["bcast"] += 1
    flat = _bytes(buf)
    whole, rest = divmod(nbytes, UNIT)
    dt = MPI.BYTE.Create_contiguous(UNIT).Commit()
    try:
        comm.Bcast([flat, whole, dt], root=root)
    finally:
        dt.Free()
    if rest:
        comm.Bcast([flat[whole * UNIT:], rest, MPI.BYTE], root=root)


def _bytes(buf: Any) -> np.ndarray:
    """A flat uint8 view of a C-contiguous array."""
    arr = np.asarray(buf)
    assert arr.flags.c_contiguous, "hpcpar passes contiguous buffers only"
    return arr.reshape(-1).view(np.uint8)


def _send(comm: MPI.Intracomm, data: np.ndarray, dest: int, dt: MPI.Datatype) -> list[MPI.Request]:
    whole, rest = divmod(data.size, UNIT)
    reqs = [comm.Isend([data, whole, dt], dest, _TAG)] if whole else []
    if rest:
        reqs.append(comm.Isend([data[whole * UNIT:], rest, MPI.BYTE], dest, _TAG))
    return reqs


def _recv(comm: MPI.Intracomm, data: np.ndarray, source: int, dt: MPI.Datatype) -> list[MPI.Request]:
    whole, rest = divmod(data.size, UNIT)
    reqs = [comm.Irecv([data, whole, dt], source, _TAG)] if whole else []
    if rest:
        reqs.append(comm.Irecv([data[whole * UNIT:], rest, MPI.BYTE], source, _TAG))
    return reqs


def _messages(fn: Callable[..., Any], send: list | None, recv: list | None, root: int | None) -> None:
    """``fn`` as point-to-point messages between root and every other rank (O(P)
    requests on root, as the v-collective's own algorithm has)."""
    PATHS["messages"] += 1
    comm: MPI.Intracomm = getattr(fn, "__self__")  # noqa: B009 (a bound method of the communicator)
    me, size = comm.Get_rank(), comm.Get_size()
    name = fn.__name__
    dt = MPI.BYTE.Create_contiguous(UNIT).Commit()
    reqs: list[MPI.Request] = []
    try:
        if name == "Scatterv":
            assert root is not None and recv is not None
            mine = _bytes(recv[0])[:recv[1]]
            if me == root:
                assert send is not None
                src, counts, displs = _bytes(send[0]), send[1], send[2]
                for r in range(size):
                    block = src[displs[r]:displs[r] + counts[r]]
                    if r == me:
                        mine[...] = block
                    else:
                        reqs += _send(comm, block, r, dt)
            else:
                reqs += _recv(comm, mine, root, dt)
        else:  # Gatherv, or Allgatherv as a Gatherv to rank 0 and a broadcast
            at = 0 if root is None else root
            assert send is not None
            block = _bytes(send[0])[:send[1]]
            if me == at:
                assert recv is not None
                dst, counts, displs = _bytes(recv[0]), recv[1], recv[2]
                for r in range(size):
                    part = dst[displs[r]:displs[r] + counts[r]]
                    if r == me:
                        part[...] = block
                    else:
                        reqs += _recv(comm, part, r, dt)
            else:
                reqs += _send(comm, block, at, dt)
        MPI.Request.Waitall(reqs)
    finally:
        dt.Free()
    if name == "Allgatherv":
        assert recv is not None
        bcast_bytes(comm, _bytes(recv[0])[:sum(recv[1])], 0)
