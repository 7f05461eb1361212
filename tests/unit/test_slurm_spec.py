"""hpcpar.slurm without a cluster: validation, rendering, quoting, the checked-in scripts, status files."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid

import pytest
from helpers import JOBS, ROOT

from hpcpar import slurm
from hpcpar.slurm import JobSpec, client

HOSTILE = ["$(touch {c})", "`touch {c}`", "; touch {c};", "a'b\"c\nd\\e", "' ; touch {c}; '",
           "\"$(touch {c})\"", "x\ntouch {c}", "&& touch {c}", "| touch {c}", "$HOME", "*", "--help"]


def hostile(canary: str) -> list[str]:
    return [h.format(c=canary) for h in HOSTILE]


def test_render_has_the_options_and_a_quoted_command():
    spec = JobSpec("jobs/pi.py", args=["--samples", "1e6"], nodes=2, ntasks=4, cpus_per_task=2,
                   mem="4G", time="00:30:00", partition="debug", account="proj-1", qos="normal",
                   output="%x-%j.out", error="%x-%j.err", env={"OMP_NUM_THREADS": "2"},
                   signal=60, requeue=True, python="/opt/py/bin/python",
                   extra=["--constraint=gpu&fast", "--exclusive"])
    text = spec.render()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("#SBATCH ")]
    assert sbatch == ["--job-name=pi", "--nodes=2", "--ntasks=4", "--cpus-per-task=2", "--mem=4G",
                      "--time=00:30:00", "--partition=debug", "--account=proj-1", "--qos=normal",
                      "--output=%x-%j.out", "--error=%x-%j.err", "--signal=USR1@60", "--requeue",
                      "--open-mode=append", "--constraint=gpu&fast", "--exclusive"]
    # every #SBATCH line comes before the first command, as sbatch requires
    first_cmd = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    assert all(i < first_cmd for i, ln in enumerate(lines) if ln.startswith("#SBATCH"))
    assert "export OMP_NUM_THREADS=2" in lines
    assert "export SRUN_CPUS_PER_TASK=2" in lines and "export HPCPAR_REQUEUE=1" in lines
    assert shlex.split(lines[-1]) == ["srun", "--mpi=pmi2", "--kill-on-bad-exit=1", "--cpus-per-task=2",
                                      "/opt/py/bin/python", "-m", "hpcpar.core.script", "jobs/pi.py",
                                      "--samples", "1e6"]


def test_defaults_module_jobs_and_mpiexec():
    spec = JobSpec("pkg.sub.job", args=["-x"])
    assert spec.python == sys.executable
    assert "#SBATCH --job-name=pkg.sub.job" in spec.render()
    assert shlex.split(spec.render().splitlines()[-1])[-4:] == [sys.executable, "-m", "pkg.sub.job", "-x"]
    assert "--signal" not in spec.render() and "--requeue" not in spec.render()
    m = JobSpec("a.py", launcher="mpiexec", ntasks=3).render().splitlines()[-1]
    assert m.split()[1:3] == ["-n", '"${SLURM_NTASKS:-$SLURM_JOB_NUM_NODES}"']
    assert os.path.basename(m.split()[0]) == "mpiexec"


@pytest.mark.parametrize("field,value,words", [
    ("nodes", 0, "positive integer"), ("ntasks", -1, "positive integer"), ("ntasks", True, "positive"),
    ("cpus_per_task", "2", "positive integer"), ("mem", "4 G", "memory"), ("mem", "lots", "memory"),
    ("time", "1:2:3:4", "time limit"), ("time", 0, "time limit"), ("time", "5m", "time limit"),
    ("partition", "a b", "letters"), ("account", "x;y", "letters"), ("qos", "", "letters"),
    ("array", "0-2;ls", "indices"), ("array", "a-b", "indices"), ("output", "out %q", "file patterns"),
    ("output", "%y.out", "unknown file pattern"), ("error", "../$(id).err", "file patterns"),
    ("job_name", "my job", "job names"), ("job_name", "-x", "job names"), ("launcher", "mpirun", "one of"),
    ("mpi", "pmi2 --x", "plugin"), ("job", "not a module!", "module"), ("job", "", "file path"),
    ("args", "--n 5", "list of strings"), ("args", ["a\0b"], "NUL"), ("env", {"1X": "v"}, "variable names"),
    ("env", {"X": 1}, "strings"), ("env", [("X", "1")], "dict"), ("signal", 0, "positive"),
    ("requeue", "yes", "True or False"), ("python", "", "interpreter"),
    ("extra", "--exclusive", "list"), ("extra", ["-C gpu"], "long option"),
    ("extra", ["--ntasks=4"], "JobSpec field 'ntasks'"), ("extra", ["--wrap=id"], "cannot be used"),
    ("extra", ["--bogus-option"], "not an sbatch option"), ("extra", ["--comment=$(id)"], "long option"),
    ("extra", ["--comment=a b"], "long option"), ("extra", ["--comment=x\n#SBATCH --wrap=id"], "long option"),
])
def test_invalid_fields_raise_naming_the_field(field, value, words):
    base = {"job": "jobs/pi.py", "time": 10}
    with pytest.raises(ValueError) as err:
        JobSpec(**{**base, field: value})
    assert f"JobSpec.{field}=" in str(err.value) and words in str(err.value), str(err.value)


@pytest.mark.parametrize("kw,words", [
    ({"nodes": 2, "ntasks": 3, "ntasks_per_node": 2}, "nodes * ntasks_per_node"),
    ({"nodes": 3, "ntasks": 2}, "at least one task"),
    ({"signal": 60}, "needs a time limit"),
    ({"signal": 600, "time": 10}, "not shorter than the time limit"),
    ({"signal": 70000, "time": "30-0"}, "65535"),
])
def test_impossible_combinations_raise(kw, words):
    with pytest.raises(ValueError) as err:
        JobSpec("jobs/pi.py", **kw)
    assert words in str(err.value)


def test_validation_also_runs_at_render_time():
    spec = JobSpec("jobs/pi.py")
    spec.job_name = "$(id)"
    with pytest.raises(ValueError, match="JobSpec.job_name"):
        spec.render()


def test_unknown_fields_are_refused():
    with pytest.raises(TypeError, match="ntask"):
        JobSpec("jobs/pi.py", ntask=2)


@pytest.mark.parametrize("value,seconds", [
    (5, 300), ("5", 300), ("5:30", 330), ("1:02:03", 3723), ("2-3", 2 * 86400 + 3 * 3600),
    ("1-0:10", 86400 + 600), ("1-00:00:01", 86401)])
def test_time_forms(value, seconds):
    assert slurm.time_seconds(value) == seconds


@pytest.mark.parametrize("field", ["job_name", "partition", "account", "qos", "array", "output", "error",
                                   "mem", "time", pytest.param("mpi", id="srun-plugin")])
def test_every_hostile_value_is_rejected_by_restricted_fields(field):
    for value in hostile("/tmp/pwned-x")[:-3]:  # all but the harmless $HOME, * and --help
        with pytest.raises(ValueError, match=f"JobSpec.{field}="):
            JobSpec(**{"job": "jobs/pi.py", "time": 10, field: value})


def test_hostile_values_in_quoted_fields_are_never_executed(tmp_path):
    """Render with shell syntax in the job file name, arguments, variables and the interpreter
    path; run the script with bash (a stand-in srun that drops its options and runs the rest);
    the job sees every value exactly and no command ran."""
    canary = f"/tmp/pwned-{uuid.uuid4().hex[:12]}"
    evil = hostile(canary)
    work = tmp_path / "work"
    work.mkdir()
    job = work / "job $(touch pwned1) `touch pwned2`;'\"\nx.py"
    report = tmp_path / "argv.txt"
    job.write_text("import os, sys, json\n"
                   "seen = {'argv': sys.argv[1:], 'env': os.environ['HOSTILE']}\n"
                   f"json.dump(seen, open({str(report)!r}, 'w'))\n")
    python = tmp_path / "py $(touch pwned3);'\".sh"
    # The job file runs under the hpcpar runner (python -m hpcpar.core.script JOB).
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    (bindir / "srun").chmod(0o755)
    spec = JobSpec(job.name, args=evil, env={"HOSTILE": "\n".join(evil)}, python=str(python))
    script = tmp_path / "job.sbatch"
    script.write_text(spec.render())
    subprocess.run(["bash", "-n", str(script)], check=True)
    envs = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    envs.pop("SLURM_JOB_ID", None)
    proc = subprocess.run(["bash", str(script)], cwd=work, env=envs, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json
    seen = json.loads(report.read_text())
    assert seen == {"argv": evil, "env": "\n".join(evil)}
    assert not os.path.exists(canary)
    assert sorted(os.listdir(work)) == [job.name]   # no pwned1/2/3, nothing else


def test_checked_in_scripts_are_in_sync_with_the_jobs():
    scripts = slurm.render_jobs(JOBS)
    assert set(scripts) == {p.stem + ".sbatch" for p in JOBS.glob("*.py") if not p.name.startswith("_")}
    for name, text in scripts.items():
        path = ROOT / "slurm" / name
        assert path.exists() and path.read_text() == text, \
            f"{path} is out of date: run `hpcpar slurm render-all`"
    proc = subprocess.run([sys.executable, "-m", "hpcpar", "slurm", "render-all", "--check",
                           "--jobs", str(JOBS), "--out", str(ROOT / "slurm")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_job_defaults_are_read_without_importing(tmp_path):
    job = tmp_path / "heat.py"
    job.write_text('raise SystemExit("never imported")\n'
                   'SLURM = {"ntasks": 4, "time": "0:20:00", "signal": 60, "requeue": True,'
                   ' "args": ["--n", "512"]}\n')
    (tmp_path / "plain.py").write_text("print('x')\n")
    assert slurm.job_defaults(job)["ntasks"] == 4
    scripts = slurm.render_jobs(tmp_path)
    heat = scripts["heat.sbatch"]
    assert "#SBATCH --ntasks=4" in heat and "#SBATCH --signal=USR1@60" in heat and "--requeue" in heat
    assert heat.splitlines()[-1].endswith(f"{tmp_path.name}/heat.py --n 512")
    assert "#SBATCH --ntasks=2" in scripts["plain.sbatch"]


def test_cli_render_matches_the_api_and_reports_errors():
    cmd = [sys.executable, "-m", "hpcpar", "slurm", "render", "jobs/pi.py", "-N", "1", "-n", "2", "-t", "5",
           "--signal", "60", "--requeue", "--env", "A=b c", "--python", "python", "--", "--samples", "1e8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == JobSpec("jobs/pi.py", nodes=1, ntasks=2, time=5, signal=60, requeue=True,
                                  env={"A": "b c"}, python="python", args=["--samples", "1e8"]).render()
    bad = subprocess.run([*cmd[:6], "-n", "3", "-N", "2", "--ntasks-per-node", "2"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "nodes * ntasks_per_node" in bad.stderr


def test_status_file_round_trip_and_merge(tmp_path):
    path = slurm.status_path("77", tmp_path)
    assert path == tmp_path / ".hpcpar" / "job-77.json"
    slurm.write_status(path, state="FAILED", exit_code=1, rank=2, host="node07", message="ValueError: x")
    rec = slurm.read_status(path)
    assert rec["state"] == "FAILED" and rec["rank"] == 2
    assert not list(path.parent.glob("*.tmp"))
    # Slurm said COMPLETED (an MPI job whose launcher exited 0): the file's failure wins.
    st = client._merge_file(slurm.JobStatus("77", "COMPLETED", exit_code=0), str(tmp_path))
    assert (st.state, st.exit_code, st.rank, st.host, st.message) == ("FAILED", 1, 2, "node07", "ValueError: x")
    # Slurm forgot the job: the file alone gives the state.
    st = client._merge_file(slurm.JobStatus("77", "UNKNOWN"), str(tmp_path))
    assert st.state == "FAILED" and st.source == "status-file"
    assert slurm.read_status(tmp_path / "missing.json") is None


def test_scontrol_records_are_parsed():
    line = ("JobId=42 ArrayJobId=40 ArrayTaskId=2 JobName=pi UserId=root(0) JobState=FAILED "
            "Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=1 ExitCode=137:0 "
            "WorkDir=/tmp/w StdOut=/tmp/w/slurm-42.out")
    st = client._from_record("42", client._parse_record(line), "scontrol")
    assert (st.state, st.exit_code, st.signal, st.reason, st.restarts, st.workdir, st.stdout) == \
        ("FAILED", 137, 0, "NonZeroExitCode", 1, "/tmp/w", "/tmp/w/slurm-42.out")
    running = client._from_record("42", client._parse_record("JobId=42 JobState=RUNNING ExitCode=0:0"), "x")
    assert running.exit_code is None and not running.done


def test_requeue_outside_slurm_does_nothing(monkeypatch, capsys):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm.requeue() is False
    assert "not inside a Slurm job" in capsys.readouterr().err


def test_bad_job_ids_are_refused():
    for bad in ("12;id", "$(id)", "", "12 13"):
        with pytest.raises(ValueError, match="job id"):
            slurm.status(bad)
        with pytest.raises(ValueError, match="job id"):
            slurm.cancel(bad)


def test_requeue_marks_the_status_file_and_runs_scontrol_when_the_process_exits(tmp_path):
    """slurm.requeue() in a job submitted with requeue=True: the status file says REQUEUED at
    once, and `scontrol requeue ID` runs at exit (slurm.job calls the client only then)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "scontrol.log"
    (bindir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (bindir / "scontrol").chmod(0o755)
    code = ("import sys\n"
            "from hpcpar.slurm import job\n"
            "job.job_started(0, 1)\n"
            "from hpcpar import slurm\n"
            "assert slurm.requeue() is True and slurm.requeue() is True\n"
            "job.job_finished(0, 1)  # a COMPLETED record of a requeued run is left out\n"
            "print(slurm.read_status(slurm.status_path(4711))['state'])\n")
    envs = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4711",
            "HPCPAR_REQUEUE": "1", "SLURM_RESTART_COUNT": "2"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=envs, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "REQUEUED"
    assert log.read_text() == "requeue 4711\n"      # once, at exit
    assert json.loads((tmp_path / ".hpcpar" / "job-4711.json").read_text())["restarts"] == 2
