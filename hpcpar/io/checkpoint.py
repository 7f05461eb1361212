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
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CollectiveError, agree, attempt, fail
from ..observe.trace import CHECKPOINT, step_bytes, traced
from .output import Output
from .read import read, read_grid
from .slabs import is_grid

if TYPE_CHECKING:
    from ..core.context import Context
    from ..decomp.grid import Grid

__all__ = ["Checkpoint", "fsync"]

#: Format version written in the ``hpcpar_checkpoint`` attribute.
FORMAT = 1
_GROUP = "fields"


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

    def __repr__(self) -> str:
        return f"<hpcpar.Checkpoint {self.path!r}>"

    @traced(CHECKPOINT, "Checkpoint.save", step_bytes)
    def save(self, step: int, **fields: Any) -> None:
        """Write ``fields`` and ``step`` atomically over the previous checkpoint. **Collective**.

        Returns after the new checkpoint is durable and in place on every rank.

        Raises:
            ValueError, OSError: on every rank; the previous checkpoint is then
                left as it was.
        """
        ctx = self.ctx
        where = f"hpcpar.Checkpoint({self.path!r}).save"
        problem = None
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            problem = ("ValueError", f"step must be an int, got {step!r}")
        agree(ctx.comm, where, problem)
        try:
            wrote = self._write(step, fields)
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
                if self.keep_previous and not self._path_bad and os.path.exists(self.path):
                    _keep(self.path, self.prev_path)
                os.replace(self.tmp_path, self.path)
                fsync(os.path.dirname(self.path) or ".")
            _, problem = attempt(publish)
        agree(ctx.comm, where, problem, root=ctx.root)
        self._path_bad = False

    def _write(self, step: int, fields: dict[str, Any]) -> bool:
        """Write the temporary file; whether this rank wrote to it. **Collective**."""
        ctx = self.ctx
        with Output(ctx, self.tmp_path, "w", io=self.io) as out:
            out.attrs.update({"hpcpar_checkpoint": FORMAT, "step": int(step)})
            for name, value in fields.items():
                key = f"{_GROUP}/{name}"
                if isinstance(value, tuple) and len(value) == 2 and is_grid(value[0]):
                    out.write(key, value[0], value[1], attrs={"layout": "grid"})
                elif isinstance(value, np.ndarray) and value.ndim >= 1:
                    out.write(key, value, attrs={"layout": "block"})
                else:
                    scalar = np.asarray(value) if ctx.is_root else None
                    out.write_root(key, scalar, attrs={"layout": "value"})
            out.attrs["fields"] = ",".join(fields)
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

        Raises:
            ValueError: on every rank, for a file that is not an hpcpar
                checkpoint, or a Grid field without ``grid=``.
            OSError: on every rank, naming the file, when ``PATH`` is unreadable
                and no readable previous checkpoint exists.
        """
        ctx = self.ctx
        if not self.exists():
            return None
        state, first = self._load(self.path, grid)
        if first is None:
            return state
        self._path_bad = True  # unreadable: a later save must not keep it as .prev
        prev = ctx.comm.bcast(os.path.exists(self.prev_path) if ctx.is_root else None, root=ctx.root)
        if not prev:
            raise first
        state, exc = self._load(self.prev_path, grid)
        if state is None:
            both = type(first)(f"{first}; the previous checkpoint is unreadable too: {exc}")
            both.ranks = first.ranks
            raise both from None
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
            step, layouts = self._header(path)
        except CollectiveError as exc:
            return None, exc
        self._check_grid(path, layouts, grid)
        fields: dict[str, Any] = {}
        try:
            for name, (layout, _) in layouts.items():
                key = f"{_GROUP}/{name}"
                if layout == "grid":
                    assert grid is not None  # _check_grid made sure
                    fields[name] = read_grid(grid, path, key, io=self.io)
                elif layout == "block":
                    fields[name] = read(self.ctx, path, key, axis=0, io=self.io)
                else:
                    fields[name] = np.asarray(read(self.ctx, path, key, axis=None, io=self.io))[()]
        except CollectiveError as exc:
            return None, exc
        return (step, fields), None

    def _header(self, path: str) -> tuple[int, dict[str, tuple[str, tuple[int, ...]]]]:
        """``(step, {field: (layout, shape)})`` of ``path``, read on root. **Collective**."""
        import h5py

        ctx = self.ctx
        meta, problem = None, None
        if ctx.is_root:
            def header() -> tuple[int, dict[str, tuple[str, tuple[int, ...]]]]:
                try:
                    f = h5py.File(path, "r")
                except OSError as exc:
                    raise OSError(f"{path} is not a readable HDF5 file, truncated or corrupted "
                                  f"({exc}); remove it to start afresh") from None
                with f:
                    if f.attrs.get("hpcpar_checkpoint") is None or "step" not in f.attrs:
                        raise ValueError(f"{path} is not an hpcpar checkpoint")
                    names = [n for n in str(f.attrs.get("fields", "")).split(",") if n]
                    layouts = {n: (str(f[f"{_GROUP}/{n}"].attrs["layout"]), f[f"{_GROUP}/{n}"].shape)
                               for n in names}
                    return int(f.attrs["step"]), layouts
            meta, problem = attempt(header)
        agree(ctx.comm, f"hpcpar.Checkpoint({path!r}).load", problem, root=ctx.root)
        return ctx.comm.bcast(meta, root=ctx.root)

    def _check_grid(self, path: str, layouts: dict[str, tuple[str, tuple[int, ...]]],
                    grid: Grid | None) -> None:
        """Raise a UsageError on every rank when ``grid`` does not fit the Grid fields
        (every rank knows the layouts, so every rank decides alike)."""
        where = f"hpcpar.Checkpoint({path!r}).load"
        grids = {n: shape for n, (kind, shape) in layouts.items() if kind == "grid"}
        if not grids:
            return
        if grid is None:
            fail(where, f"the checkpoint has Grid fields ({', '.join(grids)}); pass load(grid=...)")
        wrong = {n: list(s) for n, s in grids.items() if tuple(s) != tuple(grid.shape)}
        if wrong:
            fail(where, f"the Grid field(s) {wrong} do not have the grid's shape "
                 f"{list(grid.shape)}; load with a grid of the checkpoint's shape")


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
