"""`hpcpar run` owns its job: stopping or killing it ends every process of the job, and a rank
that dies without a report (os._exit, a signal) is named with its host and decides the job's status.

Each test launches a real 3-rank job with a unique marker in its environment (inherited by
MPI's launcher, its proxy, the guardians and the ranks) and, afterwards, looks for any live
process carrying the marker. Only processes this test started carry it.
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import helpers
import pytest

pytestmark = pytest.mark.timeout(90)

#: The environment variable that marks every process of a test's job.
MARKER = "HPCPAR_TEST_JOB_MARKER"

SLEEPING_JOB = """
    import time, hpcpar
    def main(ctx):
        ctx.barrier()
        print(f"ready {ctx.rank}", flush=True)
        time.sleep(60)
    hpcpar.run(main)
"""

DYING_JOB = """
    import os, sys, time
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    world.Barrier()
    if world.rank == 1:
        if sys.argv[1] == "exit":
            os._exit(7)
        elif sys.argv[1] == "abort":
            os.abort()
        else:
            sys.exit(3)
    time.sleep(60)
"""


def job_processes(marker: str) -> list[str]:
    """Live processes (not zombies) whose environment or command line holds ``marker``."""
    return [f"{pid}: {cmd[:120]}" for pid, cmd in helpers.job_processes(marker, environ=True).items()]


def assert_nothing_left(marker: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    left = job_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = job_processes(marker)
    assert not left, f"processes of the job left {within} s after it ended:\n" + "\n".join(left)


class Job:
    """A 3-rank ``hpcpar run`` of ``body`` with a unique marker; output goes to files."""

    def __init__(self, tmp_path, body: str, args: tuple[str, ...] = (), prefix: tuple[str, ...] = ()):
        self.marker = uuid.uuid4().hex
        path = tmp_path / f"job_{self.marker[:8]}.py"
        path.write_text(textwrap.dedent(body))
        self.out, self.err = tmp_path / "out.txt", tmp_path / "err.txt"
        self.argv = [*prefix, sys.executable, "-m", "hpcpar.cli", "run", "-n", "3", str(path), *args]
        self.env = {**os.environ, MARKER: self.marker}

    def start(self) -> subprocess.Popen:
        with open(self.out, "w") as out, open(self.err, "w") as err:
            return subprocess.Popen(self.argv, stdout=out, stderr=err, env=self.env)

    def wait_ready(self, proc: subprocess.Popen, ranks: int = 3, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while self.out.read_text().count("ready") < ranks:
            assert proc.poll() is None, f"the job ended early ({proc.returncode}):\n{self.stderr}"
            assert time.monotonic() < deadline, f"the job did not start in {limit} s:\n{self.stderr}"
            time.sleep(0.1)

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def end(self, proc: subprocess.Popen) -> None:
        """Kill whatever is left (a failed test), by the marker: only this job's processes."""
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for line in job_processes(self.marker):
            try:
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_to_hpcpar_run_ends_every_process_of_the_job(tmp_path, sig):
    job = Job(tmp_path, SLEEPING_JOB)
    proc = job.start()
    try:
        job.wait_ready(proc)
        assert len(job_processes(job.marker)) >= 7  # launcher, mpiexec, proxy, 3 guardians, 3 ranks
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
        assert elapsed < 5, f"hpcpar run took {elapsed:.1f} s to end after {sig.name}"
        assert code == 128 + sig, job.stderr
        assert_nothing_left(job.marker)
        err = job.stderr
        assert f"hpcpar run: the launcher was stopped by signal {int(sig)} ({sig.name})" in err, err
        assert "was killed by signal" not in err and "hpcpar: rank" not in err, err  # no rank is blamed
    finally:
        job.end(proc)


@pytest.mark.parametrize("how", ["timeout", "timeout --foreground --preserve-status"])
def test_a_timeout_command_around_hpcpar_run_ends_the_job(tmp_path, how):
    job = Job(tmp_path, SLEEPING_JOB, prefix=(*how.split(), "6"))
    proc = job.start()
    try:
        code = proc.wait(timeout=40)
        assert code == (124 if how == "timeout" else 128 + signal.SIGTERM), job.stderr
        assert_nothing_left(job.marker)
        err = job.stderr
        assert "hpcpar run: the launcher was stopped by signal 15 (SIGTERM)" in err, err
        assert "was killed by signal" not in err, err
    finally:
        job.end(proc)


def test_subprocess_run_timeout_kills_hpcpar_run_and_no_rank_outlives_it(tmp_path):
    job = Job(tmp_path, SLEEPING_JOB)
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(job.argv, env=job.env, capture_output=True, timeout=6)
    assert time.monotonic() - t0 < 10
    assert_nothing_left(job.marker)


def test_kill_9_of_hpcpar_run_leaves_no_process_of_the_job(tmp_path):
    job = Job(tmp_path, SLEEPING_JOB)
    proc = job.start()
    try:
        job.wait_ready(proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert_nothing_left(job.marker)
    finally:
        job.end(proc)


def run_dying(tmp_path, how: str) -> tuple[int, str, float]:
    job = Job(tmp_path, DYING_JOB, args=(how,))
    proc = job.start()
    t0 = time.monotonic()
    try:
        code = proc.wait(timeout=40)
        elapsed = time.monotonic() - t0
        assert_nothing_left(job.marker)
        return code, job.stderr, elapsed
    finally:
        job.end(proc)


def test_os_exit_of_a_rank_is_named_and_sets_the_job_status(tmp_path):
    code, err, elapsed = run_dying(tmp_path, "exit")
    assert code == 7, err
    assert (f"hpcpar: rank 1 of 3 (host {socket.gethostname()}, pid " in err
            and "exited with status 7 without reporting an error" in err), err
    assert elapsed < 15


def test_os_abort_of_a_rank_is_named_with_its_signal(tmp_path):
    code, err, elapsed = run_dying(tmp_path, "abort")
    assert f"hpcpar: rank 1 of 3 (host {socket.gethostname()}, pid " in err, err
    assert "was killed by signal 6 (SIGABRT)" in err, err
    assert code == 128 + signal.SIGABRT, err
    assert elapsed < 15


def test_a_failure_the_rank_reported_is_not_reported_twice(tmp_path):
    code, err, _ = run_dying(tmp_path, "sys.exit")
    assert code == 3, err
    assert "rank 1 of 3 failed: exited with status 3" in err, err
    assert "hpcpar: rank" not in err, err
