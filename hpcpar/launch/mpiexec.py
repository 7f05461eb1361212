"""Start a script on N ranks under the hpcpar runner (``hpcpar run``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from .. import env
from .command import launch_argv, launcher, workstation_options
from .relay import relay

__all__ = ["launcher", "launch_command", "launch"]


def launch_command(script: str, args: list[str], ranks: int, python: str | None = None) -> list[str]:
    """The argv that runs ``script args`` on ``ranks`` ranks under the hpcpar runner. **Local**.

    Every rank is ``python hpcpar/launch/guardian.py SCRIPT ARGS``: a process without MPI
    that runs ``python -m hpcpar.core.script SCRIPT ARGS`` and reports, by rank, a rank
    killed by a signal.

    Raises:
        FileNotFoundError: when no MPI launcher is found (see :func:`launcher`).
    """
    guardian = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardian.py")
    # -S: the guardian needs only the standard library; skipping site (and the packages'
    # .pth files) saves a good part of its start-up. The rank it starts has the full site.
    return launch_argv(ranks, [python or sys.executable, "-S", guardian, script, *args])


def launch(script: str, args: list[str], ranks: int, extra_env: dict[str, str] | None = None,
           module: bool = False) -> int:
    """Run ``script`` on ``ranks`` ranks; return the job's exit status (130 on Ctrl-C). **Local**.

    ``module``: ``script`` is a module name, run as ``python -m script``. ``extra_env`` is
    added to the environment the ranks inherit (e.g. ``HPCPAR_TIMEOUT``). The job's stderr
    goes through :func:`hpcpar.launch.relay.relay` (the same failure of several ranks
    printed once). When Open MPI's launcher is told to oversubscribe (more ranks than
    cores), a one-line note says so on stderr.

    Raises:
        FileNotFoundError: when ``script`` does not exist or no MPI launcher is found.
    """
    if module:
        script, args = "-m", [script, *args]
    elif not os.path.exists(script):
        raise FileNotFoundError(f"no such script: {script}")
    cmd = launch_command(script, args, ranks)
    _, note = workstation_options(launcher(), ranks)
    if note:
        print(note, file=sys.stderr, flush=True)
    proc, relaying = _start_relayed(cmd, {**os.environ, **(extra_env or {}), env.HPCPAR_RELAY: "1"})
    try:
        code = proc.wait()
        relaying.join(timeout=5)  # a process of the job left behind may hold the pipe open
        return code
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 130


def _start_relayed(cmd: list[str], environ: dict[str, str]) -> tuple[subprocess.Popen, threading.Thread]:
    """Start ``cmd`` with its stderr read by the relay in a thread, which writes to ours."""
    proc = subprocess.Popen(cmd, env=environ, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    out = getattr(sys.stderr, "buffer", None) or sys.__stderr__.buffer  # type: ignore[union-attr]
    thread = threading.Thread(target=relay, args=(proc.stderr.fileno(), out),
                              name="hpcpar-relay", daemon=True)
    thread.start()
    return proc, thread
