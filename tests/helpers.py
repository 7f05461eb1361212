"""Helpers shared by the test modules (``from helpers import ...``): paths, launching jobs, references."""

from __future__ import annotations

import contextlib
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


def script(tmp_path: Path, body: str, name: str = "job.py") -> str:
    """Write the job ``body`` (dedented) to ``tmp_path / name``; its path."""
    import textwrap

    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return str(p)


def job_processes(marker: str, environ: bool = False) -> dict[int, str]:
    """Live processes (not zombies) whose command line, or with ``environ`` also whose
    environment, holds ``marker`` (e.g. the job's script): pid -> command line."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            env_text = b""
            if environ:
                with open(f"/proc/{d}/environ", "rb") as f:
                    env_text = f.read()
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in env_text + cmd and state != "Z":
            found[int(d)] = cmd.replace(b"\0", b" ").decode(errors="replace")
    return found


def job_pids(marker: str) -> list[int]:
    """Pids of live processes whose command line mentions ``marker`` (the job's script)."""
    return list(job_processes(marker))


def run_ended(n: int, args: list[str], limit: float, env: dict | None = None,
              grace: float = 30) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n n python ARGS``; check that it ended within ``limit`` seconds and
    left no process of the job (``args[0]``, its script) behind. A hang fails the test
    after ``limit + grace`` seconds."""
    import time

    t0 = time.monotonic()
    r = run_mpi(n, args, timeout=limit + grace, env=env)
    elapsed = time.monotonic() - t0
    assert elapsed < limit, f"the job took {elapsed:.1f} s to end (limit {limit} s)\n{r.stderr}"
    left: list[int] = []
    for _ in range(20):  # the launcher reaps its children within moments
        left = job_pids(args[0])
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"orphan processes of the job: {left}"
    return r


def run_fault(n: int, path: str, limit: float = 10.0, args: tuple = (), env: dict | None = None
              ) -> subprocess.CompletedProcess:
    """Run the failing job ``path``: it must end in ``limit`` s, non-zero, with no process left."""
    r = run_ended(n, [path, *args], limit, env=env)
    assert r.returncode != 0, f"exit status 0\n{r.stdout}\n{r.stderr}"
    return r


def wait_for_file(path: Path, timeout: float, what: str, poll: float = 0.2) -> None:
    """Wait until ``path`` exists; fail the test with ``what()`` (e.g. the job's state) after
    ``timeout`` seconds."""
    import time

    import pytest

    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout:g} s: {what()}")
        time.sleep(poll)


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


#: The lock that lets only one test needing several GB of memory run at a time on a host.
BIGMEM_LOCK = "/tmp/hpcpar-bigmem.lock"


@contextlib.contextmanager
def big_memory(ctx, gib: float, wait: float = 240.0):
    """Run the body alone among the tests that need ``gib`` GiB on this host. **Collective**.

    Root takes :data:`BIGMEM_LOCK` (unless ``HPCPAR_TEST_BIGMEM_HELD=1`` says the caller
    holds it), waiting up to ``wait`` seconds, then checks that the host has ``gib`` GiB
    available; every rank skips alike when it has not. Ranks must share one host.
    """
    import fcntl
    import time

    import pytest

    from hpcpar import env

    fd, verdict = None, None
    if ctx.is_root:
        if not env.flag(env.HPCPAR_TEST_BIGMEM_HELD, False):
            fd = os.open(BIGMEM_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        verdict = f"{BIGMEM_LOCK} still held by another test after {wait:.0f} s"
                        break
                    time.sleep(0.5)
        if verdict is None:
            avail = available_gib()
            if avail < gib:
                verdict = f"needs {gib} GiB of memory, {avail:.1f} GiB available"
    verdict = ctx.comm.bcast(verdict, root=0)
    try:
        if verdict is not None:
            pytest.skip(verdict)
        yield
    finally:
        ctx.comm.Barrier()
        if fd is not None:
            os.close(fd)  # releases the lock


def available_gib() -> float:
    """``MemAvailable`` of this host in GiB (``/proc/meminfo``); infinity where it is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")
