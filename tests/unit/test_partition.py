"""Property tests of the pure partition arithmetic (no MPI)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcpar.decomp import partition as P

ns = st.integers(min_value=0, max_value=10_000)
parts = st.integers(min_value=1, max_value=200)


@given(ns, parts)
def test_block_counts_sum_and_balance(n, p):
    c = P.block_counts(n, p)
    assert len(c) == p and sum(c) == n
    assert max(c) - min(c) <= 1
    assert list(c) == sorted(c, reverse=True)  # the first n % p blocks are the larger ones
    assert sum(1 for x in c if x == n // p + 1) == (n % p if n % p else 0)


@given(ns, parts)
def test_ranges_tile_and_agree_with_displs(n, p):
    displs = P.block_displs(n, p)
    counts = P.block_counts(n, p)
    covered = []
    for i in range(p):
        r = P.block_range(n, p, i)
        assert r.start == displs[i] and len(r) == counts[i]
        covered.extend(r)
    assert covered == list(range(n))


@given(ns, parts, st.data())
def test_owner_agrees_with_ranges(n, p, data):
    if n == 0:
        return
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    k = P.owner(i, n, p)
    assert i in P.block_range(n, p, k)


@given(ns, parts)
def test_cyclic_indices_partition(n, p):
    seen = sorted(j for i in range(p) for j in P.cyclic_indices(n, p, i))
    assert seen == list(range(n))


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=50), ns)
def test_weighted_counts(weights, n):
    if sum(weights) <= 0:
        with pytest.raises(ValueError):
            P.weighted_counts(weights, n)
        return
    c = P.weighted_counts(weights, n)
    assert sum(c) == n and len(c) == len(weights)
    total = sum(weights)
    for w, k in zip(weights, c, strict=False):
        assert abs(k - n * w / total) < 1 + 1e-9
        if w == 0:
            assert k == 0


@given(st.integers(min_value=1, max_value=5000), st.integers(min_value=1, max_value=4))
def test_dims_create(nprocs, ndim):
    d = P.dims_create(nprocs, ndim)
    assert len(d) == ndim and math.prod(d) == nprocs
    assert list(d) == sorted(d, reverse=True)


def test_dims_create_matches_mpi():
    from mpi4py import MPI

    wrong = [(n, d, P.dims_create(n, d), tuple(MPI.Compute_dims(n, d)))
             for n in range(1, 1025) for d in (1, 2, 3, 4)
             if P.dims_create(n, d) != tuple(MPI.Compute_dims(n, d))]
    assert wrong == []


def test_examples():
    assert P.block_counts(10, 3) == (4, 3, 3)
    assert P.block_displs(10, 3) == (0, 4, 7)
    assert P.block_range(10, 3, 2) == range(7, 10)
    assert P.block_counts(2, 4) == (1, 1, 0, 0)
    assert P.owner(4, 10, 3) == 1
    assert P.dims_create(12, 2) == (4, 3)
    assert P.weighted_counts([1, 3], 8) == (2, 6)


@pytest.mark.parametrize("call", [
    lambda: P.block_counts(-1, 2), lambda: P.block_counts(3, 0), lambda: P.block_range(3, 2, 2),
    lambda: P.owner(5, 5, 2), lambda: P.dims_create(0, 2), lambda: P.weighted_counts([], 3),
    lambda: P.weighted_counts([1, float("nan")], 3), lambda: P.block_counts(2.5, 2),
    lambda: P.block_displs(3, -1), lambda: P.block_range(3, 2, -1), lambda: P.cyclic_indices(3, 2, 2),
    lambda: P.cyclic_indices(-3, 2, 0), lambda: P.owner(-1, 5, 2), lambda: P.owner(0, 5, True),
    lambda: P.dims_create(4, 0), lambda: P.dims_create(2.0, 1), lambda: P.weighted_counts([1, -1], 3),
    lambda: P.weighted_counts([0, 0], 3), lambda: P.weighted_counts([1, 2], -1),
    lambda: P.block_counts("4", 2),
])
def test_bad_input_is_a_clear_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_partition_does_not_import_mpi():
    import subprocess
    import sys

    code = "import sys, hpcpar.partition; print('mpi4py.MPI' in sys.modules)"
    # importing the package imports mpi4py; the module file itself must not
    src = open(P.__file__).read()
    assert "mpi4py" not in src and "import MPI" not in src
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_normalize_axis_counts_from_the_end_and_names_the_misuse():
    import numpy as np

    from hpcpar.decomp.partition import normalize_axis

    assert normalize_axis(-1, 3) == 2 and normalize_axis(np.int64(1), 2) == 1
    with pytest.raises(TypeError, match="axis must be an int, got '0'"):
        normalize_axis("0", 2)
    with pytest.raises(TypeError):
        normalize_axis(True, 2)
    with pytest.raises(ValueError, match="axis=2 is out of range for an array of 2 dimensions"):
        normalize_axis(2, 2)
    with pytest.raises(ValueError, match="0-d array"):
        normalize_axis(0, 0)
