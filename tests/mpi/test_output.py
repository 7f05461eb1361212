"""Output, read and read_grid under real MPI and real HDF5 files, on both I/O paths.

Run with ``mpiexec -n N python -m pytest --with-mpi``. With the pip h5py only the
serial path exists; in ``make test-parallel-hdf5`` (h5py built with MPI) both the
mpio path and the forced serial path run, and ``HPCPAR_EXPECT_H5_MODE=mpio``
makes every test assert that the automatic path is mpio.
"""

import contextlib
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from gridstub import BlockGrid
from helpers import expected_h5_mode

import hpcpar
from hpcpar import Output, partition, read, read_grid
from hpcpar.io.output import io_mode
from hpcpar.launch.spawn import job_env
from hpcpar.testing import assert_all, assert_equal_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]

#: The I/O paths to run: the automatic one, and the serial one by small gathers
#: and by token passing (forced; the same as the automatic one with the pip h5py).
PATHS = [("auto", None), ("serial", None), ("serial", 0)]
PATH_IDS = ["auto", "serial-gather", "serial-token"]


def open_out(ctx, path, io, gather=None, **kw):
    if gather is not None:
        kw["gather_bytes"] = gather
    out = Output(ctx, path, io=io, **kw)
    if io == "auto":
        want = expected_h5_mode() or io_mode()
        assert_all(out.mode == want, f"Output.mode is {out.mode}, expected {want}", ctx=ctx)
    else:
        assert_all(out.mode == io, f"Output.mode is {out.mode}, forced {io}", ctx=ctx)
    return out


def uneven_counts(n_ranks):
    """Uneven rows per rank, rank 1 empty: 2, 0, 3, 1, 2, 0, ..."""
    return [(2, 0, 3, 1)[r % 4] for r in range(n_ranks)]


def global_array(shape, dtype, seed=1):
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "b":
        return (np.arange(n) % 3 == 0).reshape(shape)
    if dt.kind == "S":
        return np.array([b"%02d" % (i % 100) for i in range(n)], dtype=dt).reshape(shape)
    if dt.names:
        a = np.zeros(n, dt)
        a["a"] = np.arange(n)
        a["b"] = np.arange(2 * n).reshape(n, 2) * 0.5
        return a.reshape(shape)
    rng = np.random.default_rng(seed)
    vals = rng.integers(0, 100, size=n)
    if dt.kind == "c":
        return (vals + 1j * vals[::-1]).astype(dt).reshape(shape)
    return vals.astype(dt).reshape(shape)


def my_rows(counts, rank):
    start = sum(counts[:rank])
    return start, start + counts[rank]


def whole(ctx, path, name):
    """The whole dataset, read by root with plain h5py after the file is closed."""
    if not ctx.is_root:
        return None
    with h5py.File(path, "r") as f:
        return f[name][()]


def test_automatic_io_path_is_the_expected_one(ctx, shared_dir):
    want = expected_h5_mode()
    mode = io_mode()
    if want:
        assert_all(mode == want, f"io_mode() is {mode}, {want} expected (HPCPAR_EXPECT_H5_MODE)", ctx=ctx)
    assert_all(mode == ("mpio" if h5py.get_config().mpi else "serial"), f"io_mode() {mode}", ctx=ctx)
    with Output(ctx, shared_dir / "m.h5") as out:
        got = out.mode
        stored = out.attrs["io_mode"]
    assert_all(got == mode and stored == mode, f"Output.mode {got}, attribute {stored}", ctx=ctx)


@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("shape,axis", [((4,), 0), ((3, 4), 1), ((2, 3, 4), 2), ((5, 3), 0),
                                        ((2, 3, 4), -2)])
