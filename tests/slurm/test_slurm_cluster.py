"""hpcpar.slurm on a real Slurm cluster (``make test-slurm`` starts the local one).

Every test submits real batch jobs with sbatch and waits for them. Without a
reachable cluster the tests are skipped, unless ``HPCPAR_TEST_SLURM=1`` (set by
``make test-slurm``), where a missing cluster is a failure.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from helpers import JOBS, ROOT, run_mpi, wait_for_file

from hpcpar import slurm

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(150)]

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "jobs", "probe.py")
FARM = os.path.join(HERE, "jobs", "farm.py")
COUNTER = os.path.join(HERE, "jobs", "counter.py")
PYTHON = sys.executable


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A reachable Slurm controller with idle nodes, else skip (or fail under make test-slurm)."""
    why = None
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%n %T"], capture_output=True, text=True, timeout=20)
        if proc.returncode != 0 or not proc.stdout.strip():
            why = f"sinfo failed: {proc.stderr.strip()}"
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        why = f"no Slurm client or controller: {exc}"
    if why:
        if os.environ.get("HPCPAR_TEST_SLURM") == "1":
            pytest.fail(f"HPCPAR_TEST_SLURM=1 but no Slurm cluster: {why}")
        pytest.skip(f"no Slurm cluster ({why}); run `make test-slurm`")
    yield


def read(path) -> str:
    with open(path) as fh:
        return fh.read()


def probe_records(path) -> list[dict]:
    with open(path) as fh:
        return json.load(fh)["ranks"]


def submit_wait(spec, workdir, timeout=90) -> slurm.JobStatus:
    job_id = slurm.submit(spec, workdir=workdir)
    return slurm.wait(job_id, timeout=timeout, poll=0.5)


