"""The checked-call protocol's pure pieces: header layout, plans, the bounded cache, error helpers."""

import numpy as np
import pytest

from hpcpar.core.cache import BoundedCache
from hpcpar.core.protocol import CUSTOM, NO_ARRAY, Call, Field, Kind, Plan, call_desc, pack, shape_of, unpack
from hpcpar.errors import CollectiveError, CollectiveTypeError, UsageError, collective_error, raise_problems


def test_bounded_cache_forgets_the_oldest_entry():
    cache = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)  # replacing keeps the size
    assert len(cache) == 2 and cache.get("a") == 10
    cache.put("c", 3)
    assert "a" not in cache and cache.get("b") == 2 and cache.get("c") == 3 and len(cache) == 2
    assert cache.get("zz") is None
    with pytest.raises(ValueError):
        BoundedCache(0)
    assert hash(Call.SCATTER) == hash(1) and {Call.SCATTER: 1}.get(1) == 1


def test_a_header_round_trips_every_field():
    arr, out = np.zeros((3, 4), np.float32), np.zeros(5, np.dtype(">i4"))
    h = unpack(pack(Call.REDUCE, 2, -1, False, arr, out, kind=Kind.ARRAY, op=7, site=9))[0]
    assert (h[Field.CALL], h[Field.ROOT], h[Field.PROBLEM], h[Field.AXIS]) == (Call.REDUCE, 2, 0, -1)
    assert (h[Field.KIND], h[Field.OP], h[Field.SITE]) == (Kind.ARRAY, 7, 9)
    assert shape_of(h) == (3, 4) and shape_of(h, out=True) == (5,)
    assert h[Field.DTYPE] == np.dtype(np.float32).num and h[Field.ODTYPE] == CUSTOM
    none = unpack(pack(Call.BARRIER, -1, "x", True, None, None))[0]
    assert none[Field.DTYPE] == NO_ARRAY and none[Field.AXIS] == 0 and none[Field.PROBLEM] == 1
    assert shape_of(none) == ()


def test_call_descriptions_name_the_call_root_dtype_and_op():
    from mpi4py import MPI

    arr = np.zeros(2)
    h = unpack(pack(Call.ALLREDUCE, -1, 0, False, arr, None, op=MPI.MAX.py2f()))[0]
    assert call_desc(h) == "allreduce(float64, op=max)"
    assert call_desc(unpack(pack(Call.FINISH, -1, 0, False, None, None))[0]) == \
        "returned from main (finished)"
    assert Call.FINISH.label == "finish" and Call.REDUCE.reduces and not Call.GATHER.reduces


def test_block_plan_counts_bytes_along_the_axis():
    p = Plan.blocks(1, np.dtype(np.int16), [2, 1], (4, 3, 5))
    assert p.shapes == [(4, 2, 5), (4, 1, 5)] and p.gshape == (4, 3, 5)
    assert p.bcounts == [2 * 20 * 2, 20 * 2] and p.bdispls == [0, 80]


def test_wrong_types_are_type_errors_and_value_errors():
    assert collective_error(TypeError) is CollectiveTypeError
    assert issubclass(CollectiveTypeError, TypeError) and issubclass(CollectiveTypeError, ValueError)
    with pytest.raises(CollectiveTypeError) as info:
        raise_problems("hpcpar.x", [None, ("TypeError", "bad"), ("TypeError", "bad")])
    assert str(info.value) == "hpcpar.x: rank 1: bad; rank 2: bad" and info.value.ranks == (1, 2)
    with pytest.raises(UsageError, match=r"^hpcpar.x: rank 0: a$"):
        raise_problems("hpcpar.x", [("ValueError", "a")], name_ranks=True)
    with pytest.raises(CollectiveError, match=r"^hpcpar.x: on every rank: a$"):
        raise_problems("hpcpar.x", [("ValueError", "a")] * 2)
    raise_problems("hpcpar.x", [None, None])  # nothing wrong: returns
