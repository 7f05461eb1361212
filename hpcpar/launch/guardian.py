"""The rank guardian used by ``hpcpar run``: name a rank that dies without a report, end with its status.

``hpcpar run`` starts ``python .../hpcpar/launch/guardian.py SCRIPT ARGS`` on every rank.
The guardian imports nothing of hpcpar or MPI (it is run as a file, not as a
module of the package) except the pure modules ``variables.py`` and
``lifeline.py`` beside it and ``../env.py`` (loaded from their files); it starts the real rank,
``python -m hpcpar.core.script SCRIPT ARGS``, as its child and waits.

How the rank ended decides what the guardian says and how it ends itself:

* status 0, or a failure the rank reported itself (:func:`hpcpar.abort` writes to
  ``HPCPAR_GUARDIAN_FD``): nothing to add; the guardian exits with the same status.
* ``os._exit(n)``, a crash in C code that exits: ``hpcpar: rank R of N (host H, pid
  P) exited with status n without reporting an error``; the job ends with status n.
* killed by a signal (``kill -9``, the OOM killer, ``os.abort()``): ``hpcpar: rank R
  of N (host H, pid P) was killed by signal 6 (SIGABRT)``; the guardian then dies by
  the same signal, so MPI's launcher tears the job down on every host.

Under MPICH's Hydra the guardian also asks the launcher to abort the job (the PMI
``abort`` command on the rank's ``PMI_FD``) with status n, or 128 + the signal:
Hydra would otherwise combine the statuses of the ranks it killed with this one.

SIGTERM, SIGINT and SIGHUP sent to the guardian (the launcher stopping the job)
are passed to the rank, which gets ``STOP_GRACE`` seconds before SIGKILL; the
guardian then dies by that signal without blaming the rank. SIGUSR1 and SIGUSR2
are passed on too. The rank dies with its guardian (``PR_SET_PDEATHSIG``), the
guardian with its parent, and a guardian on the host of ``hpcpar run`` ends its
rank once that process is gone (``HPCPAR_LAUNCHER_PID``), also after ``kill -9``.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from types import ModuleType

_HERE = os.path.dirname(os.path.abspath(__file__))



def _load(name: str, path: str) -> ModuleType:
    """The module at ``path``, loaded without the package or sys.path (executed directly:
    ``importlib.util`` would add tens of ms to every rank's start)."""
    module = ModuleType(f"_hpcpar_guardian_{name}")
    module.__file__ = path
    sys.modules[module.__name__] = module  # dataclasses and the like look a module up by name
    try:  # the byte code cached in __pycache__, as an import would use (compiling costs ~5 ms a module)
        from _frozen_importlib_external import SourceFileLoader  # loaded at start: no import cost

        code = SourceFileLoader(module.__name__, path).get_code(module.__name__)
    except Exception:
        code = None
    if code is None:
        with open(path, "rb") as fh:
            code = compile(fh.read(), path, "exec")
    exec(code, module.__dict__)
    return module


_variables = _load("variables", os.path.join(_HERE, "variables.py"))
_env = _load("env", os.path.join(os.path.dirname(_HERE), "env.py"))
_lifeline = _load("lifeline", os.path.join(_HERE, "lifeline.py"))
_ledger = _load("ledger", os.path.join(_HERE, "ledger.py"))
launched_rank, launched_size = _variables.launched_rank, _variables.launched_size

#: Seconds between the guardian's checks that its parent and ``hpcpar run`` still live.
POLL = 0.2
#: Seconds a rank has to end after a stop signal passed on to it, before SIGKILL.
STOP_GRACE = 3.0
#: Signals that stop the job from outside: passed to the rank, never blamed on it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Seconds the guardian waits for Hydra to act on its abort request before it ends itself.
ABORT_WAIT = 2.0


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _launcher_pid() -> int | None:
    """The pid of ``hpcpar run`` when it runs on this host, else None."""
    value = os.environ.get(_env.HPCPAR_LAUNCHER_PID, "")
    pid, _, host = value.partition("@")
    if pid.isdigit() and host == os.uname().nodename:
        return int(pid)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _who(pid: int) -> str:
    rank, size = launched_rank(), launched_size(slurm=True)
    return (f"rank {'?' if rank is None else rank} of {'?' if size is None else size} "
            f"(host {os.uname().nodename}, pid {pid})")


def _say(text: str) -> None:
    try:
        sys.stderr.write(f"hpcpar: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _ask_hydra_to_abort(code: int) -> None:
    """Under MPICH's Hydra, ask it to end the job with ``code`` (PMI-1 ``abort`` on ``PMI_FD``)."""
    fd = os.environ.get("PMI_FD", "")
    if not fd.isdigit() or "PMI_JOBID" in os.environ:  # Slurm's PMI-2 server sets PMI_JOBID
        return
    time.sleep(_env.get_float(_env.HPCPAR_ABORT_GRACE, 0.2))  # let the report reach the launcher
    try:
        os.write(int(fd), f"cmd=abort exitcode={code}\n".encode())
    except OSError:
        return
    time.sleep(ABORT_WAIT)  # Hydra now ends every process, this one included


def _die_by(signum: int) -> None:
    """End this process by ``signum`` (no core file), as its rank ended."""
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    except (ImportError, ValueError, OSError):
        pass
    try:
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        time.sleep(1.0)
    except (OSError, ValueError):
        pass
    os._exit(128 + signum)


def _reported(fd: int) -> bool:
    """Whether the rank wrote on its guardian pipe (it reported its own failure)."""
    try:
        return bool(os.read(fd, 64))
    except (BlockingIOError, OSError):
        return False


class _Rank:
    """The rank, started with fork and exec (``subprocess`` would add ~20 ms to every
    rank's start): the launcher's fds (e.g. ``PMI_FD``) are inherited, and the rank gets
    SIGKILL when the guardian dies. Its end is awaited on a pidfd (Linux 5.3+), which
    wakes the guardian at once; elsewhere by polling every 10 ms."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        guardian = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:  # the child: nothing but exec (or a message and status 127)
            try:
                _lifeline.die_with_parent(signal.SIGKILL)
                if not _lifeline.parent_is(guardian):  # it died before the request
                    os._exit(128 + signal.SIGKILL)
                for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; a program
                    signal.signal(sig, signal.SIG_DFL)    # starts with the defaults
                os.execve(cmd[0], cmd, env)
            except BaseException as exc:
                _say(f"cannot start the rank ({' '.join(cmd)}): {exc}")
            finally:
                os._exit(127)
        self.returncode: int | None = None
        try:
            self._fd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._fd = None

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int | None:
        """The rank's status (negative: the signal that killed it), or None after ``timeout``."""
        if self.returncode is None:
            if self._fd is not None:
                select.select([self._fd], [], [], timeout)
                self._reap()
            else:
                deadline = time.monotonic() + timeout
                while not self._reap() and time.monotonic() < deadline:
                    time.sleep(0.01)
        return self.returncode

    def _reap(self) -> bool:
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        return self.returncode is not None


def main(argv: list[str]) -> int:
    parent = os.getppid()
    _lifeline.die_with_parent(signal.SIGKILL)
    launcher = _launcher_pid()
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_inheritable(write_end, True)
    cmd = [sys.executable, "-m", "hpcpar.core.script", *argv]
    # close_fds=False: the launcher passes its connection (e.g. PMI_FD) as an inherited fd
    marker = {_env.HPCPAR_GUARDIAN_FD: f"{write_end}@{os.getpid()}"}
    proc = _Rank(cmd, {**os.environ, **marker})
    os.close(write_end)
    # Across hosts (hpcpar run --hosts): where this rank runs, and later that it ended.
    ledger, me = os.environ.get(_ledger.RUN_DIR), launched_rank()
    _ledger.started(ledger, me, proc.pid)
    keep = _ledger.witness(ledger, me)  # noqa: F841  (open while the guardian lives)
    stopped: list[tuple[int, float]] = []

    def stop(signum: int, frame: object) -> None:
        if not stopped:
            stopped.append((signum, time.monotonic()))
            _ledger.ended(ledger, me, -signum)
        proc.send_signal(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda s, f: proc.send_signal(s))
    if not _lifeline.parent_is(parent):  # the parent died before the guardian asked to die with it
        proc.kill()
    orphaned = False
    while True:
        code = proc.wait(timeout=POLL)
        if code is not None:
            break
        if stopped and time.monotonic() - stopped[0][1] > STOP_GRACE:
            proc.kill()
        if not _lifeline.parent_is(parent) or (launcher is not None and not _alive(launcher)):
            orphaned = True  # the launcher is gone: nobody is left to end this rank
            proc.kill()
    _ledger.ended(ledger, me, code)
    if stopped:
        _die_by(stopped[0][0])
    if orphaned:
        return 128 + signal.SIGKILL
    if code == 0 or (code > 0 and _reported(read_end)):
        return code
    if code > 0:
        _say(f"{_who(proc.pid)} exited with status {code} without reporting an error "
             "(os._exit, or an exit from C code); the job is ended")
        _ask_hydra_to_abort(code)
        return code
    signum = -code
    _say(f"{_who(proc.pid)} was killed by signal {signum} ({_signal_name(signum)}); the job is ended")
    _ask_hydra_to_abort(128 + signum)
    _die_by(signum)
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
