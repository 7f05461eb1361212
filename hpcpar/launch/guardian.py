"""The rank guardian used by ``hpcpar run``: report a rank killed by a signal, by rank.

``hpcpar run`` starts ``python .../hpcpar/launch/guardian.py SCRIPT ARGS`` on every rank.
The guardian imports nothing of hpcpar or MPI (it is run as a file, not as a
module of the package) except its sibling ``variables.py``, loaded from the file
beside it (the one list of launcher variables); it starts the real rank, ``python -m hpcpar.core.script
SCRIPT ARGS``, as its child and waits. When the rank dies from a signal
(``kill -9``, the OOM killer) the guardian prints ``hpcpar: rank R of N (pid P)
was killed by signal 9 (SIGKILL)`` and exits with 128 + the signal, so the
launcher ends the job and the log names the rank. MPICH's own message names a
pid of the job, not necessarily the killed one. The child is asked to die with
its guardian (``PR_SET_PDEATHSIG``), so no rank outlives the job.
"""

from __future__ import annotations

import os
import signal
import sys
from types import ModuleType


def _sibling(name: str) -> ModuleType:
    """The module ``name.py`` beside this file, loaded without the package or sys.path
    (executed directly: ``importlib.util`` would add tens of ms to every rank's start)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    module = ModuleType(f"_hpcpar_guardian_{name}")
    module.__file__ = path
    sys.modules[module.__name__] = module  # dataclasses and the like look a module up by name
    with open(path, "rb") as fh:
        exec(compile(fh.read(), path, "exec"), module.__dict__)
    return module


_variables = _sibling("variables")
launched_rank, launched_size = _variables.launched_rank, _variables.launched_size


def _known(value: int | None) -> str:
    return "?" if value is None else str(value)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the guardian dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class _Child:
    """The rank: started with fork and exec, the launcher's fds (e.g. PMI_FD) inherited.

    Cheaper than ``subprocess.Popen``, whose import costs the guardian tens of
    milliseconds of start-up on every rank.
    """

    def __init__(self, cmd: list[str]):
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            try:
                if sys.platform.startswith("linux"):
                    _die_with_parent()
                os.execv(cmd[0], cmd)
            finally:
                os._exit(127)

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:  # already gone
            pass

    def wait(self) -> int:
        """The exit status, negative for a signal (as ``Popen.wait``)."""
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "hpcpar.core.script", *argv]
    # close_fds=False: the launcher passes its connection (e.g. PMI_FD) as an inherited fd
    proc = _Child(cmd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda s, f: proc.send_signal(s))
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:
            continue
    if code < 0:
        signum = -code
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        rank, size = _known(launched_rank()), _known(launched_size(slurm=True))
        sys.stderr.write(f"hpcpar: rank {rank} of {size} (pid {proc.pid}) "
                         f"was killed by signal {signum} ({name}); the launcher ends the other ranks\n")
        sys.stderr.flush()
        return 128 + sig
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
