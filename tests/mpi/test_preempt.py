"""ctx.should_stop(): a stop signal on any rank is seen by every rank at the same call."""

import os
import signal

import pytest

from hpcpar.core import preempt
from hpcpar.testing import assert_all, assert_equal_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def clean_stop_state():
    preempt.reset()
    yield
    preempt.reset()


def first_stop(ctx, calls, **kw):
    for k in range(calls):
        if ctx.should_stop(**kw):
            return k
    return None


def test_a_request_on_the_last_rank_stops_every_rank_at_the_same_call(ctx):
    def loop():
        for k in range(10):
            if k == 4 and ctx.rank == ctx.size - 1:
                preempt.request()
            if ctx.should_stop():
                return k
        return None
    stopped = loop()
    assert_equal_all(ctx.comm.allgather(stopped), [4] * ctx.size, ctx=ctx)
    assert_all(ctx.should_stop(), "should_stop stays true", ctx=ctx)


def test_a_real_sigusr1_on_root_is_seen_everywhere(ctx):
    assert_all(first_stop(ctx, 3) is None, "no stop without a signal", ctx=ctx)
    if ctx.is_root:
        os.kill(os.getpid(), signal.SIGUSR1)   # the handler is installed by should_stop
    ctx.barrier()
    assert_equal_all(ctx.comm.allgather(first_stop(ctx, 3)), [0] * ctx.size, ctx=ctx)
    assert_all(preempt.requested() == ctx.is_root, "only root got the signal", ctx=ctx)


def test_every_n_calls_communicates_only_on_multiples(ctx):
    if ctx.rank == ctx.size - 1:
        preempt.request()
    # calls 1 and 2 return False without communicating; call 3 reduces
    assert_equal_all(ctx.comm.allgather(first_stop(ctx, 10, every=3)), [2] * ctx.size, ctx=ctx)


def test_bad_every_and_array_index(ctx):
    with pytest.raises(ValueError, match="every=0"):
        ctx.should_stop(every=0)
    assert_all(ctx.array_index is None, "array_index is None outside a Slurm job array", ctx=ctx)
