"""Start a script on N ranks under the hpcpar runner (``hpcpar run``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable

from .. import env
from . import ledger, lifeline
from .command import Host, export_options, is_open_mpi, launch_argv, launcher, workstation_options
from .relay import relay

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
    # -S: the guardian needs only the standard library; skipping site (and the packages'
    # .pth files) saves a good part of its start-up. The rank it starts has the full site.
    return launch_argv(ranks, [python or sys.executable, "-S", guardian, script, *args],
                       hosts=hosts, launcher_args=launcher_args)


#: Signals that stop ``hpcpar run`` and, through it, the whole job.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Seconds MPI's launcher has to end the job after ``hpcpar run`` is stopped, before SIGKILL.
STOP_GRACE = 4.0


class _Stopped(Exception):
    """Raised in ``hpcpar run``'s main thread by a stop signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def _child_setup(parent: int) -> Callable[[], None]:
    """The ``preexec_fn`` of MPI's launcher: stop signals unblocked, SIGTERM when ``parent`` dies."""
    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        lifeline.die_with_parent(signal.SIGTERM)
        if not lifeline.parent_is(parent):
            os.kill(os.getpid(), signal.SIGTERM)
    return setup


def _end_job(proc: subprocess.Popen, signum: int) -> int:
    """End the job after ``hpcpar run`` got ``signum``; say so in one line; return 128 + ``signum``."""
    for sig in STOP_SIGNALS:  # a second signal must not interrupt the clean-up
        if signal.getsignal(sig) is _raise_stopped:
            signal.signal(sig, signal.SIG_IGN)
    try:
        proc.send_signal(signal.SIGTERM)  # MPI's launcher ends every rank, on every host
        proc.wait(timeout=STOP_GRACE)
        how = "ended the job"
    except subprocess.TimeoutExpired:
        proc.kill()  # the guardians then end their ranks: their launcher is gone
        proc.wait()
        how = f"killed MPI's launcher after {STOP_GRACE:g} s"
    try:
        name = signal.Signals(signum).name
        print(f"hpcpar run: the launcher was stopped by signal {signum} ({name}) and {how}; "
              f"exit status {128 + signum}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # no terminal left after SIGHUP
        pass
    return 128 + signum


def launch(script: str, args: list[str], ranks: int, extra_env: dict[str, str] | None = None,
           hosts: list[Host] | None = None, launcher_args: list[str] | None = None,
           module: bool = False) -> int:
    """Run ``script`` on ``ranks`` ranks; return the job's exit status. **Local**.

    ``module``: ``script`` is a module name, run as ``python -m script``. The job's
    stderr goes through :func:`hpcpar.launch.relay.relay` (the same failure of several
    ranks printed once). ``extra_env`` is added to the environment the ranks inherit
    (e.g. ``HPCPAR_TIMEOUT``).
    When Open MPI's launcher is told to oversubscribe (more ranks than cores), a one-line
    note says so on stderr. ``hosts`` and ``launcher_args``: see :func:`launch_command`;
    with hosts, a run ledger (:mod:`hpcpar.launch.ledger`) names the ranks of a host
    that was lost without a word.

    The launcher owns its job: SIGTERM, SIGINT or SIGHUP to this process (unless
    ignored when it started) ends every process of the job within ``STOP_GRACE``
    seconds, prints one line naming the signal and returns 128 + the signal. When this
    process dies without that chance (``kill -9``), MPI's launcher gets SIGTERM from the
    kernel and the rank guardians on this host end their ranks
    (``HPCPAR_LAUNCHER_PID``). MPI's launcher killed by a signal gives 128 + it.

    Raises:
        FileNotFoundError: when ``script`` does not exist or no MPI launcher is found.
        ValueError: hosts the launcher cannot be given.
    """
    if module:
        script, args = "-m", [script, *args]
    elif not os.path.exists(script):
        raise FileNotFoundError(f"no such script: {script}")
    extra_env = dict(extra_env or {})
    run_dir = None
    if hosts:
        # The run ledger (shared working directory): names the ranks a lost host took along.
        os.makedirs(".hpcpar", exist_ok=True)
        run_dir = tempfile.mkdtemp(prefix="run-", dir=os.path.abspath(".hpcpar"))
        extra_env[ledger.RUN_DIR] = run_dir
        # Open MPI passes on to other hosts only the variables it is told to: every
        # HPCPAR_* of the job (the user's and hpcpar run's own), as Hydra passes them all.
        exported = [*extra_env, *(k for k in os.environ if k.startswith("HPCPAR_")),
                    env.HPCPAR_RELAY, env.HPCPAR_LAUNCHER_PID]
        launcher_args = [*(launcher_args or []),
                         *export_options([*launcher(), *(launcher_args or [])], exported)]
    cmd = launch_command(script, args, ranks, hosts=hosts, launcher_args=launcher_args)
    # the note on oversubscribing: from the launcher and the user's options, not from cmd,
    # which already carries the options the note explains; hosts say where ranks go
    _, note = (None, None) if hosts else workstation_options([*launcher(), *(launcher_args or [])], ranks)
    if note:
        print(note, file=sys.stderr, flush=True)
    job_env = {**os.environ, **extra_env, env.HPCPAR_RELAY: "1",
               env.HPCPAR_LAUNCHER_PID: f"{os.getpid()}@{socket.gethostname()}"}
    try:
        code, stopped = _run(cmd, job_env)
        if run_dir is not None and code == 0 and not stopped and is_open_mpi(cmd):
            code = _check_success(run_dir, ranks)
        if run_dir is not None and code != 0 and not stopped:
            ledger.settle(run_dir, ranks)
            text = ledger.lost_ranks_text(run_dir, ranks)
            if text:
                print(text, file=sys.stderr, flush=True)
    finally:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
    return code


def _check_success(run_dir: str, ranks: int) -> int:
    """0 when every rank's guardian recorded an end with status 0 in the run ledger; else
    1, after one line saying so (the ledger's report of the lost ranks follows).

    Open MPI 5's launcher exits with status 0 when it lost the daemon of a host (every
    process there killed, the host down) and ended the other ranks itself.
    """
    bad = ledger.unfinished(run_dir, ranks)
    if not bad:
        return 0
    shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
    print(f"hpcpar run: MPI's launcher exited with status 0, but the job did not complete (rank"
          f"{'s' if len(bad) > 1 else ''} {shown} of {ranks} did not end with status 0); exit status 1",
          file=sys.stderr, flush=True)
    return 1


def _run(cmd: list[str], job_env: dict[str, str]) -> tuple[int, bool]:
    """Run MPI's launcher as the job's owner; (exit status, whether a stop signal ended it)."""
    main_thread = threading.current_thread() is threading.main_thread()  # signals need it
    caught = [sig for sig in STOP_SIGNALS if main_thread and signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in caught}
    proc, relaying = None, None
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, caught)  # no stop between fork and wait
        try:
            proc = subprocess.Popen(cmd, env=job_env, preexec_fn=_child_setup(os.getpid()),
                                    stderr=subprocess.PIPE)
            relaying = _relay(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, caught)
        code = proc.wait()
        return (128 - code if code < 0 else code), False
    except _Stopped as stop:
        if proc is None:
            return 128 + stop.signum, True
        return _end_job(proc, stop.signum), True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if relaying is not None:
            relaying.join(timeout=5)  # a process of the job left behind may hold the pipe open


def _relay(proc: subprocess.Popen) -> threading.Thread:
    """Read ``proc``'s stderr in a thread, through the relay, which writes to ours."""
    assert proc.stderr is not None
    out = getattr(sys.stderr, "buffer", None) or sys.__stderr__.buffer  # type: ignore[union-attr]
    thread = threading.Thread(target=relay, args=(proc.stderr.fileno(), out),
                              name="hpcpar-relay", daemon=True)
    thread.start()
    return thread
