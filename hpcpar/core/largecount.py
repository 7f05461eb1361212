"""Vector collectives whose byte counts may exceed ``2**31 - 1``.

With an MPI-4 library mpi4py uses the large-count calls by itself. Otherwise a
call whose counts or displacements do not fit a C ``int`` travels in units of a
derived contiguous datatype: the gcd of all counts and displacements, in bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from mpi4py import MPI

__all__ = ["LARGE_COUNT", "INT_MAX", "vcall"]

#: The largest count a pre-MPI-4 call accepts.
INT_MAX = 2**31 - 1
#: True when the MPI library has the MPI-4 large-count calls, which mpi4py uses
#: by itself for counts beyond ``2**31 - 1``; otherwise big messages travel in
#: units of a derived datatype.
LARGE_COUNT = MPI.Get_version() >= (4, 0)


def _direct(fn: Callable[..., Any], send: Any, recv: Any, **kw: Any) -> None:
    """Call a v-collective as is (MPI-4 large counts: mpi4py handles any size)."""
    fn(send, recv, **kw)


def _vcall(fn: Callable[..., Any], send: list | None, recv: list | None, **kw: Any) -> None:
    counts: list[int] = []
    for spec in (send, recv):
        for v in spec[1:-1] if spec is not None else ():
            counts.extend(v if isinstance(v, list) else (v,))
    if max(counts, default=0) <= INT_MAX:
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


#: ``vcall(fn, send, recv, **kw)`` runs a v-collective whose buffer specs
#: (``[buffer, counts, displs, MPI.BYTE]``) count bytes, whatever their size. **Collective**
#: as ``fn`` is.
vcall: Callable[..., None] = _direct if LARGE_COUNT else _vcall
