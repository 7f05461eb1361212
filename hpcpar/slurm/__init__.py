"""Slurm jobs: specs rendered to safe sbatch scripts, and submit, status, wait, cancel, requeue.

A :class:`JobSpec` describes a job (a Python script or module plus its
arguments) and its allocation. :meth:`JobSpec.render` turns it into the text of
an sbatch script without touching Slurm: every option value is checked against
what sbatch accepts and every shell word is quoted with :func:`shlex.quote`, so
no value can run a command. Errors name the field and say what to use instead,
before anything is submitted.

:func:`submit`, :func:`status`, :func:`wait` and :func:`cancel` drive the
Slurm client tools. Status comes from ``scontrol`` (queued, running and
recently finished jobs), ``sacct`` (when the cluster has accounting), the
cluster's ``jobcomp/filetxt`` file (when configured) and the small JSON status
file that :func:`hpcpar.run` writes under ``.hpcpar/`` in the job's working
directory (state, exit code, and the failing rank with its message).

This module imports no MPI and never communicates: everything here is
**local**.
"""

from __future__ import annotations

import ast
import atexit
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import env

__all__ = [
    "JobSpec", "JobStatus", "SlurmError",
    "render", "submit", "status", "wait", "cancel", "requeue",
    "TERMINAL_STATES", "STATUS_DIR", "status_path", "write_status", "read_status",
    "job_defaults", "render_jobs",
]

#: Job states after which a job never runs again (without a manual requeue).
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})

#: Directory, relative to the job's working directory, of the runner's status files.
STATUS_DIR = ".hpcpar"

LAUNCHERS = ("srun", "mpiexec")


class SlurmError(RuntimeError):
    """A Slurm command failed; the message holds the command and what it printed."""


# --------------------------------------------------------------------------- validation
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_WORD_RE = re.compile(r"[A-Za-z0-9_.+-]{1,128}")           # partition, account, qos
_MEM_RE = re.compile(r"[0-9]{1,9}[KMGT]?")
_RANGE = r"[0-9]{1,7}(-[0-9]{1,7}(:[0-9]{1,7})?)?"
_ARRAY_RE = re.compile(rf"{_RANGE}(,{_RANGE})*(%[0-9]{{1,5}})?")
_PATTERN_RE = re.compile(r"[A-Za-z0-9_.,/+%-]{1,512}")     # output/error file patterns
_PATTERN_SPECS = set("AaJjNnstux%")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_OPT_RE = re.compile(r"--([a-z][a-z0-9-]*)(?:=([^\s'\"\\`$;<>()]{1,1024}))?")
_TIME_RES = (  # the forms sbatch --time accepts, and how they map to seconds
    (re.compile(r"([0-9]+)"), lambda m: int(m[1]) * 60),
    (re.compile(r"([0-9]+):([0-9]+)"), lambda m: int(m[1]) * 60 + int(m[2])),
    (re.compile(r"([0-9]+):([0-9]+):([0-9]+)"), lambda m: int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])),
    (re.compile(r"([0-9]+)-([0-9]+)"), lambda m: int(m[1]) * 86400 + int(m[2]) * 3600),
    (re.compile(r"([0-9]+)-([0-9]+):([0-9]+)"),
     lambda m: int(m[1]) * 86400 + int(m[2]) * 3600 + int(m[3]) * 60),
    (re.compile(r"([0-9]+)-([0-9]+):([0-9]+):([0-9]+)"),
     lambda m: int(m[1]) * 86400 + int(m[2]) * 3600 + int(m[3]) * 60 + int(m[4])),
)

#: sbatch long options a JobSpec field already controls: ``extra`` may not repeat them.
_CONTROLLED = {
    "job-name": "job_name", "nodes": "nodes", "ntasks": "ntasks", "ntasks-per-node": "ntasks_per_node",
    "cpus-per-task": "cpus_per_task", "mem": "mem", "time": "time", "partition": "partition",
    "account": "account", "qos": "qos", "array": "array", "output": "output", "error": "error",
    "signal": "signal", "requeue": "requeue", "no-requeue": "requeue", "open-mode": "requeue",
}
#: sbatch long options that make no sense in a script or break submit(): refused in ``extra``.
_REFUSED = {"wrap", "parsable", "wait", "test-only", "help", "usage", "version", "batch", "uid", "gid"}
#: Further sbatch (22.05) long options accepted in ``extra``.
_KNOWN = {
    "acctg-freq", "bb", "bbf", "begin", "chdir", "cluster-constraint", "clusters", "comment",
    "constraint", "container", "contiguous", "core-spec", "cores-per-socket", "cpu-freq",
    "cpus-per-gpu", "deadline", "delay-boot", "dependency", "distribution", "exclude", "exclusive",
    "export", "export-file", "extra-node-info", "get-user-env", "gpu-bind", "gpu-freq", "gpus",
    "gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "hint", "hold",
    "ignore-pbs", "input", "kill-on-invalid-dep", "licenses", "mail-type", "mail-user", "mcs-label",
    "mem-bind", "mem-per-cpu", "mem-per-gpu", "mincpus", "network", "nice", "no-kill", "nodefile",
    "nodelist", "overcommit", "oversubscribe", "power", "priority", "profile", "propagate",
    "reboot", "reservation", "sockets-per-node", "spread-job", "switches", "thread-spec",
    "threads-per-core", "time-min", "tmp", "use-min-nodes", "verbose", "wait-all-nodes", "wckey",
}


