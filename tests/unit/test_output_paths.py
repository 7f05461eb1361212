"""Local helpers of hpcpar.io (mode, slabs): chunk shapes, slab overlaps, the I/O path choice, path checks."""

import os

import h5py
import pytest

from hpcpar import env
from hpcpar.io.mode import check_path
from hpcpar.io.output import io_mode
from hpcpar.io.slabs import append_chunks, overlaps


@pytest.mark.parametrize("gshape,itemsize", [((10,), 8), ((4096, 4096), 8), ((0, 3), 4),
                                             ((3, 1000, 1000), 16), ((), 8)])
def test_append_chunks_are_one_step_and_about_a_mebibyte(gshape, itemsize):
    chunk = append_chunks(gshape, itemsize)
    assert chunk[0] == 1 and len(chunk) == len(gshape) + 1
    assert all(1 <= c <= max(n, 1) for c, n in zip(chunk[1:], gshape))
    nbytes = itemsize
    for c in chunk:
        nbytes *= c
    assert nbytes <= 2**20 or all(c == 1 for c in chunk)


def test_overlaps_finds_the_ranks_whose_slabs_intersect():
    disjoint = [((0, 0), (2, 3)), ((2, 0), (2, 3)), ((0, 3), (4, 1)), ((9, 9), (0, 0))]
    assert overlaps(disjoint) is None
    assert overlaps(disjoint + [((1, 2), (2, 2))]) == (0, 4)
    assert overlaps([((5,), (0,)), ((5,), (0,))]) is None  # empty slabs never overlap


def test_io_mode_follows_the_argument_and_the_environment(monkeypatch):
    auto = "mpio" if h5py.get_config().mpi else "serial"
    monkeypatch.delenv(env.HPCPAR_H5, raising=False)
    assert io_mode() == auto
    assert io_mode("serial") == "serial"
    monkeypatch.setenv(env.HPCPAR_H5, "serial")
    assert io_mode() == "serial" and io_mode("auto") == auto
    monkeypatch.setenv(env.HPCPAR_H5, "posix")
    with pytest.raises(ValueError, match="HPCPAR_H5='posix' is not one of"):
        io_mode()
    if not h5py.get_config().mpi:
        monkeypatch.setenv(env.HPCPAR_H5, "mpio")
        with pytest.raises(ValueError, match="HPCPAR_H5=mpio, but this h5py was built without MPI"):
            io_mode()


def test_check_path_names_the_problem_and_creates_nothing(tmp_path):
    existing = tmp_path / "f.h5"
    existing.write_bytes(b"x")
    assert check_path(str(tmp_path / "new.h5"), "w") is None
    assert check_path(str(existing), "w") is None
    assert check_path(str(existing), "w-")[0] == "FileExistsError"
    assert check_path(str(tmp_path / "new.h5"), "r+")[0] == "FileNotFoundError"
    assert check_path(str(tmp_path / "no" / "f.h5"), "w")[0] == "FileNotFoundError"
    assert check_path(str(tmp_path), "w")[0] == "IsADirectoryError"
    assert sorted(os.listdir(tmp_path)) == ["f.h5"]
