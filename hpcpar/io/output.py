"""One HDF5 file written by all ranks: collective MPI-IO, or a correct serial fallback.

:class:`Output` opens one file for the whole job. Two I/O paths exist and give
the same file:

``"mpio"``
    h5py built with MPI (``h5py.get_config().mpi``) whose HDF5 loads the same MPI
    library as mpi4py: every rank opens the file with ``driver="mpio"`` and every
    data write is one collective MPI-IO call (ranks with nothing to write still
    take part, with an empty selection).
``"serial"``
    any other h5py, e.g. the pip wheel. Root holds the file; small writes are
    gathered to root block by block, large ones are written by each rank in
    turn, passing a token (root closes the file, rank 1 opens, writes its slab,
    closes, hands on, ...).

``HPCPAR_H5=mpio|serial`` (or ``io=``) forces a path. Every structural call
(create, resize, attributes) is made by every rank of the job, with values
agreed from root, and every call first exchanges a small header so that a bad
argument on any rank raises the same error on **every** rank instead of a hang.

:func:`hpcpar.read` and :func:`hpcpar.read_grid` (:mod:`hpcpar.io.read`) read one rank's part of a dataset back, with
either h5py.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shlex
import socket
import sys
from typing import Any

import numpy as np
from mpi4py import MPI

from .. import env
from ..decomp import partition

__all__ = ["Output", "io_mode", "IO_MODES", "GATHER_BYTES"]

#: The I/O paths: collective MPI-IO, or the serial-h5py fallback.
IO_MODES = ("mpio", "serial")

#: In the serial path, a write of at most this many bytes in total is gathered to
#: root (one file open); a larger one is written rank by rank, passing a token.
GATHER_BYTES = 64 * 2**20

#: File modes of :class:`Output` (``"x"`` is a synonym of ``"w-"``).
_FILE_MODES = {"w": "w", "w-": "w-", "x": "w-", "a": "a", "r+": "r+"}
_TAG = 0x4835  # point-to-point tag of the serial path, on the Output's private use of ctx.comm
_CHUNK_BYTES = 2**20  # target chunk size of extendible (append) datasets


# ---------------------------------------------------------------- the I/O path
def _mapped_mpi_libraries() -> set[str] | None:
    """Real paths of the MPI libraries mapped into this process; None when unknown."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = set()
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and re.match(r"lib(mpi|mpich)\.so(\.|$)", os.path.basename(parts[-1])):
            found.add(os.path.realpath(parts[-1]))
    return found


def _mpio_problem() -> str | None:
    """Why the mpio path cannot be used in this process, or None when it can."""
    import h5py

    if not h5py.get_config().mpi:
        return ("this h5py was built without MPI (h5py.get_config().mpi is False); build h5py "
                "against your MPI (README: 'Parallel HDF5') or use the serial path")
    import h5py.h5p  # noqa: F401  (loads HDF5 and the MPI library it links)

    libs = _mapped_mpi_libraries()
    if libs is not None and len(libs) > 1:
        return (f"h5py's HDF5 and mpi4py load different MPI libraries ({', '.join(sorted(libs))}); "
                "build mpi4py and h5py against the same MPI")
    return None


def io_mode(io: str | None = None) -> str:
    """The I/O path this process uses: ``"mpio"`` or ``"serial"``. **Local**.

    ``io`` (or, when None, the environment variable ``HPCPAR_H5``) forces a path:
    ``"mpio"``, ``"serial"`` or ``"auto"``. Automatic choice: ``"mpio"`` when h5py
    was built with MPI and its HDF5 uses the same MPI library as mpi4py, else
    ``"serial"``.

    Raises:
        ValueError: for an unknown value, or ``"mpio"`` forced where h5py cannot do it.
    """
    source = "io" if io is not None else env.HPCPAR_H5
    value = io if io is not None else env.get(env.HPCPAR_H5, "auto")
    choice = str(value).strip().lower()
    if choice not in ("auto", *IO_MODES):
        raise ValueError(f"{source}={value!r} is not one of 'mpio', 'serial', 'auto'")
    if choice == "serial":
        return "serial"
    why = _mpio_problem()
    if choice == "mpio" and why:
        raise ValueError(f"{source}=mpio, but {why}")
    return "serial" if why else "mpio"


