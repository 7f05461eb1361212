"""Checkpoint save/load under real MPI: atomic replacement, every field kind, errors."""

import os

import h5py
import numpy as np
import pytest
from gridstub import BlockGrid

from hpcpar import Checkpoint, partition
from hpcpar.testing import assert_all, assert_equal_all

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(60)]


def block_of(n, ctx, scale=1.0):
    r = partition.block_range(n, ctx.size, ctx.rank)
    return np.arange(r.start, r.stop, dtype=np.float64) * scale


@pytest.mark.parametrize("io", ["auto", "serial"])
def test_save_load_every_field_kind(ctx, shared_dir, io):
    ck = Checkpoint(ctx, shared_dir / "c.h5", io=io)
    assert_all(ck.load() is None and not ck.exists(), "no checkpoint yet", ctx=ctx)
    grid = BlockGrid(ctx, (5, 6))
    g = np.arange(30.0).reshape(5, 6)
    u = grid.zeros()
    grid.interior(u)[...] = g[grid.global_slices]
    rows = np.stack([block_of(7, ctx), block_of(7, ctx, 2.0)], axis=1)
    for step in (10, 20):
        ck.save(step, x=block_of(11, ctx, step), rows=rows, u=(grid, u * step), t=0.5 * step,
                n=np.int64(step), tag=np.bytes_(b"run %d" % step))
    state = ck.load(grid=grid)
    assert_all(state is not None, "load found the checkpoint", ctx=ctx)
    step, f = state
    assert_all(step == 20 and sorted(f) == ["n", "rows", "t", "tag", "u", "x"], f"{step} {sorted(f)}", ctx=ctx)
    assert_all(f["tag"] == b"run 20", f"a bytes scalar comes back as {f['tag']!r}", ctx=ctx)
    assert_equal_all(f["x"], block_of(11, ctx, 20), ctx=ctx)
    assert_equal_all(f["rows"], rows, ctx=ctx)
    assert_equal_all(f["u"], 20 * g[grid.global_slices], ctx=ctx)
    assert_all(f["t"] == 10.0 and f["n"] == 20 and f["n"].dtype == np.int64, f"{f['t']} {f['n']}", ctx=ctx)
    assert_all(not os.path.exists(ck.tmp_path), "the temporary file is gone", ctx=ctx)
    with pytest.raises(ValueError, match=r"has Grid fields \(u\); pass load\(grid=...\)"):
        ck.load()


def test_uneven_blocks_are_repartitioned_on_load(ctx, shared_dir):
    # saved from uneven blocks (rank r holds r+1 rows), loaded as block_range blocks
    n = ctx.size * (ctx.size + 1) // 2
    start = ctx.rank * (ctx.rank + 1) // 2
    ck = Checkpoint(ctx, shared_dir / "c.h5")
    ck.save(3, x=np.arange(start, start + ctx.rank + 1, dtype=np.int32))
    step, f = ck.load()
    r = partition.block_range(n, ctx.size, ctx.rank)
    assert_equal_all(f["x"], np.arange(r.start, r.stop, dtype=np.int32), ctx=ctx)


def test_a_failed_save_keeps_the_previous_checkpoint(ctx, shared_dir):
    ck = Checkpoint(ctx, shared_dir / "c.h5")
    ck.save(1, x=block_of(5, ctx))
    with pytest.raises(ValueError, match="HDF5 cannot store dtype <U1"):
        ck.save(2, x=block_of(5, ctx), label=np.array(["a"]))
    with pytest.raises(ValueError, match="step must be an int"):
        ck.save(2.5, x=block_of(5, ctx))
    step, f = ck.load()
    assert_all(step == 1, f"step {step} after failed saves", ctx=ctx)
    assert_equal_all(f["x"], block_of(5, ctx), ctx=ctx)
    assert_all(not os.path.exists(ck.tmp_path), "no temporary file left", ctx=ctx)


def test_a_stale_temporary_file_is_ignored_and_replaced(ctx, shared_dir):
    ck = Checkpoint(ctx, shared_dir / "c.h5")
    ck.save(1, x=block_of(4, ctx))
    if ctx.is_root:
        with open(ck.tmp_path, "wb") as f:
            f.write(b"half a file from a crash")
    ctx.barrier()
    assert_all(ck.load()[0] == 1, "load ignores the temporary file", ctx=ctx)
    ck.save(2, x=block_of(4, ctx))
    assert_all(ck.load()[0] == 2 and not os.path.exists(ck.tmp_path), "replaced", ctx=ctx)


