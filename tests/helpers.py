"""Helpers shared by the test modules (``from helpers import ...``): paths, launching jobs, references."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"


def mpiexec() -> str:
    """The mpiexec beside this Python (the pip MPICH wheel) or on PATH."""
    from hpcpar.launch import launcher

    return launcher()[0]


def run_mpi(n: int, args: list[str], timeout: float = 60, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n n python ARGS`` and capture its output; a hang fails the test.

    The command comes from :func:`hpcpar.launch.launch_argv` (Open MPI's launcher gets
    what it needs on this machine: --allow-run-as-root, --oversubscribe)."""
    from hpcpar.launch import launch_argv

    full_env = {**os.environ, **(env or {})}
    cmd = launch_argv(n, [sys.executable, *args])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, **kw)


def expected_h5_mode() -> str | None:
    """The I/O path the output tests must find (``HPCPAR_EXPECT_H5_MODE``), or None."""
    from hpcpar import env

    return env.get(env.HPCPAR_EXPECT_H5_MODE)


def serial_heat(n: int, r: float, steps: int) -> np.ndarray:
    """The heat job's reference: plain NumPy on the whole grid, zero walls, the same initial field."""
    x = np.arange(1, n + 1, dtype=np.float64) * (1.0 / (n + 1))
    s = np.sin(np.pi * x)
    u = np.zeros((n + 2, n + 2))
    u[1:-1, 1:-1] = s[:, None] * s[None, :]
    for _ in range(steps):
        c = u[1:-1, 1:-1]
        u[1:-1, 1:-1] = c + r * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - 4.0 * c)
    return u[1:-1, 1:-1]
