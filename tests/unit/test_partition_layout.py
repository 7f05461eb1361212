"""The pure geometry of a block-decomposed Cartesian grid (no MPI)."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcpar.decomp.partition import GridLayout, block_counts


def all_coords(lay):
    return [lay.coords(r) for r in range(lay.nprocs)]


@st.composite
def layouts(draw):
    ndim = draw(st.integers(1, 3))
    dims = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    halo = draw(st.integers(1, 3))
    shape = tuple(d * halo + draw(st.integers(0, 6)) for d in dims)
    periodic = tuple(draw(st.booleans()) for _ in range(ndim))
    return GridLayout(shape, dims, periodic, halo)


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_blocks_tile_the_global_array_exactly_once(lay):
    cover = np.zeros(lay.shape, int)
    for c in all_coords(lay):
        sl = lay.global_slices(c)
        assert tuple(s.stop - s.start for s in sl) == lay.local_shape(c)
        assert lay.halo_shape(c) == tuple(n + 2 * lay.halo for n in lay.local_shape(c))
        cover[sl] += 1
    assert (cover == 1).all()


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_ranks_are_row_major_and_neighbours_are_mutual(lay):
    coords = all_coords(lay)
    assert coords == list(itertools.product(*(range(d) for d in lay.dims)))
    for r, c in enumerate(coords):
        assert lay.rank(c) == r
        for off in lay.offsets():
            peer = lay.neighbor(c, off)
            wall = any(not p and not 0 <= ci + o < d
                       for ci, o, d, p in zip(c, off, lay.dims, lay.periodic))
            assert (peer is None) == wall
            if peer is not None:  # the neighbour sees this rank at the opposite offset
                assert lay.neighbor(lay.coords(peer), [-o for o in off]) == r


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_halo_regions_match_the_neighbours_cells(lay):
    """Every receive region, placed in global coordinates, is the neighbour's send region."""
    h = lay.halo
    for c in all_coords(lay):
        start = [s.start for s in lay.global_slices(c)]
        for off in lay.offsets():
            peer = lay.neighbor(c, off)
            if peer is None:
                continue
            _, recv = lay.halo_regions(c, off)
            pc = lay.coords(peer)
            psend, _ = lay.halo_regions(pc, [-o for o in off])
            pstart = [s.start for s in lay.global_slices(pc)]
            for k in range(lay.ndim):
                assert recv[k].stop - recv[k].start == psend[k].stop - psend[k].start
                # global index of the first cell on both sides, modulo the axis length
                g_recv = (start[k] + recv[k].start - h) % lay.shape[k]
                g_send = (pstart[k] + psend[k].start - h) % lay.shape[k]
                assert g_recv == g_send


def test_offsets_faces_and_corners():
    lay = GridLayout((8, 8, 8), (2, 2, 2))
    assert len(lay.offsets()) == 26
    faces = lay.offsets(corners=False)
    assert len(faces) == 6 and all(sum(map(abs, o)) == 1 for o in faces)


def test_neighbors_per_axis_with_walls_and_wraparound():
    lay = GridLayout((6, 6), (3, 2), periodic=(True, False))
    assert lay.neighbors((0, 0)) == ((lay.rank((2, 0)), lay.rank((1, 0))), (None, lay.rank((0, 1))))
    assert lay.neighbors((2, 1)) == ((lay.rank((1, 1)), lay.rank((0, 1))), (lay.rank((2, 0)), None))


def test_uneven_blocks_follow_block_counts():
    lay = GridLayout((10, 7), (3, 2))
    assert [lay.local_shape(c) for c in all_coords(lay)] == [
        (a, b) for a in block_counts(10, 3) for b in block_counts(7, 2)]


@pytest.mark.parametrize("shape,dims,periodic,halo,needle", [
    ((3, 8), (4, 1), False, 1, "no cells"),
    ((8, 3), (2, 2), False, 2, "only 1 cell"),
    ((1,), (1,), True, 2, "only 1 cell"),
])
def test_too_small_shape_names_shape_dims_and_halo(shape, dims, periodic, halo, needle):
    with pytest.raises(ValueError) as err:
        GridLayout(shape, dims, periodic, halo)
    msg = str(err.value)
    assert f"shape {shape}" in msg and f"dims {dims}" in msg and f"halo {halo}" in msg and needle in msg


def test_one_process_along_a_wall_bounded_axis_needs_only_one_cell():
    assert GridLayout((1, 9), (1, 3), periodic=(False, False), halo=3).local_shape((0, 1)) == (1, 3)


@pytest.mark.parametrize("kw,needle", [
    (dict(shape=(4, 4), dims=(2,)), "one entry per axis"),
    (dict(shape=(4, 4), dims=(2, 0)), "ints >= 1"),
    (dict(shape=(), dims=()), "non-empty"),
    (dict(shape=(4, 4), dims=(2, 2), periodic=(True,)), "periodic"),
    (dict(shape=(4, 4), dims=(2, 2), halo=0), "halo"),
])
def test_malformed_arguments(kw, needle):
    with pytest.raises(ValueError, match=needle):
        GridLayout(**kw)


def test_nprocs_is_the_product_of_dims():
    assert GridLayout((9, 9, 9), (3, 1, 2)).nprocs == math.prod((3, 1, 2))
