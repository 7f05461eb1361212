"""Messages over 2**31 - 1 bytes without MPI-4 large counts: derived-datatype units.

Open MPI 5 reports MPI 3.1, so there every message over ``INT_MAX`` bytes takes
:mod:`hpcpar.core.largecount`'s unit path; with an MPI-4 library (the MPICH wheel)
the test forces it (``force_units``), so both legs test it. At 2 ranks only, alone
among the tests that need several GB (``big_memory``); the peak is about 6.5 GB.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import big_memory

from hpcpar import env
from hpcpar.core import largecount
from hpcpar.testing import assert_all

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

#: Values repeat with this (prime) period, so a block moved to a wrong offset differs.
PERIOD = 251
_BASE = np.arange(PERIOD, dtype=np.uint8)


def pattern(n: int, start: int = 0) -> np.ndarray:
    """Bytes ``(start + i) % PERIOD`` for ``i < n``."""
    return np.resize(np.roll(_BASE, -(start % PERIOD)), n)


def matches(a: np.ndarray, start: int = 0, chunk: int = 2**26) -> bool:
    """Whether every byte of ``a`` is ``pattern(a.nbytes, start)`` (compared in chunks)."""
    flat = a.reshape(-1).view(np.uint8)
    for lo in range(0, flat.size, chunk):
        part = flat[lo:lo + chunk]
        if not np.array_equal(part, pattern(part.size, start + lo)):
            return False
    return True


@pytest.mark.timeout(420)
def test_units_path_round_trip(ctx):
    """> 2.1 GB through bcast, scatter, gather and allgather on the derived-datatype path."""
    if ctx.size != 2:
        pytest.skip("run at 2 ranks only (memory and time)")
    expect = env.get(env.HPCPAR_EXPECT_LARGE_COUNT)
    if expect is not None:
        assert_all(largecount.LARGE_COUNT == env.flag(env.HPCPAR_EXPECT_LARGE_COUNT, True),
                   f"{env.HPCPAR_EXPECT_LARGE_COUNT}={expect} but this MPI library has "
                   f"LARGE_COUNT={largecount.LARGE_COUNT}", ctx=ctx)
    with big_memory(ctx, gib=8):
        before = dict(largecount.PATHS)
        largecount.force_units(True)
        try:
            _round_trip(ctx)
        finally:
            largecount.force_units(None)
        used = {k: largecount.PATHS[k] - before[k] for k in before}
        # bcast, then allgather's broadcast; scatter and (on root) gather in gcd units;
        # allgather as messages
        units = 2 if ctx.is_root else 1
        assert_all(used["bcast"] == 2 and used["units"] == units and used["messages"] == 1,
                   f"paths taken: {used}", ctx=ctx)


def _round_trip(ctx):
    # bcast: more than INT_MAX bytes in 1 MiB units plus a 7-byte remainder
    n = 2**31 + 2**20 + 7
    got = ctx.bcast(pattern(n) if ctx.is_root else None)
    assert_all(got.shape == (n,) and matches(got), "bcast content", ctx=ctx)
    del got

    # scatter 3 rows of L bytes: rank 0 gets 2 rows (2L > INT_MAX bytes), unit L
    row = 2**30 + 3
    a = pattern(3 * row).reshape(3, row) if ctx.is_root else None
    block = ctx.scatter(a)
    del a
    first = 0 if ctx.rank == 0 else 2
    ok = block.shape == ((2, row) if ctx.rank == 0 else (1, row)) and matches(block, first * row)
    assert_all(ok, f"scatter block {block.shape}", ctx=ctx)
    back = ctx.gather(block)
    del block
    ok = back is None if not ctx.is_root else back.shape == (3, row) and matches(back)
    assert_all(ok, "gather content", ctx=ctx)
    del back

    # allgather blocks of 2**31 + 1 and 2 bytes: no common unit fits, point-to-point messages
    big = 2**31 + 1
    mine = pattern(big) if ctx.rank == 0 else pattern(2, big)
    whole = ctx.allgather(mine)
    del mine
    assert_all(whole.shape == (big + 2,) and matches(whole), "allgather content", ctx=ctx)


@pytest.fixture
def small_limit(ctx, monkeypatch):
    """The large-message paths at small sizes: a count limit of 1000 bytes and 64-byte units
    (real MPI calls and data; only the thresholds are lowered), forced on any library."""
    from hpcpar.core import blocks

    monkeypatch.setattr(largecount, "INT_MAX", 1000)
    monkeypatch.setattr(blocks, "INT_MAX", 1000)
    monkeypatch.setattr(largecount, "UNIT", 64)
    largecount.force_units(True)
    before = dict(largecount.PATHS)
    yield before
    largecount.force_units(None)


@pytest.mark.timeout(60)
def test_unit_paths_at_small_sizes(ctx, small_limit):
    """bcast (units and a remainder), scatter and gather in gcd units, scatter and allgather
    as messages, at 1, 2 and 3 ranks, with uneven blocks. Every array is larger than the
    announcement's inline payload (4 KiB), which an unchecked bcast or scatter sends within
    its one ``Bcast`` whatever the count limit, so both modes take the paths under test."""
    from hpcpar.core import announce

    p = ctx.size
    n = 5000 * p + 37  # more than the limit on every rank count; odd: no common unit
    assert n > announce.INLINE
    got = ctx.bcast(pattern(n) if ctx.is_root else None)
    assert_all(got.shape == (n,) and matches(got), "bcast", ctx=ctx)

    block = ctx.scatter(pattern(n) if ctx.is_root else None)  # counts differ by one: messages
    lo = sum(len(range(r, n, p)) for r in range(ctx.rank))  # block_counts: first n % p get one more
    assert_all(matches(block, lo), f"scatter block of {block.size} from {lo}", ctx=ctx)
    whole = ctx.allgather(block)
    assert_all(whole.shape == (n,) and matches(whole), "allgather", ctx=ctx)

    row = 2003  # rows of 2003 bytes, 3 per rank: counts 6009 > 1000, in units of 6009
    rows = pattern(3 * p * row).reshape(3 * p, row) if ctx.is_root else None
    part = ctx.scatter(rows)
    assert_all(part.shape == (3, row) and matches(part, 3 * ctx.rank * row), "row scatter", ctx=ctx)
    back = ctx.gather(part)
    ok = back is None if not ctx.is_root else back.shape == (3 * p, row) and matches(back)
    assert_all(ok, "row gather", ctx=ctx)
    used = {k: largecount.PATHS[k] - small_limit[k] for k in small_limit}
    if p > 1:
        assert_all(used["messages"] >= 2 and used["units"] >= 1 and used["bcast"] >= 2, str(used), ctx=ctx)


# ---- a rooted gather that cannot travel: refused on every rank, before any data moves ---------
def _gather_error(ctx, c, block):
    """The message of the ValueError that ``c.gather(block)`` raised here, or None."""
    try:
        c.gather(block)
    except ValueError as exc:
        return str(exc)
    return None


def _same_error_everywhere(ctx, err, big_rank):
    """Whether every rank got the same error naming the largest block's rank and its host."""
    import socket

    host = ctx.comm.bcast(socket.gethostname(), root=big_rank)
    ok = (err is not None and f"from rank {big_rank}, host {host})" in err
          and "share no unit larger than 1 bytes" in err and "use allgather" in err)
    return ok and ctx.comm.allgather(err) == [err] * ctx.size