def test_a_file_that_is_not_a_checkpoint_is_refused(ctx, shared_dir):
    path = shared_dir / "other.h5"
    if ctx.is_root:
        with h5py.File(path, "w") as f:
            f["x"] = np.zeros(3)
    ctx.barrier()
    with pytest.raises(ValueError, match="is not an hpcpar checkpoint"):
        Checkpoint(ctx, path).load()


def test_save_into_a_missing_directory_fails_everywhere(ctx, shared_dir):
    ck = Checkpoint(ctx, shared_dir / "missing" / "c.h5")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.save(1, x=block_of(3, ctx))
    assert_all(not os.path.exists(shared_dir / "missing"), "nothing created", ctx=ctx)


def damage(path, how):
    """Truncate the file to half, or overwrite its first 64 bytes (the HDF5 superblock)."""
    if how == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    else:
        with open(path, "r+b") as f:
            f.write(b"\xff" * 64)


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(ctx, shared_dir, how, capfd):
    ck = Checkpoint(ctx, shared_dir / "c.h5")
    ck.save(1, x=block_of(6, ctx))
    assert_all(not os.path.exists(ck.prev_path), "no previous checkpoint after the first save", ctx=ctx)
    ck.save(2, x=block_of(6, ctx, 2.0))
    assert_all(os.path.exists(ck.prev_path), "the replaced checkpoint is kept as .prev", ctx=ctx)
    if ctx.is_root:
        damage(ck.path, how)
    ctx.barrier()
    step, f = Checkpoint(ctx, ck.path).load()
    assert_all(step == 1, f"loaded step {step}, want the previous one", ctx=ctx)
    assert_equal_all(f["x"], block_of(6, ctx), ctx=ctx)
    err = capfd.readouterr().err
    warned = f"{ck.path} is unreadable" in err and f"loaded the previous checkpoint {ck.prev_path} (step 1)" in err
    assert_all(warned or not ctx.is_root, f"root warns: {err!r}", ctx=ctx)
    # the next save must not keep the unreadable file as the previous checkpoint
    again = Checkpoint(ctx, ck.path)
    again.load()
    again.save(3, x=block_of(6, ctx, 3.0))
    if ctx.is_root:
        damage(ck.path, how)
    ctx.barrier()
    step, f = Checkpoint(ctx, ck.path).load()
    assert_all(step == 1, f"after a fallback, .prev is still step 1, got {step}", ctx=ctx)


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_an_unreadable_checkpoint_without_a_previous_one_is_a_clear_error(ctx, shared_dir, how):
    ck = Checkpoint(ctx, shared_dir / "c.h5")
    ck.save(1, x=block_of(6, ctx))
    if ctx.is_root:
        damage(ck.path, how)
    ctx.barrier()
    with pytest.raises(OSError, match=rf"{ck.path} is not a readable HDF5 file, truncated or corrupted"):
        ck.load()
    ck.save(2, x=block_of(6, ctx))  # a new save replaces it, and keeps no unreadable .prev
    assert_all(not os.path.exists(ck.prev_path), "the unreadable file was kept as .prev", ctx=ctx)
    ck.save(3, x=block_of(6, ctx))
    if ctx.is_root:
        damage(ck.path, how)
        damage(ck.prev_path, how)
    ctx.barrier()
    with pytest.raises(OSError, match="the previous checkpoint is unreadable too"):
        ck.load()


# ---------------------------------------------------------------- verified checkpoints
def flip_a_data_byte(path, name="fields/x"):
    """Flip one byte inside the stored data of ``name`` (root only)."""
    with h5py.File(path, "r") as f:
        offset = f[name].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + 3)
        b = fh.read(1)
        fh.seek(offset + 3)
        fh.write(bytes([b[0] ^ 0x10]))


def set_step(path, step):
    with h5py.File(path, "r+") as f:
        f.attrs["step"] = step


