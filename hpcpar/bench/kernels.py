"""The compute kernels that the benchmarks measure and the example jobs run, and the
hand-written halo exchange they are compared with: one copy of each.

``hpcpar bench halo`` times the heat stencil of ``jobs/heat.py``, and ``hpcpar
bench farm`` the Mandelbrot rows of ``jobs/mandelbrot.py``; both must run the
same arithmetic, so both import it from here. They live in :mod:`hpcpar.bench`
(the top layer) rather than in the library because no library module needs
them: they are example workloads, pure NumPy, with no MPI and no I/O. The jobs
are scripts outside the package and import them as ``hpcpar.bench.kernels``.

:func:`hand_written_halo` is the baseline that ``hpcpar bench halo`` (timed) and
``hpcpar bench scale`` (counted) put next to :meth:`hpcpar.Grid.exchange`; it is
the one function here that communicates, and it imports MPI only when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["heat_stencil", "mandelbrot_rows", "MANDELBROT_REGION", "hand_written_halo"]

#: The region of the complex plane of :func:`mandelbrot_rows`: (re_min, re_max, im_min, im_max).
MANDELBROT_REGION = (-2.0, 0.6, -0.35, 1.25)


def heat_stencil(u: np.ndarray, out: np.ndarray, r: float, rows: slice, cols: slice) -> None:
    """``out[rows, cols] = u + r * (north + south + west + east - 4 u)``, in that order. **Local**.

    The explicit Euler step of the 2-D heat equation on the 5-point stencil
    (``r = alpha dt / h^2``). ``rows`` and ``cols`` are ``slice(start, stop)`` of
    the array with halo, at least 1 from its edges; an empty range does nothing.
    The operations and their order are fixed, so the result is bit-identical
    however the grid is cut into calls.

    Args:
        u: the field with halo (read).
        out: the field with halo to write (``out[rows, cols]`` only).
        r: alpha dt / h^2.
        rows, cols: the cells to update.
    """
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    c = u[rows, cols]
    t = out[rows, cols]
    np.add(u[rows.start - 1:rows.stop - 1, cols], u[rows.start + 1:rows.stop + 1, cols], out=t)
    t += u[rows, cols.start - 1:cols.stop - 1]
    t += u[rows, cols.start + 1:cols.stop + 1]
    t -= 4.0 * c
    t *= r
    t += c


def mandelbrot_rows(y0: int, y1: int, width: int, height: int, max_iter: int) -> np.ndarray:
    """Escape counts (uint16, shape ``(y1 - y0, width)``) of rows ``y0:y1`` of the image. **Local**.

    The image spans :data:`MANDELBROT_REGION` with ``width`` x ``height`` pixels, top
    row first; a pixel that does not escape within ``max_iter`` iterations gets
    ``max_iter``. Every pixel's arithmetic is the same however rows are grouped.
    """
    re = np.linspace(MANDELBROT_REGION[0], MANDELBROT_REGION[1], width)
    im = np.linspace(MANDELBROT_REGION[3], MANDELBROT_REGION[2], height)[y0:y1]
    c = (re[None, :] + 1j * im[:, None]).ravel()
    z = np.zeros_like(c)
    count = np.full(c.shape, max_iter, dtype=np.uint16)
    active = np.arange(c.size)
    for k in range(max_iter):
        zi = z[active] * z[active] + c[active]
        z[active] = zi
        out = (zi.real * zi.real + zi.imag * zi.imag) > 4.0
        if out.any():
            count[active[out]] = k
            active = active[~out]
            if active.size == 0:
                break
    return count.reshape(y1 - y0, width)


def hand_written_halo(comm: Any, dims: tuple[int, ...], local: tuple[int, ...], *, corners: bool,
                      skip_walls: bool) -> tuple[Any, Callable[[np.ndarray], None]]:
    """A 2-D halo exchange of width 1 as one writes it by hand with mpi4py. **Collective** (to build).

    A non-periodic Cartesian communicator over ``comm`` and blocking ``Sendrecv``
    calls: rows travel as they lie (contiguous), columns are packed into a buffer
    and unpacked. The returned ``exchange(u)`` is collective over the grid; ``u``
    is a C-ordered float64 array of shape ``(n0 + 2, n1 + 2)`` (the block with halo).

    Args:
        comm: the communicator to lay the grid over (``dims[0] * dims[1]`` ranks).
        dims: the process grid, ``(rows, columns)``.
        local: this rank's block without halo, ``(n0, n1)``.
        corners: False: faces only, the interior of each edge row and column (the
            cells ``Grid.exchange(u, corners=False)`` fills), rows first. True:
            columns first, then whole rows including the ghost columns, so the
            corner ghost cells arrive through the row neighbours (the cells
            ``Grid.exchange(u)`` fills) in four messages instead of eight.
        skip_walls: leave out the two ``Sendrecv`` of an axis on which this rank
            has no neighbour at all (as hand-tuned code does); False makes every rank
            call ``Sendrecv`` four times, with ``MPI.PROC_NULL`` at the walls.

    Returns:
        ``(cart, exchange)``; free ``cart`` (``cart.Free()``) when done.
    """
    from mpi4py import MPI

    cart = comm.Create_cart(list(dims), [False, False], reorder=False)
    up, down = cart.Shift(0, 1)
    left, right = cart.Shift(1, 1)
    n0, n1 = local
    col_send, col_recv = np.empty(n0), np.empty(n0)
    null = MPI.PROC_NULL
    do_rows = not skip_walls or up != null or down != null
    do_cols = not skip_walls or left != null or right != null
    row = slice(None) if corners else slice(1, n1 + 1)

    def rows(u: np.ndarray) -> None:
        cart.Sendrecv(u[n0, row], dest=down, recvbuf=u[0, row], source=up)
        cart.Sendrecv(u[1, row], dest=up, recvbuf=u[n0 + 1, row], source=down)

    def cols(u: np.ndarray) -> None:
        col_send[:] = u[1:-1, n1]
        cart.Sendrecv(col_send, dest=right, recvbuf=col_recv, source=left)
        if left != null:
            u[1:-1, 0] = col_recv
        col_send[:] = u[1:-1, 1]
        cart.Sendrecv(col_send, dest=left, recvbuf=col_recv, source=right)
        if right != null:
            u[1:-1, n1 + 1] = col_recv

    def exchange(u: np.ndarray) -> None:
        if corners and do_cols:
            cols(u)
        if do_rows:
            rows(u)
        if not corners and do_cols:
            cols(u)

    return cart, exchange
