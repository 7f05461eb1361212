"""Jobs across real network hosts: Linux network namespaces on a bridge (``make test-multihost``).

``tests/env/multihost.sh 3 ...`` builds hosts h1, h2, h3 (each its own address,
hostname, /dev/shm and /etc/hosts) and an ``ssh`` that enters them; every job here
is started on h1 with ``hpcpar run --hosts ... --launcher-arg=-launcher-exec ...``,
so MPICH's launcher reaches the other hosts through that ``ssh``. MPICH's transport
is forced to TCP (``UCX_TLS=tcp,self``: otherwise UCX moves data between the
namespaces through shared-memory transports of the one kernel), and every test
asserts that its bytes crossed the hosts' veths. Without those hosts (not root,
or not under ``make test-multihost``) every test is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import JOBS, ROOT, wait_for_file

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(180)]

SSH = os.environ.get("HPCPAR_MH_SSH", "")
HOSTS = [h for h in os.environ.get("HPCPAR_MH_HOSTS", "").split(",") if h]
VETHS = os.environ.get("HPCPAR_MH_VETHS", "").split()
NETNS = dict(kv.split("=", 1) for kv in os.environ.get("HPCPAR_MH_NETNS", "").split())
ANCHORS = {h: int(p) for h, p in (kv.split("=", 1) for kv in os.environ.get("HPCPAR_MH_ANCHORS", "").split())}
PYTHON = sys.executable
HPCPAR = str(Path(PYTHON).with_name("hpcpar"))
#: TCP between hosts, on both of MPICH's netmods (UCX is the wheel's default).
TCP = {"UCX_TLS": "tcp,self", "FI_PROVIDER": "tcp"}
#: Jobs on the hosts' Slurm: UCX on the hosts' one device, a shorter address for PMI-2 (PMI2_WIREUP).
ONE_DEVICE = {"UCX_NET_DEVICES": "eth0"}
#: A launch that runs longer is killed: a hang is a failure.
LIMIT = 90


@pytest.fixture(scope="module", autouse=True)
def hosts():
    if not (SSH and len(HOSTS) >= 3 and len(VETHS) == len(HOSTS)):
        if os.environ.get("HPCPAR_TEST_MULTIHOST") == "1":
            pytest.fail("HPCPAR_TEST_MULTIHOST=1 but no namespace hosts: run under tests/env/multihost.sh 3")
        pytest.skip("no namespace hosts: run `make test-multihost` (as root)")
    yield HOSTS


@pytest.fixture(autouse=True)
def no_leftovers():
    """After each test: nothing of it runs on any host (the anchors and Slurm's daemons aside)."""
    yield
    keep = keep_pids()
    for ns in NETNS.values():
        for pid in netns_pids(ns):
            if pid not in keep and not is_slurmstepd(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    # What killed ranks left in the hosts' own /dev/shm (a tmpfs of multihost.sh per host).
    for host in HOSTS:
        subprocess.run([SSH, host, "find /dev/shm -mindepth 1 -delete"], capture_output=True, timeout=30)


def keep_pids() -> set[int]:
    """What is not a job's: the hosts' anchors and the slurmd daemons of multihost-slurm.sh."""
    return set(ANCHORS.values()) | {int(p) for p in os.environ.get("HPCPAR_MH_KEEP_PIDS", "").split()}


def is_slurmstepd(pid: int) -> bool:
    """Slurm's step daemon, which reports a finished job's end to slurmctld: killed, it would
    leave the job completing on its node; its job's processes are ended all the same."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "slurmstepd"
    except OSError:
        return False


def netns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout
    return [int(p) for p in out.split()]


def veth_bytes() -> dict[str, int]:
    """Bytes sent plus received on each host's veth (root side), by host."""
    out = {}
    for host, veth in zip(HOSTS, VETHS):
        stats = Path("/sys/class/net") / veth / "statistics"
        out[host] = int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())
    return out


def launcher_args() -> list[str]:
    return [f"--launcher-arg={a}" for a in ("-launcher", "ssh", "-launcher-exec", SSH)]


def on_h1(argv: list[str], timeout: float = LIMIT, env: dict[str, str] | None = None,
          cwd: str | None = None) -> tuple[int | None, str]:
    """Run ``argv`` on h1 (through the ssh stand-in) with TCP forced; (status or None on timeout, output)."""
    cmd = " ".join(["cd", shlex.quote(cwd or str(ROOT)), "&&", "exec", "env",
                    *[f"{k}={shlex.quote(v)}" for k, v in {**TCP, **(env or {})}.items()], shlex.join(argv)])
    proc = subprocess.Popen([SSH, HOSTS[0], cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def hpcpar_run(hosts: str, n: int, script: str, *args: str, timeout: float = LIMIT,
               env: dict[str, str] | None = None, cwd: str | None = None) -> tuple[int | None, str]:
    return on_h1([HPCPAR, "run", "-n", str(n), "--hosts", hosts, *launcher_args(), script, *args],
                 timeout=timeout, env=env, cwd=cwd)


def crossed(before: dict[str, int], hosts: list[str], at_least: int) -> None:
    """Every host of ``hosts`` moved at least ``at_least`` bytes over its veth since ``before``."""
    after = veth_bytes()
    moved = {h: after[h] - before[h] for h in hosts}
    assert all(v >= at_least for v in moved.values()), f"bytes over the veths {moved}, wanted >= {at_least} each"


WHERE = """
import json, os, socket, sys
import hpcpar
from hpcpar.tasks.local import local_cpus
def main(ctx):
    me = {"host": socket.gethostname(), "shm": sorted(os.listdir("/dev/shm")) != [], "cpus": local_cpus(ctx)}
    every = ctx.comm.gather(me, root=0)
    if ctx.is_root:
        print("WHERE " + json.dumps(every))
hpcpar.run(main)
"""


def test_ranks_land_on_the_named_hosts_with_slots(tmp_path):
    script = tmp_path / "where.py"
    script.write_text(WHERE)
    before = veth_bytes()
    code, out = hpcpar_run(f"{HOSTS[0]}:2,{HOSTS[1]},{HOSTS[2]}", 4, str(script))
    assert code == 0, out
    every = json.loads(out.split("WHERE ", 1)[1].splitlines()[0])
    # Hydra fills h1's 2 slots, then h2, h3 (1 slot each).
    assert [r["host"] for r in every] == [HOSTS[0], HOSTS[0], HOSTS[1], HOSTS[2]], every
    # local_cpus splits the CPUs among the ranks of one host only.
    ncpu = len(os.sched_getaffinity(0))
    assert [r["cpus"] for r in every] == [max(1, ncpu // 2)] * 2 + [ncpu] * 2, every
    crossed(before, HOSTS, 1000)


def test_info_names_each_ranks_host():
    # `hpcpar info` is itself an MPI program: launched directly with the same host options.
    from hpcpar.launch.command import launch_argv, parse_hosts

    argv = launch_argv(3, [HPCPAR, "info"], hosts=parse_hosts(",".join(HOSTS)),
                       launcher_args=["-launcher", "ssh", "-launcher-exec", SSH])
    code, out = on_h1(argv)
    assert code == 0, out
    for r, h in enumerate(HOSTS):
        assert re.search(rf"rank {r}\s+host {h} ", out), out


def test_pi_on_three_hosts_from_a_hostfile_equals_one_rank(tmp_path):
    pi = str(JOBS / "pi.py")
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"# MPICH and Open MPI spellings\n{HOSTS[0]}\n{HOSTS[1]}:1\n{HOSTS[2]} slots=1\n")
    one = subprocess.run([HPCPAR, "run", "-n", "1", pi, "--samples", "4e6"], capture_output=True, text=True,
                         timeout=LIMIT, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    want = re.search(r"pi ~= [0-9.]+", one.stdout)
    before = veth_bytes()
    code, out = on_h1([HPCPAR, "run", "-n", "3", "--hostfile", str(hostfile), *launcher_args(), pi,
                       "--samples", "4e6"])
    assert code == 0, out
    crossed(before, HOSTS, 1000)
    assert want is not None and want.group(0) in out, (one.stdout, out)


def test_heat_checkpoint_across_hosts_is_bit_identical_to_one_rank(tmp_path):
    heat = str(JOBS / "heat.py")
    common = ["--n", "96", "--steps", "200"]
    one = subprocess.run([HPCPAR, "run", "-n", "1", heat, *common, "--save-npy", str(tmp_path / "one.npy")],
                         capture_output=True, text=True, timeout=LIMIT, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    before = veth_bytes()
    ckpt = str(tmp_path / "heat.ckpt.h5")
    # First part on 3 hosts (checkpoint at step 120), then resumed on 2 hosts with 3 ranks.
    code, out = hpcpar_run(",".join(HOSTS), 3, heat, "--n", "96", "--steps", "120", "--checkpoint", ckpt,
                           "--every", "40", cwd=str(tmp_path))
    assert code == 0, out
    code, out = hpcpar_run(f"{HOSTS[0]},{HOSTS[1]}:2", 3, heat, *common, "--checkpoint", ckpt, "--every", "40",
                           "--save-npy", str(tmp_path / "multi.npy"), cwd=str(tmp_path))
    assert code == 0, out
    crossed(before, HOSTS[:2], 20_000)
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "multi.npy")
    assert a.tobytes() == b.tobytes(), "the field after restart differs from one rank's"


def test_fibonacci_farm_on_three_hosts(tmp_path):
    before = veth_bytes()
    code, out = hpcpar_run(",".join(HOSTS), 3, str(JOBS / "fibonacci.py"), "--count", "400", "--max-n", "4000",
                           "--verify", cwd=str(tmp_path))
    assert code == 0, out
    assert "every result verified by fast doubling" in out and "on 3 ranks" in out, out
    crossed(before, HOSTS, 1000)


def test_sample_sort_on_three_hosts():
    before = veth_bytes()
    code, out = hpcpar_run(f"{HOSTS[0]}:2,{HOSTS[1]}:2,{HOSTS[2]}:2", 6, str(JOBS / "sort.py"),
                           "--n", "200000", "--check")
    assert code == 0, out
    assert "on 6 ranks" in out and "verified against np.sort" in out, out
    crossed(before, HOSTS, 100_000)


def test_crawler_site_served_on_h1_is_reached_from_every_host():
    before = veth_bytes()
    code, out = hpcpar_run(",".join(HOSTS), 3, str(JOBS / "crawler.py"), "--serve-demo", "--bind", HOSTS[0],
                           "--pages", "120", "--threads", "4")
    assert code == 0, out
    assert "the link graph matches the generated site" in out, out
    crossed(before, HOSTS, 1000)


def test_scatter_gather_256mb_hpcpar_vs_mpi4py(tmp_path):
    from hpcpar.launch.command import launch_argv, parse_hosts

    argv = launch_argv(3, [HPCPAR, "bench", "collectives", "--min-size", "256M", "--max-size", "256M",
                           "--ops", "scatter,gather", "--repeats", "2", "--min-time", "0"],
                       hosts=parse_hosts(",".join(HOSTS)),
                       launcher_args=["-launcher", "ssh", "-launcher-exec", SSH])
    before = veth_bytes()
    t0 = time.monotonic()
    code, out = on_h1(argv, timeout=150)
    assert code == 0, out
    # Root keeps its third: two thirds of 256 MB leave h1 for the scatter and come back for the gather.
    crossed(before, HOSTS[1:], 2 * 85_000_000)
    print(out)
    (Path(os.environ.get("HPCPAR_MH_REPORT", tmp_path / "bench.txt"))).write_text(
        f"{time.monotonic() - t0:.1f} s\n{out}")


def test_core_context_tests_one_rank_per_host():
    from hpcpar.launch.command import launch_argv, parse_hosts

    argv = launch_argv(3, [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--with-mpi",
                           "--mpi-timeout=60", "-m", "mpi", "tests/mpi/test_context.py"],
                       hosts=parse_hosts(",".join(HOSTS)),
                       launcher_args=["-launcher", "ssh", "-launcher-exec", SSH])
    before = veth_bytes()
    code, out = on_h1(argv, timeout=170)
    assert code == 0, out[-4000:]
    assert re.search(r"\d+ passed", out) and " failed" not in out, out[-4000:]
    crossed(before, HOSTS, 10_000)


LOOP = """
import sys, time
import hpcpar
def main(ctx):
    t0 = time.time()
    while time.time() - t0 < 60:
        ctx.comm.allreduce(1)
        if sys.argv[1] == "raise" and ctx.rank == ctx.size - 1 and time.time() - t0 > 2:
            raise RuntimeError("bad input on purpose")
        time.sleep(0.02)
hpcpar.run(main)
"""


def test_every_process_of_one_host_killed_ends_the_job_naming_rank_and_host(tmp_path):
    last = HOSTS[-1]
    proc = _heat_until_checkpoint(tmp_path)
    try:
        killed = time.monotonic()
        kill_host(last)  # the job's proxy, guardian, rank and witness there
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - killed
    finally:
        end_job(proc)
    assert proc.returncode != 0, out
    assert took < 10, f"the job ended {took:.1f} s after the host's processes were killed"
    assert re.search(rf"hpcpar: rank 2 \(pid \d+\) of 3 on host {last} ended without a word", out), out
    assert f"on host {HOSTS[0]}" not in out and f"on host {HOSTS[1]}" not in out, out
    assert not list((tmp_path / ".hpcpar").glob("run-*")), "the run ledger was left behind"
    _restart_is_bit_identical(tmp_path)


def test_rank_raising_on_the_far_host_names_rank_and_host(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    t0 = time.monotonic()
    code, out = hpcpar_run(",".join(HOSTS), 3, str(script), "raise", cwd=str(tmp_path))
    took = time.monotonic() - t0
    assert code == 1, out
    assert "rank 2 of 3 failed: RuntimeError: bad input on purpose" in out, out
    assert re.search(rf"\[rank 2\] on host {HOSTS[-1]}", out), out
    assert "ended without a word" not in out, out  # every other rank was ended by the launcher
    assert took < 20, f"the failing job took {took:.1f} s"


def test_slurm_job_with_one_slurmd_per_host(tmp_path):
    """srun across the hosts of a Slurm cluster (tests/env/multihost-slurm.sh): PMI2 wire-up, TCP."""
    _slurm_or_skip()
    script = tmp_path / "where.py"
    script.write_text(WHERE)
    before = veth_bytes()
    def srun(limit: float) -> tuple[int | None, str]:
        proc = subprocess.Popen(["srun", "-N", str(len(HOSTS)), "-n", str(len(HOSTS)), "--mpi=pmi2",
                                 # one device: a shorter UCX address for Slurm's PMI-2 server
                                 "--export=ALL,UCX_TLS=tcp,self,UCX_NET_DEVICES=eth0", PYTHON, str(script)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            out, err = proc.communicate(timeout=limit)
            return proc.returncode, out + err
        except subprocess.TimeoutExpired:
            proc.terminate()    # srun passes SIGTERM on to the step's tasks and ends the step
            try:
                out, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            return None, out + err

    code, out = wired_up(srun)
    if code != 0 and PMI2_WIREUP in out and "WHERE " not in out:
        # every attempt failed in MPI_Init, inside Slurm's PMI-2 server, before the program ran
        pytest.xfail(f"MPI_Init failed in Slurm's PMI-2 wire-up in each of 3 attempts "
                     f"({PMI2_WIREUP!r}: pmodels/mpich#6924); the last output:\n{out[-2000:]}")
    assert code == 0, out
    every = json.loads(out.split("WHERE ", 1)[1].splitlines()[0])
    assert [r["host"] for r in every] == HOSTS, every
    crossed(before, HOSTS, 1000)



#: heat across the three hosts, one block row each: every step exchanges halos between hosts.
HEAT = ["--n", "96", "--dims", "3x1", "--every", "500"]


def _heat_until_checkpoint(tmp_path: Path, *launch: str) -> subprocess.Popen:
    """heat on h1, h2, h3 (``hpcpar run LAUNCH...``) for far more steps than it gets to run,
    returned once its first checkpoint is written."""
    ckpt = tmp_path / "heat.ckpt.h5"
    proc = subprocess.Popen([SSH, HOSTS[0], " ".join([
        "cd", shlex.quote(str(tmp_path)), "&&", "exec", "env", *[f"{k}={v}" for k, v in TCP.items()],
        shlex.join([HPCPAR, "run", *launch, "-n", "3", "--hosts", ",".join(HOSTS), *launcher_args(),
                    str(JOBS / "heat.py"), *HEAT, "--checkpoint", str(ckpt), "--steps", "100000000"])])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not ckpt.exists():
        end_job(proc)
        pytest.fail(f"heat wrote no checkpoint:\n{proc.communicate()[0]}")
    return proc


def kill_host(name: str) -> None:
    """Every process of the job on host ``name`` (not the host's own daemons) at once, as when
    the host dies: stopped first, so none sees another die, then killed."""
    doomed = [pid for pid in netns_pids(NETNS[name]) if pid not in keep_pids()]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in doomed:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def end_job(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _restart_is_bit_identical(tmp_path: Path) -> None:
    """Restart heat across the hosts from the checkpoint the failed run left, to 300 steps past
    it, and compare the field with one rank's uninterrupted run to the same step."""
    import h5py

    heat, ckpt = str(JOBS / "heat.py"), tmp_path / "heat.ckpt.h5"
    with h5py.File(ckpt, "r") as f:
        k0 = int(f.attrs["step"])
    steps = ["--steps", str(k0 + 300)]
    one = subprocess.run([HPCPAR, "run", "-n", "1", heat, "--n", "96", *steps, "--save-npy",
                          str(tmp_path / "one.npy")], capture_output=True, text=True, timeout=LIMIT, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    before = veth_bytes()
    code, out = hpcpar_run(",".join(HOSTS), 3, heat, *HEAT, "--checkpoint", str(ckpt), *steps,
                           "--save-npy", str(tmp_path / "multi.npy"), cwd=str(tmp_path))
    assert code == 0, out
    assert f"heat: resuming from step {k0} of" in out, out
    crossed(before, HOSTS, 10_000)
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "multi.npy")
    assert a.tobytes() == b.tobytes(), f"the field after the restart from step {k0} differs from one rank's"


def _address(host: str) -> str:
    out = subprocess.run(["ip", "-n", NETNS[host], "-4", "-o", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return out.split(" inet ", 1)[1].split("/", 1)[0]


REACH = """
import errno, socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while True:
    s = socket.socket()
    s.settimeout(1.0)
    code = s.connect_ex((sys.argv[1], 9))  # refused (or open): the host answered
    s.close()
    if code in (0, errno.ECONNREFUSED) or time.monotonic() > deadline:
        sys.exit(0 if code in (0, errno.ECONNREFUSED) else 1)
    time.sleep(0.2)
"""


def _reachable_again(host: str, within: float = 20.0) -> None:
    """After a link comes back: forget the neighbours that failed while it was down (in this
    test's hosts only), then wait until ``host`` reaches every other host over TCP."""
    for h in HOSTS:
        subprocess.run(["ip", "-n", NETNS[h], "neigh", "flush", "all"], timeout=10)
    for other in HOSTS:
        if other != host:
            r = subprocess.run(["ip", "netns", "exec", NETNS[host], sys.executable, "-c", REACH,
                                _address(other), str(within)], timeout=within + 10)
            assert r.returncode == 0, f"{host} does not reach {other} after its link came back"


def test_link_cut_during_halo_exchange_ends_the_job_naming_ranks_and_hosts(tmp_path):
    """h3's link goes down mid-run: its ranks and the others block in the halo exchange (TCP
    sees no reset, only silence), the watchdog of ``--timeout 10`` ends the job; the restart
    from the checkpoint, with the link back, ends bit-identical to one rank's run."""
    last, veth = HOSTS[-1], VETHS[-1]
    proc = _heat_until_checkpoint(tmp_path, "--timeout", "10")
    cut = False
    try:
        subprocess.run(["ip", "link", "set", veth, "down"], check=True, timeout=10)
        cut, t0 = True, time.monotonic()
        out, _ = proc.communicate(timeout=40)
        took = time.monotonic() - t0
        # the cut host's proxy ends its ranks as the launcher goes; allow it a moment to finish
        for _ in range(50):
            left = {h: [p for p in netns_pids(NETNS[h]) if p not in keep_pids() and not is_slurmstepd(p)]
                    for h in HOSTS}
            if not any(left.values()):
                break
            time.sleep(0.1)
    finally:
        end_job(proc)
        if cut:
            subprocess.run(["ip", "link", "set", veth, "up"], check=True, timeout=10)
            _reachable_again(last)
    assert proc.returncode == 124, out
    assert took < 20, f"the job ended {took:.1f} s after the link of {last} was cut:\n{out}"
    assert not any(left.values()), f"processes of the job left on the hosts: {left}\n{out}"
    report = [line for line in out.splitlines() if line.startswith("hpcpar watchdog: rank") and "no answer" in line]
    assert report, out
    print(report[0])
    # The ranks still connected name themselves and their hosts; rank 2, cut off, is named with
    # its host from the run ledger, and the hint points at the network.
    assert re.match(r"hpcpar watchdog: rank [01] of 3 blocked 1\d\.\d s in ", report[0]), report[0]
    assert HOSTS[0] in report[0] and HOSTS[1] in report[0], report[0]
    assert re.search(rf"rank 2: no answer \([^)]*unreachable\) \(on host {last}\)", report[0]), report[0]
    assert f"cut off from the network: check that host {last} can be reached (ssh {last} true)" in report[0], \
        report[0]
    _restart_is_bit_identical(tmp_path)


# ---- hpcpar submit / status on the Slurm cluster of the hosts ------------------------------
def _slurm_or_skip() -> None:
    state = os.environ.get("HPCPAR_MH_SLURM", "")
    if not state:
        pytest.skip("no Slurm across the hosts: run under tests/env/multihost-slurm.sh (make test-multihost)")
    if state != "ok":
        if "not installed" in state:
            pytest.skip(f"Slurm across the hosts: {state}")
        pytest.fail(f"Slurm across the hosts did not come up: {state}")


def _ctld_log(lines: int = 40) -> str:
    """The end of the host cluster's slurmctld log and the hosts' /dev/shm (shown when a Slurm
    test fails)."""
    path = Path(os.environ.get("SLURM_CONF", "/nonexistent")).parent / "log" / "slurmctld.log"
    shm = "".join(subprocess.run([SSH, h, "df -h /dev/shm; ls /dev/shm | head"], capture_output=True, text=True,
                                 timeout=30).stdout for h in HOSTS)
    try:
        return "\n--- /dev/shm ---\n" + shm + "\n--- slurmctld.log ---\n" + "\n".join(
            path.read_text().splitlines()[-lines:])
    except OSError:
        return shm


#: Two nodes, two ranks on each (block distribution: ranks 0, 1 on the first node, 2, 3 on the second).
TWO_BY_TWO = ["-N", "2", "--ntasks-per-node", "2", "--time", "5"]


#: MPICH's PMI-2 client and Slurm's PMI-2 server (22.05) sometimes disagree on a long value
#: split in segments (MPICH's UCX address; pmodels/mpich#6924): slurmstepd logs this and
#: MPI_Init fails on every rank before the program runs. Nothing of hpcpar runs by then.
PMI2_WIREUP = "mpi/pmi2: value not properly terminated in client request"


def wired_up(run: Callable[[float], tuple[int | None, str]], attempts: int = 3,
             limit: float = 40) -> tuple[int | None, str]:
    """``run(limit)`` (its status, None where it ran past ``limit`` and was stopped, and its
    output), started again while MPI_Init failed in PMI-2's wire-up, ``attempts`` times at
    most. A failed wire-up ends MPI_Init with an error, or leaves the ranks waiting in it."""
    for attempt in range(1, attempts + 1):
        code, out = run(limit)
        if code == 0 or PMI2_WIREUP not in out or attempt == attempts:
            return code, out
        how = "hung" if code is None else f"failed with status {code}"
        print(f"attempt {attempt}: MPI_Init {how} in Slurm's PMI-2 wire-up ({PMI2_WIREUP!r}); "
              "starting it once more")
    raise AssertionError("unreachable")


def submit(tmp_path: Path, job: str, *options: str, timeout: float = 120) -> tuple[str, int, str]:
    """``hpcpar submit JOB OPTIONS... --wait`` from the login node (the root namespace), the job's
    MPI over TCP (sbatch passes the environment on); (job id, status, its output file's text).
    A job whose MPI_Init failed in PMI-2's wire-up (:data:`PMI2_WIREUP`) is submitted once more."""
    first = _submit(tmp_path, job, *options, timeout=timeout)
    if first[1] != 0 and PMI2_WIREUP in first[2]:
        print(f"job {first[0]}: MPI_Init failed in Slurm's PMI-2 wire-up; submitting it once more")
        return _submit(tmp_path, job, *options, timeout=timeout)
    return first


def _submit(tmp_path: Path, job: str, *options: str, timeout: float = 120) -> tuple[str, int, str]:
    cmd = [HPCPAR, "submit", job, *options[:options.index("--")], "--output", "job-%j.out", "--wait",
           "--timeout", str(int(timeout)), *options[options.index("--"):]]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, **TCP, **ONE_DEVICE}, capture_output=True, text=True,
                          timeout=timeout + 30)
    m = re.search(r"submitted batch job ([0-9]+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    out = tmp_path / f"job-{m[1]}.out"
    return m[1], proc.returncode, (out.read_text() if out.exists() else "") + proc.stdout + proc.stderr


def moved(before: dict[str, int], at_least: int) -> list[str]:
    """The hosts that moved at least ``at_least`` bytes over their veth since ``before``."""
    after = veth_bytes()
    return [h for h in HOSTS if after[h] - before[h] >= at_least]


def test_submit_heat_on_two_nodes_is_bit_identical_to_one_rank(tmp_path):
    _slurm_or_skip()
    heat, args = str(JOBS / "heat.py"), ["--n", "96", "--steps", "200"]
    one = subprocess.run([HPCPAR, "run", "-n", "1", heat, *args, "--save-npy", str(tmp_path / "one.npy")],
                         capture_output=True, text=True, timeout=LIMIT, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    before = veth_bytes()
    job_id, code, text = submit(tmp_path, heat, *TWO_BY_TWO, "--", *args, "--save-npy",
                                str(tmp_path / "multi.npy"))
    assert code == 0 and f"job {job_id}: COMPLETED (exit 0)" in text, text
    assert "on 4 ranks (dims 2x2)" in text, text
    assert len(moved(before, 20_000)) >= 2, "the halos did not cross two hosts"
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "multi.npy")
    assert a.tobytes() == b.tobytes(), "the field on 2 nodes x 2 ranks differs from one rank's"


RAISE_ON_LAST = WHERE.replace('        print("WHERE " + json.dumps(every))', """        print("WHERE " + json.dumps(every), flush=True)
    ctx.barrier()
    if ctx.rank == ctx.size - 1:
        raise RuntimeError("bad input on the second node")""")


def test_rank_raising_on_the_second_node_shows_in_hpcpar_status_with_its_host(tmp_path):
    _slurm_or_skip()
    script = tmp_path / "raise.py"
    script.write_text(RAISE_ON_LAST)
    # MPICH's launcher inside the allocation, as for the requeue below: Slurm's PMI-2 server
    # may fail MPI_Init (see PMI2_WIREUP), and this test is about the failing rank's report.
    job_id, code, text = submit(tmp_path, str(script), *TWO_BY_TWO, "--launcher", "mpiexec", "--")
    assert code == 1 and f"job {job_id}: FAILED" in text, text
    every = json.loads(text.split("WHERE ", 1)[1].splitlines()[0])
    hosts = [r["host"] for r in every]
    assert len(hosts) == 4 and hosts[0] == hosts[1] != hosts[2] == hosts[3], hosts
    proc = subprocess.run([HPCPAR, "status", job_id], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert f"job {job_id}: FAILED" in proc.stdout, proc.stdout + proc.stderr
    assert f"rank 3 failed: RuntimeError: bad input on the second node (on host {hosts[3]})" in proc.stdout, \
        proc.stdout


def test_submit_heat_usr1_requeue_resumes_on_two_nodes_bit_identical(tmp_path):
    """USR1 -> checkpoint -> requeue -> resume on 2 nodes x 2 ranks -> one rank's field.

    The job runs under MPICH's mpiexec (Hydra starts its proxies on the allocated nodes with
    srun). Under ``srun --mpi=pmi2`` the rerun's ``MPI_Init`` failed in most runs of the whole
    leg (slurmstepd: ``mpi/pmi2: value not properly terminated in client request``, UCX:
    ``failed to unpack address``), while the first run, and the rerun when this test ran
    with only the Slurm tests, succeeded; not understood yet.
    """
    from hpcpar import slurm

    _slurm_or_skip()
    heat, ckpt = str(JOBS / "heat.py"), tmp_path / "heat.ckpt.h5"
    args = ["--n", "96", "--steps", "3000", "--checkpoint", str(ckpt), "--every", "250"]
    cmd = [HPCPAR, "submit", heat, *TWO_BY_TWO, "--requeue", "--launcher", "mpiexec", "--output", "heat-%j.out",
           "--", *args, "--save-npy", str(tmp_path / "multi.npy")]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, **TCP}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"submitted batch job ([0-9]+)", proc.stdout)[1]
    # running, with a first checkpoint written
    wait_for_file(ckpt, 60, lambda: f"heat job {job_id}: {slurm.status(job_id)}")
    slurm.cancel(job_id, signal="USR1")
    # the reference, uninterrupted on one rank, while the job stops and waits to rerun
    one = subprocess.run([HPCPAR, "run", "-n", "1", heat, *args[:4], "--save-npy", str(tmp_path / "one.npy")],
                         capture_output=True, text=True, timeout=LIMIT, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    st = slurm.wait(job_id, timeout=150, poll=1.0)
    text = (tmp_path / f"heat-{job_id}.out").read_text()
    assert st.state == "COMPLETED" and st.exit_code == 0, f"{st}\n{text}{_ctld_log()}"
    assert st.restarts == 1, f"{st}\n{text}{_ctld_log()}"
    stopped = int(re.search(r"checkpoint at step ([0-9]+) of 3000", text)[1])
    assert 0 < stopped < 3000 and "job requeued" in text, text
    assert f"heat: resuming from step {stopped}" in text, text
    assert re.search(r"heat: 96 x 96 grid on 4 ranks .* 3000 steps", text), text
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    assert " NumNodes=2 " in shown.stdout, shown.stdout  # the rerun, too, had two nodes
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "multi.npy")
    assert a.tobytes() == b.tobytes(), "the field after the requeue differs from one rank's"
