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
    """Run ``mpiexec -n n python ARGS`` and capture its output; a hang fails the test."""
    full_env = {**os.environ, **(env or {})}
    cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
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


def skip_before_unchecked_mode(r: subprocess.CompletedProcess) -> None:
    """Skip the calling test if ``r`` failed only because ``Context`` takes no ``checks=`` yet.

    The benchmarks' unchecked columns use ``Context(checks=False)``, which the core
    rewrite adds; in a tree without it they fail with this TypeError and the test
    is skipped rather than failed. In a tree with it this does nothing.
    """
    import pytest

    if r.returncode != 0 and "unexpected keyword argument 'checks'" in r.stderr:
        pytest.skip("Context(checks=False) is not in this tree yet")
