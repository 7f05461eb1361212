"""Property tests (hypothesis) under MPI: Grid scatter/gather round trips are the identity.

Drawn: the number of ranks taking part (a sub-context of the first ``k`` ranks),
shapes of 1 to 3 axes, dtypes, periodic flags, halo widths, explicit or default
dims, and the root. For every example: ``gather(scatter(a))`` is ``a`` bit for
bit (with and without the halo, to any root), the ghost cells of a scattered
block are zero, and a halo exchange never changes the interior. Shapes too small
for the process grid must raise the same ``ValueError`` on every rank instead.
As in ``test_fuzz.py``, every rank draws the same examples (derandomized, no
database) and the budget is bounded.
"""

import itertools
import math

import numpy as np
import pytest
from fuzzing import FUZZ, SIZE, contexts, make, same  # noqa: F401 (contexts is a fixture)
from hypothesis import event, given
from hypothesis import strategies as st

import hpcpar
from hpcpar.decomp import partition
from hpcpar.testing import assert_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]


DTYPES = [np.dtype(t) for t in ("?", "i1", "u2", "<i8", "f4", "f8", "c16", ">i4", "M8[ms]", "U2",
                                "S3", "V5")] + [np.dtype([("a", "<i2"), ("b", "<f8", (2,))])]


def factorizations(k: int, ndim: int) -> list[tuple[int, ...]]:
    """Every ``dims`` of ``ndim`` positive factors whose product is ``k``."""
    divisors = [d for d in range(1, k + 1) if k % d == 0]
    return [t for t in itertools.product(divisors, repeat=ndim) if math.prod(t) == k]


@st.composite
def cases(draw):
    k = draw(st.integers(1, SIZE))
    ndim = draw(st.integers(1, 3))
    explicit = draw(st.booleans())
    dims = draw(st.sampled_from(factorizations(k, ndim))) if explicit else None
    real_dims = dims or partition.dims_create(k, ndim)
    periodic = draw(st.one_of(st.booleans(), st.tuples(*[st.booleans()] * ndim)))
    per = (periodic,) * ndim if isinstance(periodic, bool) else periodic
    halo = draw(st.integers(1, 3))
    if draw(st.integers(0, 9)) == 0:  # sometimes a shape that may be too small
        shape = tuple(draw(st.lists(st.integers(0, 3), min_size=ndim, max_size=ndim)))
    else:  # big enough: every exchanging block holds at least `halo` cells
        shape = tuple(d * (halo if (d > 1 or p) else 1) + draw(st.integers(0, 5))
                      for d, p in zip(real_dims, per))
    dtype = draw(st.sampled_from(DTYPES))
    root = draw(st.integers(0, k - 1))
    seed = draw(st.integers(0, 2**16))
    return k, shape, dims, periodic, halo, dtype, root, seed


def expected_error(shape, dims, periodic, halo, k):
    """The ValueError message GridLayout gives for these arguments, or None."""
    try:
        partition.GridLayout(shape, dims or partition.dims_create(k, len(shape)), periodic, halo)
    except ValueError as exc:
        return str(exc)
    return None


@FUZZ
@given(case=cases())
def test_grid_scatter_gather_round_trip(contexts, case):
    world, subs = contexts
    seen = world.comm.allgather(repr(case))
    assert_all(all(s == seen[0] for s in seen), f"ranks drew different examples: {seen}", ctx=world)
    k, shape, dims, periodic, halo, dtype, root, seed = case
    c, problems = subs[k], []
    if c is not None:
        error = expected_error(shape, dims, periodic, halo, k)
        event("too small" if error else f"round trip on {k} of {SIZE} ranks")
        if error is not None:
            try:
                hpcpar.Grid(c, shape, dims=dims, periodic=periodic, halo=halo).free()
                problems.append(f"no error for a shape too small ({error})")
            except ValueError as exc:  # Grid checks some arguments itself, in its own words
                if not str(exc).startswith("hpcpar.Grid: ") or str(tuple(shape)) not in str(exc):
                    problems.append(f"error {exc} does not name the shape (GridLayout: {error})")
        else:
            a = make(shape, dtype, seed)
            with hpcpar.Grid(c, shape, dims=dims, periodic=periodic, halo=halo) as grid:
                local = grid.scatter(a if c.rank == root else None, root=root)
                if not same(np.ascontiguousarray(a[grid.global_slices]),
                            np.ascontiguousarray(grid.interior(local))):
                    problems.append("scatter: the interior is not this rank's block")
                ghosts = local.copy()
                ghosts[tuple(slice(halo, halo + n) for n in grid.local_shape)] = np.zeros((), dtype)
                if ghosts.tobytes() != bytes(ghosts.nbytes):
                    problems.append("scatter: ghost cells are not zero")
                back = grid.gather(local, root=root)
                if (c.rank == root and not same(a, back)) or (c.rank != root and back is not None):
                    problems.append(f"gather with halo gave {back!r}")
                grid.exchange(local)  # fills ghosts only
                other = (root + 1) % k
                back = grid.gather(np.ascontiguousarray(grid.interior(local)), root=other)
                if (c.rank == other and not same(a, back)) or (c.rank != other and back is not None):
                    problems.append(f"gather of the interior after an exchange gave {back!r}")
    assert_all(not problems, f"{case}: " + "; ".join(problems), ctx=world)
