"""The compute kernels that the benchmarks measure and the example jobs run: one copy of each.

``hpcpar bench halo`` times the heat stencil of ``jobs/heat.py``, and ``hpcpar
bench farm`` the Mandelbrot rows of ``jobs/mandelbrot.py``; both must run the
same arithmetic, so both import it from here. They live in :mod:`hpcpar.bench`
(the top layer) rather than in the library because no library module needs
them: they are example workloads, pure NumPy, with no MPI and no I/O. The jobs
are scripts outside the package and import them as ``hpcpar.bench.kernels``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["heat_stencil", "mandelbrot_rows", "MANDELBROT_REGION"]

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
