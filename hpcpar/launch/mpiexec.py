"""Start a script on N ranks under the hpcpar runner (``hpcpar run``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from . import ledger
from .command import Host, is_open_mpi, launch_argv, launcher, workstation_options

__all__ = ["launcher", "launch_command", "launch"]


def launch_command(script: str, args: list[str], ranks: int, python: str | None = None,
                   hosts: list[Host] | None = None, launcher_args: list[str] | None = None) -> list[str]:
    """The argv that runs ``script args`` on ``ranks`` ranks under the hpcpar runner. **Local**.

    Every rank is ``python hpcpar/launch/guardian.py SCRIPT ARGS``: a process without MPI
    that runs ``python -m hpcpar.core.script SCRIPT ARGS`` and reports, by rank, a rank
    killed by a signal. ``hosts`` and ``launcher_args`` are as in
    :func:`hpcpar.launch.command.launch_argv`; on other hosts the same paths (Python,
    hpcpar, the script) must exist, as on a shared file system.

    Raises:
        FileNotFoundError: when no MPI launcher is found (see :func:`launcher`).
        ValueError: hosts the launcher cannot be given (see :func:`~hpcpar.launch.command.host_options`).
    """
    guardian = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardian.py")
    return launch_argv(ranks, [python or sys.executable, guardian, script, *args],
                       hosts=hosts, launcher_args=launcher_args)


def launch(script: str, args: list[str], ranks: int, extra_env: dict[str, str] | None = None,
           hosts: list[Host] | None = None, launcher_args: list[str] | None = None) -> int:
    """Run ``script`` on ``ranks`` ranks; return the job's exit status (130 on Ctrl-C). **Local**.

    ``extra_env`` is added to the environment the ranks inherit (e.g. ``HPCPAR_TIMEOUT``).
    When Open MPI's launcher is told to oversubscribe (more ranks than cores), a one-line
    note says so on stderr. ``hosts`` and ``launcher_args``: see :func:`launch_command`.

    Raises:
        FileNotFoundError: when ``script`` does not exist or no MPI launcher is found.
        ValueError: hosts the launcher cannot be given.
    """
    if not os.path.exists(script):
        raise FileNotFoundError(f"no such script: {script}")
    extra_env = dict(extra_env or {})
    run_dir = None
    if hosts:
        # The run ledger (shared working directory): names the ranks a lost host took along.
        os.makedirs(".hpcpar", exist_ok=True)
        run_dir = tempfile.mkdtemp(prefix="run-", dir=os.path.abspath(".hpcpar"))
        extra_env[ledger.RUN_DIR] = run_dir
        if is_open_mpi(launcher()):  # Open MPI passes on only the variables it is told to
            launcher_args = [*(launcher_args or []), *(w for k in extra_env for w in ("-x", k))]
    cmd = launch_command(script, args, ranks, hosts=hosts, launcher_args=launcher_args)
    _, note = workstation_options(cmd, ranks)
    if note:
        print(note, file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env={**os.environ, **extra_env} if extra_env else None)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        code = 130
    if run_dir is not None:
        text = None
        if code not in (0, 130):
            ledger.settle(run_dir, ranks)
            text = ledger.lost_ranks_text(run_dir, ranks)
        if text:
            print(text, file=sys.stderr, flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    return code