def _fail(name: str, value: Any, what: str) -> ValueError:
    return ValueError(f"JobSpec.{name}={value!r}: {what}")


def _positive(name: str, value: Any, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(name, value, "must be a positive integer")
    return value


def _match(name: str, value: Any, regex: re.Pattern, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not regex.fullmatch(value):
        raise _fail(name, value, what)
    return value


def time_seconds(value: int | str) -> int:
    """Seconds of an sbatch ``--time`` value: minutes as an int, or ``M``, ``M:S``, ``H:M:S``,
    ``D-H``, ``D-H:M``, ``D-H:M:S``. **Local**, pure.

    Raises:
        ValueError: for anything else, listing the accepted forms.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value * 60
    if isinstance(value, str):
        for regex, seconds in _TIME_RES:
            m = regex.fullmatch(value)
            if m and seconds(m) > 0:
                return seconds(m)
    raise _fail("time", value, "is not a time limit sbatch accepts: give minutes (int) or a string "
                "'M', 'M:S', 'H:M:S', 'D-H', 'D-H:M' or 'D-H:M:S', greater than zero")


def _check_pattern(name: str, value: Any) -> str | None:
    value = _match(name, value, _PATTERN_RE,
                   "file patterns may hold letters, digits, '_.,/+-' and the %-specifiers "
                   "%A %a %J %j %N %n %s %t %u %x %% (no spaces, quotes or shell characters)")
    if value is not None:
        for spec in re.findall(r"%(.?)", value.replace("%%", "")):
            if spec not in _PATTERN_SPECS:
                raise _fail(name, value, f"unknown file pattern '%{spec}'; sbatch knows "
                            "%A %a %J %j %N %n %s %t %u %x and %%")
    return value


def _check_extra(extra: Any) -> list[str]:
    if isinstance(extra, str) or not isinstance(extra, (list, tuple)):
        raise _fail("extra", extra, "must be a list of long sbatch options like ['--constraint=gpu']")
    for opt in extra:
        if not isinstance(opt, str):
            raise _fail("extra", opt, "each entry must be a string like '--mail-type=END'")
        m = _OPT_RE.fullmatch(opt)
        if not m:
            raise _fail("extra", opt, "each entry must be one long option '--name' or '--name=value' "
                        "(short options like -C are not accepted; values may not hold blanks, "
                        "quotes, backslashes or the characters $ ` ; < > ( ))")
        name = m[1]
        if name in _CONTROLLED:
            raise _fail("extra", opt, f"--{name} is set by the JobSpec field "
                        f"'{_CONTROLLED[name]}'; use that instead")
        if name in _REFUSED:
            raise _fail("extra", opt, f"--{name} cannot be used in a job script submitted by hpcpar")
        if name not in _KNOWN:
            raise _fail("extra", opt, f"--{name} is not an sbatch option hpcpar knows; check "
                        "`man sbatch` (long options only)")
    return list(extra)


# --------------------------------------------------------------------------- the spec
@dataclass
class JobSpec:
    """A Slurm batch job running a Python script or module under an MPI launcher.

    Fields are checked when the spec is built and again by :meth:`render`; a bad
    value raises ``ValueError`` naming the field. Fields left None are not passed
    to sbatch (the cluster's defaults apply).

    Args:
        job: a Python file (``jobs/pi.py``; relative paths resolve against the
            job's working directory) run under the hpcpar runner, or a module
            name (``pkg.mod``) run with ``python -m``.
        args: the job's own arguments (each quoted in the script).
        job_name: sbatch ``--job-name`` (default: the script's or module's name).
        nodes, ntasks, ntasks_per_node, cpus_per_task: the allocation; when all of
            nodes, ntasks and ntasks_per_node are given, ``ntasks`` must equal
            ``nodes * ntasks_per_node``. ``cpus_per_task`` is also passed to
            ``srun`` (``--cpus-per-task`` and ``SRUN_CPUS_PER_TASK``: Slurm 22.05's
            srun does not inherit it from the allocation).
        mem: memory per node, e.g. ``"4G"``.
        time: the time limit: minutes (int) or ``"H:M:S"``, ``"D-H:M"`` ...
        partition, account, qos: names.
        array: job array indices, e.g. ``"0-2"``, ``"1,3,5"``, ``"0-99%10"``.
        output, error: file patterns (``%j`` job id, ``%x`` job name, ``%A``/``%a``
            array job and task ...).
        env: variables exported in the script before the launcher runs.
        launcher: ``"srun"`` (``srun --mpi=pmi2 --kill-on-bad-exit=1``: a rank that
            dies ends the step, the default) or ``"mpiexec"``
            (``mpiexec -n $SLURM_NTASKS``, the MPI library's own launcher, found
            beside ``python`` when that is an absolute path).
        mpi: the ``srun --mpi`` plugin (default ``pmi2``).
        python: the Python interpreter (default: the one rendering the script).
        signal: send SIGUSR1 to every rank this many seconds before the time
            limit (``--signal=USR1@N``; needs ``time``); the job sees it as
            ``ctx.should_stop()``.
        requeue: render ``--requeue`` and ``--open-mode=append`` and export
            ``HPCPAR_REQUEUE=1``, so that :func:`requeue` puts the job back in the
            queue after it saved its checkpoint.
        extra: further long sbatch options, checked against the options sbatch
            knows, e.g. ``["--constraint=gpu", "--mail-type=END"]``.
    """

    job: str
    args: list[str] = field(default_factory=list)
    job_name: str | None = None
    nodes: int | None = None
    ntasks: int | None = None
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    time: int | str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    array: str | None = None
    output: str | None = None
    error: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    launcher: str = "srun"
    mpi: str = "pmi2"
    python: str | None = None
    signal: int | None = None
    requeue: bool = False
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.python is None:
            self.python = sys.executable or "python3"
        self.validate()

    # ------------------------------------------------------------------ checks
    def is_module(self) -> bool:
        """True when ``job`` names a module (run with ``python -m``), not a file."""
        return not (self.job.endswith(".py") or "/" in self.job)

    def validate(self) -> None:
        """Check every field and their combinations. **Local**, pure.

        Raises:
            ValueError: naming the first field at fault and what it accepts.
        """
        if not isinstance(self.job, str) or not self.job or "\0" in self.job:
            raise _fail("job", self.job, "must be a Python file path or a module name")
        if self.is_module() and not _MODULE_RE.fullmatch(self.job):
            raise _fail("job", self.job, "is neither a file (ending in .py or holding '/') "
                        "nor a dotted module name")
        if isinstance(self.args, str) or not isinstance(self.args, (list, tuple)) \
                or not all(isinstance(a, str) and "\0" not in a for a in self.args):
            raise _fail("args", self.args, "must be a list of strings (without NUL characters)")
        _match("job_name", self.job_name, _NAME_RE,
               "job names may hold letters, digits and '._+-' (at most 128, starting with a "
               "letter or digit)")
        for name in ("nodes", "ntasks", "ntasks_per_node", "cpus_per_task"):
            _positive(name, getattr(self, name))
        n, t, tpn = self.nodes, self.ntasks, self.ntasks_per_node
        if n is not None and t is not None and t < n:
            raise _fail("ntasks", t, f"is smaller than nodes={n}: every node needs at least one task")
        if n is not None and t is not None and tpn is not None and t != n * tpn:
            raise _fail("ntasks", t, f"does not equal nodes * ntasks_per_node = {n} * {tpn} = {n * tpn}; "
                        "give two of the three")
        _match("mem", self.mem, _MEM_RE, "memory must be a number with an optional unit K, M, G or T, "
               "e.g. '4G'")
        limit = None if self.time is None else time_seconds(self.time)
        for name in ("partition", "account", "qos"):
            _match(name, getattr(self, name), _WORD_RE, "may hold letters, digits and '_.+-' only")
        _match("array", self.array, _ARRAY_RE, "must be indices like '0-2', '1,3,5', '0-99:2' or "
               "'0-99%10'")
        _check_pattern("output", self.output)
        _check_pattern("error", self.error)
        if not isinstance(self.env, dict):
            raise _fail("env", self.env, "must be a dict of variable names to strings")
        for k, v in self.env.items():
            if not isinstance(k, str) or not _ENV_NAME_RE.fullmatch(k):
                raise _fail("env", k, "variable names must be letters, digits and '_', not starting "
                            "with a digit")
            if not isinstance(v, str) or "\0" in v:
                raise _fail("env", {k: v}, "values must be strings without NUL characters")
        if self.launcher not in LAUNCHERS:
            raise _fail("launcher", self.launcher, f"must be one of {', '.join(LAUNCHERS)}")
        _match("mpi", self.mpi, _WORD_RE, "must be an srun --mpi plugin name like 'pmi2'")
        if not isinstance(self.python, str) or not self.python or "\0" in self.python:
            raise _fail("python", self.python, "must be the path or name of a Python interpreter")
        if self.signal is not None:
            _positive("signal", self.signal)
            if self.signal > 65535:
                raise _fail("signal", self.signal, "Slurm accepts at most 65535 seconds")
            if limit is None:
                raise _fail("signal", self.signal, "needs a time limit: Slurm sends the signal "
                            "relative to --time; set JobSpec.time")
            if self.signal >= limit:
                raise _fail("signal", self.signal, f"is not shorter than the time limit ({limit} s)")
        if not isinstance(self.requeue, bool):
            raise _fail("requeue", self.requeue, "must be True or False")
        _check_extra(self.extra)

    # ------------------------------------------------------------------ rendering
    def sbatch_options(self) -> list[str]:
        """The ``--option=value`` words of the ``#SBATCH`` lines, in order. **Local**, pure."""
        self.validate()
        opts = [f"--job-name={self.job_name or _default_name(self.job)}"]
        pairs = [("nodes", self.nodes), ("ntasks", self.ntasks), ("ntasks-per-node", self.ntasks_per_node),
                 ("cpus-per-task", self.cpus_per_task), ("mem", self.mem), ("time", self.time),
                 ("partition", self.partition), ("account", self.account), ("qos", self.qos),
                 ("array", self.array), ("output", self.output), ("error", self.error)]
        opts += [f"--{k}={v}" for k, v in pairs if v is not None]
        if self.signal is not None:
            opts.append(f"--signal=USR1@{self.signal}")
        if self.requeue:
            opts += ["--requeue", "--open-mode=append"]
        return opts + list(self.extra)

    def command(self) -> list[str]:
        """The launcher command line of the job, as argv words (unquoted). **Local**, pure."""
        self.validate()
        if self.launcher == "srun":
            launch = ["srun", f"--mpi={self.mpi}", "--kill-on-bad-exit=1"]
            if self.cpus_per_task is not None:
                launch.append(f"--cpus-per-task={self.cpus_per_task}")
        else:
            launch = [_mpiexec_beside(self.python), "-n", _NTASKS]
        target = ["-m", self.job] if self.is_module() else ["-m", "hpcpar.core.script", self.job]
        return [*launch, self.python, *target, *self.args]

    def render(self) -> str:
        """The sbatch script of this job. **Local**, pure (reads no Slurm state).

        Returns:
            The script text: ``#SBATCH`` lines, exported variables, and one launcher
            line whose every word is quoted with :func:`shlex.quote`.

        Raises:
            ValueError: when a field is invalid (see :meth:`validate`).
        """
        lines = ["#!/bin/bash"]
        lines += [f"#SBATCH {opt}" for opt in self.sbatch_options()]
        lines += [
            "# Rendered by hpcpar (hpcpar slurm render); change the JobSpec and render again",
            "# rather than editing by hand.",
            "set -euo pipefail",
        ]
        exports = dict(self.env)
        if self.cpus_per_task is not None:
            exports["SRUN_CPUS_PER_TASK"] = str(self.cpus_per_task)
        if self.requeue:
            exports[env.HPCPAR_REQUEUE] = "1"
        lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
        words = self.command()
        quoted = [_NTASKS_SH if w is _NTASKS else shlex.quote(w) for w in words]
        lines.append(" ".join(quoted))
        return "\n".join(lines) + "\n"


# The task count of the allocation, for mpiexec: Slurm sets SLURM_NTASKS only when
# --ntasks (or --ntasks-per-node) was given, and starts one task per node otherwise.
_NTASKS = "<ntasks>"
_NTASKS_SH = '"${SLURM_NTASKS:-$SLURM_JOB_NUM_NODES}"'


def _default_name(job: str) -> str:
    base = os.path.basename(job)
    base = base[:-3] if base.endswith(".py") else base
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip("._+-")[:128]
    return name or "hpcpar-job"


def _mpiexec_beside(python: str) -> str:
    """The mpiexec in the same directory as an absolute ``python``, else ``mpiexec``."""
    if os.path.isabs(python):
        here = os.path.join(os.path.dirname(python), "mpiexec")
        if os.access(here, os.X_OK):
            return here
    return "mpiexec"


def render(spec: JobSpec) -> str:
    """``spec.render()``: the sbatch script text. **Local**, pure."""
    return spec.render()


# --------------------------------------------------------------------------- the checked-in scripts
def job_defaults(path: str | os.PathLike) -> dict[str, Any]:
    """The ``SLURM = {...}`` JobSpec defaults a job file declares, read without importing it.

    **Local**. A job may declare, at module level, a literal dict such as
    ``SLURM = {"ntasks": 4, "time": 10, "signal": 60, "requeue": True, "args": ["--n", "512"]}``;
    it is read with :func:`ast.literal_eval`. Returns ``{}`` when there is none.
    """
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SLURM"
                                                for t in node.targets):
            value = ast.literal_eval(node.value)
            if not isinstance(value, dict):
                raise ValueError(f"{path}: SLURM must be a dict of JobSpec fields, got {value!r}")
            return value
    return {}


#: Defaults of the checked-in scripts in ``slurm/`` for jobs that declare none.
RENDER_DEFAULTS: dict[str, Any] = {"nodes": 1, "ntasks": 2, "time": 10, "python": "python"}


def render_jobs(jobs_dir: str | os.PathLike = "jobs") -> dict[str, str]:
    """The sbatch script of every ``*.py`` in ``jobs_dir``: ``{"pi.sbatch": text, ...}``. **Local**.

    Each job is rendered with :data:`RENDER_DEFAULTS` updated by its own ``SLURM``
    dict (:func:`job_defaults`), its path as ``jobs/NAME.py`` (submit from the
    repository root) and ``python`` taken from ``PATH`` (activate the venv before
    ``sbatch``: sbatch passes the environment on).
    """
    out = {}
    for path in sorted(Path(jobs_dir).glob("*.py")):
        if path.name.startswith("_"):
            continue
        fields = {**RENDER_DEFAULTS, **job_defaults(path)}
        spec = JobSpec(job=f"{Path(jobs_dir).name}/{path.name}", **fields)
        out[f"{path.stem}.sbatch"] = spec.render()
    return out


# --------------------------------------------------------------------------- running Slurm commands
def _run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    except FileNotFoundError:
        raise SlurmError(f"`{cmd[0]}` not found: this machine has no Slurm client tools "
                         "(install slurm-client, or run on a cluster login node)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{shlex.join(cmd)}` did not answer within 60 s: is slurmctld up?") from None
    if check and proc.returncode != 0:
        raise SlurmError(f"`{shlex.join(cmd)}` failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def submit(spec: JobSpec, workdir: str | os.PathLike | None = None) -> str:
    """Submit ``spec`` with ``sbatch --parsable``; return the job id (``"12"``). **Local**.

    The job runs in ``workdir`` (default: the current directory), where relative
    paths (the job file, output patterns) resolve and the runner's status file
    goes. For a job array the id is the array's.

    Raises:
        ValueError: when the spec is invalid, or the job file does not exist.
        SlurmError: when sbatch refuses the job (its message is included).
    """
    script = spec.render()
    workdir = os.path.abspath(workdir or os.getcwd())
    if not spec.is_module() and not os.path.isfile(os.path.join(workdir, spec.job)):
        raise ValueError(f"JobSpec.job={spec.job!r}: no such file in the job's working directory {workdir}")
    proc = _run(["sbatch", "--parsable"], input=script, cwd=workdir)
    job_id = proc.stdout.strip().split(";")[0]
    if not re.fullmatch(r"[0-9]+", job_id):
        raise SlurmError(f"sbatch --parsable printed {proc.stdout!r}, not a job id")
    return job_id


def cancel(job_id: str | int, signal: str | None = None) -> None:
    """``scancel JOB`` (with ``signal``: ``scancel --signal=SIG JOB``, to the job's steps). **Local**."""
    job_id = _check_id(job_id)
    cmd = ["scancel"] + ([f"--signal={_check_signal(signal)}"] if signal else []) + [job_id]
    _run(cmd)


def _check_id(job_id: str | int) -> str:
    job_id = str(job_id)
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        raise ValueError(f"job id {job_id!r} is not a Slurm job id like 12 or 12_3")
    return job_id


def _check_signal(sig: str) -> str:
    if not re.fullmatch(r"[A-Z0-9]{1,10}", sig):
        raise ValueError(f"signal {sig!r} is not a signal name like USR1")
    return sig


def requeue(job_id: str | int | None = None, force: bool = False) -> bool:
    """Put this job back in the queue (``scontrol requeue``). **Local**: call it on one rank.

    Call it after the checkpoint is saved, then let ``main`` return on every
    rank. Without ``job_id`` the current job (``SLURM_JOB_ID``) is requeued, and
    only when it was submitted with ``JobSpec(requeue=True)`` (``HPCPAR_REQUEUE=1``)
    or ``force`` is true. The job's status file says ``REQUEUED`` at once, but the
    ``scontrol requeue`` itself runs when this process exits, after
    ``MPI_Finalize``: Slurm ends a requeued job's processes with SIGTERM at once,
    and MPI processes killed before they finalize leave shared-memory segments
    behind whose names the rerun (same job and step id) would reuse, failing in
    ``MPI_Init``. The rerun starts once the job is eligible again (the local test
    cluster: ~35 s) and should resume from the checkpoint. With an explicit
    ``job_id`` of another job the requeue happens at once.

    Returns:
        True when the requeue was requested; False outside a Slurm job or when
        the job did not ask for requeueing (the job then simply ends).

    Raises:
        SlurmError: when scontrol refuses another job's requeue (its message is included).
    """
    own = os.environ.get("SLURM_JOB_ID")
    if job_id is None:
        if not own:
            sys.stderr.write("hpcpar.slurm.requeue: not inside a Slurm job; nothing to requeue\n")
            return False
        if not force and env.get(env.HPCPAR_REQUEUE) != "1":
            sys.stderr.write("hpcpar.slurm.requeue: the job was not submitted with requeue=True "
                             f"({env.HPCPAR_REQUEUE} is not 1); not requeueing\n")
            return False
        job_id = own
    job_id = _check_id(job_id)
    if job_id != own:
        _run(["scontrol", "requeue", job_id])
        return True
    _mark_requeued()
    if not _JOB["atexit"]:
        atexit.register(_requeue_at_exit, job_id)
        _JOB["atexit"] = True
    return True


def _requeue_at_exit(job_id: str) -> None:
    mpi = sys.modules.get("mpi4py.MPI")
    try:
        if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
            sys.stdout.flush()
            sys.stderr.flush()
            mpi.Finalize()
        _run(["scontrol", "requeue", job_id])
    except Exception as exc:  # noqa: BLE001 - report, and fail the job visibly
        sys.stderr.write(f"hpcpar.slurm.requeue: could not requeue job {job_id}: {exc}\n")
        sys.stderr.flush()
        os._exit(1)


# --------------------------------------------------------------------------- the runner's status file
def status_path(job_id: str | int, workdir: str | os.PathLike = ".") -> Path:
    """``WORKDIR/.hpcpar/job-ID.json``: where the runner records a job's state. **Local**, pure."""
    return Path(workdir) / STATUS_DIR / f"job-{job_id}.json"


def write_status(path: str | os.PathLike, **fields: Any) -> None:
    """Write the status file ``path`` atomically (temporary file + rename). **Local**.

    Used by the runner: ``state`` (RUNNING, COMPLETED, FAILED, REQUEUED),
    ``exit_code``, ``rank`` and ``message`` of a failure, ``time``, ``restarts``.
    Never raises: a job whose directory is not writable runs on without it.
    """
    path = Path(path)
    record = {"time": time.time(), **fields}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def read_status(path: str | os.PathLike) -> dict | None:
    """The record of the status file ``path``; None when there is none (or it is unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# In-job state of the current process (used by the runner and by requeue()).
_JOB: dict[str, Any] = {"path": None, "requeued": False, "atexit": False}


def _job_started(rank: int, size: int) -> None:
    """Called by the runner on every rank at the start of ``hpcpar.run``."""
    job_id = os.environ.get("SLURM_JOB_ID", "").strip()
    if not job_id.isdigit():
        return
    try:
        _JOB["path"] = status_path(job_id, os.getcwd()).resolve()
    except OSError:
        return
    _JOB["requeued"] = False
    if rank == 0 and not _failed_already():
        write_status(_JOB["path"], state="RUNNING", job_id=job_id, ranks=size,
                     restarts=_restarts(), array_index=os.environ.get("SLURM_ARRAY_TASK_ID"))


def _job_finished(rank: int, size: int, state: str = "COMPLETED", exit_code: int = 0,
                  message: str | None = None) -> None:
    """Called by the runner: by root at a normal end, by a failing rank before it aborts.
    Never raises (it runs inside the runner's failure path)."""
    path = _JOB["path"]
    if path is None or (_JOB["requeued"] and state == "COMPLETED"):
        return
    try:
        if state == "COMPLETED" and _failed_already():
            return
        fields: dict[str, Any] = {"state": state, "job_id": os.environ.get("SLURM_JOB_ID"),
                                  "exit_code": exit_code, "ranks": size, "restarts": _restarts()}
        if state != "COMPLETED":
            fields.update(rank=rank, message=str(message)[:2000])
        write_status(path, **fields)
    except Exception:  # noqa: BLE001 - the status file must never stop an abort
        pass


def _failed_already() -> bool:
    """True when another rank of this run of the job already recorded FAILED: root's RUNNING
    or COMPLETED record, racing with it, must not hide the failure."""
    rec = read_status(_JOB["path"]) if _JOB["path"] is not None else None
    return bool(rec) and rec.get("state") == "FAILED" and rec.get("restarts") == _restarts() \
        and rec.get("job_id") == os.environ.get("SLURM_JOB_ID")


def _restarts() -> int:
    value = os.environ.get("SLURM_RESTART_COUNT", "0").strip()
    return int(value) if value.isdigit() else 0


def _mark_requeued() -> None:
    _JOB["requeued"] = True
    if _JOB["path"] is not None:
        write_status(_JOB["path"], state="REQUEUED", job_id=os.environ.get("SLURM_JOB_ID"),
                     restarts=_restarts())


# --------------------------------------------------------------------------- status and wait
@dataclass
class JobStatus:
    """What is known about a job: ``state`` (PENDING, RUNNING, COMPLETED, FAILED,
    TIMEOUT, CANCELLED, REQUEUED ...), ``exit_code`` (None until it ends),
    ``reason`` (why it waits), the failing ``rank`` and its ``message`` (from the
    runner's status file), ``workdir``, ``stdout``, ``restarts``, ``source`` (where
    the state came from) and, for a job array, ``tasks`` (array index -> status)."""

    job_id: str
    state: str
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    rank: int | None = None
    message: str | None = None
    workdir: str | None = None
    stdout: str | None = None
    restarts: int = 0
    source: str = ""
    tasks: dict[int, "JobStatus"] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """True when the job (every task of an array) has ended for good."""
        return self.state in TERMINAL_STATES

    @property
    def ok(self) -> bool:
        """True when the job ended COMPLETED with exit code 0."""
        return self.state == "COMPLETED" and not self.exit_code

    def to_dict(self) -> dict:
        """The status as plain JSON-ready data (``hpcpar status --json``)."""
        d = dataclasses.asdict(self)
        d["tasks"] = {k: v.to_dict() for k, v in self.tasks.items()}
        return d


def _parse_record(line: str) -> dict[str, str]:
    # `scontrol show job -o` and jobcomp/filetxt lines: Key=value pairs separated by blanks.
    # Values may hold blanks only in a few fields (Command, Comment ...) we do not read.
    out = {}
    for m in re.finditer(r"(\w+)=(\S*)", line):
        out.setdefault(m[1], m[2])
    return out


def _exit(value: str | None) -> tuple[int | None, int | None]:
    if not value or ":" not in value:
        return None, None
    code, sig = value.split(":", 1)
    return int(code), int(sig)


def _from_record(job_id: str, rec: dict[str, str], source: str) -> JobStatus:
    state = rec.get("JobState", "UNKNOWN").split()[0].rstrip("+")
    code, sig = _exit(rec.get("ExitCode"))
    if state not in TERMINAL_STATES:
        code = sig = None
    return JobStatus(job_id=job_id, state=state, exit_code=code, signal=sig,
                     reason=None if rec.get("Reason") in (None, "None", "(null)") else rec.get("Reason"),
                     workdir=rec.get("WorkDir") or None, stdout=rec.get("StdOut") or None,
                     restarts=int(rec.get("Restarts", "0") or 0), source=source)


def _scontrol_records(job_id: str) -> list[dict[str, str]]:
    proc = _run(["scontrol", "show", "job", "-o", job_id], check=False)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return []
        raise SlurmError(f"`scontrol show job {job_id}` failed: {proc.stderr.strip()}")
    return [_parse_record(line) for line in proc.stdout.splitlines() if line.startswith("JobId=")]


def _sacct_record(job_id: str) -> dict[str, str] | None:
    proc = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode,WorkDir"], check=False)
    if proc.returncode != 0:
        return None  # no accounting database (e.g. the local test cluster)
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[0] == job_id:
            return {"JobState": parts[1], "ExitCode": parts[2], "WorkDir": parts[3]}
    return None


_JOBCOMP: dict[str, str | None] = {}


def _jobcomp_record(job_id: str) -> dict[str, str] | None:
    if "loc" not in _JOBCOMP:
        proc = _run(["scontrol", "show", "config"], check=False)
        conf = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", proc.stdout, re.M))
        _JOBCOMP["loc"] = conf.get("JobCompLoc") if conf.get("JobCompType") == "jobcomp/filetxt" else None
    loc = _JOBCOMP["loc"]
    if not loc:
        return None
    last = None
    try:
        with open(loc) as fh:
            for line in fh:
                if line.startswith(f"JobId={job_id} "):
                    last = line
    except OSError:
        return None
    return _parse_record(last) if last else None


def _merge_file(st: JobStatus, workdir: str | None, file_id: str | None = None) -> JobStatus:
    """Add the runner's status file (failing rank, message) to ``st``; ``file_id`` is the
    job's own SLURM_JOB_ID when ``st.job_id`` is written ``ARRAYID_TASK``."""
    where = workdir or st.workdir
    if not where:
        return st
    rec = read_status(status_path(file_id or st.job_id, where))
    if rec is None:
        return st
    st.workdir = st.workdir or str(where)
    if st.state == "UNKNOWN":
        st.state, st.source = rec.get("state", "UNKNOWN"), "status-file"
        st.exit_code = rec.get("exit_code")
    if rec.get("state") == "FAILED":
        st.rank, st.message = rec.get("rank"), rec.get("message")
        if st.state in ("COMPLETED", "UNKNOWN"):  # an MPI job that failed but whose launcher said 0
            st.state = "FAILED"
            st.exit_code = rec.get("exit_code") or 1
    return st


def status(job_id: str | int, workdir: str | os.PathLike | None = None) -> JobStatus:
    """The job's current :class:`JobStatus`. **Local**.

    Asks ``scontrol show job`` (queued, running and recently finished jobs), then
    ``sacct`` (clusters with accounting), then the cluster's ``jobcomp/filetxt``
    file, and adds the runner's status file found in the job's working directory
    (or ``workdir``): the failing rank and its message. For a job array (its
    array job id) the state covers all tasks — FAILED/CANCELLED/TIMEOUT when any
    task ended so, COMPLETED when all did, else PENDING or RUNNING — and
    ``tasks`` has each task's status. ``state`` is ``UNKNOWN`` when no source
    knows the job.

    Raises:
        ValueError: for a malformed job id.
        SlurmError: when the Slurm tools are missing or the controller does not answer.
    """
    job_id = _check_id(job_id)
    workdir = None if workdir is None else str(workdir)
    recs = _scontrol_records(job_id)
    tasks = [r for r in recs if r.get("ArrayJobId") == job_id and r.get("ArrayTaskId") not in (None, "N/A")]
    if tasks:
        return _array_status(job_id, tasks, workdir)
    file_id = None
    if recs:
        st = _from_record(job_id, recs[0], "scontrol")
        file_id = recs[0].get("JobId")
    else:
        rec = _sacct_record(job_id)
        source = "sacct"
        if rec is None:
            rec, source = _jobcomp_record(job_id), "jobcomp"
        st = _from_record(job_id, rec, source) if rec else JobStatus(job_id, "UNKNOWN", source="none")
    return _merge_file(st, workdir, file_id)


def _array_status(job_id: str, recs: list[dict[str, str]], workdir: str | None) -> JobStatus:
    tasks: dict[int, JobStatus] = {}
    pending = False
    for rec in recs:
        tid = rec.get("ArrayTaskId", "")
        if not re.fullmatch(r"[0-9]+", tid):
            pending = True  # a not yet started range like 1-2 or 3,5%1
            continue
        st = _from_record(rec.get("JobId", job_id), rec, "scontrol")
        tasks[int(tid)] = _merge_file(st, workdir)
    states = {t.state for t in tasks.values()}
    bad = [s for s in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "PREEMPTED")
           if s in states]
    if pending or not states <= TERMINAL_STATES:
        state = "RUNNING" if "RUNNING" in states else "PENDING"
    elif bad:
        state = bad[0]
    else:
        state = "COMPLETED"
    codes = [t.exit_code for t in tasks.values() if t.exit_code is not None]
    first = next(iter(tasks.values()), None)
    return JobStatus(job_id=job_id, state=state,
                     exit_code=(max(codes) if codes else 0) if state in TERMINAL_STATES else None,
                     workdir=first.workdir if first else workdir, source="scontrol",
                     tasks=dict(sorted(tasks.items())))


def wait(job_id: str | int, timeout: float | None = None, poll: float = 1.0,
         workdir: str | os.PathLike | None = None) -> JobStatus:
    """Poll :func:`status` until the job has ended for good; return its final status. **Local**.

    A requeued job (REQUEUED, then PENDING again) is waited for through its rerun.
    Returns at once with state ``UNKNOWN`` when no source knows the job.
    Polls every ``poll`` seconds at first, then less often (at most every 5 s).

    Raises:
        TimeoutError: after ``timeout`` seconds, with the last status in the message.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = poll
    while True:
        st = status(job_id, workdir)
        if st.done or st.state == "UNKNOWN":
            return st
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} still {st.state} after {timeout:g} s"
                               + (f" (reason {st.reason})" if st.reason else ""))
        pause = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
        time.sleep(pause)
        delay = min(5.0, delay * 1.25)