def test_checked_in_pi_script_runs_on_two_ranks(tmp_path):
    # The script in slurm/ as it is checked in: `python` from PATH (sbatch passes the
    # environment on), the job as jobs/pi.py relative to the working directory.
    (tmp_path / "jobs").mkdir()
    shutil.copy(JOBS / "pi.py", tmp_path / "jobs" / "pi.py")
    env = {**os.environ, "PATH": os.path.dirname(PYTHON) + os.pathsep + os.environ["PATH"]}
    out = tmp_path / "pi.out"
    proc = subprocess.run(["sbatch", "--parsable", f"--output={out}", str(ROOT / "slurm" / "pi.sbatch")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=True)
    st = slurm.wait(proc.stdout.strip(), timeout=90, poll=0.5)
    text = read(out)
    assert st.state == "COMPLETED" and st.exit_code == 0, (st, text)
    m = re.search(r"pi ~= ([0-9.]+) .* 40,000,000 samples on 2 ranks", text)
    assert m, text
    # 40M samples: the standard error is 2.6e-4; 6 sigma is never exceeded by chance.
    assert abs(float(m[1]) - math.pi) < 6 * 2.6e-4
    record = slurm.read_status(slurm.status_path(st.job_id, tmp_path))
    assert record["state"] == "COMPLETED" and record["ranks"] == 2


def test_cli_submit_wait_pi_equals_a_local_run(tmp_path):
    samples = "2e6"
    cmd = [PYTHON, "-m", "hpcpar", "submit", str(JOBS / "pi.py"), "--nodes", "1", "--ntasks", "2",
           "--time", "5", "--output", "pi-%j.out", "--wait", "--timeout", "90", "--", "--samples", samples]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"submitted batch job ([0-9]+)", proc.stdout)[1]
    assert f"job {job_id}: COMPLETED (exit 0)" in proc.stdout
    text = read(tmp_path / f"pi-{job_id}.out")
    local = run_mpi(1, [str(JOBS / "pi.py"), "--samples", samples], timeout=60)
    assert local.returncode == 0, local.stderr
    estimate = re.search(r"pi ~= ([0-9.]+)", text)[1]
    assert estimate == re.search(r"pi ~= ([0-9.]+)", local.stdout)[1]  # bit-identical for any rank count
    assert "on 2 ranks" in text
    # hpcpar status on the finished job
    proc = subprocess.run([PYTHON, "-m", "hpcpar", "status", job_id], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and f"job {job_id}: COMPLETED (exit 0)" in proc.stdout, proc.stdout


def test_two_nodes_two_tasks_rank_and_size_from_mpi(tmp_path):
    out = tmp_path / "probe.json"
    spec = slurm.JobSpec(PROBE, nodes=2, ntasks=2, time=5, args=["--out", str(out)])
    st = submit_wait(spec, tmp_path)
    assert st.ok, (st, read(st.stdout))
    recs = probe_records(out)
    assert [r["rank"] for r in recs] == [0, 1] and {r["size"] for r in recs} == {2}
    assert sorted(r["node"] for r in recs) == ["n1", "n2"]


def test_mpiexec_launcher_and_cpus_per_task(tmp_path):
    out = tmp_path / "probe.json"
    spec = slurm.JobSpec(PROBE, nodes=1, ntasks=2, cpus_per_task=1, time=5, launcher="mpiexec",
                         args=["--out", str(out)])
    assert "mpiexec" in spec.render() and "SRUN_CPUS_PER_TASK=1" in spec.render()
    st = submit_wait(spec, tmp_path)
    assert st.ok, (st, read(st.stdout))
    recs = probe_records(out)
    # Under mpiexec, SLURM_PROCID is the same for every rank: ranks come from MPI.
    assert [r["rank"] for r in recs] == [0, 1] and {r["size"] for r in recs} == {2}
    assert {r["cpus_per_task"] for r in recs} == {"1"} and {r["srun_cpus"] for r in recs} == {"1"}


def test_fibonacci_farm_job_on_two_ranks(tmp_path):
    spec = slurm.JobSpec(str(JOBS / "fibonacci.py"), ntasks=2, time=5, output="fib-%j.out",
                         args=["--count", "300", "--max-n", "3000", "--verify"])
    st = submit_wait(spec, tmp_path, timeout=120)
    text = read(tmp_path / f"fib-{st.job_id}.out")
    assert st.ok, (st, text)
    local = run_mpi(1, [str(JOBS / "fibonacci.py"), "--count", "300", "--max-n", "3000", "--verify"],
                    timeout=120)
    assert local.returncode == 0, local.stderr
    digest = re.search(r"digest ([0-9a-f]+)", local.stdout)
    assert digest and digest[1] in text, (local.stdout, text)


def test_farm_job_on_two_ranks(tmp_path):
    out = tmp_path / "farm.json"
    spec = slurm.JobSpec(FARM, ntasks=2, time=5, args=["--tasks", "25", "--out", str(out)])
    st = submit_wait(spec, tmp_path)
    assert st.ok, (st, read(st.stdout))
    data = json.loads(read(out))
    assert data["ranks"] == 2
    expected = {str(t): sum(i * i for i in range(t * 1000)) for t in range(25)}
    assert {k: v[0] for k, v in data["results"].items()} == expected
    assert {v[1] for v in data["results"].values()} == {1}  # the worker did every task


def test_failing_rank_ends_the_job_failed_promptly(tmp_path):
    spec = slurm.JobSpec(PROBE, nodes=2, ntasks=3, time=5, args=["--fail", "2"])
    job_id = slurm.submit(spec, workdir=tmp_path)
    t0 = time.monotonic()
    while slurm.status(job_id).state in ("PENDING", "CONFIGURING"):
        time.sleep(0.2)
    started = time.monotonic()
    st = slurm.wait(job_id, timeout=60, poll=0.3)
    ran = time.monotonic() - started
    text = read(st.stdout)
    assert st.state == "FAILED" and st.exit_code != 0, (st, text)
    assert "rank 2 of 3 failed: RuntimeError: probe failure on purpose" in text
    assert st.rank == 2 and st.message == "RuntimeError: probe failure on purpose"
    assert ran < 20, f"the job took {ran:.1f} s after it started ({time.monotonic() - t0:.1f} s in all)"
    proc = subprocess.run([PYTHON, "-m", "hpcpar", "status", job_id], capture_output=True, text=True,
                          timeout=30)
    assert f"job {job_id}: FAILED" in proc.stdout, proc.stdout
    assert "rank 2 failed: RuntimeError: probe failure on purpose" in proc.stdout, proc.stdout


def test_cli_cancel_ends_a_running_job_cancelled(tmp_path):
    progress = tmp_path / "progress.json"
    spec = slurm.JobSpec(COUNTER, ntasks=2, time=5, args=[
        "--steps", "100000", "--sleep", "0.05", "--checkpoint", str(tmp_path / "c.npz"),
        "--result", str(tmp_path / "r.npy"), "--progress", str(progress)])
    job_id = slurm.submit(spec, workdir=tmp_path)
    deadline = time.monotonic() + 60
    while not progress.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert progress.exists(), slurm.status(job_id)
    proc = subprocess.run([PYTHON, "-m", "hpcpar", "cancel", job_id], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    st = slurm.wait(job_id, timeout=60, poll=0.3)
    assert st.state == "CANCELLED", st


def test_job_array_parameter_sweep(tmp_path):
    spec = slurm.JobSpec(PROBE, ntasks=1, time=5, array="0-2", output="sweep-%A_%a.out",
                         args=["--sweep", "-", "--out", str(tmp_path / "sweep-{index}.json")])
    st = submit_wait(spec, tmp_path)
    assert st.state == "COMPLETED" and sorted(st.tasks) == [0, 1, 2], st
    for index, task in st.tasks.items():
        assert task.ok, task
        data = json.loads(read(tmp_path / f"sweep-{index}.json"))
        assert data["sweep"] == sum(k ** index for k in range(1000))
        assert data["ranks"][0]["array_index"] == index


def test_hostile_values_are_never_executed(tmp_path):
    """File names, arguments, variables and the interpreter path full of shell syntax."""
    tag = uuid.uuid4().hex[:12]
    canary = f"/tmp/pwned-{tag}"
    evil = [f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary};", "a'b\"c\nd\\e",
            f"' ; touch {canary}; '", f"\"$(touch {canary})\"", "$HOME", "*", "--help"]
    job = tmp_path / "job $(touch pwned1) `touch pwned2`;'\"x.py"
    shutil.copy(PROBE, job)
    python = tmp_path / "py $(touch pwned3);'\".sh"
    python.write_text(f"#!/bin/sh\nexec {PYTHON} \"$@\"\n")
    python.chmod(0o755)
    out = tmp_path / "probe.json"
    spec = slurm.JobSpec(job.name, ntasks=2, time=5, python=str(python),
                         args=["--out", str(out), *evil], env={"HOSTILE": "\n".join(evil)})
    st = submit_wait(spec, tmp_path)
    assert st.ok, (st, read(st.stdout))
    recs = probe_records(out)
    assert all(r["argv"] == ["--out", str(out), *evil] for r in recs), recs
    assert all(r["hostile"] == "\n".join(evil) for r in recs)
    assert not os.path.exists(canary)
    assert not any((tmp_path / f"pwned{i}").exists() for i in (1, 2, 3))


def test_usr1_checkpoint_requeue_resume_equals_uninterrupted(tmp_path):
    ckpt, result, progress = tmp_path / "ckpt.npz", tmp_path / "result.npy", tmp_path / "progress.json"
    args = ["--n", "1000", "--steps", "40", "--checkpoint", str(ckpt), "--result", str(result)]
    spec = slurm.JobSpec(COUNTER, ntasks=2, time=5, requeue=True, output="counter-%j.out",
                         args=[*args, "--sleep", "0.1", "--progress", str(progress)])
    job_id = slurm.submit(spec, workdir=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # let it run a few steps
        if progress.exists() and json.loads(read(progress))["step"] >= 5:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"job {job_id} made no progress: {slurm.status(job_id)}")
    slurm.cancel(job_id, signal="USR1")
    # The reference: the same loop, uninterrupted, on this host, while the job waits to rerun.
    ref = tmp_path / "ref"
    ref.mkdir()
    local = run_mpi(2, [COUNTER, "--n", "1000", "--steps", "40", "--checkpoint", str(ref / "c.npz"),
                        "--result", str(ref / "r.npy")], timeout=60)
    assert local.returncode == 0, local.stderr
    st = slurm.wait(job_id, timeout=120, poll=1.0)
    text = read(tmp_path / f"counter-{job_id}.out")
    assert st.state == "COMPLETED" and st.exit_code == 0, (st, text)
    assert st.restarts == 1, (st, text)
    stopped = int(re.search(r"checkpoint at step ([0-9]+)", text)[1])
    assert 5 <= stopped < 40, text
    assert f"resuming from step {stopped} (restart 1)" in text
    assert "hpcpar: stop requested" in text
    assert np.array_equal(np.load(result), np.load(ref / "r.npy"))
    record = slurm.read_status(slurm.status_path(job_id, tmp_path))
    assert record["state"] == "COMPLETED" and record["restarts"] == 1


@pytest.mark.timeout(300)  # slurmctld holds a requeued job ~30 s before it runs again
def test_heat_usr1_checkpoint_requeue_resume_is_bit_identical(tmp_path):
    """The main job end to end: USR1 -> checkpoint -> requeue -> resume -> the same field."""
    ckpt, final = tmp_path / "heat.ckpt.h5", tmp_path / "final.npy"
    # Long enough that USR1 (sent at the first checkpoint) always comes before the end.
    args = ["--n", "96", "--steps", "60000", "--checkpoint", str(ckpt), "--every", "500"]
    spec = slurm.JobSpec(str(JOBS / "heat.py"), ntasks=2, time=5, requeue=True, output="heat-%j.out",
                         args=[*args, "--save-npy", str(final)])
    job_id = slurm.submit(spec, workdir=tmp_path)
    # running, with a first checkpoint written
    wait_for_file(ckpt, 60, lambda: f"heat job {job_id}: {slurm.status(job_id)}")
    slurm.cancel(job_id, signal="USR1")
    # the reference, uninterrupted on one rank (bit-identical for any rank count)
    local = run_mpi(1, [str(JOBS / "heat.py"), *args[:4], "--save-npy", str(tmp_path / "ref.npy")],
                    timeout=120)
    assert local.returncode == 0, local.stderr
    st = slurm.wait(job_id, timeout=240, poll=1.0)
    text = read(tmp_path / f"heat-{job_id}.out")
    assert st.state == "COMPLETED" and st.exit_code == 0, (st, text)
    assert st.restarts == 1, (st, text)
    stopped = int(re.search(r"checkpoint at step ([0-9]+) of 60000", text)[1])
    assert 0 < stopped < 60000 and "job requeued" in text, text
    assert f"heat: resuming from step {stopped}" in text, text
    assert np.array_equal(np.load(final), np.load(tmp_path / "ref.npy"))


def test_time_limit_signal_reaches_every_rank_before_the_limit(tmp_path):
    # --time=1 --signal=USR1@55: Slurm sends the warning ~5 s after the start, but
    # slurmctld checks only every ~30 s, so it may come up to ~30 s late; the loop
    # (0.1 s per step, 2000 steps) would run far past the 60 s limit without it.
    ckpt, result = tmp_path / "ckpt.npz", tmp_path / "result.npy"
    spec = slurm.JobSpec(COUNTER, nodes=2, ntasks=2, time=1, signal=55, output="limit-%j.out",
                         args=["--steps", "2000", "--sleep", "0.1", "--checkpoint", str(ckpt),
                               "--result", str(result)])
    assert "#SBATCH --signal=USR1@55" in spec.render()
    st = submit_wait(spec, tmp_path, timeout=90)
    text = read(tmp_path / f"limit-{st.job_id}.out")
    assert st.state == "COMPLETED" and st.exit_code == 0, (st, text)
    stopped = int(re.search(r"checkpoint at step ([0-9]+)", text)[1])
    assert 0 < stopped < 2000 and ckpt.exists() and not result.exists(), text
    with np.load(ckpt) as data:
        assert int(data["step"]) == stopped
    # not submitted with requeue=True: requeue() declines and the job ends
    assert "not submitted with requeue=True" in text
