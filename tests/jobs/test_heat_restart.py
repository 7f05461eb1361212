"""jobs/heat.py with --out and --checkpoint: a run killed midway and restarted (on the
same or another number of ranks) ends bit-identical to an uninterrupted run.

Real MPI jobs launched from plain pytest. ``tests/jobs/crashing.py heat K`` runs
the job with its last rank killed (``kill -9``) right after step K (after that
step's snapshot and checkpoint), so MPICH ends the whole job as after a node failure.
"""

import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import JOBS, run_mpi

pytestmark = pytest.mark.timeout(120)

N, STEPS, EVERY, SNAP, CRASH = 64, 200, 40, 30, 130
HEAT = str(JOBS / "heat.py")
CRASHING = str(Path(__file__).with_name("crashing.py"))


def heat(ranks, tmp, *extra, timeout=60, crash_after=None):
    job = [HEAT] if crash_after is None else [CRASHING, "heat", str(crash_after)]
    return run_mpi(ranks, [*job, "--n", str(N), "--steps", str(STEPS), *extra], timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run on one rank: its final field and its --out file."""
    tmp = tmp_path_factory.mktemp("ref")
    r = heat(1, tmp, "--save-npy", str(tmp / "u.npy"), "--out", str(tmp / "o.h5"),
             "--snapshot-every", "10")
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp / "o.h5", "r") as f:
        snaps = f["snapshots"][()]
        steps = f.attrs["snapshot_steps"][()]
    assert list(steps) == list(range(10, STEPS + 1, 10))
    return np.load(tmp / "u.npy"), dict(zip(steps.tolist(), snaps))


READER = """
import sys, numpy as np, hpcpar
def main(ctx):
    path, npy = sys.argv[1], sys.argv[2]
    want = np.load(npy)
    with hpcpar.Grid(ctx, want.shape) as grid:
        u = hpcpar.read_grid(grid, path, "u")
        snaps = hpcpar.read(ctx, path, "snapshots")
    ok = np.array_equal(u, want[grid.global_slices]) and snaps.shape[1:] == want.shape
    if not all(ctx.comm.allgather(ok)):
        raise SystemExit("read_grid/read differ from the .npy")
    if ctx.is_root:
        print("read OK", ctx.size)
hpcpar.run(main)
"""


@pytest.mark.parametrize("before,after", [(2, 2), (3, 2)])
def test_killed_run_restarted_is_bit_identical(tmp_path, reference, before, after):
    ref_u, ref_snaps = reference
    ck, out, npy = tmp_path / "c.h5", tmp_path / "o.h5", tmp_path / "u.npy"
    args = ["--out", str(out), "--snapshot-every", str(SNAP), "--checkpoint", str(ck),
            "--every", str(EVERY), "--save-npy", str(npy)]
    r = heat(before, tmp_path, *args, crash_after=CRASH)
    assert r.returncode != 0 and not npy.exists(), r.stdout + r.stderr
    with h5py.File(ck, "r") as f:
        assert f.attrs["step"] == CRASH // EVERY * EVERY  # the last checkpoint before the crash
        assert f.attrs["mpi_ranks"] == before

    r = heat(after, tmp_path, *args)
    assert r.returncode == 0, r.stderr
    assert f"resuming from step {CRASH // EVERY * EVERY} of {ck}" in r.stdout
    assert "hpcpar timing" in r.stderr and all(f"  {k} " in r.stderr for k in ("compute", "exchange", "output"))
    got = np.load(npy)
    assert got.dtype == ref_u.dtype and np.array_equal(got, ref_u), \
        f"max diff {np.abs(got - ref_u).max()}"
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["u"][()], ref_u)
        assert f["snapshots"].shape == (STEPS // SNAP, N, N)
        steps = list(range(SNAP, STEPS + 1, SNAP))
        assert list(f.attrs["snapshot_steps"]) == steps
        assert np.array_equal(f["snapshots"][()], np.stack([ref_snaps[k] for k in steps]))  # none lost or doubled
        assert f.attrs["n"] == N and f.attrs["steps"] == STEPS and f.attrs["r"] == 0.2
        assert f.attrs["mpi_ranks"] == after and "hpcpar_version" in f.attrs
    reader = tmp_path / "reader.py"
    reader.write_text(textwrap.dedent(READER))
    r = run_mpi(after, [str(reader), str(out), str(npy)], timeout=60)
    assert r.returncode == 0 and f"read OK {after}" in r.stdout, r.stderr


def test_out_file_of_an_uninterrupted_run(tmp_path, reference):
    ref_u, ref_snaps = reference
    out = tmp_path / "o.h5"
    r = heat(3, tmp_path, "--out", str(out), "--snapshot-every", "70", "--dims", "3x1")
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert f["u"].shape == (N, N) and f["u"].dtype == np.float64
        assert np.array_equal(f["u"][()], ref_u)
        assert list(f.attrs["snapshot_steps"]) == [70, 140]
        assert np.array_equal(f["snapshots"][()], np.stack([ref_snaps[70], ref_snaps[140]]))
        assert f.attrs["decomposition"] == "(3, 1)" and f.attrs["dims"].tolist() == [3, 1]


def test_checkpoint_of_other_parameters_is_refused(tmp_path):
    ck = tmp_path / "c.h5"
    r = heat(2, tmp_path, "--checkpoint", str(ck), "--every", "50")
    assert r.returncode == 0, r.stderr
    r = run_mpi(2, [HEAT, "--n", "32", "--steps", str(STEPS), "--checkpoint", str(ck)], timeout=60)
    assert r.returncode != 0
    assert f"{ck}').load: the Grid field(s) {{'u': [64, 64]}} do not have the grid's shape [32, 32]" \
        in r.stderr, r.stderr
    r = run_mpi(2, [HEAT, "--n", str(N), "--steps", str(STEPS), "--r", "0.1", "--checkpoint", str(ck)],
                timeout=60)
    assert r.returncode != 0
    assert f"checkpoint {ck} was written by a run with --r 0.2 (this run: 0.1)" in r.stderr, r.stderr
    r = run_mpi(2, [HEAT, "--n", str(N), "--steps", "100", "--checkpoint", str(ck)], timeout=60)
    assert r.returncode != 0
    assert f"holds step {STEPS}, beyond --steps 100" in r.stderr, r.stderr


@pytest.mark.parametrize("ranks", [1, 3])
def test_a_run_resumed_at_its_last_step_computes_nothing_and_says_so(tmp_path, ranks):
    """The checkpoint already holds --steps: no speed is printed (nothing was timed), the
    field is the finished run's; a checkpoint beyond --steps is refused on every rank."""
    ck, npy = tmp_path / "c.h5", tmp_path / "u.npy"
    args = ["--checkpoint", str(ck), "--every", str(EVERY), "--save-npy", str(npy)]
    r = heat(2, tmp_path, *args)
    assert r.returncode == 0 and "ms/step" in r.stdout, r.stdout + r.stderr
    first = np.load(npy)
    npy.unlink()
    r = heat(ranks, tmp_path, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming from step {STEPS} of {ck}" in r.stdout
    assert f"no steps computed (resumed at step {STEPS})" in r.stdout, r.stdout
    assert "ms/step" not in r.stdout and "cells/s" not in r.stdout, r.stdout
    assert "ZeroDivisionError" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert np.array_equal(np.load(npy), first)
    r = run_mpi(ranks, [HEAT, "--n", str(N), "--steps", str(STEPS - 1), *args], timeout=60)
    assert r.returncode != 0 and f"holds step {STEPS}, beyond --steps {STEPS - 1}" in r.stderr, r.stderr
    assert "ms/step" not in r.stdout


def test_a_resumed_run_reports_the_speed_of_the_steps_it_computed():
    import sys

    sys.path.insert(0, str(JOBS))
    import heat as job

    assert job.rate(64, 0, 1.0, 200) == "no steps computed (resumed at step 200)"
    assert job.rate(64, 0, 0.0) == "no steps computed"
    assert job.rate(100, 50, 0.5, 150) == "50 steps computed (resumed at step 150), 10.000 ms/step, 1.0 M cells/s"
    assert job.rate(100, 10, 0.1) == "10.000 ms/step, 1.0 M cells/s"
    assert job.rate(100, 10, 0.0) == "0.000 ms/step"  # a clock that did not move: no division by zero
