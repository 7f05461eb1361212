"""The heat and sort jobs launched as real MPI jobs at 1 to 4 ranks (from plain pytest)."""

import importlib.util
import re

import numpy as np
import pytest
from helpers import JOBS, run_mpi, serial_heat

pytestmark = pytest.mark.timeout(180)


def test_heat_field_is_bit_identical_on_1_2_3_4_ranks_and_to_serial(tmp_path):
    n, steps = 37, 60
    want = serial_heat(n, 0.2, steps)
    for ranks in (1, 2, 3, 4):
        out = tmp_path / f"u{ranks}.npy"
        r = run_mpi(ranks, [str(JOBS / "heat.py"), "--n", str(n), "--steps", str(steps),
                            "--save-npy", str(out)], timeout=60)
        assert r.returncode == 0, r.stderr
        assert re.search(rf"heat: {n} x {n} grid on {ranks} ranks .* ms/step.*error vs exact", r.stdout)
        got = np.load(out)
        assert got.shape == (n, n)
        assert np.array_equal(got, want), f"{ranks} ranks: max diff {np.abs(got - want).max()}"


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs the plot extra")
def test_heat_png(tmp_path):
    png = tmp_path / "heat.png"
    r = run_mpi(2, [str(JOBS / "heat.py"), "--n", "24", "--steps", "5", "--png", str(png)], timeout=60)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heat_rejects_bad_dims_on_every_rank():
    r = run_mpi(2, [str(JOBS / "heat.py"), "--n", "8", "--steps", "1", "--dims", "3x1"], timeout=30)
    assert r.returncode != 0
    assert "dims (3, 1) make a grid of 3 processes, but the context has 2 ranks" in r.stderr


@pytest.mark.parametrize("ranks,extra", [
    (1, ["--dtype", "int64"]),
    (2, ["--dtype", "float64", "--distinct", "40"]),
    (3, ["--dtype", "int32", "--distinct", "3"]),
    (4, ["--dtype", "float64"]),
])
def test_sort_job_at_1_2_3_4_ranks(ranks, extra):
    r = run_mpi(ranks, [str(JOBS / "sort.py"), "--n", "20000", "--check", *extra], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"on {ranks} ranks" in r.stdout and "verified against np.sort" in r.stdout, r.stdout


def test_sort_job_with_fewer_keys_than_ranks():
    r = run_mpi(3, [str(JOBS / "sort.py"), "--n", "2", "--check"], timeout=60)
    assert r.returncode == 0 and "verified against np.sort" in r.stdout, r.stdout + r.stderr


def test_bench_halo_runs_small_and_prints_ratios():
    r = run_mpi(2, ["-m", "hpcpar", "bench", "halo", "--size", "64", "--sort-keys", "5000",
                    "--min-time", "0.01", "--repeats", "1"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for word in ("hand-written", "hpcpar overlap", "1 rank", "speedup vs 1 rank", "sample_sort", "np.sort"):
        assert word in r.stdout, r.stdout