@pytest.mark.timeout(60)
def test_a_rooted_gather_without_a_common_unit_fails_on_every_rank(ctx, small_limit):
    """Blocks of 2 bytes and one of 1001 (limit 1000): no unit brings the counts under the
    limit. Every rank raises the same ValueError before any data moves, checked and
    unchecked, also when the same counts come again (the verdict is kept); the context
    stays usable. One rank alone: its block is its own unit, and the gather works."""
    import hpcpar

    last = ctx.size - 1
    block = pattern(1001) if ctx.rank == last else pattern(2)
    unchecked = hpcpar.Context(ctx.comm, checks=False)
    for c in (ctx, unchecked, ctx):
        err = _gather_error(ctx, c, block)
        if ctx.size == 1:
            ok = err is None
        else:
            ok = _same_error_everywhere(ctx, err, last)
        assert_all(ok, f"checks={c.checks}: got {err!r}", ctx=ctx)
    used = {k: largecount.PATHS[k] - small_limit[k] for k in small_limit}
    moved = used["units"] + used["messages"]
    assert_all(moved == (3 if ctx.size == 1 else 0), f"paths taken: {used}", ctx=ctx)
    # equal blocks share a unit; allgather of the odd blocks goes as messages
    back = ctx.gather(pattern(1001))
    ok = back is None if not ctx.is_root else back.size == 1001 * ctx.size
    whole = ctx.allgather(block)
    ok = ok and whole.size == 2 * last + 1001
    assert_all(ok, "the context is usable after the refused gather", ctx=ctx)


@pytest.mark.timeout(60)
def test_a_rooted_gather_over_2_gib_without_a_common_unit_fails_before_allocating(ctx):
    """The same at full size: the last rank's block is 2**31 bytes, the others' 3 bytes.

    No memory is needed: the blocks are read-only broadcast views (``np.broadcast_to``
    of one byte: real ndarrays whose data is never read, because the gather decides from
    the shapes alone, before it copies or allocates anything). Were the check broken, the
    last rank would copy its 2 GiB block and the ranks would wait (the timeout ends it)."""
    if ctx.size == 1:
        pytest.skip("one block is always its own unit: needs two ranks")
    import hpcpar

    last = ctx.size - 1
    block = np.broadcast_to(np.uint8(7), (2**31,) if ctx.rank == last else (3,))
    largecount.force_units(True)
    try:
        for c in (ctx, hpcpar.Context(ctx.comm, checks=False)):
            err = _gather_error(ctx, c, block)
            ok = _same_error_everywhere(ctx, err, last) and f"add up to {2**31 + 3 * last} bytes" in err
            assert_all(ok, f"checks={c.checks}: got {err!r}", ctx=ctx)
    finally:
        largecount.force_units(None)
