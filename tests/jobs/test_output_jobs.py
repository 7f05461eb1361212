"""Output and Checkpoint across jobs: write on n ranks and read on m, and kill -9 during save.

These tests launch real MPI jobs from plain pytest (``run_mpi``), so the writer
and the reader can have different numbers of ranks.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import ROOT, expected_h5_mode, mpiexec, run_mpi

TESTS = str(ROOT / "tests")
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)}

WRITER = """
import sys, numpy as np, hpcpar
from gridstub import BlockGrid

def main(ctx):
    path, ckpt = sys.argv[1], sys.argv[2]
    # uneven blocks: rank r holds r + 1 rows of a (sum, 3) array
    start = ctx.rank * (ctx.rank + 1) // 2
    rows = np.arange(3 * start, 3 * (start + ctx.rank + 1), dtype=np.int64).reshape(-1, 3)
    grid = BlockGrid(ctx, (7, 5))
    u = grid.zeros()
    grid.interior(u)[...] = np.arange(35.0).reshape(7, 5)[grid.global_slices]
    with hpcpar.Output(ctx, path) as out:
        expect = sys.argv[3]
        if expect != "-" and out.mode != expect:
            raise SystemExit(f"Output.mode is {out.mode}, expected {expect}")
        out.write("rows", rows)
        out.write("u", grid, u)
        out.append("snap", grid, u)
        out.append("snap", grid, -u)
    hpcpar.Checkpoint(ctx, ckpt).save(42, rows=rows, u=(grid, u), t=1.25)
    if ctx.is_root:
        print("written", ctx.size)

hpcpar.run(main)
"""

READER = """
import sys, numpy as np, hpcpar
from hpcpar.decomp import partition
from gridstub import BlockGrid

def main(ctx):
    path, ckpt, n_writers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    nrows = n_writers * (n_writers + 1) // 2
    full = np.arange(3 * nrows, dtype=np.int64).reshape(-1, 3)
    r = partition.block_range(nrows, ctx.size, ctx.rank)
    g = np.arange(35.0).reshape(7, 5)
    grid = BlockGrid(ctx, (7, 5))
    checks = {
        "rows": np.array_equal(hpcpar.read(ctx, path, "rows"), full[r.start:r.stop]),
        "u": np.array_equal(hpcpar.read_grid(grid, path, "u"), g[grid.global_slices]),
        "snap": np.array_equal(hpcpar.read(ctx, path, "snap", axis=None), np.stack([g, -g])),
    }
    step, f = hpcpar.Checkpoint(ctx, ckpt).load(grid=grid)
    checks["ckpt step"] = step == 42
    checks["ckpt rows"] = np.array_equal(f["rows"], full[r.start:r.stop])
    checks["ckpt u"] = np.array_equal(f["u"], g[grid.global_slices])
    checks["ckpt t"] = f["t"] == 1.25
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise SystemExit(f"rank {ctx.rank} of {ctx.size}: wrong {bad}")
    print(f"rank {ctx.rank} of {ctx.size} read OK", flush=True)

hpcpar.run(main)
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("n,m", [(3, 2), (2, 3), (1, 3), (3, 1)])
def test_write_on_n_ranks_read_and_restore_on_m(tmp_path, n, m):
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "reader.py").write_text(READER)
    h5, ck = str(tmp_path / "out.h5"), str(tmp_path / "ck.h5")
    w = run_mpi(n, [str(tmp_path / "writer.py"), h5, ck, expected_h5_mode() or "-"], env=ENV, timeout=90)
    assert w.returncode == 0, w.stdout + w.stderr
    assert f"written {n}" in w.stdout
    r = run_mpi(m, [str(tmp_path / "reader.py"), h5, ck, str(n)], env=ENV, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    for i in range(m):
        assert f"rank {i} of {m} read OK" in r.stdout, r.stdout + r.stderr


SAVER = """
import os, sys, numpy as np, hpcpar
from hpcpar.decomp import partition

N = 20000

def fields(ctx, step):
    r = partition.block_range(N, ctx.size, ctx.rank)
    x = np.arange(r.start, r.stop, dtype=np.float64) + 1000.0 * step
    return {"x": x, "y": np.full((r.stop - r.start, 2), -step, np.int32), "s": step}

def main(ctx):
    ck = hpcpar.Checkpoint(ctx, sys.argv[1])
    state = ck.load()
    step = state[0] if state else 0
    first = True
    while True:
        step += 1
        ck.save(step, **fields(ctx, step))
        if first and ctx.rank == int(sys.argv[2]):  # one rank reports, so lines never interleave
            print("saved", os.getpid(), flush=True)
        first = False

hpcpar.run(main)
"""


def _check_consistent(state, n=20000):
    """(step, problem) of a loaded checkpoint written by SAVER on one rank."""
    step, f = state
    problems = []
    if sorted(f) != ["s", "x", "y"]:
        problems.append(f"fields {sorted(f)}")
    else:
        if f["s"] != step:
            problems.append(f"s={f['s']} in the checkpoint of step {step}")
        if not np.array_equal(f["x"], np.arange(n, dtype=np.float64) + 1000.0 * step):
            problems.append("x is not that of the step")
        if f["y"].shape != (n, 2) or not np.all(f["y"] == -step):
            problems.append("y is not that of the step")
    return step, "; ".join(problems)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_at_random_moments_during_save_leaves_a_loadable_checkpoint(tmp_path):
    """50 runs killed with SIGKILL at random moments of a save loop; after each,
    the checkpoint loads completely and is the latest or an earlier one, never corrupt."""
    import hpcpar

    saver = tmp_path / "saver.py"
    saver.write_text(textwrap.dedent(SAVER))
    path = tmp_path / "ck.h5"
    rng = random.Random(1234)
    ctx = hpcpar.Context()
    last, kinds = 0, {1: 0, 2: 0}
    try:
        for it in range(50):
            ranks = 2 if it % 5 == 4 else 1  # every fifth run: two ranks, one of them killed
            victim = rng.randrange(ranks)  # the rank that reports its pid and is killed
            cmd = ([mpiexec(), "-n", "2"] if ranks == 2 else []) + [sys.executable, str(saver), str(path),
                                                                    str(victim)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, **ENV}, start_new_session=True)
            try:
                line = proc.stdout.readline()  # after the first save of this run
                assert line.startswith("saved"), line + proc.stderr.read()
                time.sleep(rng.uniform(0.0, 0.06))
                os.kill(int(line.split()[1]), signal.SIGKILL)
                if ranks == 2:  # the launcher tears the rest of the job down
                    proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                proc.stdout.close()
                proc.stderr.close()
            kinds[ranks] += 1
            state = hpcpar.Checkpoint(ctx, path).load()
            assert state is not None, f"run {it}: no checkpoint after a completed save"
            step, problem = _check_consistent(state)
            assert not problem, f"run {it}: checkpoint of step {step} is inconsistent: {problem}"
            assert step > last, f"run {it}: step went from {last} to {step}"
            last = step
    finally:
        ctx.free()
    assert kinds == {1: 40, 2: 10}
