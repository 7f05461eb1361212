"""Slurm jobs: specs rendered to safe sbatch scripts, and submit, status, wait, cancel, requeue.

The package has one module per job of work, all **local** and free of MPI:

:mod:`~hpcpar.slurm.spec`
    :class:`JobSpec`, its validation and :meth:`JobSpec.render` (the sbatch script text).
:mod:`~hpcpar.slurm.scripts`
    :func:`render_jobs`: the checked-in ``slurm/*.sbatch`` of every job in ``jobs/``.
:mod:`~hpcpar.slurm.client`
    :func:`submit`, :func:`status`, :func:`wait`, :func:`cancel`, :func:`requeue` through
    the Slurm tools (``sbatch``, ``scontrol``, ``sacct``, ``scancel``).
:mod:`~hpcpar.slurm.job`
    in-job state written by :func:`hpcpar.run`: the status file under ``.hpcpar/``,
    restarts, and the requeue that runs when the job's processes exit.

Every public name of these modules is also available here (``hpcpar.slurm.submit``).
"""

from __future__ import annotations

from .client import TERMINAL_STATES, JobStatus, SlurmError, cancel, requeue, status, submit, wait
from .job import STATUS_DIR, read_status, status_path, write_status
from .scripts import job_defaults, render_jobs
from .spec import JobSpec, render, time_seconds

__all__ = [
    "JobSpec", "JobStatus", "SlurmError",
    "render", "submit", "status", "wait", "cancel", "requeue",
    "TERMINAL_STATES", "STATUS_DIR", "status_path", "write_status", "read_status",
    "job_defaults", "render_jobs", "time_seconds",
]
