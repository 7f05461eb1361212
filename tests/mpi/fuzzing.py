"""Shared pieces of the hypothesis round-trip tests under MPI (test_fuzz*.py).

Every rank must draw the same examples: :data:`FUZZ` is derandomized (the same
seed everywhere) with no example database, and the budget is bounded so that
CI stays fast.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from mpi4py import MPI

import hpcpar

SIZE = MPI.COMM_WORLD.Get_size()

#: examples per property test and rank count
EXAMPLES = 40

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=False)


@pytest.fixture(scope="module")
def contexts():
    """The world context and, for each k, a context of the first k ranks (None elsewhere)."""
    world = hpcpar.Context()
    subs = {}
    for k in range(1, SIZE + 1):
        comm = world.comm.Split(0 if world.rank < k else MPI.UNDEFINED, world.rank)
        subs[k] = hpcpar.Context(comm) if comm != MPI.COMM_NULL else None
        if comm != MPI.COMM_NULL:
            comm.Free()
    yield world, subs
    for c in subs.values():
        if c is not None:
            c.free()
    world.free()


def make(shape, dtype, seed):
    """A deterministic array of any dtype (random bytes; bools 0 or 1)."""
    raw = np.random.default_rng(seed).integers(0, 256, size=math.prod(shape) * dtype.itemsize,
                                               dtype=np.uint8)
    if dtype.kind == "b":
        raw %= 2
    return raw.view(dtype).reshape(shape)


def same(a, b) -> bool:
    """Bit-identical: same dtype, shape and bytes (NaNs and padding included)."""
    return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
            and a.tobytes() == b.tobytes())