# ---------------------------------------------------------------- errors on every rank
_ERRORS = {c.__name__: c for c in (ValueError, TypeError, KeyError, OSError, FileNotFoundError,
                                   FileExistsError, PermissionError, IsADirectoryError,
                                   NotADirectoryError)}


def _problem(exc: BaseException) -> tuple[str, str]:
    """A picklable (class name, message) of ``exc``."""
    name = type(exc).__name__ if type(exc).__name__ in _ERRORS else (
        "OSError" if isinstance(exc, OSError) else "ValueError")
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return name, msg or type(exc).__name__


def _raise(where: str, problems: list, size: int) -> None:
    """Raise one error describing every rank's problem (the same on every rank)."""
    bad = [(r, p) for r, p in enumerate(problems) if p is not None]
    if not bad:
        return
    kinds = {p[0] for _, p in bad}
    cls = _ERRORS.get(bad[0][1][0], ValueError) if len(kinds) == 1 else ValueError
    msgs = {p[1] for _, p in bad}
    if len(msgs) == 1 and len(bad) == size and size > 1:
        text = f"{where}: on every rank: {bad[0][1][1]}"
    elif size == 1:
        text = f"{where}: {bad[0][1][1]}"
    else:
        text = f"{where}: " + "; ".join(f"rank {r}: {p[1]}" for r, p in bad)
    exc = cls(text)
    exc._hpcpar_collective = True  # raised alike on every rank
    raise exc


def _agree(ctx, where: str, problem: tuple[str, str] | None) -> None:
    """**Collective**: raise on every rank when any rank has a problem."""
    _raise(where, ctx.comm.allgather(problem), ctx.size)


def _agree_root(ctx, where: str, problem: tuple[str, str] | None) -> None:
    """**Collective**: raise on every rank when root has a problem (others pass None)."""
    problem = ctx.comm.bcast(problem, root=ctx.root)
    if problem is not None:
        _raise(where, [problem], 1)


def _try(fn, *args, **kw):
    """``(fn(*args, **kw), None)``, or ``(None, problem)`` when it raises."""
    try:
        return fn(*args, **kw), None
    except Exception as exc:  # noqa: BLE001 - reported on every rank by the caller
        return None, _problem(exc)


# ---------------------------------------------------------------- pure helpers
def _check_dtype(dtype: np.dtype) -> str | None:
    import h5py

    if dtype.hasobject:
        return f"dtype {dtype} holds Python objects, which HDF5 cannot store"
    try:
        h5py.h5t.py_create(dtype, logical=True)
    except Exception:  # noqa: BLE001
        hint = " (encode text as bytes, e.g. .astype('S'))" if dtype.kind == "U" else ""
        return f"HDF5 cannot store dtype {dtype}{hint}"
    return None


