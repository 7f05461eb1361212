"""The Slurm client: submit, status, wait, cancel and requeue jobs through the Slurm tools.

:func:`submit`, :func:`status`, :func:`wait` and :func:`cancel` drive the Slurm
client tools. Status comes from ``scontrol`` (queued, running and recently
finished jobs), ``sacct`` (when the cluster has accounting), the cluster's
``jobcomp/filetxt`` file (when configured) and the small JSON status file that
:func:`hpcpar.run` writes under ``.hpcpar/`` in the job's working directory
(:mod:`hpcpar.slurm.job`: state, exit code, and the failing rank with its
message). Everything here is **local**; no MPI.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .. import env
from . import job
from .spec import JobSpec

__all__ = ["JobStatus", "SlurmError", "TERMINAL_STATES", "submit", "status", "wait", "cancel",
           "requeue", "run_tool"]

#: Job states after which a job never runs again (without a manual requeue).
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})



class SlurmError(RuntimeError):
    """A Slurm command failed; the message holds the command and what it printed."""


# --------------------------------------------------------------------------- running Slurm commands
def run_tool(cmd: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    """Run the Slurm tool ``cmd`` (at most 60 s) and return its completed process. **Local**.

    Raises:
        SlurmError: when the tool is missing, does not answer, or (with ``check``) fails.
    """
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
    proc = run_tool(["sbatch", "--parsable"], input=script, cwd=workdir)
    job_id = proc.stdout.strip().split(";")[0]
    if not re.fullmatch(r"[0-9]+", job_id):
        raise SlurmError(f"sbatch --parsable printed {proc.stdout!r}, not a job id")
    return job_id


def cancel(job_id: str | int, signal: str | None = None) -> None:
    """``scancel JOB`` (with ``signal``: ``scancel --signal=SIG JOB``, to the job's steps). **Local**."""
    job_id = _check_id(job_id)
    cmd = ["scancel"] + ([f"--signal={_check_signal(signal)}"] if signal else []) + [job_id]
    run_tool(cmd)


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
        run_tool(["scontrol", "requeue", job_id])
        return True
    job.mark_requeued()
    job.requeue_at_exit(job_id)
    return True



# --------------------------------------------------------------------------- status and wait
@dataclass
class JobStatus:
    """What is known about a job: ``state`` (PENDING, RUNNING, COMPLETED, FAILED,
    TIMEOUT, CANCELLED, REQUEUED ...), ``exit_code`` (None until it ends),
    ``reason`` (why it waits), the failing ``rank``, its ``host`` and its ``message``
    (from the runner's status file), ``workdir``, ``stdout``, ``restarts``, ``source`` (where
    the state came from) and, for a job array, ``tasks`` (array index -> status)."""

    job_id: str
    state: str
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    rank: int | None = None
    message: str | None = None
    host: str | None = None
    workdir: str | None = None
    stdout: str | None = None
    restarts: int = 0
    source: str = ""
    tasks: dict[int, JobStatus] = field(default_factory=dict)

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
    out: dict[str, str] = {}
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
    proc = run_tool(["scontrol", "show", "job", "-o", job_id], check=False)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return []
        raise SlurmError(f"`scontrol show job {job_id}` failed: {proc.stderr.strip()}")
    return [_parse_record(line) for line in proc.stdout.splitlines() if line.startswith("JobId=")]


def _sacct_record(job_id: str) -> dict[str, str] | None:
    proc = run_tool(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode,WorkDir"],
                    check=False)
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
        proc = run_tool(["scontrol", "show", "config"], check=False)
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
    rec = job.read_status(job.status_path(file_id or st.job_id, where))
    if rec is None:
        return st
    st.workdir = st.workdir or str(where)
    if st.state == "UNKNOWN":
        st.state, st.source = rec.get("state", "UNKNOWN"), "status-file"
        st.exit_code = rec.get("exit_code")
    if rec.get("state") == "FAILED":
        st.rank, st.message, st.host = rec.get("rank"), rec.get("message"), rec.get("host")
        if st.state in ("COMPLETED", "UNKNOWN"):  # an MPI job that failed but whose launcher said 0
            st.state = "FAILED"
            st.exit_code = rec.get("exit_code") or 1
    return st


def status(job_id: str | int, workdir: str | os.PathLike | None = None) -> JobStatus:
    """The job's current :class:`JobStatus`. **Local**.

    Asks ``scontrol show job`` (queued, running and recently finished jobs), then
    ``sacct`` (clusters with accounting), then the cluster's ``jobcomp/filetxt``
    file, and adds the runner's status file found in the job's working directory
    (or ``workdir``): the failing rank, its host and its message. For a job array (its
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
