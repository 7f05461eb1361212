"""hpcpar.sort.sample_sort under MPI, checked against np.sort of the gathered input."""

import numpy as np
import pytest

from hpcpar.decomp import partition
from hpcpar.decomp.sort import sample_sort
from hpcpar.testing import assert_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


def check_sorted(ctx, keys, **kw):
    out = sample_sort(ctx, keys, **kw)
    everything = ctx.gather(keys)
    merged = ctx.gather(out)
    ok = True
    if ctx.is_root:
        want = np.sort(everything)
        ok = merged.dtype == keys.dtype and np.array_equal(merged, want, equal_nan=want.dtype.kind == "f")
    assert_all(ok, "gathered result differs from np.sort of the gathered input", ctx=ctx)
    return out


def my_block(ctx, data):
    r = partition.block_range(len(data), ctx.size, ctx.rank)
    return np.ascontiguousarray(data[r.start:r.stop])


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.float64, np.float32])
def test_random_keys_with_duplicates(ctx, dtype):
    rng = np.random.default_rng(3)
    data = (rng.integers(0, 50, 5000) * 1.5 if np.dtype(dtype).kind == "f"
            else rng.integers(0, 50, 5000)).astype(dtype)
    out = check_sorted(ctx, my_block(ctx, data))
    sizes = ctx.comm.allgather(out.size)
    assert_all(max(sizes) <= 2 * 5000 / ctx.size + 64, f"unbalanced parts {sizes}", ctx=ctx)


def test_all_equal_keys_are_spread_over_the_ranks(ctx):
    out = check_sorted(ctx, np.full(3000 + ctx.rank, 7.25))
    sizes = ctx.comm.allgather(out.size)
    assert_all(max(sizes) <= 1.5 * sum(sizes) / ctx.size, f"parts {sizes}", ctx=ctx)


def test_fewer_keys_than_ranks_and_empty_ranks(ctx):
    check_sorted(ctx, np.array([5, -1], np.int64) if ctx.rank == ctx.size - 1 else np.empty(0, np.int64))
    check_sorted(ctx, np.empty(0, np.float64))
    check_sorted(ctx, np.array([float(ctx.size - ctx.rank)]))


def test_uneven_inputs_nan_and_infinities(ctx):
    rng = np.random.default_rng(ctx.rank)
    keys = rng.standard_normal(100 * (ctx.rank + 1))
    keys[::17] = np.nan
    keys[::23] = np.inf
    keys[::29] = -np.inf
    check_sorted(ctx, keys, oversample=3)


@pytest.mark.checks
def test_bad_keys_on_one_rank_fail_on_every_rank(ctx):
    bad = np.zeros((2, 2)) if ctx.rank == ctx.size - 1 else np.zeros(3)
    with pytest.raises(ValueError, match=f"rank {ctx.size - 1}: keys must be a 1-D NumPy array"):
        sample_sort(ctx, bad)
    if ctx.size > 1:
        with pytest.raises(ValueError, match="same dtype"):
            sample_sort(ctx, np.zeros(3, np.float32 if ctx.rank else np.float64))
    ctx.barrier()


def test_complex_keys_fail_on_every_rank(ctx):
    with pytest.raises(ValueError, match="complex128"):
        sample_sort(ctx, np.zeros(3, complex))
    ctx.barrier()