def test_write_read_roundtrip_uneven_and_empty_blocks(ctx, shared_dir, io, gather, shape, axis):
    ax = axis % len(shape)
    counts = uneven_counts(ctx.size)
    gshape = shape[:ax] + (sum(counts),) + shape[ax + 1:]
    a = global_array(gshape, np.float64)
    lo, hi = my_rows(counts, ctx.rank)
    local = np.take(a, np.arange(lo, hi), axis=ax)
    path = shared_dir / "rt.h5"
    with open_out(ctx, path, io, gather) as out:
        out.write("a", local, axis=axis)
    got = whole(ctx, path, "a")
    assert_all(not ctx.is_root or (got.shape == a.shape and np.array_equal(got, a)),
               f"file holds {None if got is None else got.shape}, expected {a.shape}", ctx=ctx)
    back = read(ctx, path, "a", axis=axis, io=io)
    r = partition.block_range(gshape[ax], ctx.size, ctx.rank)
    assert_equal_all(back, np.take(a, np.arange(r.start, r.stop), axis=ax), ctx=ctx)
    assert_equal_all(read(ctx, path, "a", axis=None, io=io), a, ctx=ctx)


@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
def test_all_blocks_empty_and_more_ranks_than_rows(ctx, shared_dir, io, gather):
    path = shared_dir / "empty.h5"
    with open_out(ctx, path, io, gather) as out:
        out.write("none", np.zeros((0, 3), np.int32))
        out.write("one", np.ones((1 if ctx.is_root else 0, 2)))
    assert_equal_all(read(ctx, path, "none", io=io), np.zeros((0, 3), np.int32), ctx=ctx)
    expect = np.ones((1, 2)) if ctx.is_root else np.ones((0, 2))
    assert_equal_all(read(ctx, path, "one", io=io), expect, ctx=ctx)


DTYPES = [np.bool_, np.int8, np.uint16, np.int64, np.float32, np.complex128, np.dtype(">f8"),
          np.dtype("S2"), np.dtype([("a", "<i4"), ("b", "<f8", (2,))])]


@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(ctx, shared_dir, io, gather, dtype):
    counts = uneven_counts(ctx.size)
    a = global_array((sum(counts), 2), dtype)
    lo, hi = my_rows(counts, ctx.rank)
    path = shared_dir / "dt.h5"
    with open_out(ctx, path, io, gather) as out:
        out.write("a", a[lo:hi])
    back = read(ctx, path, "a", io=io)
    r = partition.block_range(a.shape[0], ctx.size, ctx.rank)
    assert_equal_all(back, a[r.start:r.stop], ctx=ctx)
    assert_all(back.dtype == a.dtype, f"read dtype {back.dtype}, wrote {a.dtype}", ctx=ctx)


