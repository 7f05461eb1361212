"""Attributes of an :class:`hpcpar.Output`'s file, read and written collectively; provenance attributes."""

from __future__ import annotations

import datetime
import os
import shlex
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.context import Context

__all__ = ["Attrs", "provenance"]


class Attrs:
    """Collective attribute access of one object of an open file (a mapping-like proxy).

    Every operation is **collective**: all ranks call it in the same order. Writes
    use root's values; reads return root's answer on every rank.

    Args:
        ctx: the context of the file's ranks.
        label: how errors name the file, e.g. ``"hpcpar.Output('/tmp/a.h5')"``.
        obj: the path of the object in the file (``"/"``: the root group).
        check: called first by every operation on every rank; it raises alike on
            every rank when the ranks are not all in this call or the file is closed.
        run: ``run(fn, where, share)`` calls ``fn(h5py_file)`` where the file is
            held and raises alike on every rank when it fails; with ``share``
            every rank gets root's result.
    """

    def __init__(self, ctx: Context, label: str, obj: str, check: Callable[[], object],
                 run: Callable[[Callable[[Any], Any], str, bool], Any]):
        self._ctx, self._label, self._obj = ctx, label, obj
        self._check, self._run = check, run

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def update(self, items: dict[str, Any]) -> None:
        """Write root's ``items``. **Collective**.

        Args:
            items: attribute names and values (root's dict is written).
        """
        self._check()
        items = self._ctx.comm.bcast(dict(items), root=self._ctx.root)

        def put(f: Any) -> None:
            obj = f[self._obj]
            for k, v in items.items():
                obj.attrs[k] = v
        self._run(put, f"{self._label}.attrs", False)

    def __getitem__(self, key: str) -> Any:
        self._check()
        return self._run(lambda f: f[self._obj].attrs[key], f"{self._label}.attrs[{key!r}]", True)

    def get(self, key: str, default: Any = None) -> Any:
        """Root's value of ``key``, or ``default`` when it is not set. **Collective**."""
        self._check()
        found = self._run(lambda f: (True, f[self._obj].attrs[key]) if key in f[self._obj].attrs
                          else (False, None), f"{self._label}.attrs.get({key!r})", True)
        return found[1] if found[0] else default

    def keys(self) -> list[str]:
        """Root's attribute names. **Collective**.

        Returns:
            The names, on every rank.
        """
        self._check()
        return self._run(lambda f: list(f[self._obj].attrs.keys()), f"{self._label}.attrs", True)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()


def provenance(ctx: Context, io: str, decomposition: Any) -> dict[str, Any]:
    """The provenance attributes of a new file. **Collective**: computed on root, root's on every rank.

    Args:
        ctx: the job's context.
        io: the I/O path (``"mpio"`` or ``"serial"``).
        decomposition: recorded as its ``str`` (empty when None).

    Returns:
        ``hpcpar_version``, ``h5py_version``, ``hdf5_version``, ``io_mode``,
        ``mpi_library``, ``mpi_ranks``, ``decomposition``, ``command_line``,
        ``utc_time``, ``hostname`` and, under Slurm, ``slurm_job_id``.
    """
    import h5py

    from .. import __version__
    from ..observe.info import mpi_library

    info = None
    if ctx.is_root:
        info = {
            "hpcpar_version": __version__,
            "h5py_version": h5py.__version__,
            "hdf5_version": h5py.version.hdf5_version,
            "io_mode": io,
            "mpi_library": mpi_library(),
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
