"""Property tests (hypothesis) under MPI: scatter/gather/allgather/bcast round trips are the identity.

Shapes, dtypes, axes, roots, ``out=`` and the number of ranks taking part (a
sub-context of the first ``k`` ranks) are drawn by hypothesis. Every rank must
draw the same examples: the settings are derandomized (the same seed everywhere)
with no example database, and each example first checks that all ranks drew it.
The budget is bounded (``fuzzing.EXAMPLES`` per test) so that CI stays fast.
"""

import numpy as np
import pytest
from fuzzing import FUZZ, SIZE, contexts, make, same  # noqa: F401 (contexts is a fixture)
from hypothesis import given
from hypothesis import strategies as st

from hpcpar.decomp import partition
from hpcpar.testing import assert_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]


DTYPES = [np.dtype(t) for t in ("?", "i1", "u2", "<i8", "f4", "f8", "c8", ">i4", "M8[ms]", "U2", "S3",
                                "V5")] + [np.dtype([("a", "<i2"), ("b", "<f8", (2,))])]


@st.composite
def cases(draw):
    k = draw(st.integers(1, SIZE))
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    root = draw(st.integers(0, k - 1))
    dtype = draw(st.sampled_from(DTYPES))
    use_out = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return k, shape, axis, root, dtype, use_out, seed


def drawn_alike(world, case):
    seen = world.comm.allgather(repr(case))
    assert_all(all(s == seen[0] for s in seen), f"ranks drew different examples: {seen}", ctx=world)


@FUZZ
@given(case=cases())
def test_scatter_gather_allgather_round_trip(contexts, case):
    world, subs = contexts
    drawn_alike(world, case)
    k, shape, axis, root, dtype, use_out, seed = case
    c, problems = subs[k], []
    if c is not None:
        a = make(shape, dtype, seed)
        ax = axis % len(shape)
        r = partition.block_range(shape[ax], k, c.rank)
        want = np.take(a, np.arange(r.start, r.stop), axis=ax)
        out = np.empty(want.shape, dtype) if use_out else None
        block = c.scatter(a if c.rank == root else None, root=root, axis=axis, out=out)
        if not same(want, block) or (use_out and block is not out):
            problems.append(f"scatter block {block!r} != {want!r}")
        gout = np.empty(shape, dtype) if use_out and c.rank == root else None
        back = c.gather(block, root=root, axis=axis, out=gout)
        if (c.rank == root and not same(a, back)) or (c.rank != root and back is not None):
            problems.append(f"gather gave {back!r}")
        everywhere = c.allgather(block, axis=axis, out=np.empty(shape, dtype) if use_out else None)
        if not same(a, everywhere):
            problems.append(f"allgather gave {everywhere!r}")
    assert_all(not problems, f"{case}: " + "; ".join(problems), ctx=world)


@FUZZ
@given(case=cases())
def test_bcast_round_trip(contexts, case):
    world, subs = contexts
    drawn_alike(world, case)
    k, shape, _, root, dtype, _, seed = case
    c, ok = subs[k], True
    if c is not None:
        a = make(shape, dtype, seed)
        got = c.bcast(a if c.rank == root else None, root=root)
        ok = same(a, got)
    assert_all(ok, f"{case}: bcast changed the array", ctx=world)
