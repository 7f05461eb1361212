"""The hang watchdog at 8 ranks: its messages stay O(P) and its reports still name every rank.

Plain pytest that starts 8-rank jobs (oversubscribed on a small machine). Each rank
of a job writes how many messages its watchdog has sent (``watchdog.messages()``)
to a file whenever the number changes, so the count survives ``MPI_Abort``; jobs
that abort give the ranks a second (``HPCPAR_ABORT_GRACE``) to write it.
The all-to-all these messages replaced sent P(P-1) = 56 per finished notice and
about 2P(P-1) = 112 per dump request at 8 ranks.
"""

import re
import textwrap

import pytest
from helpers import run_ended

pytestmark = pytest.mark.timeout(120)

P = 8

PRELUDE = """
    import os, sys, threading, time
    import numpy as np, hpcpar
    from mpi4py import MPI
    from hpcpar.core import watchdog
    OUT = sys.argv[1]
    def _count():
        last = None
        while True:
            n = watchdog.messages()
            if n != last:
                with open(f"{OUT}/{MPI.COMM_WORLD.rank}.tmp", "w") as fh:
                    fh.write(str(n))
                os.replace(f"{OUT}/{MPI.COMM_WORLD.rank}.tmp", f"{OUT}/{MPI.COMM_WORLD.rank}.n")
                last = n
            time.sleep(0.01)
    threading.Thread(target=_count, daemon=True).start()
"""


def run_job(tmp_path, body: str, limit: float, env: dict | None = None):
    """Run ``body`` on P ranks; return (completed process, messages sent by each rank)."""
    out = tmp_path / "counts"
    out.mkdir()
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    r = run_ended(P, [str(path), str(out)], limit, env={"HPCPAR_ABORT_GRACE": "1", **(env or {})}, grace=60)
    sent = [int((out / f"{rank}.n").read_text()) if (out / f"{rank}.n").exists() else 0
            for rank in range(P)]
    print(f"watchdog messages per rank: {sent}, total {sum(sent)}")
    return r, sent


def test_every_rank_waiting_at_the_end_costs_o_p_messages(tmp_path):
    # ranks 0..6 wait in the final check for the late rank 7, twice: each waiting rank
    # tells the coordinator (6 messages), the coordinator pushes once down the tree (7);
    # the second run's check must not mistake the first run's notices for an early exit
    r, sent = run_job(tmp_path, """
        def main(ctx):
            ctx.allreduce(np.ones(1))
            if ctx.rank == ctx.size - 1:
                time.sleep(2.0)
        for _ in range(2):
            hpcpar.run(main)
        print("done", flush=True)
    """, limit=40)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("done") == P
    assert sum(sent) <= 2 * 2 * (P - 1), sent  # per run: P-1 notices + P-1 for one push


@pytest.mark.parametrize("early", [0, 3])  # the coordinator itself, and another rank
def test_an_early_finish_ends_the_job_with_o_p_messages(tmp_path, early):
    r, sent = run_job(tmp_path, f"""
        def main(ctx):
            other = hpcpar.Context()    # its calls cannot meet main's final check
            ctx.allreduce(np.ones(1))
            if ctx.rank == {early}:
                return
            other.allreduce(np.zeros(3))
        hpcpar.run(main)
    """, limit=25)
    assert r.returncode != 0
    assert re.search(rf"rank \d of {P} is blocked in allreduce .* but rank {early} already finished",
                     r.stderr), r.stderr
    assert sum(sent) <= 1 + (P - 1), sent  # one notice, one push


def test_a_rank_blocked_in_a_sub_communicator_learns_of_a_late_finish(tmp_path):
    # the coordinator's one push tells of ranks 0-3 and 7, which the group {4, 5, 6}
    # does not include; ranks 4 and 5 ask the coordinator about their group and hear
    # from it once rank 6 finishes without joining their allreduce
    r, sent = run_job(tmp_path, """
        def main(ctx):
            group = [4, 5, 6]
            sub = hpcpar.Context(ctx.comm.Split(0 if ctx.rank in group else 1, ctx.rank))
            ctx.allreduce(np.ones(1))
            if ctx.rank == 6:
                time.sleep(2.0)
                return
            if ctx.rank in group:
                sub.allreduce(np.zeros(3))
        hpcpar.run(main)
    """, limit=30)
    assert r.returncode != 0
    assert re.search(rf"rank [45] of {P} is blocked in allreduce .* but rank 6 already finished",
                     r.stderr), r.stderr
    # P-1 notices, P-1 for the push, 2 questions and 2 answers
    assert sum(sent) <= 2 * (P - 1) + 4, sent


STUCK = """
    import ctypes
    def main(ctx):
        ctx.allreduce(np.ones(1))
        if ctx.rank == {stuck}:
            {how}
        ctx.gather(np.zeros(3))
    hpcpar.run(main, timeout=1.5)
"""


def test_the_timeout_report_names_every_rank_with_o_p_messages(tmp_path):
    r, sent = run_job(tmp_path, STUCK.format(stuck=3, how="time.sleep(60)"), limit=1.5 + 15)
    err = r.stderr
    assert r.returncode == 124, err
    assert re.search(rf"hpcpar watchdog: rank \d of {P} blocked \d+\.\d s in gather", err), err
    assert re.search(r"ranks 0, 1, 2, 4, 5, 6, 7: waiting in gather \(on host [^)]+\); "
                     r"rank 3: not in an hpcpar call", err), err
    for rank in range(P):  # every rank dumped its stacks, prefixed
        assert re.search(rf"\[rank {rank}\] +File \".*job.py\", line \d+ in main", err), err
    # requests to the coordinator, one round down the tree, one report per rank; the
    # backup round is allowed for when the machine is too loaded for a phase
    assert sum(sent) <= 3 * (P - 1) + 2 * (P - 1), sent


@pytest.mark.parametrize("stuck", [0, 1])  # the coordinator; a rank with children in the tree
def test_a_rank_holding_the_gil_does_not_stop_the_report(tmp_path, stuck):
    # ctypes.PyDLL keeps the GIL through the C call: that rank's watchdog cannot run
    how = "ctypes.PyDLL(None).sleep(60)"
    r, sent = run_job(tmp_path, STUCK.format(stuck=stuck, how=how), limit=1.5 + 20)
    err = r.stderr
    assert r.returncode == 124, err
    others = ", ".join(str(rank) for rank in range(P) if rank != stuck)
    assert f"ranks {others}: waiting in gather" in err, err
    assert f"rank {stuck}: no answer (exited, busy in C code holding the GIL" in err, err
    assert sum(sent) <= 8 * (P - 1), sent
