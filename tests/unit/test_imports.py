"""No MPI at import: login-node modules and commands, each in a fresh interpreter.

``from mpi4py import MPI`` initialises MPI, so a module that runs on a login node,
in the launcher or in any pytest session must never load ``mpi4py.MPI``. Each case
runs in its own ``python`` process (this one has MPI loaded by other tests) and
fails with the import chain that loaded it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT

MODULES = [
    "hpcpar", "hpcpar.partition", "hpcpar.decomp.partition", "hpcpar.errors", "hpcpar.env",
    "hpcpar.slurm", "hpcpar.slurm.spec", "hpcpar.slurm.scripts", "hpcpar.slurm.client",
    "hpcpar.slurm.job",
    "hpcpar.launch", "hpcpar.launch.command", "hpcpar.launch.variables", "hpcpar.launch.mpiexec",
    "hpcpar.launch.spawn", "hpcpar.launch.scale", "hpcpar.launch.guardian",
    "hpcpar.observe", "hpcpar.observe.info", "hpcpar.observe.log", "hpcpar.observe.progress",
    "hpcpar.observe.timing", "hpcpar.observe.stacks",
    "hpcpar.cli", "hpcpar.bench", "hpcpar.testing.plugin", "hpcpar.testing.marks",
    "hpcpar.testing.spawned",
]

#: ``hpcpar`` commands that need no MPI: the parser is built, the command runs or exits.
COMMANDS = [
    ["--help"],
    ["--version"],
    ["run", "--help"],
    ["bench", "--help"],
    ["submit", "--help"],
    ["status", "--help"],
    ["slurm", "render", "jobs/pi.py", "-n", "4", "-t", "10", "--", "--samples", "1e6"],
    ["slurm", "render", "jobs/pi.py", "--launcher", "mpiexec", "-N", "2"],
    ["slurm", "render-all", "--check"],
    ["status", "not-a-job-id"],
]

_CHECK = """
import json, sys
loaded = "mpi4py.MPI" in sys.modules
print("@@" + json.dumps({"mpi": loaded, "hpcpar": sorted(m for m in sys.modules if m.startswith("hpcpar"))}))
"""


def _fresh(code: str) -> dict:
    """Run ``code`` then the check in a new interpreter in the repository root; its verdict."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + _CHECK], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    marks = [line for line in proc.stdout.splitlines() if line.startswith("@@")]
    assert marks, f"the check did not run (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(marks[-1][2:])


@pytest.mark.parametrize("module", MODULES)
def test_importing_starts_no_mpi(module):
    verdict = _fresh(f"import importlib; importlib.import_module({module!r})")
    assert not verdict["mpi"], f"import {module} loaded mpi4py.MPI (which initialises MPI)"


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_login_node_commands_start_no_mpi(argv):
    verdict = _fresh(f"""
        import contextlib, io
        from hpcpar import cli
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                cli.main({argv!r})
            except SystemExit:
                pass
    """)
    assert not verdict["mpi"], f"hpcpar {' '.join(argv)} loaded mpi4py.MPI"


def test_the_guardian_runs_as_a_file_without_hpcpar_or_mpi():
    guardian = ROOT / "hpcpar" / "launch" / "guardian.py"
    verdict = _fresh(f"""
        import runpy, sys
        sys.path[:] = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
        g = runpy.run_path({str(guardian)!r}, run_name="guardian")
        assert g["launched_rank"]({{"PMI_RANK": "3"}}) == 3
        assert g["launched_size"]({{"SLURM_NTASKS": "4"}}) is None
        assert g["launched_size"]({{"SLURM_NTASKS": "4"}}, slurm=True) == 4
    """)
    assert not verdict["mpi"] and verdict["hpcpar"] == [], verdict


def test_a_plain_pytest_session_starts_no_mpi(tmp_path):
    """With hpcpar (and pytest-mpi, when installed) active, a session that uses neither
    loads no mpi4py.MPI, and its tests run unchanged."""
    (tmp_path / "test_plain.py").write_text(textwrap.dedent("""
        import sys

        def test_one(tmp_path):
            assert tmp_path.is_dir()

        def test_two():
            pass
    """))
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""
        import sys

        def pytest_sessionfinish(session):
            print("@@MPI" if "mpi4py.MPI" in sys.modules else "@@no-MPI")
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout and "@@no-MPI" in proc.stdout, proc.stdout
