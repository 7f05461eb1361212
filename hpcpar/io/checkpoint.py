"""Atomic checkpoint/restart in one HDF5 file, restorable on any number of ranks.

``save`` writes a complete new file beside the old one (``PATH.tmp``), makes it
durable (flush, close, ``fsync`` by every rank that wrote), waits until every rank
has finished, and only then lets root ``rename`` it over ``PATH`` and ``fsync``
the directory. A crash at any moment — even ``kill -9`` in the middle of a
write — leaves at ``PATH`` either the previous checkpoint or the new one, never a
mixture. Just before the rename, root hard-links the checkpoint it replaces to
``PATH.prev``: when ``PATH`` is later found unreadable (truncated or corrupted,
e.g. by a copy or a failing disk), ``load`` says so on stderr and loads the
previous checkpoint instead. ``load`` reads the fields back, partitioned for the
*current* number of ranks.

Every checkpoint is verified (format 2): ``save`` stores a checksum of every
field (:mod:`hpcpar.io.digest`: each rank hashes its own box, one reduction of
one ``uint64`` per field) and one of the metadata (step, run id, each field's
name, kind, shape, dtype and checksum); ``load`` recomputes both and treats a
mismatch like an unreadable file: the previous checkpoint, with a warning, or an
error, never wrong data. ``PATH.prev`` belongs to the run that wrote it: each
checkpoint records a run id (new for a run that starts afresh, inherited by a run
that loads a checkpoint), and ``save`` keeps the file it replaces as ``.prev``
only when it belongs to the same run, removing a stale one otherwise.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from ..decomp import partition
from ..errors import CollectiveError, agree, agree_equal, attempt, collective_error, fail
from ..observe.trace import CHECKPOINT, step_bytes, traced
from .digest import box_digest, meta_digest
from .output import Output
from .read import read, read_grid
from .slabs import grid_slab, is_grid

if TYPE_CHECKING:
    from ..core.context import Context
    from ..decomp.grid import Grid

__all__ = ["Checkpoint", "fsync"]

#: Format version written in the ``hpcpar_checkpoint`` attribute (2: with checksums and run id;
#: files of format 1 load unverified).
FORMAT = 2
_GROUP = "fields"
#: ``{field: (kind, shape, dtype)}`` of a checkpoint, as its header describes it.
Layouts = dict[str, tuple[str, tuple[int, ...], str]]


class Checkpoint:
    """An atomically replaced checkpoint file. Creating it is **local** (no I/O).

    ::

        ckpt = hpcpar.Checkpoint(ctx, "run.ckpt.h5")
        state = ckpt.load()                   # None on a fresh start
        step, fields = state if state else (0, {"u": u0})
        ...
        ckpt.save(step, u=u_block, t=t)       # every K steps

    Field kinds, by the value passed to :meth:`save`:

    * an array of at least one dimension: this rank's block of an array split
      along axis 0 (blocks in rank order, uneven and empty ones allowed);
      :meth:`load` returns the block of :func:`hpcpar.partition.block_range`
      for the loading job's number of ranks;
    * ``(grid, a)``: a Grid field (its interior); :meth:`load` needs
      ``grid=`` and returns the interior of this rank (``grid.local_shape``);
    * a scalar (Python number, NumPy scalar or 0-d array): root's value;
      :meth:`load` returns it on every rank.

    Args:
        ctx: the :class:`hpcpar.Context`.
        path: the checkpoint file; the temporary file is ``path + ".tmp"``, the
            previous checkpoint (kept as a hard link, so it costs disk space but no
            copy) ``path + ".prev"``.
        io: the I/O path, as in :class:`hpcpar.Output`.
        keep_previous: keep the replaced checkpoint as ``path + ".prev"`` (the
            fallback of :meth:`load`); hard links that the file system refuses
            are skipped silently.
    """

    def __init__(self, ctx: Context, path: str | os.PathLike[str], *, io: str | None = None,
                 keep_previous: bool = True):
        self.ctx = ctx
        self.path = os.path.abspath(os.fspath(path))
        self.tmp_path = self.path + ".tmp"
        self.prev_path = self.path + ".prev"
        self.io = io
        self.keep_previous = keep_previous
        self._path_bad = False  # load found PATH unreadable: never keep it as .prev
        #: The run id of this run's checkpoints (None until the first load or save).
        self.run_id: str | None = None
        self._path_ours = False  # PATH is known to hold a checkpoint of this run
        self._prev_ours = False  # load fell back to PATH.prev: it is this run's

    def __repr__(self) -> str:
        return f"<hpcpar.Checkpoint {self.path!r}>"

    @traced(CHECKPOINT, "Checkpoint.save", step_bytes)
    def save(self, step: int, **fields: Any) -> None:
        """Write ``fields`` and ``step`` atomically over the previous checkpoint. **Collective**.

        Returns after the new checkpoint is durable and in place on every rank.
        The checkpoint it replaces is kept as ``PATH.prev`` when it belongs to
        this run (an earlier save, or the checkpoint this run loaded); any other
        ``PATH.prev`` is removed.

        Raises:
            ValueError, OSError: on every rank (also when ranks pass different
                ``step`` values); the previous checkpoint is then left as it was.
        """
        ctx = self.ctx
        where = f"hpcpar.Checkpoint({self.path!r}).save"
        problem = None
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            problem = ("ValueError", f"step must be an int, got {step!r}")
        agree(ctx.comm, where, problem)
        agree_equal(ctx.comm, where, int(step), "step", describe=lambda v: f"step {v}")
        if self.run_id is None:
            self.run_id = ctx.comm.bcast(uuid.uuid4().hex if ctx.is_root else None, root=ctx.root)
        try:
            wrote = self._write(int(step), fields)
        except CollectiveError:
            if ctx.is_root:
                attempt(os.unlink, self.tmp_path)  # a failed save leaves no temporary file
            raise
        # Durable before visible: every rank that wrote syncs the file it wrote.
        _, problem = attempt(fsync, self.tmp_path) if wrote else (None, None)
        agree(ctx.comm, where, problem)
        problem = None
        if ctx.is_root:
            def publish():
                keep = self.keep_previous and self._path_ours and not self._path_bad
                if keep and os.path.exists(self.path):
                    _keep(self.path, self.prev_path)
                elif os.path.lexists(self.prev_path) and not (self._path_bad and self._prev_ours):
                    os.unlink(self.prev_path)  # another run's: never this run's fallback
                os.replace(self.tmp_path, self.path)
                fsync(os.path.dirname(self.path) or ".")
            _, problem = attempt(publish)
        agree(ctx.comm, where, problem, root=ctx.root)
        self._path_bad = self._prev_ours = False
        self._path_ours = True

    def _write(self, step: int, fields: dict[str, Any]) -> bool:
        """Write the temporary file with its checksums; whether this rank wrote to it. **Collective**."""
        ctx = self.ctx
        kinds = {name: _kind(value) for name, value in fields.items()}
        blocks = [n for n, k in kinds.items() if k == "block"]
        rows = np.array([len(fields[n]) for n in blocks], np.int64)
        offsets = _exscan(ctx, rows)
        digests, described = [], {}
        for name, value in fields.items():
            if kinds[name] == "grid":
                grid, a = value
                gshape, start, _ = grid_slab(grid, ctx)
                data = np.asarray(grid.interior(a))
                digests.append(box_digest(data, start, gshape))
                described[name] = ("grid", tuple(gshape), data.dtype.str)
            elif kinds[name] == "block":
                start = (int(offsets[blocks.index(name)]),) + (0,) * (value.ndim - 1)
                digests.append(box_digest(value, start, (start[0] + len(value), *value.shape[1:])))
                described[name] = ("block", tuple(value.shape[1:]), value.dtype.str)
            else:
                scalar = np.asarray(value)
                digests.append(box_digest(scalar, (), ()) if ctx.is_root else 0)
                described[name] = ("value", (), scalar.dtype.str)
        sums = _sum(ctx, np.array(digests + list(rows), np.uint64))
        for i, name in enumerate(blocks):  # root's layout with the global number of rows
            kind, rest, dtype = described[name]
            described[name] = (kind, (int(sums[len(digests) + i]), *rest), dtype)
        meta = _meta(step, self.run_id or "", described, [int(d) for d in sums[:len(digests)]])
        with Output(ctx, self.tmp_path, "w", io=self.io) as out:
            out.attrs.update({"hpcpar_checkpoint": FORMAT, "step": step, "run_id": self.run_id or ""})
            for name, value in fields.items():
                key = f"{_GROUP}/{name}"
                if kinds[name] == "grid":
                    out.write(key, value[0], value[1], attrs={"layout": "grid"})
                elif kinds[name] == "block":
                    out.write(key, value, attrs={"layout": "block"})
                else:
                    out.write_root(key, np.asarray(value) if ctx.is_root else None, attrs={"layout": "value"})
            out.attrs.update({"fields": ",".join(fields), "digests": sums[:len(digests)],
                              "meta_digest": meta})
            return out.wrote or ctx.is_root

    def exists(self) -> bool:
        """Whether a checkpoint is in place (root's view, on every rank). **Collective**."""
        return self.ctx.comm.bcast(os.path.exists(self.path) if self.ctx.is_root else None,
                                   root=self.ctx.root)

    def load(self, grid: Grid | None = None) -> tuple[int, dict[str, Any]] | None:
        """``(step, fields)`` of the checkpoint, or None when there is none. **Collective**.

        Works on any number of ranks: block fields come back as this rank's block
        of :func:`hpcpar.partition.block_range`; Grid fields as this rank's
        interior of ``grid`` (required when the checkpoint has any); scalars on
        every rank. A stale ``PATH.tmp`` (a save cut short) is ignored. When
        ``PATH`` cannot be read (truncated, corrupted) and ``PATH.prev`` can,
        root prints a warning naming both and the previous checkpoint is returned.

        A checkpoint whose checksums do not match (a flipped byte, an edited
        ``step``) counts as unreadable. The run id of the checkpoint loaded
        becomes this run's (:attr:`run_id`).

        Raises:
            ValueError: on every rank, for a file that is not an hpcpar
                checkpoint, or a Grid field without ``grid=``.
            OSError: on every rank, naming the file, when ``PATH`` is unreadable
                or damaged and no usable previous checkpoint (of the same run) exists.
        """
        ctx = self.ctx
        if not self.exists():
            return None
        state, first = self._load(self.path, grid)
        if first is None:
            self._path_ours = True
            return state
        self._path_bad = True  # unreadable: a later save must not keep it as .prev
        prev = ctx.comm.bcast(os.path.exists(self.prev_path) if ctx.is_root else None, root=ctx.root)
        if not prev:
            raise first
        main_run = self.run_id  # the run id PATH's header gave, when it could be read
        state, exc = self._load(self.prev_path, grid)
        if state is not None and main_run is not None and self.run_id != main_run:
            state, exc = None, collective_error(OSError)(
                f"{self.prev_path} belongs to another run (run id {self.run_id}, {self.path} has "
                f"{main_run}); remove both files to start afresh")
        if state is None:
            both = type(first)(f"{first}; the previous checkpoint is unreadable too: {exc}")
            both.ranks = first.ranks
            raise both from None
        self._prev_ours = True
        if ctx.is_root:
            print(f"hpcpar.Checkpoint: {self.path} is unreadable ({first}); loaded the previous "
                  f"checkpoint {self.prev_path} (step {state[0]})", file=sys.stderr, flush=True)
        return state

    def _load(self, path: str, grid: Grid | None
              ) -> tuple[tuple[int, dict[str, Any]] | None, CollectiveError | None]:
        """Read the checkpoint file ``path``. **Collective**.

        Returns:
            ``(state, None)``, or ``(None, error)`` when the file cannot be read
            (the same error on every rank; :meth:`load` then tries ``.prev``).

        Raises:
            UsageError: on every rank, for the caller's mistakes (a Grid field
                without ``grid=``, a grid of another shape): no fallback.
        """
        try:
            step, layouts, check = self._header(path)
        except CollectiveError as exc:
            return None, exc
        self._check_grid(path, layouts, grid)
        fields: dict[str, Any] = {}
        digests = []
        try:
            for name, (layout, shape, _) in layouts.items():
                key = f"{_GROUP}/{name}"
                if layout == "grid":
                    assert grid is not None  # _check_grid made sure
                    fields[name] = read_grid(grid, path, key, io=self.io)
                    gshape, start, _ = grid_slab(grid)
                    digests.append(box_digest(fields[name], start, gshape))
                elif layout == "block":
                    fields[name] = read(self.ctx, path, key, axis=0, io=self.io)
                    lo = partition.block_range(shape[0], self.ctx.size, self.ctx.rank).start
                    start = (lo,) + (0,) * (len(shape) - 1)
                    digests.append(box_digest(fields[name], start, (lo + len(fields[name]), *shape[1:])))
                else:
                    fields[name] = np.asarray(read(self.ctx, path, key, axis=None, io=self.io))[()]
                    digests.append(box_digest(fields[name], (), ()) if self.ctx.is_root else 0)
        except CollectiveError as exc:
            return None, exc
        if check is not None:
            sums = _sum(self.ctx, np.array(digests, np.uint64))
            bad = [n for n, a, b in zip(layouts, sums, check) if int(a) != int(b)]
            if bad:
                return None, collective_error(OSError)(
                    f"hpcpar.Checkpoint({path!r}).load: {path} is damaged: the checksum of field(s) "
                    f"{', '.join(bad)} does not match the data; remove it to start afresh")
        return (step, fields), None

    def _header(self, path: str) -> tuple[int, Layouts, list[int] | None]:
        """``(step, layouts, field checksums)`` of ``path``, read and verified on root
        (checksums None for a format-1 file); sets :attr:`run_id`. **Collective**."""
        import h5py

        ctx = self.ctx
        meta, problem = None, None
        if ctx.is_root:
            def header() -> tuple[int, Layouts, list[int] | None, str | None]:
                try:
                    f = h5py.File(path, "r")
                except OSError as exc:
                    raise OSError(f"{path} is not a readable HDF5 file, truncated or corrupted "
                                  f"({exc}); remove it to start afresh") from None
                with f:
                    if f.attrs.get("hpcpar_checkpoint") is None or "step" not in f.attrs:
                        raise ValueError(f"{path} is not an hpcpar checkpoint")
                    names = [n for n in str(f.attrs.get("fields", "")).split(",") if n]
                    layouts = {}
                    for n in names:
                        d = f[f"{_GROUP}/{n}"]
                        layouts[n] = (str(d.attrs["layout"]), tuple(d.shape), d.dtype.str)
                    step, run = int(f.attrs["step"]), f.attrs.get("run_id")
                    if int(f.attrs["hpcpar_checkpoint"]) < 2:
                        return step, layouts, None, None
                    run = run.decode() if isinstance(run, bytes) else str(run)
                    check = [int(d) for d in np.atleast_1d(f.attrs.get("digests", []))]
                    if str(f.attrs.get("meta_digest", "")) != _meta(step, run, layouts, check):
                        raise OSError(f"{path} is damaged: its metadata (step, run id, fields) does "
                                      "not match its checksum; remove it to start afresh")
                    return step, layouts, check, run
            meta, problem = attempt(header)
        agree(ctx.comm, f"hpcpar.Checkpoint({path!r}).load", problem, root=ctx.root)
        step, layouts, check, run = ctx.comm.bcast(meta, root=ctx.root)
        if run is not None:
            self.run_id = run
        return step, layouts, check

    def _check_grid(self, path: str, layouts: Layouts, grid: Grid | None) -> None:
        """Raise a UsageError on every rank when ``grid`` does not fit the Grid fields
        (every rank knows the layouts, so every rank decides alike)."""
        where = f"hpcpar.Checkpoint({path!r}).load"
        grids = {n: shape for n, (kind, shape, _) in layouts.items() if kind == "grid"}
        if not grids:
            return
        if grid is None:
            fail(where, f"the checkpoint has Grid fields ({', '.join(grids)}); pass load(grid=...)")
        wrong = {n: list(s) for n, s in grids.items() if tuple(s) != tuple(grid.shape)}
        if wrong:
            fail(where, f"the Grid field(s) {wrong} do not have the grid's shape "
                 f"{list(grid.shape)}; load with a grid of the checkpoint's shape")


def _kind(value: Any) -> str:
    """How :meth:`Checkpoint.save` stores ``value``: ``"grid"``, ``"block"`` or ``"value"``."""
    if isinstance(value, tuple) and len(value) == 2 and is_grid(value[0]):
        return "grid"
    return "block" if isinstance(value, np.ndarray) and value.ndim >= 1 else "value"


def _meta(step: int, run_id: str, layouts: dict[str, tuple[str, tuple[int, ...], str]],
          digests: list[int]) -> str:
    """The checksum of a checkpoint's metadata (root's view)."""
    return meta_digest({"format": FORMAT, "step": int(step), "run_id": run_id,
                        "fields": [(n, k, tuple(int(x) for x in s), d) for n, (k, s, d) in layouts.items()],
                        "digests": [int(x) for x in digests]})


def _exscan(ctx: Context, counts: np.ndarray) -> np.ndarray:
    """The sums of ``counts`` over the ranks before this one (zeros on rank 0). **Collective**."""
    out = np.zeros_like(counts)
    if ctx.size > 1 and counts.size:
        from mpi4py import MPI

        ctx.comm.Exscan(counts, out, op=MPI.SUM)
        if ctx.rank == 0:
            out[...] = 0
    return out


def _sum(ctx: Context, values: np.ndarray) -> np.ndarray:
    """The element-wise sum, modulo 2**64, of every rank's ``uint64`` values. **Collective**."""
    if ctx.size == 1 or values.size == 0:
        return values
    from mpi4py import MPI

    out = np.empty_like(values)
    ctx.comm.Allreduce(values, out, op=MPI.SUM)
    return out


def _keep(path: str, prev: str) -> None:
    """Make ``prev`` a hard link to ``path`` (atomically replacing it); skipped where
    the file system has no hard links."""
    tmp = prev + ".tmp"
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.link(path, tmp)
        os.replace(tmp, prev)
    except OSError:
        pass


def fsync(path: str) -> None:
    """``fsync`` a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
