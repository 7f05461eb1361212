"""The writer of one HDF5 file shared by all ranks: :class:`Output`.

Two I/O paths give the same file (:mod:`hpcpar.io.mode`): collective MPI-IO,
or serial h5py with root holding the file (:mod:`hpcpar.io.serial`). Every
structural call (create, resize, attributes) is made by every rank, with values
agreed from root, and every call first agrees on a fixed-size header
(:mod:`hpcpar.io.agree`), so that a bad argument on any rank raises the same
error on **every** rank instead of a hang.
Each rank's box of a dataset comes from :mod:`hpcpar.io.slabs`; attributes go
through :mod:`hpcpar.io.attrs`. :func:`hpcpar.read` and :func:`hpcpar.read_grid`
(:mod:`hpcpar.io.read`) read one rank's part back, with either h5py.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import env
from ..errors import CollectiveError, agree, attempt, raise_problems
from ..observe.trace import IO, array_bytes, traced
from .agree import Layout, block_layout, gather_boxes, grid_layout, headers, settle
from .attrs import Attrs
from .attrs import provenance as provenance_attrs
from .lock import INCOMPLETE, RESERVE_MARGIN, FileLock, give_back, hosted, make_room, reserve, trim
from .mode import IO_MODES, check_path, collective_dxpl, io_mode
from .serial import put_gather, put_token
from .slabs import append_chunks, check_dtype, check_name, extendible, hyper_write, is_grid, new_dataset

if TYPE_CHECKING:
    from types import TracebackType

    from ..core.context import Context
    from ..decomp.grid import Grid

__all__ = ["Output", "io_mode", "IO_MODES", "GATHER_BYTES"]

#: In the serial path, a write of at most this many bytes in total is gathered to
#: root (one file open); a larger one is written rank by rank, passing a token.
GATHER_BYTES = 64 * 2**20

#: File modes of :class:`Output` (``"x"`` is a synonym of ``"w-"``).
_FILE_MODES = {"w": "w", "w-": "w-", "x": "w-", "a": "a", "r+": "r+"}
_ABANDONED: list = []  # mpio files of an Output left by an error on one rank (never closed here)
class Output:
    """One HDF5 file written by every rank of ``ctx``: a **collective** context manager.

    ::

        with hpcpar.Output(ctx, "run.h5") as out:
            out.write("x", local_rows)           # rows of a block-distributed array
            out.write("u", grid, u)              # the interior of a Grid field
            out.append("snapshots", local_rows)  # a new time step of an extendible dataset
            out.write_root("params", table)      # data only root has
            out.attrs["dt"] = 0.01               # root's value, a root-group attribute

        with hpcpar.Output(ctx, "run.h5", "a") as out:   # a run resumed at step k
            out.truncate("snapshots", kept)      # drop the steps it will redo

    Every method is **collective**: all ranks call it, in the same order, with the
    same dataset name. Opening writes provenance attributes on the root group
    (``hpcpar_version``, ``mpi_library``, ``mpi_ranks``, ``decomposition``,
    ``command_line``, ``utc_time``, ``slurm_job_id`` when set, ``io_mode``, ...).

    Args:
        ctx: the :class:`hpcpar.Context`.
        path: the file (root's path is used on every rank).
        mode: ``"w"`` create or truncate, ``"w-"`` (or ``"x"``) create and fail if it
            exists, ``"a"`` read/write and create if missing, ``"r+"`` read/write an
            existing file.
        io: ``"mpio"``, ``"serial"`` or ``"auto"``; None reads ``HPCPAR_H5``
            (default automatic, see :func:`io_mode`).
        decomposition: recorded in the ``decomposition`` attribute (e.g. the
            process-grid dims); set from the first Grid written when None.
        gather_bytes: serial path only: writes of at most this many bytes in total
            are gathered to root, larger ones pass a token (root's value is used).
        provenance: write the provenance attributes.

    Attributes:
        mode: the I/O path, ``"mpio"`` or ``"serial"``.
        path: the absolute path of the file.
        file_mode: the HDF5 open mode.

    Root locks the file before HDF5 opens (or truncates) it, until :meth:`close`, and
    reserves the disk blocks of each write first (:mod:`hpcpar.io.lock`). After an I/O
    error later calls raise; what was written before stays readable.

    Raises:
        FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
        ValueError: on every rank, naming the path and what to do, before any
            file is created: missing directory, read-only location, existing file
            with ``mode="w-"``, unknown mode, a forced ``io`` that cannot work, or
            ranks that disagree about the I/O path.
        OSError: on every rank, when another process holds the file open for
            writing (nothing is changed).
    """

    def __init__(self, ctx: Context, path: str | os.PathLike[str], mode: str = "w", *, io: str | None = None,
                 decomposition: Any = None, gather_bytes: int = GATHER_BYTES,
                 provenance: bool = True):
        self.ctx = ctx
        self._file: Any = None  # the h5py.File where this rank holds it
        self._lock: FileLock | None = None  # root's hold on the file
        self._failed: str | None = None  # the I/O error that ended this Output's writes
        self._wrote = False
        self.closed = True
        where = f"hpcpar.Output({os.fspath(path)!r})"
        mine, problem = attempt(io_mode, io)
        if problem is None and mode not in _FILE_MODES:
            problem = ("ValueError", f"mode={mode!r} is not one of {sorted(_FILE_MODES)} "
                       "(read with hpcpar.read)")
        if not settle(ctx.comm, "open", "/", mine, problem is not None)[0]:
            heads = ctx.comm.allgather((mine, problem))  # O(P): only when something is wrong
            raise_problems(where, [p for _, p in heads])
            raise_problems(where, [("ValueError", "ranks chose different I/O paths: " + ", ".join(
                f"rank {r}: {m}" for r, (m, _) in enumerate(heads))
                + f"; set {env.HPCPAR_H5} alike on every rank")])
        self.mode: str = str(mine)
        self.file_mode: str = _FILE_MODES[mode]
        root_path = os.path.abspath(os.fspath(path)) if ctx.is_root else None
        self.path: str = ctx.comm.bcast(root_path, root=ctx.root)
        self._where = f"hpcpar.Output({self.path!r})"
        self._gather_bytes = int(ctx.comm.bcast(gather_bytes, root=ctx.root))
        self._dxpl = collective_dxpl() if self.mode == "mpio" else None
        self._decomposition = decomposition
        self._decomposition_set = decomposition is not None

        why = check_path(self.path, self.file_mode) if ctx.is_root else None
        agree(ctx.comm, self._where, why, root=ctx.root)
        h5mode = self.file_mode
        if ctx.is_root:
            self._lock, why = attempt(FileLock, self.path, exclusive_create=h5mode == "w-")
            why = hosted(why)
            if self._lock is not None and self._lock.created:
                h5mode = "w"  # the empty file this lock created is ours to fill
        agree(ctx.comm, self._where, why, root=ctx.root)
        try:
            self._open(ctx.comm.bcast(h5mode, root=ctx.root) if self.mode == "mpio" else h5mode)
        except CollectiveError:
            self._unlock(remove=True)
            raise
        if self.mode == "mpio" and self._lock is not None:
            self._lock.keep_for_mpi_io()  # ROMIO's own record locks must not meet root's
        self.closed = False
        if provenance:
            self.attrs.update(provenance_attrs(ctx, self.mode, decomposition))

    # ------------------------------------------------------------ file handling
    def _open(self, h5mode: str) -> None:
        import h5py

        if self.mode == "mpio":
            self._file, problem = attempt(h5py.File, self.path, h5mode, driver="mpio", comm=self.ctx.comm)
            agree(self.ctx.comm, self._where, problem)
        else:
            problem = None
            if self.ctx.is_root:
                self._file, problem = attempt(h5py.File, self.path, h5mode)
            agree(self.ctx.comm, self._where, problem, root=self.ctx.root)

    def _unlock(self, remove: bool = False) -> None:  # root drops its lock (and an empty file it made)
        lock, self._lock = self._lock, None
        if lock is not None:
            attempt(os.unlink, self.path) if remove and lock.created else None
            lock.release()

    def _reserve(self, f: Any, nbytes: int) -> None:  # root: room for nbytes more and metadata
        if self._lock is not None and self.mode == "mpio":  # blocks past the end, or a look at statvfs
            make_room(self.path, int(nbytes) + RESERVE_MARGIN)
        elif self._lock is not None:
            reserve(self._lock, int(f.id.get_filesize()) + int(nbytes) + RESERVE_MARGIN)

    def _holder(self, fn, where: str, share: bool = False, room: int | None = None):
        """Run ``fn(file)`` where the file is held: every rank (mpio) or root (serial).

        **Collective**. Errors are raised on every rank (an I/O error also ends the
        Output's writes). With ``share`` every rank gets root's result; otherwise
        ranks that do not hold the file get None. ``room``: bytes ``fn`` may add to
        the file; root reserves them first, and on the mpio path every rank learns
        the outcome before any enters HDF5 (``fn`` is collective there: a rank that
        skipped it would leave the others waiting in it for ever).
        """
        try:
            if self.mode == "mpio":
                if room is not None:  # one more broadcast (of None), only when the file may grow
                    problem = attempt(self._reserve, self._file, room)[1] if self.ctx.is_root else None
                    agree(self.ctx.comm, where, hosted(problem), root=self.ctx.root)
                res, problem = attempt(fn, self._file)
                agree(self.ctx.comm, where, hosted(problem))
                return res
            res, problem = (None, None)
            if self.ctx.is_root:
                problem = None if room is None else attempt(self._reserve, self._file, room)[1]
                res, problem = attempt(fn, self._file) if problem is None else (None, problem)
            agree(self.ctx.comm, where, hosted(problem), root=self.ctx.root)
        except CollectiveError as exc:
            self._fail(exc)
            raise
        return self.ctx.comm.bcast(res, root=self.ctx.root) if share else res

    def _fail(self, exc: CollectiveError) -> None:  # after an I/O error: refuse every later write
        self._failed = self._failed or (str(exc) if isinstance(exc, OSError) else None)

    def _exchange(self, op: str, name: str, payload: Any, problem: str | tuple[str, str] | None,
                  key: Any = None, count: int = 0, odd: bool = False) -> tuple[list | None, int, int]:
        """**Collective**: ``(payloads, offset, total)`` of :func:`~hpcpar.io.agree.settle`;
        ``payloads`` is every rank's payload when ``key`` or ``odd`` (this rank's payload
        needs checking against the others') made the ranks gather them, else None.
        Raises on every rank on any problem."""
        if self.closed:
            problem = problem or f"{self.path} is closed"
        elif self._failed is not None and op != "close":
            problem = problem or ("OSError", f"an earlier write failed, so this Output writes nothing "
                                  f"more ({self._failed}); close it: what was written before is kept")
        same, offset, total = settle(self.ctx.comm, op, name, key, odd or problem is not None, count)
        heads = None if same else headers(self.ctx.comm, self.path, op, name, payload, problem)
        return heads, offset, total

    def flush(self) -> None:
        """Flush HDF5's buffers to the file. **Collective**."""
        self._exchange("flush", "/", None, None)

        # room=0: the margin, for the metadata the flush writes
        self._holder(lambda f: f.flush(), f"hpcpar.Output({self.path!r}).flush", room=0)

    def close(self) -> None:
        """Close the file. **Collective**; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        f, self._file = self._file, None
        problem = None
        if f is not None:
            attempt(self._reserve, f, 0)  # room for the metadata the close writes (root)
            _, problem = attempt(f.close)
        try:
            if self.mode == "mpio":
                agree(self.ctx.comm, f"{self._where}.close", hosted(problem))
                problem = None  # every rank has closed: root may trim the file now
            if self._lock is not None and problem is None:
                _, problem = attempt(trim, self.path)
        finally:
            self._unlock()
        agree(self.ctx.comm, f"{self._where}.close", hosted(problem), root=self.ctx.root)

    def _abandon(self) -> None:
        """Drop the file without communicating (after an error on this rank only)."""
        self.closed = True
        if self.mode == "serial" and self._file is not None:
            attempt(self._file.close)
        elif self._file is not None:
            _ABANDONED.append(self._file)  # an mpio close is collective: never run it here
        self._file = None
        self._unlock()

    def __enter__(self) -> Output:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, CollectiveError):
            self.close()
        else:
            self._abandon()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.file_mode
        return f"<hpcpar.Output {self.path!r} ({self.mode}, {state})>"

    @property
    def attrs(self) -> Attrs:
        """Attributes of the file's root group: a **collective** mapping.

        ``out.attrs[key] = value`` writes root's ``value`` (every rank calls it);
        ``out.attrs[key]``, ``key in out.attrs`` and ``out.attrs.keys()`` return
        root's answer on every rank.
        """
        return Attrs(self.ctx, self._where, "/", lambda: self._exchange("attrs", "/", None, None),
                     lambda fn, where, share: self._holder(fn, where, share=share))

    # ------------------------------------------------------------ writes
    @traced(IO, "Output.write", array_bytes)
    def write(self, name: str, local: np.ndarray | Grid, axis: Any = 0, *,
              compression: str | int | None = None, compression_opts: Any = None,
              attrs: dict[str, Any] | None = None) -> None:
        """Write a distributed array as one dataset. **Collective**.

        Two forms:

        * ``out.write(name, local, axis=0)``: ``local`` is this rank's block of an
          array split along ``axis``; blocks follow each other in rank order, so
          the global shape and each rank's offset come from the ranks' local
          shapes (uneven and empty blocks work).
        * ``out.write(name, grid, a)``: ``a`` is a field of a Grid (with halo);
          its interior ``grid.interior(a)`` goes to ``grid.global_slices`` of a
          dataset of shape ``grid.shape``.

        Args:
            name: the dataset's path in the file; it must not exist yet.
            compression, compression_opts: passed to h5py (e.g. ``"gzip"``, 4); on
                the mpio path this needs HDF5 >= 1.10.2 (filters in parallel).
            attrs: dataset attributes (root's dict is written).

        Raises:
            ValueError: on every rank, for an existing name, dtypes or shapes that
                disagree across ranks, a dtype HDF5 cannot store, ...
        """
        data, lay = self._layout("write", name, local, axis)
        self._create(name, lay.shape, lay.dtype, compression=compression,
                     compression_opts=compression_opts, attrs=attrs, cover=lay.total == math.prod(lay.shape))
        self._put(name, lay, data)

    @traced(IO, "Output.write_root", array_bytes)
    def write_root(self, name: str, array: Any, *, compression: str | int | None = None,
                   compression_opts: Any = None, attrs: dict[str, Any] | None = None) -> None:
        """Write an array that only root has. **Collective**: other ranks pass anything
        (e.g. None); only root's ``array`` is read.
        """
        problem = check_name(name)
        payload = None
        if self.ctx.is_root and problem is None:
            if not isinstance(array, (np.ndarray, np.generic)):
                problem = f"write_root needs a NumPy array on root, got {type(array).__name__}"
            else:
                array = np.asarray(array)
                problem = check_dtype(array.dtype)
                payload = (tuple(array.shape), array.dtype)
        self._exchange("write_root", name, None, problem)
        gshape, dtype = self.ctx.comm.bcast(payload, root=self.ctx.root)
        self._create(name, gshape, dtype, compression=compression,
                     compression_opts=compression_opts, attrs=attrs, cover=True)
        if gshape == ():
            def scalar(f):
                if self.ctx.is_root:
                    f[name][()] = array
                del f[name].attrs[INCOMPLETE]
            self._holder(scalar, f"hpcpar.Output.write_root({name!r})")
            self._wrote = self._wrote or self.ctx.is_root
            return
        zero = tuple(0 for _ in gshape)
        box = (zero, gshape if self.ctx.is_root else zero)
        block = array if self.ctx.is_root else np.empty(zero, dtype)
        self._put(name, Layout(gshape, dtype, box, math.prod(gshape)), block)

    @traced(IO, "Output.append", array_bytes)
    def append(self, name: str, local: np.ndarray | Grid, axis: Any = 0, *,
               compression: str | int | None = None, compression_opts: Any = None,
               attrs: dict[str, Any] | None = None) -> int:
        """Add one time step to an extendible dataset of shape ``(steps, *global_shape)``.

        **Collective**. ``local`` is this rank's block along ``axis`` (as in
        :meth:`write`), or ``out.append(name, grid, a)`` for a Grid field. The first
        call creates the dataset (chunked, unlimited leading axis); later calls
        must give the same global shape and dtype.

        Returns:
            The index of the step written (0 for the first call).
        """
        where = f"hpcpar.Output.append({name!r})"
        data, lay = self._layout("append", name, local, axis)
        gshape, dtype = lay.shape, lay.dtype

        def existing(f):
            if name not in f:
                return None
            d = f[name]
            import h5py
            if not isinstance(d, h5py.Dataset):
                raise ValueError(f"{name!r} exists and is not a dataset")
            if d.maxshape[0] is not None or d.shape[1:] != gshape or d.dtype != dtype:
                raise ValueError(f"{name!r} exists as {d.dtype}{list(d.shape)} (maxshape "
                                 f"{d.maxshape}); appending needs an extendible dataset of "
                                 f"{dtype}[steps, {', '.join(map(str, gshape))}]")
            return d.shape[0]

        steps = self._holder(existing, where, share=True)
        if steps is None:
            steps = 0
            self._create(name, (1, *gshape), dtype, maxshape=(None, *gshape),
                         chunks=append_chunks(gshape, dtype.itemsize), compression=compression,
                         compression_opts=compression_opts, attrs=attrs,
                         cover=lay.total == math.prod(gshape))
        else:
            def grow(f: Any) -> None:
                f[name].resize(steps + 1, axis=0)
                f[name].attrs[INCOMPLETE] = True
            self._holder(grow, where, room=math.prod(gshape) * dtype.itemsize)
        step = Layout((steps + 1, *gshape), dtype, ((steps, *lay.box[0]), (1, *lay.box[1])), lay.total,
                      None if lay.boxes is None else [((steps, *s), (1, *c)) for s, c in lay.boxes])
        self._put(name, step, np.asarray(data).reshape((1, *np.shape(data))))
        return steps

    # ------------------------------------------------------------ reopened files
    def __contains__(self, name: str) -> bool:
        """Whether the file has an object ``name``. **Collective**: root's answer on every rank."""
        self._exchange("contains", name, None, check_name(name))
        return bool(self._holder(lambda f: name in f, f"hpcpar.Output.contains({name!r})", share=True))

    def steps(self, name: str) -> int:
        """The number of steps of the extendible dataset ``name`` (made by :meth:`append`).

        **Collective**: root's answer on every rank.

        Raises:
            KeyError, ValueError: on every rank, when ``name`` is missing or not
                an extendible dataset.
        """
        where = f"hpcpar.Output.steps({name!r})"
        self._exchange("steps", name, None, check_name(name))
        return int(self._holder(lambda f: extendible(f, name, self.path).shape[0], where, share=True))

    def truncate(self, name: str, steps: int) -> None:
        """Keep only the first ``steps`` steps of the extendible dataset ``name``. **Collective**.

        For a run resumed at a step: reopen its file with ``mode="a"``, truncate
        the appended datasets to the steps the restart does not redo, and append
        from there; the file ends as an uninterrupted run's. Every rank passes the
        same ``steps``.

        Args:
            name: a dataset made by :meth:`append`.
            steps: how many steps to keep, from 0 to :meth:`steps`.

        Raises:
            KeyError: on every rank, when the file has no ``name``.
            ValueError: on every rank, when ``name`` is not an extendible dataset,
                ``steps`` is negative or beyond its steps, or ranks pass
                different ``steps``.
        """
        where = f"hpcpar.Output.truncate({name!r})"
        problem = check_name(name)
        if problem is None and (not isinstance(steps, (int, np.integer)) or isinstance(steps, bool)
                                or steps < 0):
            problem = f"steps must be an int >= 0, got {steps!r}"
        keep = None if problem else int(steps)
        heads = self._exchange("truncate", name, keep, problem, key=keep)[0]
        if heads is not None and len(set(heads)) > 1:
            raise_problems(where, [("ValueError", "ranks pass different steps: " + ", ".join(
                f"rank {r}: {n}" for r, n in enumerate(heads)))])

        def shrink(f: Any) -> None:
            d = extendible(f, name, self.path)
            if keep > d.shape[0]:
                raise ValueError(f"{name!r} has {d.shape[0]} steps; cannot truncate it to {keep}")
            d.resize(keep, axis=0)
        self._holder(shrink, where)

    def delete(self, name: str) -> None:
        """Remove the dataset or group ``name`` from the file. **Collective**.

        HDF5 does not give the space back to the file system; the name can be
        written again.

        Raises:
            KeyError: on every rank, when the file has no ``name``.
        """
        where = f"hpcpar.Output.delete({name!r})"
        self._exchange("delete", name, None, check_name(name))

        def remove(f: Any) -> None:
            if name not in f:
                raise KeyError(f"{self.path} has no {name!r}")
            del f[name]
        self._holder(remove, where)

    @property
    def wrote(self) -> bool:
        """Whether this rank has written data to the file (on the serial path, only the
        ranks that held it). **Local**."""
        return self._wrote

    # ------------------------------------------------------------ internals
    def _layout(self, op: str, name: str, local: Any, axis: Any) -> tuple[Any, Layout]:
        """``(data, layout)`` of a block or Grid write, agreed and checked on every rank.
        **Collective**; the normal path exchanges a fixed-size header (:mod:`hpcpar.io.agree`)."""
        if not is_grid(local):
            return local, block_layout(self._exchange, op, name, local, axis, self.ctx.rank)
        data, lay = grid_layout(self._exchange, self.ctx, self.path, op, name, local, axis)
        if not self._decomposition_set:
            self._decomposition_set = True
            dims = getattr(local, "dims", None)
            if dims is not None:
                self.attrs["decomposition"] = str(tuple(dims))
        return data, lay

    def _create(self, name, shape, dtype, *, maxshape=None, chunks=None, compression=None,
                compression_opts=None, attrs=None, cover=False) -> None:
        """Create a dataset on every rank holding the file (structural, collective)."""
        import h5py

        where = f"hpcpar.Output({self.path!r}): dataset {name!r}"
        attrs = self.ctx.comm.bcast(dict(attrs or {}), root=self.ctx.root)
        if compression is not None and self.mode == "mpio" and h5py.version.hdf5_version_tuple < (1, 10, 2):
            raise_problems(where, [("ValueError", f"compression with the mpio path needs HDF5 >= 1.10.2 "
                            f"(this is {h5py.version.hdf5_version}); write without compression "
                            f"or set {env.HPCPAR_H5}=serial")])

        def create(f):
            if name in f:
                raise ValueError(f"{name!r} already exists in {self.path}; choose another name "
                                 "or open the file with mode='w'")
            new_dataset(f, name, shape, dtype, attrs, maxshape=maxshape, chunks=chunks, cover=cover,
                        compression=compression, compression_opts=compression_opts)

        self._holder(create, where, room=math.prod(shape) * np.dtype(dtype).itemsize)

    def _put(self, name: str, lay: Layout, block: Any) -> None:
        """Move every rank's box into dataset ``name``, then clear its ``hpcpar_incomplete``
        mark; an I/O error leaves the mark and ends the Output's writes. **Collective**."""
        if lay.total == 0:
            return  # nothing to write anywhere (HDF5 refuses even empty selections then)
        try:
            self._move(name, lay, block)
        except CollectiveError as exc:
            self._fail(exc)
            if self.mode == "mpio":  # every rank (HDF5 metadata calls are collective); root punches
                attempt(self._give_back, name)
            raise
        self._holder(lambda f: f[name].attrs.__delitem__(INCOMPLETE), f"{self._where}: completing {name!r}")

    def _give_back(self, name: str) -> None:  # mpio, every rank: root frees what a failed write took
        d = self._file[name].id  # opened (and closed) on every rank, as parallel HDF5 expects
        offset = d.get_offset()  # None unless contiguous (what an unfiltered write makes)
        if offset is not None and self._lock is not None:  # root holds the lock: room for the close
            give_back(self.path, int(offset), int(d.get_storage_size()))

    def _move(self, name: str, lay: Layout, block: Any) -> None:  # _put's data movement
        where = f"hpcpar.Output({self.path!r}): writing {name!r}"
        ctx, dtype = self.ctx, lay.dtype
        start, count = lay.box
        block = np.asarray(block) if block is not None else np.empty(count, dtype)
        if self.mode == "mpio":
            from ..core.watchdog import watching
            with watching(f"Output.write of {name!r} (HDF5's collective write)", ctx):
                _, problem = attempt(hyper_write, self._file[name], start, count, block, self._dxpl)
            why = "its collective write" if problem is None else "an I/O error here: " + " ".join(
                problem[1].split())
            if problem is not None and problem[0] == "OSError":  # e.g. the disk filled after the check
                problem = ("OSError", f"{problem[1]}; {name!r} is left marked {INCOMPLETE}: free space "
                           "(or raise the limit), close the Output and write again; what was written "
                           "before is kept")
            with watching(f"Output.write of {name!r}, after {why}", ctx):  # the others may be stuck in HDF5
                agree(ctx.comm, where, hosted(problem))
            self._wrote = True
            return
        if lay.total * dtype.itemsize <= self._gather_bytes:
            boxes = lay.boxes or gather_boxes(ctx.comm, lay.box, ctx.root)  # root's list of every box
            wrote = put_gather(ctx, self._file[name] if ctx.is_root else None, dtype, lay.box, boxes,
                               block, where)
        else:
            f, self._file = self._file, None

            def reopened(new: Any) -> None:
                self._file = new
            wrote = put_token(ctx, self.path, name, f, lay.box, block, where, reopened)
        self._wrote = self._wrote or wrote
