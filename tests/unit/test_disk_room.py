"""Root's disk reservations of the MPI-IO path (hpcpar.io.lock): real fallocate(2) on a real file."""

import os

import pytest

from hpcpar.io.lock import allocate, give_back, make_room, trim

MIB = 2**20


def blocks(path):
    return os.stat(path).st_blocks * 512


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "f.h5"
    path.write_bytes(b"x" * 1000)
    if not allocate(str(path), 4096):
        pytest.skip("this file system has no fallocate(2)")
    return str(path)


def test_allocate_reserves_blocks_past_the_end_and_keeps_the_size(small_file):
    before = blocks(small_file)
    assert allocate(small_file, MIB)
    assert os.path.getsize(small_file) == 1000  # the size stays HDF5's
    assert blocks(small_file) >= before + MIB - 8192
    grown = blocks(small_file)
    assert allocate(small_file, MIB) and allocate(small_file, 0)  # the same blocks again, no more
    assert blocks(small_file) == grown


def test_trim_frees_the_blocks_left_past_the_end(small_file):
    allocate(small_file, 4 * MIB)
    trim(small_file)  # not an HDF5 file: its size is kept
    assert os.path.getsize(small_file) == 1000
    assert blocks(small_file) < MIB
    with open(small_file, "rb") as f:
        assert f.read() == b"x" * 1000


def test_give_back_frees_a_range_that_then_reads_as_zeros(small_file):
    with open(small_file, "r+b") as f:
        f.write(b"y" * (2 * MIB))
    before = blocks(small_file)
    if not give_back(small_file, MIB, MIB):
        pytest.skip("this file system cannot punch holes")
    assert os.path.getsize(small_file) == 2 * MIB and blocks(small_file) <= before - MIB + 8192
    with open(small_file, "rb") as f:
        data = f.read()
    assert data[:MIB] == b"y" * MIB and data[MIB:] == bytes(MIB)
    assert not give_back(small_file, -1, MIB) and not give_back(small_file, 0, 0)


def test_make_room_names_the_file_when_the_disk_cannot_hold_it(small_file):
    with pytest.raises(OSError, match=r"cannot reserve .* bytes for .*f\.h5: .*what was written before is kept"):
        make_room(small_file, 2**62)  # more than any disk: ENOSPC or EFBIG
    assert os.path.getsize(small_file) == 1000