def _check_name(name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip("/"):
        return f"the dataset name must be a non-empty str, got {name!r}"
    return None


def _is_grid(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("global_slices", "shape", "interior", "ctx"))


def _grid_slab(grid, ctx=None):
    """(global shape, start, count) of this rank's interior; raises ValueError."""
    gshape = tuple(int(n) for n in grid.shape)
    sl = tuple(grid.global_slices)
    if len(sl) != len(gshape):
        raise ValueError(f"grid.global_slices has {len(sl)} slices for a {len(gshape)}-d grid")
    start, count = [], []
    for s, n in zip(sl, gshape):
        a, b, step = s.indices(n)
        if step != 1 or b < a:
            raise ValueError(f"grid.global_slices {sl} must be contiguous slices")
        start.append(a)
        count.append(b - a)
    if ctx is not None and (grid.ctx.size != ctx.size or grid.ctx.rank != ctx.rank):
        raise ValueError(f"the grid's context (rank {grid.ctx.rank} of {grid.ctx.size}) is not "
                         f"this one's (rank {ctx.rank} of {ctx.size})")
    return gshape, tuple(start), tuple(count)


def _overlaps(slabs) -> tuple[int, int] | None:
    """Two ranks whose non-empty slabs overlap, or None."""
    boxes = [(r, s, c) for r, (s, c) in enumerate(slabs) if math.prod(c) > 0]
    if len(boxes) > 1024:
        return None  # too many to compare pairwise; the volume check still runs
    for i, (r, s, c) in enumerate(boxes):
        for q, t, d in boxes[i + 1:]:
            if all(a < b + m and b < a + n for a, n, b, m in zip(s, c, t, d)):
                return r, q
    return None


def _append_chunks(gshape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk shape of an extendible dataset: one time step, at most about 1 MiB."""
    chunk = [1] + [max(1, n) for n in gshape]
    while math.prod(chunk) * itemsize > _CHUNK_BYTES:
        k = max(range(1, len(chunk)), key=lambda i: chunk[i])
        if chunk[k] == 1:
            break
        chunk[k] = (chunk[k] + 1) // 2
    return tuple(chunk)


def _bytes(a: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a C-contiguous array (any dtype), for MPI.BYTE transfers."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _hyper_write(dset, start, count, block: np.ndarray, dxpl=None) -> None:
    """Write ``block`` into ``dset[start:start+count]``; an empty count selects nothing."""
    from h5py import h5s

    fspace = dset.id.get_space()
    if math.prod(count) == 0:
        fspace.select_none()
        mspace = h5s.create_simple((1,))
        mspace.select_none()
        buf = np.zeros(1, block.dtype)
    else:
        fspace.select_hyperslab(tuple(start), tuple(count))
        mspace = h5s.create_simple(tuple(count))
        buf = np.ascontiguousarray(block).reshape(count)
    dset.id.write(mspace, fspace, buf, dxpl=dxpl)


def _hyper_read(dset, start, count, dxpl=None) -> np.ndarray:
    """``dset[start:start+count]`` as a new C-contiguous array."""
    from h5py import h5s

    out = np.empty(tuple(count), dset.dtype)
    fspace = dset.id.get_space()
    if math.prod(count) == 0:
        fspace.select_none()
        mspace = h5s.create_simple((1,))
        mspace.select_none()
        dset.id.read(mspace, fspace, np.zeros(1, dset.dtype), dxpl=dxpl)
        return out
    fspace.select_hyperslab(tuple(start), tuple(count))
    mspace = h5s.create_simple(tuple(count))
    dset.id.read(mspace, fspace, out, dxpl=dxpl)
    return out


def _collective_dxpl():
    from h5py import h5fd, h5p

    dxpl = h5p.create(h5p.DATASET_XFER)
    dxpl.set_dxpl_mpio(h5fd.MPIO_COLLECTIVE)
    return dxpl


def _check_path(path: str, mode: str) -> tuple[str, str] | None:
    """Why ``path`` cannot be opened with ``mode``, as a problem; touches no file."""
    d = os.path.dirname(path) or "."
    exists = os.path.lexists(path)
    if not os.path.isdir(d):
        return ("FileNotFoundError", f"directory {d} does not exist; create it first "
                f"(os.makedirs) or choose another path")
    if exists and os.path.isdir(path):
        return ("IsADirectoryError", f"{path} is a directory, not a file")
    if mode == "w-" and exists:
        return ("FileExistsError", f"{path} already exists and mode='w-' does not overwrite; "
                "remove it or open with mode='w'")
    if mode == "r+" and not exists:
        return ("FileNotFoundError", f"{path} does not exist (mode='r+' opens an existing file)")
    if exists:
        try:
            os.close(os.open(path, os.O_RDWR))
        except OSError as exc:
            return ("PermissionError", f"cannot write {path}: {exc.strerror}; choose a writable file")
        return None
    probe = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        return ("PermissionError", f"cannot create files in {d}: {exc.strerror}; "
                "choose a writable location")
    return None


def _provenance(ctx, io: str, decomposition: Any) -> dict[str, Any]:
    """The provenance attributes (computed on root, the same on every rank)."""
    import h5py

    from .. import __version__

    info = None
    if ctx.is_root:
        info = {
            "hpcpar_version": __version__,
            "h5py_version": h5py.__version__,
            "hdf5_version": h5py.version.hdf5_version,
            "io_mode": io,
            "mpi_library": MPI.Get_library_version().strip().splitlines()[0].strip(),
            "mpi_ranks": ctx.size,
            "decomposition": "" if decomposition is None else str(decomposition),
            "command_line": shlex.join(sys.argv) if sys.argv and sys.argv[0] else sys.executable,
            "utc_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "hostname": socket.gethostname(),
        }
        job = os.environ.get("SLURM_JOB_ID")
        if job:
            info["slurm_job_id"] = job
    return ctx.comm.bcast(info, root=ctx.root)


# ---------------------------------------------------------------- Output
class Output:
    """One HDF5 file written by every rank of ``ctx``: a **collective** context manager.

    ::

        with hpcpar.Output(ctx, "run.h5") as out:
            out.write("x", local_rows)           # rows of a block-distributed array
            out.write("u", grid, u)              # the interior of a Grid field
            out.append("snapshots", local_rows)  # a new time step of an extendible dataset
            out.write_root("params", table)      # data only root has
            out.attrs["dt"] = 0.01               # root's value, a root-group attribute

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

    Raises:
        FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
        ValueError: on every rank, naming the path and what to do, before any
            file is created: missing directory, read-only location, existing file
            with ``mode="w-"``, unknown mode, a forced ``io`` that cannot work, or
            ranks that disagree about the I/O path.
    """

    def __init__(self, ctx, path, mode: str = "w", *, io: str | None = None,
                 decomposition: Any = None, gather_bytes: int = GATHER_BYTES,
                 provenance: bool = True):
        self.ctx = ctx
        self._file = None
        self._wrote = False
        self.closed = True
        where = f"hpcpar.Output({os.fspath(path)!r})"
        mine, problem = _try(io_mode, io)
        if problem is None and mode not in _FILE_MODES:
            problem = ("ValueError", f"mode={mode!r} is not one of {sorted(_FILE_MODES)} "
                       "(read with hpcpar.read)")
        heads = ctx.comm.allgather((mine, problem))
        _raise(where, [p for _, p in heads], ctx.size)
        if len({m for m, _ in heads}) > 1:
            _raise(where, [("ValueError", "ranks chose different I/O paths: " + ", ".join(
                f"rank {r}: {m}" for r, (m, _) in enumerate(heads))
                + f"; set {env.HPCPAR_H5} alike on every rank")], 1)
        self.mode: str = mine
        self.file_mode: str = _FILE_MODES[mode]
        root_path = os.path.abspath(os.fspath(path)) if ctx.is_root else None
        self.path: str = ctx.comm.bcast(root_path, root=ctx.root)
        self._where = f"hpcpar.Output({self.path!r})"
        self._gather_bytes = int(ctx.comm.bcast(gather_bytes, root=ctx.root))
        self._dxpl = _collective_dxpl() if self.mode == "mpio" else None
        self._decomposition = decomposition
        self._decomposition_set = decomposition is not None

        _agree_root(ctx, self._where, _check_path(self.path, self.file_mode) if ctx.is_root else None)
        self._open(self.file_mode)
        self.closed = False
        if provenance:
            self.attrs.update(_provenance(ctx, self.mode, decomposition))

    # ------------------------------------------------------------ file handling
    def _open(self, h5mode: str) -> None:
        import h5py

        if self.mode == "mpio":
            self._file, problem = _try(h5py.File, self.path, h5mode, driver="mpio", comm=self.ctx.comm)
            _agree(self.ctx, self._where, problem)
        else:
            problem = None
            if self.ctx.is_root:
                self._file, problem = _try(h5py.File, self.path, h5mode)
            _agree_root(self.ctx, self._where, problem)

    def _holder(self, fn, where: str, share: bool = False):
        """Run ``fn(file)`` where the file is held: every rank (mpio) or root (serial).

        **Collective**. Errors are raised on every rank. With ``share`` every rank
        gets root's result; otherwise ranks that do not hold the file get None.
        """
        if self.mode == "mpio":
            res, problem = _try(fn, self._file)
            _agree(self.ctx, where, problem)
            return res
        res, problem = _try(fn, self._file) if self.ctx.is_root else (None, None)
        _agree_root(self.ctx, where, problem)
        return self.ctx.comm.bcast(res, root=self.ctx.root) if share else res

    def _exchange(self, op: str, name: str, payload: Any, problem: str | None) -> list:
        """**Collective**: every rank's payload; raises on every rank on any problem."""
        where = f"hpcpar.Output.{op.split('(')[0]}({name!r})"
        if self.closed:
            problem = problem or f"{self.path} is closed"
        heads = self.ctx.comm.allgather((op, name, payload, problem))
        calls = {(h[0], h[1]) for h in heads}
        if len(calls) > 1:
            _raise(f"hpcpar.Output({self.path!r})", [("ValueError", "ranks are in different calls: "
                   + "; ".join(f"rank {r}: {h[0]}({h[1]!r})" for r, h in enumerate(heads)))], 1)
        _raise(where, [None if h[3] is None else ("ValueError", h[3]) for h in heads], self.ctx.size)
        return [h[2] for h in heads]

    def flush(self) -> None:
        """Flush HDF5's buffers to the file. **Collective**."""
        self._exchange("flush", "/", None, None)
        self._holder(lambda f: f.flush(), f"hpcpar.Output({self.path!r}).flush")

    def close(self) -> None:
        """Close the file. **Collective**; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        f, self._file = self._file, None
        problem = None
        if f is not None:
            _, problem = _try(f.close)
        if self.mode == "mpio":
            _agree(self.ctx, f"{self._where}.close", problem)
        else:
            _agree_root(self.ctx, f"{self._where}.close", problem)

    def _abandon(self) -> None:
        """Drop the file without communicating (after an error on this rank only)."""
        self.closed = True
        if self.mode == "serial" and self._file is not None:
            _try(self._file.close)
        elif self._file is not None:
            _ABANDONED.append(self._file)  # an mpio close is collective: never run it here
        self._file = None

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None or getattr(exc, "_hpcpar_collective", False):
            self.close()
        else:
            self._abandon()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.file_mode
        return f"<hpcpar.Output {self.path!r} ({self.mode}, {state})>"

    @property
    def attrs(self) -> "_Attrs":
        """Attributes of the file's root group: a **collective** mapping.

        ``out.attrs[key] = value`` writes root's ``value`` (every rank calls it);
        ``out.attrs[key]``, ``key in out.attrs`` and ``out.attrs.keys()`` return
        root's answer on every rank.
        """
        return _Attrs(self, "/")

    # ------------------------------------------------------------ writes
    def write(self, name: str, local, axis=0, *, compression=None, compression_opts=None,
              attrs: dict | None = None) -> None:
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
        data, gshape, dtype, slabs = self._layout("write", name, local, axis)
        cover = sum(math.prod(c) for _, c in slabs) == math.prod(gshape)
        self._create(name, gshape, dtype, compression=compression,
                     compression_opts=compression_opts, attrs=attrs, cover=cover)
        self._put(name, dtype, slabs, data)

    def write_root(self, name: str, array, *, compression=None, compression_opts=None,
                   attrs: dict | None = None) -> None:
        """Write an array that only root has. **Collective**: other ranks pass anything
        (e.g. None); only root's ``array`` is read.
        """
        problem = _check_name(name)
        payload = None
        if self.ctx.is_root and problem is None:
            if not isinstance(array, (np.ndarray, np.generic)):
                problem = f"write_root needs a NumPy array on root, got {type(array).__name__}"
            else:
                array = np.asarray(array)
                problem = _check_dtype(array.dtype)
                payload = (tuple(array.shape), array.dtype)
        heads = self._exchange("write_root", name, payload, problem)
        gshape, dtype = heads[self.ctx.root]
        self._create(name, gshape, dtype, compression=compression,
                     compression_opts=compression_opts, attrs=attrs, cover=True)
        if gshape == ():
            def scalar(f):
                if self.ctx.is_root:
                    f[name][()] = array
            self._holder(scalar, f"hpcpar.Output.write_root({name!r})")
            self._wrote = self._wrote or self.ctx.is_root
            return
        full = (tuple(0 for _ in gshape), gshape)
        empty = (tuple(0 for _ in gshape), tuple(0 for _ in gshape))
        slabs = [full if r == self.ctx.root else empty for r in range(self.ctx.size)]
        block = array if self.ctx.is_root else np.empty(empty[1], dtype)
        self._put(name, dtype, slabs, block)

    def append(self, name: str, local, axis=0, *, compression=None, compression_opts=None,
               attrs: dict | None = None) -> int:
        """Add one time step to an extendible dataset of shape ``(steps, *global_shape)``.

        **Collective**. ``local`` is this rank's block along ``axis`` (as in
        :meth:`write`), or ``out.append(name, grid, a)`` for a Grid field. The first
        call creates the dataset (chunked, unlimited leading axis); later calls
        must give the same global shape and dtype.

        Returns:
            The index of the step written (0 for the first call).
        """
        where = f"hpcpar.Output.append({name!r})"
        data, gshape, dtype, slabs = self._layout("append", name, local, axis)

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
                         chunks=_append_chunks(gshape, dtype.itemsize), compression=compression,
                         compression_opts=compression_opts, attrs=attrs,
                         cover=sum(math.prod(c) for _, c in slabs) == math.prod(gshape))
        else:
            self._holder(lambda f: f[name].resize(steps + 1, axis=0), where)
        slabs = [((steps, *s), (1, *c)) for s, c in slabs]
        self._put(name, dtype, slabs, np.asarray(data).reshape((1, *np.shape(data))))
        return steps

    # ------------------------------------------------------------ internals
    def _layout(self, op, name, local, axis):
        """``(data, global shape, dtype, [(start, count) per rank])`` of a block or
        Grid write, agreed and checked on every rank. **Collective**."""
        problem = _check_name(name)
        if _is_grid(local):
            grid, field, data, payload = local, axis, None, None
            if problem is None:
                try:
                    slab = _grid_slab(grid, self.ctx)
                    data = np.asarray(grid.interior(field))
                    if data.shape != slab[2]:
                        raise ValueError(f"grid.interior(a) has shape {data.shape}, but this "
                                         f"rank's global_slices cover {slab[2]}")
                    problem = _check_dtype(data.dtype)
                    payload = (slab, data.dtype)
                except Exception as exc:  # noqa: BLE001 - reported on every rank
                    problem = str(exc)
            heads = self._exchange(f"{op}(grid)", name, payload, problem)
            gshape, dtype, slabs = self._agree_slabs(name, heads)
            if not self._decomposition_set:
                self._decomposition_set = True
                dims = getattr(grid, "dims", None)
                if dims is not None:
                    self.attrs["decomposition"] = str(tuple(dims))
            return data, gshape, dtype, slabs
        ax = None
        if problem is None:
            problem, ax = _check_block(local, axis)
        payload = None if problem else (tuple(local.shape), local.dtype, ax)
        heads = self._exchange(op, name, payload, problem)
        gshape, dtype, slabs = _block_slabs(heads, f"hpcpar.Output.{op}({name!r})")
        return local, gshape, dtype, slabs

    def _agree_slabs(self, name, heads):
        """Global shape, dtype and per-rank (start, count) of a Grid write; checked."""
        where = f"hpcpar.Output.write({name!r})"
        gshapes = {h[0][0] for h in heads}
        dtypes = {h[1] for h in heads}
        if len(gshapes) > 1 or len(dtypes) > 1:
            _raise(where, [("ValueError", "ranks disagree about the grid: " + "; ".join(
                f"rank {r}: {h[1]}{list(h[0][0])}" for r, h in enumerate(heads)))], 1)
        gshape, dtype = heads[0][0][0], heads[0][1]
        slabs = [(h[0][1], h[0][2]) for h in heads]
        bad = [r for r, (s, c) in enumerate(slabs)
               if any(a < 0 or a + n > g for a, n, g in zip(s, c, gshape))]
        pair = _overlaps(slabs)
        if bad or pair:
            text = (f"global_slices of rank(s) {bad} fall outside the grid {list(gshape)}" if bad
                    else f"ranks {pair[0]} and {pair[1]} have overlapping global_slices")
            _raise(where, [("ValueError", text)], 1)
        return gshape, dtype, slabs

    def _create(self, name, shape, dtype, *, maxshape=None, chunks=None, compression=None,
                compression_opts=None, attrs=None, cover=False) -> None:
        """Create a dataset on every rank holding the file (structural, collective)."""
        import h5py

        where = f"hpcpar.Output({self.path!r}): dataset {name!r}"
        attrs = self.ctx.comm.bcast(dict(attrs or {}), root=self.ctx.root)
        if compression is not None and self.mode == "mpio" and h5py.version.hdf5_version_tuple < (1, 10, 2):
            _raise(where, [("ValueError", f"compression with the mpio path needs HDF5 >= 1.10.2 "
                            f"(this is {h5py.version.hdf5_version}); write without compression "
                            f"or set {env.HPCPAR_H5}=serial")], 1)

        def create(f):
            if name in f:
                raise ValueError(f"{name!r} already exists in {self.path}; choose another name "
                                 "or open the file with mode='w'")
            kw = {}
            if maxshape is not None:
                kw["maxshape"] = maxshape
            if chunks is not None:
                kw["chunks"] = chunks
            if compression is not None:
                kw["compression"] = compression
                if compression_opts is not None:
                    kw["compression_opts"] = compression_opts
            if cover and compression is None and math.prod(shape) > 0:
                kw["fill_time"] = "never"  # every element is written: skip the fill pass
            d = f.create_dataset(name, shape=shape, dtype=dtype, **kw)
            for k, v in attrs.items():
                d.attrs[k] = v

        self._holder(create, where)

    def _put(self, name: str, dtype: np.dtype, slabs, block) -> None:
        """Move every rank's slab into dataset ``name``. **Collective**."""
        where = f"hpcpar.Output({self.path!r}): writing {name!r}"
        ctx = self.ctx
        start, count = slabs[ctx.rank]
        block = np.asarray(block) if block is not None else np.empty(count, dtype)
        if all(math.prod(c) == 0 for _, c in slabs):
            return  # nothing to write anywhere (HDF5 refuses even empty selections then)
        if self.mode == "mpio":
            _, problem = _try(_hyper_write, self._file[name], start, count, block, self._dxpl)
            _agree(ctx, where, problem)
            self._wrote = True
            return
        total = sum(math.prod(c) for _, c in slabs) * dtype.itemsize
        if total <= self._gather_bytes:
            self._put_gather(name, dtype, slabs, block, where)
        else:
            self._put_token(name, slabs, block, where)

    def _put_gather(self, name, dtype, slabs, block, where) -> None:
        """Serial path, small data: root receives each rank's block and writes it."""
        comm, ctx = self.ctx.comm, self.ctx
        start, count = slabs[ctx.rank]
        if not ctx.is_root:
            if math.prod(count):
                comm.Send([_bytes(block), MPI.BYTE], dest=ctx.root, tag=_TAG)
            _agree_root(ctx, where, None)
            return
        # Root writes its own block while the next one arrives, then each received
        # block while receiving the one after it: at most two blocks in flight.
        senders = [r for r, (_, c) in enumerate(slabs) if math.prod(c) and r != ctx.rank]

        def post(i):
            if i >= len(senders):
                return None
            buf = np.empty(slabs[senders[i]][1], dtype)
            return buf, comm.Irecv([_bytes(buf), MPI.BYTE], source=senders[i], tag=_TAG)

        dset = self._file[name]
        pending = post(0)
        problem = None
        if math.prod(count):
            _, problem = _try(_hyper_write, dset, start, count, block)
        for i, r in enumerate(senders):
            buf, req = pending
            req.Wait()
            pending = post(i + 1)
            if problem is None:  # keep receiving after an error: every send must be matched
                _, problem = _try(_hyper_write, dset, slabs[r][0], slabs[r][1], buf)
        self._wrote = True
        _agree_root(ctx, where, problem)

    def _put_token(self, name, slabs, block, where) -> None:
        """Serial path, large data: each rank opens, writes its slab, closes; in rank order."""
        import h5py

        comm, ctx = self.ctx.comm, self.ctx
        start, count = slabs[ctx.rank]
        problem = None
        if ctx.is_root:
            if math.prod(count):
                _, problem = _try(_hyper_write, self._file[name], start, count, block)
            f, self._file = self._file, None
            _, p = _try(f.close)
            problem = problem or p
            ok = problem is None
        else:
            ok = comm.recv(source=ctx.rank - 1, tag=_TAG)
            if ok and math.prod(count):
                def one():
                    with h5py.File(self.path, "r+") as f:
                        _hyper_write(f[name], start, count, block)
                _, problem = _try(one)
                ok = problem is None
        if math.prod(count):
            self._wrote = True
        if ctx.rank + 1 < ctx.size:
            comm.send(ok, dest=ctx.rank + 1, tag=_TAG)
        problems = comm.allgather(problem)
        if ctx.is_root:
            self._file, p = _try(h5py.File, self.path, "r+")
            problems[ctx.root] = problems[ctx.root] or p
        problems[ctx.root] = comm.bcast(problems[ctx.root], root=ctx.root)
        _raise(where, problems, ctx.size)


_ABANDONED: list = []  # mpio files of an Output left by an error on one rank (never closed here)


def _check_block(local, axis) -> tuple[str | None, int | None]:
    """(problem, normalized axis) of one rank's block."""
    if not isinstance(local, np.ndarray):
        return f"the local block must be a NumPy array, got {type(local).__name__}", None
    if local.ndim == 0:
        return "a 0-d array is not a block of a distributed array; use write_root", None
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or not -local.ndim <= axis < local.ndim:
        return f"axis={axis!r} is out of range for a {local.ndim}-d block", None
    return _check_dtype(local.dtype), int(axis) % local.ndim


def _block_slabs(heads, where):
    """Global shape, dtype and per-rank (start, count) of a block write; checked."""
    shapes = [h[0] for h in heads]
    dtypes = [h[1] for h in heads]
    axes = {h[2] for h in heads}
    ax = heads[0][2]
    rest = {s[:ax] + s[ax + 1:] if len(s) == len(shapes[0]) else None for s in shapes}
    if len(axes) > 1 or len(rest) > 1 or len(set(dtypes)) > 1:
        _raise(where, [("ValueError", f"blocks must agree in dtype, axis and every dimension but "
                        f"the axis; got " + "; ".join(f"rank {r}: {d}{list(s)} axis={h[2]}"
                                                       for r, (s, d, h) in enumerate(zip(shapes, dtypes, heads))))], 1)
    counts = [s[ax] for s in shapes]
    gshape = shapes[0][:ax] + (sum(counts),) + shapes[0][ax + 1:]
    slabs, off = [], 0
    for s, c in zip(shapes, counts):
        start = tuple(off if i == ax else 0 for i in range(len(s)))
        slabs.append((start, s))
        off += c
    return gshape, dtypes[0], slabs


class _Attrs:
    """Collective attribute access of one object of an :class:`Output`'s file."""

    def __init__(self, out: Output, path: str):
        self._out, self._path = out, path

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def update(self, items: dict) -> None:
        """Write root's ``items``. **Collective**."""
        out = self._out
        out._exchange("attrs", self._path, None, None)
        items = out.ctx.comm.bcast(dict(items), root=out.ctx.root)

        def put(f):
            obj = f[self._path]
            for k, v in items.items():
                obj.attrs[k] = v
        out._holder(put, f"hpcpar.Output({out.path!r}).attrs")

    def __getitem__(self, key: str) -> Any:
        out = self._out
        out._exchange("attrs", self._path, None, None)
        return out._holder(lambda f: f[self._path].attrs[key],
                           f"hpcpar.Output({out.path!r}).attrs[{key!r}]", share=True)

    def keys(self) -> list[str]:
        out = self._out
        out._exchange("attrs", self._path, None, None)
        return out._holder(lambda f: list(f[self._path].attrs.keys()),
                           f"hpcpar.Output({out.path!r}).attrs", share=True)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()


