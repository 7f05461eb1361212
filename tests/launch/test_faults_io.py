"""The fault catalogue, Output and Checkpoint rows: bad paths and damaged checkpoints.

Real 3-rank jobs launched from plain pytest (see ``test_faults.py``): each failure
ends the job in under 10 s, non-zero, with the same clear error on every rank
and no process left behind; a damaged checkpoint with a readable previous one is
no failure at all.
"""

import os
import re
import time

import pytest
from helpers import run_mpi
from test_faults import run_fault, script

pytestmark = pytest.mark.timeout(90)


# ---- Output and Checkpoint: bad paths, damaged checkpoints ----------------------------
IO_JOB = """
    import sys, numpy as np, hpcpar
    def main(ctx):
        kind, path = sys.argv[1], sys.argv[2]
        try:
            if kind == "save":
                ck = hpcpar.Checkpoint(ctx, path)
                for step in (1, 2):
                    ck.save(step, x=np.full(4, float(step)))
            elif kind == "load":
                step, f = hpcpar.Checkpoint(ctx, path).load()
                sys.stdout.write(f"rank {ctx.rank} loaded step {step} x {f['x'].tolist()}\\n")
                sys.stdout.flush()
            else:
                with hpcpar.Output(ctx, path, mode=kind) as out:
                    out.write("x", np.zeros(3))
        except Exception as exc:
            sys.stdout.write(f"rank {ctx.rank} caught {type(exc).__name__}: {exc}\\n")  # one write
            sys.stdout.flush()
            raise
    hpcpar.run(main)
"""


def caught_on_every_rank(r, n, kind, text):
    """Every rank raised the same error, the collective form of the built-in ``kind``
    (hpcpar.errors: e.g. CollectiveOSError, which is also an OSError)."""
    kind = f"Collective{kind}"
    for rank in range(n):
        assert re.search(rf"rank {rank} caught {kind}: .*{re.escape(text)}", r.stdout), r.stdout + r.stderr
    assert re.search(rf"rank \d of {n} failed: {kind}: .*{re.escape(text)}", r.stderr), r.stderr


def unwritable_dir(tmp_path):
    """A directory where this process cannot create files (/sys when running as root), or None."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()
    except OSError:
        return str(ro)
    (ro / "probe").unlink()
    try:
        open("/sys/hpcpar-probe", "w").close()
    except OSError:
        return "/sys"  # even root cannot create files in sysfs
    os.unlink("/sys/hpcpar-probe")
    return None


def test_output_into_a_missing_directory(tmp_path):
    path = script(tmp_path, IO_JOB)
    target = tmp_path / "missing" / "o.h5"
    r = run_fault(3, path, args=["w", str(target)])
    caught_on_every_rank(r, 3, "FileNotFoundError", f"directory {target.parent} does not exist")
    assert not target.parent.exists()


def test_output_into_a_read_only_location(tmp_path):
    ro = unwritable_dir(tmp_path)
    if ro is None:
        pytest.skip("no location here refuses to create files")
    path = script(tmp_path, IO_JOB)
    r = run_fault(3, path, args=["w", os.path.join(ro, "o.h5")])
    caught_on_every_rank(r, 3, "PermissionError", f"cannot create files in {ro}")
    assert not os.path.exists(os.path.join(ro, "o.h5"))


def test_output_over_an_existing_file_with_mode_w_minus(tmp_path):
    path = script(tmp_path, IO_JOB)
    target = tmp_path / "o.h5"
    target.write_bytes(b"precious")
    r = run_fault(3, path, args=["w-", str(target)])
    caught_on_every_rank(r, 3, "FileExistsError", f"{target} already exists and mode='w-' does not overwrite")
    assert target.read_bytes() == b"precious"


def damage(path, how):
    if how == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    else:
        with open(path, "r+b") as f:
            f.write(b"\xff" * 64)  # the HDF5 superblock


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_damaged_checkpoint_uses_the_previous_one_or_fails_clearly(tmp_path, how):
    path = script(tmp_path, IO_JOB)
    ck = tmp_path / "c.h5"
    r = run_mpi(2, [path, "save", str(ck)], timeout=60)
    assert r.returncode == 0 and (tmp_path / "c.h5.prev").exists(), r.stderr
    damage(ck, how)
    # the previous checkpoint (step 1) is still used, on every rank, with a warning
    r = run_mpi(3, [path, "load", str(ck)], timeout=60)
    assert r.returncode == 0, r.stderr
    got = dict(re.findall(r"rank (\d) loaded step 1 x \[([\d., ]*)\]", r.stdout))
    assert sorted(got) == ["0", "1", "2"], r.stdout  # 8 values saved by 2 ranks, read back by 3
    assert [float(v) for rank in sorted(got) for v in got[rank].split(",")] == [1.0] * 8, r.stdout
    assert f"{ck} is unreadable" in r.stderr and f"loaded the previous checkpoint {ck}.prev (step 1)" in r.stderr
    # without it: a clear error naming the file, on every rank, quickly
    os.unlink(f"{ck}.prev")
    r = run_fault(3, path, args=["load", str(ck)])
    caught_on_every_rank(r, 3, "OSError", f"{ck} is not a readable HDF5 file, truncated or corrupted")


# ---- nothing already written is lost: two writers, options checked before computing ----------
HOLD_JOB = """
    import sys, time, numpy as np, hpcpar
    def main(ctx):
        with hpcpar.Output(ctx, sys.argv[1], "w") as out:
            out.write("x", np.full(4, 7.0))
            out.flush()
            if ctx.is_root:
                print("holding", flush=True)
            time.sleep(float(sys.argv[2]))
            out.write("y", np.full(2, 1.0))
    hpcpar.run(main)
