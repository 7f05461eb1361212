"""In-job state of a Slurm job run by :func:`hpcpar.run`: its status file, restarts, requeue at exit.

The runner records the job's state in ``WORKDIR/.hpcpar/job-ID.json`` (written
atomically): RUNNING at the start, COMPLETED at a normal end, FAILED with the
failing rank and its message, REQUEUED after :func:`hpcpar.slurm.requeue`.
:func:`hpcpar.slurm.status` reads it back. Everything here is **local**: each
function is called by the rank that says so, and never communicates. Outside a
Slurm job (no ``SLURM_JOB_ID``) the job functions do nothing.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["STATUS_DIR", "status_path", "write_status", "read_status", "job_started", "job_finished",
           "failed_already", "restarts", "mark_requeued", "requeue_at_exit",
           "requeue_pending"]

#: Directory, relative to the job's working directory, of the runner's status files.
STATUS_DIR = ".hpcpar"


def status_path(job_id: str | int, workdir: str | os.PathLike = ".") -> Path:
    """``WORKDIR/.hpcpar/job-ID.json``: where the runner records a job's state. **Local**, pure."""
    return Path(workdir) / STATUS_DIR / f"job-{job_id}.json"


def write_status(path: str | os.PathLike, **fields: Any) -> None:
    """Write the status file ``path`` atomically (temporary file + rename). **Local**.

    Used by the runner: ``state`` (RUNNING, COMPLETED, FAILED, REQUEUED),
    ``exit_code``, ``rank``, ``host`` and ``message`` of a failure, ``time``, ``restarts``.
    Never raises: a job whose directory is not writable runs on without it.
    """
    path = Path(path)
    record = {"time": time.time(), **fields}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def read_status(path: str | os.PathLike) -> dict | None:
    """The record of the status file ``path``; None when there is none (or it is unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# In-job state of the current process (used by the runner and by requeue()).
# In-job state of the current process (used by the runner and by requeue()).
_JOB: dict[str, Any] = {"path": None, "requeued": False, "atexit": False}


def job_started(rank: int, size: int) -> None:
    """Record the job as RUNNING (root), and remember where its status file is (every rank).

    **Local**: the runner calls it on every rank at the start of ``hpcpar.run``.
    Does nothing outside a Slurm job. Root writes nothing when another rank of this
    run already recorded FAILED.
    """
    job_id = os.environ.get("SLURM_JOB_ID", "").strip()
    if not job_id.isdigit():
        return
    try:
        _JOB["path"] = status_path(job_id, os.getcwd()).resolve()
    except OSError:
        return
    _JOB["requeued"] = False
    if rank == 0 and not failed_already():
        write_status(_JOB["path"], state="RUNNING", job_id=job_id, ranks=size,
                     restarts=restarts(), array_index=os.environ.get("SLURM_ARRAY_TASK_ID"))


def job_finished(rank: int, size: int, state: str = "COMPLETED", exit_code: int = 0,
                 message: str | None = None) -> None:
    """Record how the job ended: COMPLETED by root at a normal end, FAILED (with ``rank``, this
    host's name, ``exit_code`` and ``message``) by a failing rank before it aborts the job. **Local**.

    A COMPLETED record never hides a FAILED or REQUEUED one of this run. Never raises:
    it runs inside the runner's failure path.
    """
    path = _JOB["path"]
    if path is None or (_JOB["requeued"] and state == "COMPLETED"):
        return
    try:
        if state == "COMPLETED" and failed_already():
            return
        fields: dict[str, Any] = {"state": state, "job_id": os.environ.get("SLURM_JOB_ID"),
                                  "exit_code": exit_code, "ranks": size, "restarts": restarts()}
        if state != "COMPLETED":
            fields.update(rank=rank, host=socket.gethostname(), message=str(message)[:2000])
        write_status(path, **fields)
    except Exception:
        pass


def failed_already() -> bool:
    """True when a rank of this run of the job already recorded FAILED. **Local**.

    Root's RUNNING or COMPLETED record, racing with a failing rank's, must not hide
    the failure.
    """
    rec = read_status(_JOB["path"]) if _JOB["path"] is not None else None
    return rec is not None and rec.get("state") == "FAILED" and rec.get("restarts") == restarts() \
        and rec.get("job_id") == os.environ.get("SLURM_JOB_ID")


def restarts() -> int:
    """How often Slurm has restarted this job (``SLURM_RESTART_COUNT``; 0 outside Slurm). **Local**."""
    value = os.environ.get("SLURM_RESTART_COUNT", "0").strip()
    return int(value) if value.isdigit() else 0


def mark_requeued() -> None:
    """Record the job as REQUEUED; a later COMPLETED record of this run is then left out. **Local**."""
    _JOB["requeued"] = True
    if _JOB["path"] is not None:
        write_status(_JOB["path"], state="REQUEUED", job_id=os.environ.get("SLURM_JOB_ID"),
                     restarts=restarts())


def requeue_at_exit(job_id: str) -> None:
    """Run ``scontrol requeue JOB_ID`` when this process exits, after ``MPI_Finalize``. **Local**.

    Registered once per process, however often it is called. If the requeue fails
    the process exits with status 1 and says why on stderr.
    """
    if not _JOB["atexit"]:
        atexit.register(_requeue_now, job_id)
        _JOB["atexit"] = True


def requeue_pending() -> bool:
    """True when :func:`requeue_at_exit` was called in this process. **Local**.

    The requeue finalizes MPI in an exit handler that runs before those registered
    earlier: the runner stops its watchdog thread first when this is true.
    """
    return bool(_JOB["atexit"])


def _requeue_now(job_id: str) -> None:
    mpi = sys.modules.get("mpi4py.MPI")
    try:
        if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
            sys.stdout.flush()
            sys.stderr.flush()
            mpi.Finalize()
        from .client import run_tool  # the Slurm client, only when a requeue happens

        run_tool(["scontrol", "requeue", job_id])
    except Exception as exc:
        sys.stderr.write(f"hpcpar.slurm.requeue: could not requeue job {job_id}: {exc}\n")
        sys.stderr.flush()
        os._exit(1)

