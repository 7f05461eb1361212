"""Slurm job specs: a :class:`JobSpec` checked field by field and rendered to a safe sbatch script.

:meth:`JobSpec.render` turns a spec into the text of an sbatch script without
touching Slurm: every option value is checked against what sbatch accepts and
every shell word is quoted with :func:`shlex.quote`, so no value can run a
command. Errors name the field and say what to use instead, before anything is
submitted. Everything here is **local** and pure; no MPI.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from .. import env
from ..launch.command import launch_argv, mpiexec_beside

__all__ = ["JobSpec", "render", "time_seconds", "LAUNCHERS"]

LAUNCHERS = ("srun", "mpiexec")

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
        python = str(self.python)  # validate() checked it is a non-empty string
        target = ["-m", self.job] if self.is_module() else ["-m", "hpcpar.core.script", self.job]
        if self.launcher == "mpiexec":
            # the job's python may not be this one: the mpiexec beside it, else the one on PATH
            return launch_argv(_NTASKS, [python, *target, *self.args],
                               [mpiexec_beside(python) or "mpiexec"])
        launch = ["srun", f"--mpi={self.mpi}", "--kill-on-bad-exit=1"]
        if self.cpus_per_task is not None:
            launch.append(f"--cpus-per-task={self.cpus_per_task}")
        return [*launch, python, *target, *self.args]

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
# The task count of the allocation, for mpiexec: Slurm sets SLURM_NTASKS only when
# --ntasks (or --ntasks-per-node) was given, and starts one task per node otherwise.
# command() returns this very object, which render() replaces by the shell expression.
_NTASKS = "<ntasks>"
_NTASKS_SH = '"${SLURM_NTASKS:-$SLURM_JOB_NUM_NODES}"'

def _default_name(job: str) -> str:
    base = os.path.basename(job)
    base = base[:-3] if base.endswith(".py") else base
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip("._+-")[:128]
    return name or "hpcpar-job"



def render(spec: JobSpec) -> str:
    """``spec.render()``: the sbatch script text. **Local**, pure."""
    return spec.render()

