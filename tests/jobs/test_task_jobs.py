"""The task-parallel jobs started as scripts under mpiexec (workers spawned from the job script)."""

import sys
from pathlib import Path

import pytest
from helpers import JOBS, run_mpi

CRASHING = str(Path(__file__).with_name("crashing.py"))

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


def _fib_run(n, ckpt, *extra, timeout=100, crash_after=None):
    job = [str(JOBS / "fibonacci.py")] if crash_after is None else [CRASHING, "fibonacci", str(crash_after)]
    args = [*job, "--count", "300", "--max-n", "3000", "--seed", "11",
            "--chunk", "10", "--workers", "1", *extra]
    if ckpt is not None:
        args += ["--checkpoint", str(ckpt)]
    return run_mpi(n, args, timeout=timeout)


def _saved(fibonacci, ckpt, ns, chunk):
    """The finished tasks in the checkpoint file, read with h5py (no MPI in this process)."""
    import h5py

    with h5py.File(ckpt, "r") as f:
        fields = {k: f["fields"][k][()] for k in f["fields"]}
    return fibonacci.decode(fields, ns, chunk, str(ckpt))


def _digest(stdout):
    import re

    found = re.findall(r"digest ([0-9a-f]{16})", stdout)
    assert len(found) == 1, stdout
    return found[0]


def test_fibonacci_killed_and_restarted_from_its_checkpoint_farms_only_missing_tasks(tmp_path):
    """kill -9 of root mid-run, then a restart (on another rank count): the same results."""
    sys.path.insert(0, str(JOBS))
    import re

    import fibonacci

    ns = fibonacci.inputs(300, 3000, seed=11)
    ntasks = 30
    serial = fibonacci.digest([fibonacci.fib_doubling(n) for n in ns])
    whole = _fib_run(2, None)
    assert whole.returncode == 0, whole.stderr
    assert _digest(whole.stdout) == serial

    ckpt = tmp_path / "fib.ckpt"
    crashed = _fib_run(2, ckpt, "--every", "4", crash_after=10)
    assert crashed.returncode != 0 and "digest" not in crashed.stdout, crashed.stdout
    saved = _saved(fibonacci, ckpt, ns, 10)  # a complete, consistent checkpoint
    assert 10 <= len(saved) < ntasks
    assert all(x == fibonacci.fib_doubling(n) for i, xs in saved.items()
               for n, x in zip(ns[i * 10:(i + 1) * 10], xs))

    resumed = _fib_run(3, ckpt, "--every", "4", "--verify")
    assert resumed.returncode == 0, resumed.stderr
    farmed = re.search(r"farmed (\d+) of (\d+) tasks", resumed.stdout)
    assert farmed and (int(farmed[1]), int(farmed[2])) == (ntasks - len(saved), ntasks), resumed.stdout
    assert _digest(resumed.stdout) == serial
    assert "every result verified" in resumed.stdout
    assert len(_saved(fibonacci, ckpt, ns, 10)) == ntasks

    again = _fib_run(2, ckpt)  # everything done: nothing farmed, the same results
    assert again.returncode == 0, again.stderr
    assert f"farmed 0 of {ntasks} tasks" in again.stdout and _digest(again.stdout) == serial


def test_fibonacci_truncated_checkpoint_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "fib.ckpt"
    first = _fib_run(2, ckpt, "--every", "50")
    assert first.returncode == 0, first.stderr
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:len(data) // 3])
    r = _fib_run(2, ckpt)
    assert r.returncode != 0
    assert f"fibonacci: rank 0: checkpoint '{ckpt}' is truncated or corrupt" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "digest" not in r.stdout
    assert ckpt.read_bytes() == data[:len(data) // 3]  # left as it was
