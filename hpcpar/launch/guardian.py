"""The rank guardian used by ``hpcpar run``: report a rank killed by a signal, by rank.

``hpcpar run`` starts ``python .../hpcpar/launch/guardian.py SCRIPT ARGS`` on every rank.
The guardian imports nothing of hpcpar or MPI (it is run as a file, not as a
module of the package); it starts the real rank, ``python -m hpcpar.core.script
SCRIPT ARGS``, as its child and waits. When the rank dies from a signal
(``kill -9``, the OOM killer) the guardian prints ``hpcpar: rank R of N (pid P)
was killed by signal 9 (SIGKILL)`` and exits with 128 + the signal, so the
launcher ends the job and the log names the rank. MPICH's own message names a
pid of the job, not necessarily the killed one. The child is asked to die with
its guardian (``PR_SET_PDEATHSIG``), so no rank outlives the job.
"""

import os
import signal
import subprocess
import sys

_RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")


def _first(names):
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return "?"


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the guardian dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort off Linux
        pass


def main(argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "hpcpar.core.script", *argv]
    # close_fds=False: the launcher passes its connection (e.g. PMI_FD) as an inherited fd
    proc = subprocess.Popen(cmd, close_fds=False,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda s, f: proc.send_signal(s))
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:
            continue
    if code < 0:
        sig = -code
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        sys.stderr.write(f"hpcpar: rank {_first(_RANK_VARS)} of {_first(_SIZE_VARS)} (pid {proc.pid}) "
                         f"was killed by signal {sig} ({name}); the launcher ends the other ranks\n")
        sys.stderr.flush()
        return 128 + sig
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
