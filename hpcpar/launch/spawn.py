"""Start a fresh MPI job from a serial process and collect what it printed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import NamedTuple

from .mpiexec import launcher

__all__ = ["JobResult", "job_env", "mpiexec_argv", "run_job"]

# Variables a launcher sets in the processes it starts. A job started from inside
# another MPI process must not inherit them, or its launcher joins the wrong job.
_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "MPIR_", "OMPI_", "MPI_LOCALNRANKS",
                      "MPI_LOCALRANKID")


class JobResult(NamedTuple):
    """How a job ended: ``returncode`` (None when it was killed for running too long),
    its stdout and stderr together in ``output``, and ``elapsed`` seconds."""

    returncode: int | None
    output: str
    elapsed: float


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the variables of an enclosing MPI launcher. **Local**."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    env.update(extra or {})
    return env


def mpiexec_argv(ranks: int, argv: list[str]) -> list[str]:
    """The launcher command that runs ``argv`` on ``ranks`` ranks (see :func:`hpcpar.launch.launcher`)."""
    launch = launcher()
    flag = "--ntasks" if os.path.basename(launch[0]) == "srun" else "-n"
    return [*launch, flag, str(ranks), *argv]


def run_job(argv: list[str], timeout: float, cwd: str | None = None,
            env: dict[str, str] | None = None) -> JobResult:
    """Run ``argv`` (a launcher command) and wait at most ``timeout`` seconds. **Local**.

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