"""


def test_a_second_job_writing_the_same_file_fails_and_the_first_keeps_its_file(tmp_path):
    import subprocess
    import sys

    from hpcpar.launch import launch_argv

    (tmp_path / "hold").mkdir()
    hold = script(tmp_path / "hold", HOLD_JOB)  # another script: the fault check looks for its own
    target = tmp_path / "shared.h5"
    first = subprocess.Popen(launch_argv(2, [sys.executable, hold, str(target), "6"]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "holding"
        r = run_fault(3, script(tmp_path, IO_JOB), args=["w", str(target)])
        caught_on_every_rank(r, 3, "OSError", f"{target} is open for writing in another process")
    finally:
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    import h5py
    with h5py.File(target, "r") as f:  # the first job's file is whole
        assert f["x"][()].tolist() == [7.0] * 8 and f["y"][()].tolist() == [1.0] * 4


BAD_OPTIONS = [
    ("heat.py", ["--png", "{tmp}/missing/u.png", "--n", "16", "--steps", "2"], "--png"),
    ("heat.py", ["--save-npy", "{tmp}/missing/u.npy"], "directory"),
    ("heat.py", ["--checkpoint", "/nonexistent/c.h5", "--steps", "10"], "--checkpoint /nonexistent/c.h5"),
    ("heat.py", ["--alpha", "0"], "--alpha must be a positive"),
    ("heat.py", ["--alpha", "-1"], "--alpha must be a positive"),
    ("pi.py", ["--samples", "1.5"], "not a whole number"),
    ("mandelbrot.py", ["--max-iter", "70000"], "--max-iter must be <= 65535"),
    ("mandelbrot.py", ["--width", "-5"], "--width must be >= 1"),
    ("fibonacci.py", ["--count", "-3"], "--count must be >= 0"),
    ("fibonacci.py", ["--checkpoint", "{tmp}/missing/f.ckpt"], "does not exist"),
    ("sort.py", ["--n", "2.5"], "not a whole number"),
]


@pytest.mark.parametrize("job,args,text", BAD_OPTIONS, ids=[f"{j}{' '.join(a)[:30]}" for j, a, _ in BAD_OPTIONS])
def test_bad_job_options_fail_before_computing_with_one_error(tmp_path, job, args, text):
    from helpers import JOBS

    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_mpi(3, [str(JOBS / job), *args], timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and text in errors[0], r.stderr
    assert "Traceback" not in r.stderr.replace("exited with status 2", ""), r.stderr


def test_heat_saves_its_checkpoint_also_when_steps_are_fewer_than_every(tmp_path):
    from helpers import JOBS

    ck = tmp_path / "c.h5"
    r = run_mpi(2, [str(JOBS / "heat.py"), "--n", "16", "--steps", "10", "--checkpoint", str(ck)], timeout=60)
    assert r.returncode == 0, r.stderr
    import h5py
    with h5py.File(ck, "r") as f:
        assert int(f.attrs["step"]) == 10


PARTIAL_WRITE_JOB = """
    import resource, sys, numpy as np, hpcpar
    def main(ctx):
        with hpcpar.Output(ctx, sys.argv[1]) as out:
            sys.stdout.write(f"rank {ctx.rank} mode {out.mode}\\n")
            sys.stdout.flush()
            out.write("a", np.full(2**14, float(ctx.rank + 1)))
            out.flush()
            if ctx.rank == 1:  # this rank alone may not write past 64 KiB
                resource.setrlimit(resource.RLIMIT_FSIZE, (2**16, resource.RLIM_INFINITY))
            out.write("b", np.full(2**17, float(ctx.rank + 1)))
    hpcpar.run(main)
"""


def test_an_io_error_on_one_rank_inside_hdf5s_collective_write(tmp_path):
    """On the MPI-IO path only rank 1's part of HDF5's collective write fails (its
    RLIMIT_FSIZE): the other ranks cannot leave HDF5's write, so the watchdog ends the job,
    its report naming rank 1 and the I/O error; the dataset flushed before reads back."""
    import h5py
    from helpers import expected_h5_mode

    if expected_h5_mode() != "mpio":
        pytest.skip("the serial path raises on every rank (tests/mpi/test_output.py); this needs MPI-IO")
    path, h5 = script(tmp_path, PARTIAL_WRITE_JOB), tmp_path / "o.h5"
    r = run_fault(3, path, limit=30, args=[str(h5)], env={"HPCPAR_TIMEOUT": "5"})
    assert r.stdout.count("mode mpio") == 3, r.stdout + r.stderr
    report = next((ln for ln in r.stderr.splitlines() if ln.startswith("hpcpar watchdog: rank")), "")
    assert re.search(r"rank 1: waiting in Output\.write of 'b', after an I/O error here: .*File too large", report), \
        r.stderr
    # ranks 0 and 2 are inside HDF5 (h5py holds the GIL there): each named by its mark, or
    # silent, alone ("rank 0: ...") or grouped with the other ("ranks 0, 2: ...")
    for rank in (0, 2):
        assert re.search(rf"(rank {rank}|ranks [0-9, ]*\b{rank}\b[0-9, ]*): "
                         r"(waiting in Output\.write of 'b' \(HDF5's collective write\)|no answer)", report), \
            report
    for _ in range(100):  # the aborted ranks' exits may still be releasing HDF5's lock on the file
        try:
            with h5py.File(h5, "r") as f:
                a = f["a"][()]
            break
        except BlockingIOError:
            time.sleep(0.1)
    else:
        pytest.fail(f"{h5} stayed locked 10 s after the job ended")
    assert a.shape == (3 * 2**14,) and all((a == v).sum() == 2**14 for v in (1.0, 2.0, 3.0)), a
