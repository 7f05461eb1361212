"""The runner's Slurm side without a cluster: status files, SIGUSR1 handling, requeue refusal.

The job scripts set ``SLURM_JOB_ID`` themselves (as Slurm would) before
``hpcpar.run``; it is not exported to mpiexec, which would then look for Slurm.
"""

import json
import socket

import pytest
from helpers import run_mpi, script

pytestmark = pytest.mark.timeout(120)


def status(tmp_path, job_id):
    return json.loads((tmp_path / ".hpcpar" / f"job-{job_id}.json").read_text())


def test_status_file_records_completion(tmp_path):
    path = script(tmp_path, """
        import os; os.environ["SLURM_JOB_ID"] = "901"
        import hpcpar
        hpcpar.run(lambda ctx: ctx.barrier())
    """)
    r = run_mpi(2, [path], timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = status(tmp_path, 901)
    assert rec["state"] == "COMPLETED" and rec["exit_code"] == 0 and rec["ranks"] == 2


def test_status_file_names_the_failing_rank(tmp_path):
    path = script(tmp_path, """
        import os; os.environ["SLURM_JOB_ID"] = "902"
        import hpcpar
        def main(ctx):
            if ctx.rank == ctx.size - 1:
                raise KeyError("no such field")
            ctx.barrier()
        hpcpar.run(main)
    """)
    r = run_mpi(3, [path], timeout=60, cwd=tmp_path)
    assert r.returncode != 0
    rec = status(tmp_path, 902)
    assert (rec["state"], rec["rank"], rec["exit_code"]) == ("FAILED", 2, 1)
    assert rec["message"] == "KeyError: 'no such field'"
    assert rec["host"] == socket.gethostname()  # hpcpar status prints it: (on host H)


def test_sigusr1_stops_the_loop_on_every_rank_and_requeue_is_refused_unasked(tmp_path):
    path = script(tmp_path, """
        import os, signal
        os.environ["SLURM_JOB_ID"] = "903"
        import hpcpar
        from hpcpar import slurm
        def main(ctx):
            for step in range(1000):
                if step == 3 and ctx.rank == ctx.size - 1:
                    os.kill(os.getpid(), signal.SIGUSR1)   # would kill a process without the handler
                if ctx.should_stop():
                    print(f"rank {ctx.rank} stopped at {step}", flush=True)
                    if ctx.is_root:
                        print("requeue:", slurm.requeue(), flush=True)
                    return
        hpcpar.run(main)
    """)
    r = run_mpi(2, [path], timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "rank 0 stopped at 3" in r.stdout and "rank 1 stopped at 3" in r.stdout
    assert "requeue: False" in r.stdout and "not submitted with requeue=True" in r.stderr
    assert "hpcpar: stop requested" in r.stderr
    assert status(tmp_path, 903)["state"] == "COMPLETED"
