"""Start a fresh MPI job from a serial process and collect what it printed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import NamedTuple

from .command import launch_argv
from .variables import LAUNCHER_PREFIXES

__all__ = ["JobResult", "job_env", "mpiexec_argv", "run_job"]


class JobResult(NamedTuple):
    """How a job ended: ``returncode`` (None when it was killed for running too long),
    its stdout and stderr together in ``output``, and ``elapsed`` seconds."""

    returncode: int | None
    output: str
    elapsed: float


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the variables of an enclosing MPI launcher
    (:data:`hpcpar.launch.variables.LAUNCHER_PREFIXES`), plus ``extra``. **Local**."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    env.update(extra or {})
    return env


def mpiexec_argv(ranks: int, argv: list[str]) -> list[str]:
    """The launcher command that runs ``argv`` on ``ranks`` ranks. **Local**.

    The same as :func:`hpcpar.launch.command.launch_argv` with the default launcher.
    """
    return launch_argv(ranks, argv)


def run_job(argv: list[str], timeout: float | None, cwd: str | None = None,
            env: dict[str, str] | None = None) -> JobResult:
    """Run ``argv`` (a launcher command) and wait at most ``timeout`` seconds (None: no limit). **Local**.

    The job gets its own process group; when it runs too long, or on Ctrl-C, the
    whole group (launcher and ranks) is killed, so nothing is left behind.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", cwd=cwd, env=job_env() if env is None else env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        code = None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    return JobResult(code, out or "", time.monotonic() - t0)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
