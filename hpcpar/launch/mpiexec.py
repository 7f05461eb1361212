"""Find the MPI launcher and start a script on N ranks under the hpcpar runner."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys

from .. import env

__all__ = ["launcher", "launch_command", "launch"]


def launcher() -> list[str]:
    """The launcher command: ``HPCPAR_MPIEXEC``, else the ``mpiexec`` beside this Python,
    else ``mpiexec`` / ``mpirun`` on ``PATH``. **Local**.

    Raises:
        FileNotFoundError: when none is found, saying how to install one.
    """
    forced = env.get(env.HPCPAR_MPIEXEC)
    if forced:
        return shlex.split(forced)
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(here, os.X_OK):
        return [here]
    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return [found]
    raise FileNotFoundError(
        "no MPI launcher found: install one with `pip install hpcpar[mpich]`, load your "
        f"cluster's MPI module, or set {env.HPCPAR_MPIEXEC} (e.g. 'srun --mpi=pmi2')")


def launch_command(script: str, args: list[str], ranks: int, python: str | None = None) -> list[str]:
    """The argv that runs ``script args`` on ``ranks`` ranks under the hpcpar runner.

    Every rank is ``python hpcpar/launch/guardian.py SCRIPT ARGS``: a process without MPI
    that runs ``python -m hpcpar.core.script SCRIPT ARGS`` and reports, by rank, a rank
    killed by a signal.
    """
    launch = launcher()
    flag = "-n" if os.path.basename(launch[0]) != "srun" else "--ntasks"
    # Each rank starts as a guardian process (no MPI) that runs the real rank as its
    # child and names the rank if a signal kills it; see hpcpar/launch/guardian.py.
    guardian = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardian.py")
    return [*launch, flag, str(ranks), python or sys.executable, guardian, script, *args]


def launch(script: str, args: list[str], ranks: int, extra_env: dict[str, str] | None = None) -> int:
    """Run ``script`` on ``ranks`` ranks; return the job's exit status (130 on Ctrl-C). **Local**.

    ``extra_env`` is added to the environment the ranks inherit (e.g. ``HPCPAR_TIMEOUT``).
    """
    if not os.path.exists(script):
        raise FileNotFoundError(f"no such script: {script}")
    cmd = launch_command(script, args, ranks)
    proc = subprocess.Popen(cmd, env={**os.environ, **extra_env} if extra_env else None)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 130
