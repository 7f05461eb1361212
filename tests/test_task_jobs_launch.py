"""The task-parallel jobs started as scripts under mpiexec (workers spawned from the job script)."""

import sys

import pytest

from conftest import JOBS, run_mpi

pytestmark = pytest.mark.timeout(120)


def test_fibonacci_script_verifies(tmp_path):
    r = run_mpi(2, [str(JOBS / "fibonacci.py"), "--count", "400", "--max-n", "4000", "--verify"],
                timeout=100, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "every result verified by fast doubling" in r.stdout
    assert "400 numbers" in r.stdout


def test_mandelbrot_script_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "m.png"
    r = run_mpi(2, [str(JOBS / "mandelbrot.py"), "--width", "80", "--height", "60", "--png", str(png)],
                timeout=100)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert r.stdout.count("load imbalance") == 2


@pytest.mark.parametrize("n", [2, 3])
def test_mandelbrot_script_out_hdf5(tmp_path, n):
    import h5py
    import numpy as np

    sys.path.insert(0, str(JOBS))
    import mandelbrot

    w, h, m = 70, 53, 60
    path = tmp_path / "m.h5"
    r = run_mpi(n, [str(JOBS / "mandelbrot.py"), "--width", str(w), "--height", str(h),
                    "--max-iter", str(m), "--out", str(path)], timeout=100)
    assert r.returncode == 0, r.stderr
    assert f"wrote {path}" in r.stdout
    with h5py.File(path, "r") as f:
        image = f["image"][...]
        assert f.attrs["mpi_ranks"] == n
        assert (f["image"].attrs["width"], f["image"].attrs["height"]) == (w, h)
    assert image.dtype == np.uint16 and image.shape == (h, w)
    assert np.array_equal(image, mandelbrot.rows(0, h, w, h, m))


def test_crawler_serve_demo():
    r = run_mpi(3, [str(JOBS / "crawler.py"), "--serve-demo", "--pages", "150"], timeout=100)
    assert r.returncode == 0, r.stderr
    assert "the link graph matches the generated site" in r.stdout
