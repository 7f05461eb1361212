"""The checked-in sbatch scripts: every ``jobs/NAME.py`` rendered with the defaults it declares.

``hpcpar slurm render-all`` writes ``slurm/NAME.sbatch`` from :func:`render_jobs`;
a job file declares its defaults as a literal ``SLURM = {...}`` dict, read without
importing the job (:func:`job_defaults`). **Local**, no MPI.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from .spec import JobSpec

__all__ = ["job_defaults", "render_jobs", "RENDER_DEFAULTS"]


def job_defaults(path: str | os.PathLike) -> dict[str, Any]:
    """The ``SLURM = {...}`` JobSpec defaults a job file declares, read without importing it.

    **Local**. A job may declare, at module level, a literal dict such as
    ``SLURM = {"ntasks": 4, "time": 10, "signal": 60, "requeue": True, "args": ["--n", "512"]}``;
    it is read with :func:`ast.literal_eval`. Returns ``{}`` when there is none.
    """
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SLURM"
                                                for t in node.targets):
            value = ast.literal_eval(node.value)
            if not isinstance(value, dict):
                raise ValueError(f"{path}: SLURM must be a dict of JobSpec fields, got {value!r}")
            return value
    return {}


#: Defaults of the checked-in scripts in ``slurm/`` for jobs that declare none.
RENDER_DEFAULTS: dict[str, Any] = {"nodes": 1, "ntasks": 2, "time": 10, "python": "python"}


def render_jobs(jobs_dir: str | os.PathLike = "jobs") -> dict[str, str]:
    """The sbatch script of every ``*.py`` in ``jobs_dir``: ``{"pi.sbatch": text, ...}``. **Local**.

    Each job is rendered with :data:`RENDER_DEFAULTS` updated by its own ``SLURM``
    dict (:func:`job_defaults`), its path as ``jobs/NAME.py`` (submit from the
    repository root) and ``python`` taken from ``PATH`` (activate the venv before
    ``sbatch``: sbatch passes the environment on).
    """
    out = {}
    for path in sorted(Path(jobs_dir).glob("*.py")):
        if path.name.startswith("_"):
            continue
        fields = {**RENDER_DEFAULTS, **job_defaults(path)}
        spec = JobSpec(job=f"{Path(jobs_dir).name}/{path.name}", **fields)
        out[f"{path.stem}.sbatch"] = spec.render()
    return out

