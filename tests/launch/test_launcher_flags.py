"""`hpcpar run` with the launcher of this venv: Open MPI's gets --oversubscribe (with a note) when
there are more ranks than cores, and --allow-run-as-root as root; MPICH's gets nothing."""

import os
import subprocess
import sys

import pytest
from helpers import ROOT

from hpcpar.launch.command import core_count, is_open_mpi, launcher

pytestmark = pytest.mark.timeout(120)


def test_more_ranks_than_cores_run_with_either_launcher():
    ranks = core_count() + 2
    # without the variables that let Open MPI run as root: the flag must come from hpcpar
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMPI_ALLOW_RUN_AS_ROOT")}
    r = subprocess.run([sys.executable, "-m", "hpcpar.cli", "run", "-n", str(ranks), "jobs/pi.py",
                        "--samples", "4e6"], capture_output=True, text=True, timeout=90, cwd=ROOT,
                       env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pi" in r.stdout.lower()
    note = f"hpcpar: {ranks} ranks on {core_count()} core"
    if is_open_mpi(launcher()):
        assert note in r.stderr and "Open MPI's launcher is given --oversubscribe" in r.stderr, r.stderr
    else:
        assert "oversubscribe" not in r.stderr, r.stderr