@pytest.mark.parametrize("how", ["flipped byte", "edited step"])
def test_a_damaged_checkpoint_is_never_loaded_as_valid(ctx, shared_dir, how, capfd):
    ck = Checkpoint(ctx, shared_dir / "c.h5")
    ck.save(1, x=block_of(9, ctx), t=1.5)
    ck.save(2, x=block_of(9, ctx, 2.0), t=2.5)
    if ctx.is_root:
        flip_a_data_byte(ck.path) if how == "flipped byte" else set_step(ck.path, 7)
    ctx.barrier()
    step, f = Checkpoint(ctx, ck.path).load()
    assert_all(step == 1 and f["t"] == 1.5, f"loaded step {step}, want the previous one", ctx=ctx)
    assert_equal_all(f["x"], block_of(9, ctx), ctx=ctx)
    err = capfd.readouterr().err
    assert_all("is damaged" in err or not ctx.is_root, f"root warns: {err!r}", ctx=ctx)
    if ctx.is_root:
        os.unlink(ck.prev_path)
    ctx.barrier()
    with pytest.raises(OSError, match="is damaged"):
        Checkpoint(ctx, ck.path).load()


def test_a_stale_previous_checkpoint_of_another_run_is_never_used(ctx, shared_dir):
    old = Checkpoint(ctx, shared_dir / "c.h5")
    old.save(1, x=block_of(4, ctx))
    old.save(2, x=block_of(4, ctx))  # c.h5.prev: the old run's step 1
    if ctx.is_root:
        os.unlink(old.path)  # a fresh start
    ctx.barrier()
    new = Checkpoint(ctx, old.path)
    assert_all(new.load() is None, "no checkpoint after the main file was removed", ctx=ctx)
    new.save(5, x=block_of(4, ctx, 5.0))
    assert_all(not os.path.exists(new.prev_path), "the other run's .prev was kept", ctx=ctx)
    if ctx.is_root:
        flip_a_data_byte(new.path)
    ctx.barrier()
    with pytest.raises(OSError, match="is damaged"):
        Checkpoint(ctx, new.path).load()
    # a run that saves over another run's checkpoint without loading it keeps no .prev either
    other = Checkpoint(ctx, shared_dir / "d.h5")
    other.save(1, x=block_of(4, ctx))
    other.save(2, x=block_of(4, ctx))
    third = Checkpoint(ctx, other.path)
    third.save(9, x=block_of(4, ctx))
    assert_all(not os.path.exists(third.prev_path), "another run's checkpoint became .prev", ctx=ctx)
    third.save(10, x=block_of(4, ctx))
    assert_all(os.path.exists(third.prev_path), "its own checkpoint is kept as .prev", ctx=ctx)
    resumed = Checkpoint(ctx, other.path)
    assert_all(resumed.load()[0] == 10 and resumed.run_id == third.run_id, "run id inherited", ctx=ctx)


def test_ranks_that_disagree_on_step_get_an_error_on_every_rank(ctx, shared_dir):
    if ctx.size < 2:
        pytest.skip("needs two ranks to disagree")
    ck = Checkpoint(ctx, shared_dir / "c.h5")
    with pytest.raises(ValueError, match=r"every rank must pass the same step; got rank 0: step 0; rank 1: step 1"):
        ck.save(ctx.rank, x=block_of(4, ctx))
    assert_all(not ck.exists(), "a checkpoint was written", ctx=ctx)


def test_checksums_survive_a_different_number_of_ranks_and_every_field_kind(ctx, shared_dir):
    # saved by a sub-communicator of the first ranks, loaded by all of them
    grid = BlockGrid(ctx, (4, 5))
    u = grid.zeros()
    grid.interior(u)[...] = np.arange(20.0).reshape(4, 5)[grid.global_slices]
    ck = Checkpoint(ctx, shared_dir / "c.h5")
    rows = np.arange(ctx.rank * 3, ctx.rank * 3 + ctx.rank % 2 + 1, dtype=np.int16)
    ck.save(4, u=(grid, u), rows=rows, tag=np.bytes_(b"ok"), flags=np.ones(ctx.rank + 1, bool))
    step, f = Checkpoint(ctx, ck.path).load(grid=grid)
    assert_all(step == 4 and f["tag"] == b"ok", f"{step} {f['tag']!r}", ctx=ctx)