@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
def test_write_root_attrs_and_provenance(ctx, shared_dir, io, gather, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    path = shared_dir / "root.h5"
    table = np.arange(12, dtype=np.int16).reshape(3, 4)
    with open_out(ctx, path, io, gather, decomposition=(ctx.size,)) as out:
        out.write_root("table", table if ctx.is_root else None, attrs={"units": "m"})
        out.write_root("dt", np.float64(0.25) if ctx.is_root else "ignored")
        out.attrs["nsteps"] = 100 if ctx.is_root else -1  # root's value is written
        out.attrs.update({"name": "test", "alpha": np.array([1.0, 2.0])})
        values = (out.attrs["nsteps"], out.attrs["name"], "alpha" in out.attrs, "nope" in out.attrs)
        prov = {k: out.attrs[k] for k in ("hpcpar_version", "mpi_ranks", "decomposition",
                                          "slurm_job_id", "mpi_library", "utc_time", "command_line")}
    assert_all(values == (100, "test", True, False), f"attrs read back as {values}", ctx=ctx)
    assert_all(prov["hpcpar_version"] == hpcpar.__version__ and prov["mpi_ranks"] == ctx.size
               and prov["decomposition"] == str((ctx.size,)) and prov["slurm_job_id"] == "4242"
               and prov["mpi_library"] and prov["utc_time"].endswith("+00:00") and prov["command_line"],
               f"provenance {prov}", ctx=ctx)
    assert_equal_all(read(ctx, path, "table", axis=None, io=io), table, ctx=ctx)
    assert_equal_all(read(ctx, path, "dt", io=io), np.float64(0.25), ctx=ctx)
    if ctx.is_root:
        with h5py.File(path, "r") as f:
            units = f["table"].attrs["units"]
    assert_all(not ctx.is_root or units == "m", "dataset attribute", ctx=ctx)


def test_no_slurm_job_id_attribute_outside_slurm(ctx, shared_dir, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with Output(ctx, shared_dir / "p.h5") as out:
        has = "slurm_job_id" in out.attrs
    assert_all(not has, "slurm_job_id written without SLURM_JOB_ID", ctx=ctx)


@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
def test_append_snapshots(ctx, shared_dir, io, gather):
    counts = uneven_counts(ctx.size)
    lo, hi = my_rows(counts, ctx.rank)
    path = shared_dir / "snap.h5"
    steps = []
    with open_out(ctx, path, io, gather) as out:
        for t in range(4):
            steps.append(out.append("u", np.arange(lo, hi) * 10.0 + t))
        with pytest.raises(ValueError, match="appending needs an extendible dataset"):
            out.append("u", np.zeros((hi - lo, 2)))  # a different shape: refused everywhere
    assert_all(steps == [0, 1, 2, 3], f"append returned {steps}", ctx=ctx)
    n = sum(counts)
    expect = np.arange(n)[None, :] * 10.0 + np.arange(4)[:, None]
    got = whole(ctx, path, "u")
    assert_all(not ctx.is_root or np.array_equal(got, expect), f"snapshots {got}", ctx=ctx)
    # Reopened with mode="a", appending goes on where it stopped.
    with open_out(ctx, path, io, gather, mode="a") as out:
        t = out.append("u", np.arange(lo, hi) * 10.0 + 4)
    assert_all(t == 4, f"append after reopening returned {t}", ctx=ctx)
    back = read(ctx, path, "u", axis=1, io=io)
    r = partition.block_range(n, ctx.size, ctx.rank)
    full = np.arange(n)[None, :] * 10.0 + np.arange(5)[:, None]
    assert_equal_all(back, full[:, r.start:r.stop], ctx=ctx)


@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
def test_resume_truncates_appended_steps_and_deletes(ctx, shared_dir, io, gather):
    """A run resumed at a step reopens its file, truncates the appended steps it
    will redo, deletes its final field and writes them again."""
    counts = uneven_counts(ctx.size)
    lo, hi = my_rows(counts, ctx.rank)
    n = sum(counts)
    path = shared_dir / "resume.h5"
    with open_out(ctx, path, io, gather) as out:
        for t in range(5):
            out.append("u", np.arange(lo, hi) * 10.0 + t)
        out.write("final", np.arange(lo, hi) * 1.0)
    with open_out(ctx, path, io, gather, mode="a") as out:
        has = ("u" in out, "final" in out, "nothing" in out)
        before = out.steps("u")
        out.truncate("u", 2)
        after = out.steps("u")
        out.delete("final")
        gone = "final" in out
        t = out.append("u", np.arange(lo, hi) * 10.0 + 7)
        out.write("final", np.arange(lo, hi) * 2.0)
        with pytest.raises(ValueError, match=r"'u' has 3 steps; cannot truncate it to 9"):
            out.truncate("u", 9)
        with pytest.raises(ValueError, match="steps must be an int >= 0"):
            out.truncate("u", -1)
        with pytest.raises(ValueError, match="'final' is not an extendible dataset"):
            out.truncate("final", 0)
        with pytest.raises(KeyError, match="has no dataset 'nothing'"):
            out.truncate("nothing", 0)
        with pytest.raises(KeyError, match="has no 'nothing'"):
            out.delete("nothing")
        with pytest.raises(hpcpar.CollectiveError):
            out.steps("final")
    ok = has == (True, True, False) and (before, after, t) == (5, 2, 2) and not gone
    assert_all(ok, f"in {has}, steps {before} -> {after}, append -> {t}, deleted: {gone}", ctx=ctx)
    expect = np.arange(n)[None, :] * 10.0 + np.array([0, 1, 7])[:, None]
    got, final = whole(ctx, path, "u"), whole(ctx, path, "final")
    good = not ctx.is_root or (np.array_equal(got, expect) and np.array_equal(final, np.arange(n) * 2.0))
    assert_all(good, f"after resuming: {got}, {final}", ctx=ctx)


@pytest.mark.checks
@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
def test_truncate_to_different_steps_fails_on_every_rank(ctx, shared_dir, io, gather):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    path = shared_dir / "steps.h5"
    with open_out(ctx, path, io, gather) as out:
        for t in range(3):
            out.append("u", np.full(2, float(t)))
        with pytest.raises(ValueError, match="ranks pass different steps"):
            out.truncate("u", ctx.rank)
        steps = out.steps("u")
    assert_all(steps == 3, f"a refused truncate left {steps} steps", ctx=ctx)


@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("shape", [(7, 5), (4, 3, 5), (9,)])
def test_grid_write_append_and_read_grid(ctx, shared_dir, io, gather, shape):
    grid = BlockGrid(ctx, shape, halo=1)
    g = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    u = grid.zeros()
    u[...] = -1.0  # halo values must not reach the file
    grid.interior(u)[...] = g[grid.global_slices]
    path = shared_dir / "grid.h5"
    with open_out(ctx, path, io, gather) as out:
        out.write("u", grid, u)
        out.append("snap", grid, u)
        out.append("snap", grid, 2 * u)
        dec = out.attrs["decomposition"]
    assert_all(dec == str(grid.dims), f"decomposition attribute {dec!r}", ctx=ctx)
    got = whole(ctx, path, "u")
    assert_all(not ctx.is_root or np.array_equal(got, g), "the file holds the global field", ctx=ctx)
    snap = whole(ctx, path, "snap")
    assert_all(not ctx.is_root or np.array_equal(snap, np.stack([g, 2 * g])), "snapshots", ctx=ctx)
    assert_equal_all(read_grid(grid, path, "u", io=io), g[grid.global_slices], ctx=ctx)
    v = grid.zeros()
    res = read_grid(grid, path, "u", out=v, io=io)
    assert_equal_all(grid.interior(v), g[grid.global_slices], ctx=ctx)
    assert_all(res is v and np.all(v[(0,) * v.ndim] == 0.0), "out= filled, halo untouched", ctx=ctx)


def test_read_grid_refuses_a_dataset_of_another_shape(ctx, shared_dir):
    path = shared_dir / "g.h5"
    with Output(ctx, path) as out:
        out.write("x", np.zeros(3))
    grid = BlockGrid(ctx, (4, 4))
    with pytest.raises(ValueError, match=rf"has shape \[{3 * ctx.size}\], the grid \[4, 4\]"):
        read_grid(grid, path, "x")


@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
def test_compression(ctx, shared_dir, io, gather):
    counts = uneven_counts(ctx.size)
    lo, hi = my_rows(counts, ctx.rank)
    local = np.repeat(np.arange(lo, hi, dtype=np.float64)[:, None], 50, axis=1)
    path = shared_dir / "z.h5"
    with open_out(ctx, path, io, gather) as out:
        out.write("z", local, compression="gzip", compression_opts=4)
    if ctx.is_root:
        with h5py.File(path, "r") as f:
            comp = f["z"].compression
    assert_all(not ctx.is_root or comp == "gzip", "dataset is gzip-compressed", ctx=ctx)
    r = partition.block_range(sum(counts), ctx.size, ctx.rank)
    expect = np.repeat(np.arange(r.start, r.stop, dtype=np.float64)[:, None], 50, axis=1)
    assert_equal_all(read(ctx, path, "z", io=io), expect, ctx=ctx)


# ---------------------------------------------------------------- errors on every rank
# A bad argument every rank passes alike; ranks that disagree are below, marked `checks`
# (tests of the agreement, skipped under HPCPAR_CHECKS=0).
def test_bad_arguments_raise_on_every_rank_and_the_file_stays_usable(ctx, shared_dir):
    path = shared_dir / "bad.h5"
    with Output(ctx, path) as out:
        with pytest.raises(ValueError, match="HDF5 cannot store dtype <U3"):
            out.write("s", np.array(["abc"] * 2))
        with pytest.raises(ValueError, match="must be a NumPy array"):
            out.write("l", [1, 2, 3])
        with pytest.raises(ValueError, match="axis=2 is out of range"):
            out.write("a", np.zeros((2, 2)), axis=2)
        out.write("ok", np.full(2, ctx.rank))
        with pytest.raises(ValueError, match="'ok' already exists"):
            out.write("ok", np.full(2, ctx.rank))
        out.write("after", np.full(1, ctx.rank))  # still usable
    assert_equal_all(read(ctx, path, "after", axis=None), np.arange(ctx.size), ctx=ctx)
    with pytest.raises(KeyError, match="has no dataset 'missing'"):
        read(ctx, path, "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read(ctx, shared_dir / "nope.h5", "x")


@pytest.mark.checks
def test_ranks_that_disagree_raise_on_every_rank_and_the_file_stays_usable(ctx, shared_dir):
    if ctx.size == 1:
        pytest.skip("needs two ranks to disagree")
    path = shared_dir / "disagree.h5"
    with Output(ctx, path) as out:
        # one rank with another dtype / shape / call: the same error everywhere
        bad = np.zeros(2, np.float32 if ctx.rank == 1 else np.float64)
        with pytest.raises(ValueError, match="rank 1: float32"):
            out.write("d", bad)
        bad = np.zeros((2, 3 if ctx.rank == ctx.size - 1 else 2))
        with pytest.raises(ValueError, match="blocks must agree"):
            out.write("e", bad)
        with pytest.raises(ValueError, match="ranks are in different calls"):
            out.write("x" if ctx.rank else "y", np.zeros(1))
        grid = BlockGrid(ctx, (4, 4))
        with pytest.raises(ValueError, match=r"rank 0: write\(grid\)\('g'\); rank 1: write\('g'\)"):
            out.write("g", *((grid, grid.zeros()) if ctx.is_root else (np.zeros(2),)))
        out.write("after", np.full(1, ctx.rank))  # still usable
    assert_equal_all(read(ctx, path, "after", axis=None), np.arange(ctx.size), ctx=ctx)


def test_missing_directory_fails_everywhere_without_a_file(ctx, shared_dir):
    path = shared_dir / "no" / "such" / "dir" / "o.h5"
    with pytest.raises(FileNotFoundError, match=r"directory .*/no/such/dir does not exist"):
        Output(ctx, path)
    assert_all(not os.path.exists(shared_dir / "no"), "nothing created", ctx=ctx)


def test_existing_file_with_mode_w_minus_is_left_untouched(ctx, shared_dir):
    path = shared_dir / "keep.h5"
    with Output(ctx, path) as out:
        out.write("x", np.full(3, 7.0))
    before = path.read_bytes() if ctx.is_root else None
    for mode in ("w-", "x"):
        with pytest.raises(FileExistsError, match="already exists and mode='w-'"):
            Output(ctx, path, mode=mode)
    after = path.read_bytes() if ctx.is_root else None
    assert_all(before == after, "the existing file was modified", ctx=ctx)
    with pytest.raises(FileNotFoundError, match="mode='r\\+' opens an existing file"):
        Output(ctx, shared_dir / "absent.h5", mode="r+")
    with pytest.raises(ValueError, match="mode='r' is not one of"):
        Output(ctx, path, mode="r")


def read_only_dir(shared_dir):
    """A directory where this process cannot create files, or None."""
    ro = shared_dir / "ro"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    probe = ro / "probe"
    try:
        probe.touch()
        probe.unlink()
    except OSError:
        return ro
    # Running as root: permissions do not stop us; /sys refuses new files even to root.
    try:
        open("/sys/hpcpar-probe", "w").close()
    except OSError:
        return "/sys"
    os.unlink("/sys/hpcpar-probe")
    return None


def test_read_only_location_fails_everywhere_without_a_file(ctx, shared_dir):
    ro = read_only_dir(shared_dir) if ctx.is_root else None
    ro = ctx.comm.bcast(None if ro is None else str(ro), root=0)
    if ro is None:
        pytest.skip("no location here refuses to create files")
    with pytest.raises(PermissionError, match=f"cannot create files in {ro}"):
        Output(ctx, os.path.join(ro, "o.h5"))
    assert_all(not os.path.exists(os.path.join(ro, "o.h5")), "a file was left behind", ctx=ctx)
    if ctx.is_root:
        (shared_dir / "ro").chmod(0o755)


def test_forcing_mpio_without_mpi_h5py_is_a_clear_error(ctx, shared_dir):
    if h5py.get_config().mpi:
        pytest.skip("this h5py is built with MPI: io='mpio' works")
    with pytest.raises(ValueError, match=r"io=mpio, but this h5py was built without MPI"):
        Output(ctx, shared_dir / "m.h5", io="mpio")
    with pytest.raises(ValueError, match="not one of 'mpio', 'serial', 'auto'"):
        Output(ctx, shared_dir / "m.h5", io="posix")
    assert_all(not os.path.exists(shared_dir / "m.h5"), "a file was left behind", ctx=ctx)


# ---------------------------------------------------------------- an independent reader
def test_h5dump_reads_what_the_ranks_wrote(ctx, shared_dir):
    tool = shutil.which("h5dump")
    if tool is None:
        pytest.skip("h5dump not found (Debian package hdf5-tools)")
    counts = uneven_counts(ctx.size)
    lo, hi = my_rows(counts, ctx.rank)
    local = np.arange(lo * 3, hi * 3, dtype=np.int32).reshape(hi - lo, 3) * 7
    path = shared_dir / "dump.h5"
    with Output(ctx, path) as out:
        out.write("m", local)
        mode = out.mode
    problem = None
    if ctx.is_root:
        r = subprocess.run([tool, "-d", "/m", "-y", "-w", "0", str(path)],
                           capture_output=True, text=True, timeout=30)
        text = r.stdout
        n = sum(counts)
        values = text.split("DATA {", 1)[-1].split("}", 1)[0].replace(",", " ").split()
        checks = {
            "exit status 0": r.returncode == 0,
            "32-bit little-endian int": "H5T_STD_I32LE" in text,
            f"shape ( {n}, 3 )": f"SIMPLE {{ ( {n}, 3 ) / ( {n}, 3 ) }}" in text,
            "values": [int(v) for v in values] == list(range(0, n * 3 * 7, 7)),
        }
        failed = [k for k, ok in checks.items() if not ok]
        problem = f"{mode}: h5dump disagrees on {failed}:\n{text}{r.stderr}" if failed else None
    assert_all(problem is None, problem or "", ctx=ctx)


# ---------------------------------------------------------------- nothing already written is lost
def holder(path):
    """Another process that holds ``path`` open for writing with h5py (HDF5's own lock)."""
    code = ("import sys, h5py; f = h5py.File(sys.argv[1], 'a'); print('ready', flush=True); "
            "sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.parametrize("mode", ["w", "a", "r+"])
def test_a_file_another_process_writes_is_never_truncated(ctx, shared_dir, mode):
    path = shared_dir / "held.h5"
    if ctx.is_root:
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(5.0)
    proc = holder(path) if ctx.is_root else None
    try:
        before = path.read_bytes() if ctx.is_root else None
        ctx.barrier()
        with pytest.raises(OSError, match=r"open for writing in another process .*nothing was changed"):
            Output(ctx, path, mode)
        after = path.read_bytes() if ctx.is_root else None
        assert_all(before == after, "the file another process holds was changed", ctx=ctx)
    finally:
        if proc is not None:
            proc.communicate("", timeout=30)
    ctx.barrier()
    with Output(ctx, path, mode) as out:  # once it is free, it opens as usual
        out.write("y", np.arange(2.0))
    assert_all(whole(ctx, path, "y") is None or len(whole(ctx, path, "y")) == 2 * ctx.size, "y", ctx=ctx)


def test_an_open_output_holds_its_file(ctx, shared_dir):
    path = shared_dir / "mine.h5"
    with Output(ctx, path) as out:
        out.write("x", np.arange(3.0))
        out.flush()
        problem = None
        if ctx.is_root:  # a second hpcpar job is refused and changes nothing
            code = ("import sys, hpcpar; hpcpar.run(lambda ctx: hpcpar.Output(ctx, sys.argv[1], 'w'))")
            alone = job_env()  # a one-rank job of its own: no variable of this job's launcher
            try:
                r = subprocess.run([sys.executable, "-c", code, str(path)], env=alone,
                                   capture_output=True, text=True, timeout=30)
                problem = (None if r.returncode != 0 and "open for writing in another process" in r.stderr
                           else f"a second Output opened it: {r.returncode} {r.stderr}")
            except Exception as exc:
                problem = repr(exc)
        assert_all(problem is None, problem or "", ctx=ctx)
        out.write("z", np.arange(2.0))
    got = whole(ctx, path, "x")
    assert_all(got is None or got.tolist() == list(range(3)) * ctx.size, f"x: {got}", ctx=ctx)


def fill(out, name, nbytes, ctx):
    """Write about ``nbytes`` in total, split over the ranks."""
    n = nbytes // 8 // ctx.size
    out.write(name, np.full(n, float(ctx.rank + 1)))


def check_after_failure(ctx, out, path, first, cut=None):
    """Later calls raise, close works, and what was written before reads back intact."""
    for call in (lambda: out.write("later", np.zeros(2)), out.flush, lambda: out.attrs.update({"k": 1})):
        with pytest.raises(OSError, match="an earlier write failed, so this Output writes nothing more"):
            call()
    out.close()
    problem = None
    if ctx.is_root:
        with h5py.File(path, "r") as f:
            a = f[first][()]
            if not (len(a) and all((a == v).sum() == len(a) // ctx.size for v in range(1, ctx.size + 1))):
                problem = f"{first} did not survive: {a[:5]}"
            elif "later" in f:
                problem = "a write after the failure reached the file"
            elif cut is not None and cut in f and not f[cut].attrs.get("hpcpar_incomplete", False):
                problem = f"the cut-short dataset {cut} is not marked hpcpar_incomplete"
    assert_all(problem is None, problem or "", ctx=ctx)


@contextlib.contextmanager
def small_disk(ctx, shared_dir):
    """A 2 MiB tmpfs mounted by root on ``shared_dir / "disk"`` (skips unless root can mount it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = shared_dir / "disk"
    problem = None
    if ctx.is_root:
        disk.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                           capture_output=True, text=True)
        problem = None if r.returncode == 0 else r.stderr
    problem = ctx.comm.bcast(problem, root=0)
    if problem:
        pytest.skip(f"cannot mount a tmpfs here: {problem}")
    try:
        yield disk
    finally:
        ctx.barrier()
        if ctx.is_root:
            subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
def test_a_full_disk_keeps_what_was_written_and_ends_the_writes(ctx, shared_dir, io, gather):
    with small_disk(ctx, shared_dir) as disk:
        path = disk / "o.h5"
        out = open_out(ctx, path, io, gather)
        fill(out, "a", 2**20, ctx)
        out.flush()
        with pytest.raises(OSError, match=r"No space left on device.*what was written before is kept.*on host"):
            fill(out, "b", 2 * 2**20, ctx)
        check_after_failure(ctx, out, path, "a", cut="b")


def test_a_disk_filled_during_a_collective_write_keeps_what_was_written(ctx, shared_dir, monkeypatch):
    """The MPI-IO write itself fails with ENOSPC, as on a file system that cannot reserve blocks
    (no fallocate) and filled after root's free-space check: every rank raises, the file closes.
    (Every rank's share here is larger than the whole disk: an error on only some ranks inside
    the collective write leaves the others inside HDF5, see tests/launch/test_faults_io.py.)"""
    if io_mode() != "mpio":
        pytest.skip("the serial path reserves the blocks themselves (posix_fallocate) before writing")
    monkeypatch.setattr("hpcpar.io.lock.allocate", lambda path, nbytes: False)  # no fallocate here
    monkeypatch.setattr("hpcpar.io.lock.check_room", lambda path, nbytes: None)  # it saw room
    with small_disk(ctx, shared_dir) as disk:
        path = disk / "o.h5"
        out = open_out(ctx, path, "auto")
        fill(out, "a", 2**20, ctx)
        out.flush()
        with pytest.raises(OSError, match=r"No space left on device.*what was written before is kept.*on host"):
            fill(out, "b", ctx.size * 2 * 2**20, ctx)  # every rank's share is more than the disk
        check_after_failure(ctx, out, path, "a", cut="b")


def test_a_write_cut_short_is_marked_incomplete(ctx, shared_dir):
    """Rank 1 may not write past 64 KiB (RLIMIT_FSIZE): its slab of the token path fails."""
    import resource

    if ctx.size < 2:
        pytest.skip("needs a second rank that writes its own slab")
    path = shared_dir / "cut.h5"
    out = open_out(ctx, path, "serial", 0)
    fill(out, "a", 2**16, ctx)
    out.flush()
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    if ctx.rank == 1:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**16, old[1]))
    try:
        with pytest.raises(OSError, match="rank 1"):
            fill(out, "b", 2**20, ctx)
    finally:
        if ctx.rank == 1:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
    check_after_failure(ctx, out, path, "a", cut="b")


def _claiming(ctx, box):
    """A BlockGrid of (4, 4) whose rank claims ``box`` (a tuple of slices) instead of its own block."""
    grid = BlockGrid(ctx, (4, 4), halo=0)
    grid.global_slices = box
    grid.local_shape = tuple(s.stop - s.start for s in box)
    return grid


@pytest.mark.checks
@pytest.mark.parametrize("io,gather", PATHS, ids=PATH_IDS)
def test_grid_boxes_that_overlap_fail_everywhere_and_boxes_with_gaps_write(ctx, shared_dir, io, gather):
    path = shared_dir / "boxes.h5"
    with open_out(ctx, path, io, gather) as out:
        every = _claiming(ctx, (slice(0, 4), slice(0, 4)))  # every rank claims the whole grid
        if ctx.size > 1:
            with pytest.raises(ValueError, match="ranks 0 and 1 have overlapping global_slices"):
                out.write("o", every, np.ones((4, 4)))
        else:
            out.write("o", every, np.ones((4, 4)))  # one rank: nothing to overlap with
        # only rank 0 writes (its top-left 2x2): the rest of the dataset keeps the fill value
        corner = _claiming(ctx, (slice(0, 2), slice(0, 2)) if ctx.is_root else (slice(0, 0), slice(0, 0)))
        out.write("c", corner, np.full(corner.local_shape, 7.0))
        has_o = "o" in out
    expect = np.zeros((4, 4))
    expect[:2, :2] = 7.0
    got = whole(ctx, path, "c")
    ok = has_o == (ctx.size == 1) and (not ctx.is_root or np.array_equal(got, expect))
    assert_all(ok, f"'o' written: {has_o}; 'c' = {got}", ctx=ctx)
