"""The launch-command builder: Open MPI's launcher recognised, and what it is given on a workstation."""

import os
import sys

import pytest
from helpers import ROOT

from hpcpar.launch import command
from hpcpar.launch.command import is_open_mpi, launch_argv, workstation_options
from hpcpar.launch.family import SRUN_PLUGINS, library_family


def tool_dir(tmp_path, *names: str):
    """A directory of empty executables ``names``; returns its path."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name in names:
        p = d / name
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    return d


@pytest.fixture
def workstation(monkeypatch):
    """Two cores, root, no batch allocation."""
    monkeypatch.setattr(command, "core_count", lambda: 2)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    for name in command._RESOURCE_MANAGERS:
        monkeypatch.delenv(name, raising=False)


def test_mpich_launchers_are_not_open_mpi(tmp_path, workstation):
    d = tool_dir(tmp_path, "mpiexec", "mpiexec.hydra", "hydra_pmi_proxy", "mpichversion")
    for name in ("mpiexec", "mpiexec.hydra"):
        launch = [str(d / name)]
        assert not is_open_mpi(launch)
        assert workstation_options(launch, 8) == ([], None)
        assert launch_argv(8, ["python", "x.py"], launch) == [str(d / name), "-n", "8", "python", "x.py"]
    assert launch_argv(4, ["x"], ["srun", "--mpi=pmi2"]) == ["srun", "--mpi=pmi2", "--ntasks", "4", "x"]


def test_open_mpi_is_recognised_by_its_tools_or_the_real_launcher(tmp_path):
    d = tool_dir(tmp_path, "mpiexec", "mpirun", "ompi_info")
    assert is_open_mpi([str(d / "mpiexec")]) and is_open_mpi([str(d / "mpirun"), "--bind-to", "none"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "prterun").write_text("#!/bin/sh\n")
    (other / "mpiexec").symlink_to(other / "prterun")  # e.g. /usr/bin/mpiexec -> ... -> prterun
    assert is_open_mpi([str(other / "mpiexec")])
    (other / "mpiexec.hydra").write_text("#!/bin/sh\n")
    (other / "mpirun").symlink_to(other / "mpiexec.hydra")
    assert not is_open_mpi([str(other / "mpirun")])
    assert not is_open_mpi([])


def test_open_mpi_gets_root_and_oversubscribe_flags(tmp_path, workstation):
    launch = [str(tool_dir(tmp_path, "mpiexec", "ompi_info") / "mpiexec")]
    opts, note = workstation_options(launch, 3)
    assert opts == ["--allow-run-as-root", "--oversubscribe"]
    assert note == "hpcpar: 3 ranks on 2 cores: Open MPI's launcher is given --oversubscribe"
    assert launch_argv(3, ["python"], launch) == [*launch, *opts, "-n", "3", "python"]
    assert workstation_options(launch, 2) == (["--allow-run-as-root"], None)  # ranks fit the cores


def test_open_mpi_without_root_and_with_placement_gets_nothing(tmp_path, workstation, monkeypatch):
    launch = [str(tool_dir(tmp_path, "mpiexec", "ompi_info") / "mpiexec")]
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert workstation_options(launch, 2) == ([], None)
    assert workstation_options([*launch, "--allow-run-as-root"], 2) == ([], None)
    for given in (["--oversubscribe"], ["--map-by", ":OVERSUBSCRIBE"], ["--map-by=core"], ["--host", "a:8"],
                  ["--hostfile", "hosts"]):
        assert workstation_options([*launch, *given], 8) == ([], None), given


def test_a_batch_allocation_or_a_rendered_script_gets_no_oversubscribe(tmp_path, workstation, monkeypatch):
    launch = [str(tool_dir(tmp_path, "mpiexec", "ompi_info") / "mpiexec")]
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert workstation_options(launch, 8) == (["--allow-run-as-root"], None)
    # a shell expression for the rank count (a Slurm script) is passed on with nothing added
    assert launch_argv("${SLURM_NTASKS}", ["python"], launch) == [*launch, "-n", "${SLURM_NTASKS}", "python"]


def test_core_count_is_positive_and_at_most_the_cpus():
    assert 1 <= command.core_count() <= (os.cpu_count() or 1)


def test_hosts_are_parsed_with_optional_slots():
    assert command.parse_hosts("a,b:4, c.example-1 ") == [
        command.Host("a"), command.Host("b", 4), command.Host("c.example-1")]
    assert command.parse_hosts("10.0.0.2:2") == [command.Host("10.0.0.2", 2)]
    for bad, what in (("a,b:0", "whole number >= 1"), ("a:x", "whole number"), ("a b", "not a host name"),
                      ("a;rm -rf /", "not a host name"), (",", "no host"), ("-h", "not a host name")):
        with pytest.raises(ValueError, match=what):
            command.parse_hosts(bad)


def test_hostfile_takes_mpich_and_open_mpi_lines_and_names_the_bad_line(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# the cluster\nn1\nn2:3   # fast\n\nn3 slots=2\n")
    assert command.read_hostfile(str(f)) == [command.Host("n1"), command.Host("n2", 3), command.Host("n3", 2)]
    f.write_text("n1\nn2 cpus=4\n")
    with pytest.raises(ValueError, match=r"line 2.*NAME slots=N"):
        command.read_hostfile(str(f))
    f.write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no host"):
        command.read_hostfile(str(f))
    with pytest.raises(FileNotFoundError):
        command.read_hostfile(str(tmp_path / "absent"))


def test_host_options_per_launcher(tmp_path, workstation):
    mpich = tool_dir(tmp_path, "mpiexec", "hydra_pmi_proxy")
    hosts = command.parse_hosts("a:2,b")
    hydra = [str(mpich / "mpiexec")]
    assert launch_argv(3, ["py"], hydra, hosts, ["-launcher", "ssh"]) == [
        hydra[0], "-hosts", "a:2,b", "-launcher", "ssh", "-n", "3", "py"]
    assert launch_argv("$N", ["py"], hydra, hosts) == [hydra[0], "-hosts", "a:2,b", "-n", "$N", "py"]
    ompi_dir = tmp_path / "ompi"
    ompi_dir.mkdir()
    ompi = tool_dir(ompi_dir, "mpiexec", "ompi_info")
    orte = [str(ompi / "mpiexec")]
    # Root: --allow-run-as-root; 3 slots for 3 ranks: no --oversubscribe, even with more ranks than cores.
    assert launch_argv(3, ["py"], orte, hosts) == [
        orte[0], "--allow-run-as-root", "--host", "a:2,b:1", "-n", "3", "py"]
    assert launch_argv(5, ["py"], orte, hosts, ["--mca", "btl", "tcp,self"]) == [
        orte[0], "--allow-run-as-root", "--host", "a:2,b:1", "--oversubscribe", "--mca", "btl", "tcp,self",
        "-n", "5", "py"]
    # (an explicit --mpi: srun otherwise gets the plugin of the library mpi4py uses, tested below)
    assert launch_argv(2, ["py"], ["srun", "--mpi=pmi2"], command.parse_hosts("n1,n2")) == [
        "srun", "--mpi=pmi2", "--nodelist=n1,n2", "--ntasks", "2", "py"]
    with pytest.raises(ValueError, match="srun places ranks"):
        launch_argv(2, ["py"], ["srun"], hosts)
    # No hosts: exactly the command of before.
    assert launch_argv(3, ["py"], hydra, None, []) == [hydra[0], "-n", "3", "py"]
def test_export_options_name_each_variable_once_for_open_mpi_only(tmp_path):
    ompi = [str(tool_dir(tmp_path, "mpiexec", "ompi_info") / "mpiexec")]
    names = ["HPCPAR_RUN_DIR", "HPCPAR_TIMEOUT", "HPCPAR_RUN_DIR", "HPCPAR_RELAY"]
    assert command.export_options(ompi, names) == [
        "-x", "HPCPAR_RUN_DIR", "-x", "HPCPAR_TIMEOUT", "-x", "HPCPAR_RELAY"]
    # what the user's own options already export is not named twice
    assert command.export_options([*ompi, "-x", "HPCPAR_TIMEOUT", "--mca", "btl", "tcp,self"], names) == [
        "-x", "HPCPAR_RUN_DIR", "-x", "HPCPAR_RELAY"]
    assert command.export_options(ompi, []) == []
    # Hydra and srun pass the whole environment on
    hydra = tmp_path / "hydra"
    hydra.mkdir()
    assert command.export_options([str(tool_dir(hydra, "mpiexec", "hydra_pmi_proxy") / "mpiexec")], names) == []
    assert command.export_options(["srun", "--mpi=pmi2"], names) == []


# ---- srun: the --mpi plugin of the library mpi4py uses -------------------------------------
VENV_PYTHONS = {"pmi2": ROOT / ".venv" / "bin" / "python", "pmix": ROOT / ".venv-openmpi" / "bin" / "python"}


@pytest.mark.parametrize("plugin", ["pmi2", "pmix"])
def test_srun_gets_the_plugin_of_the_library_mpi4py_uses(plugin):
    """A real child Python per venv: MPICH's mpi4py gives pmi2, Open MPI's pmix (no MPI_Init)."""
    python = str(VENV_PYTHONS[plugin])
    if not os.access(python, os.X_OK):
        pytest.skip(f"needs {python} (make venv openmpi-venv)")
    lib = command.mpi4py_library(python)
    assert lib is not None and lib.startswith("Open MPI" if plugin == "pmix" else "MPICH"), lib
    assert command.srun_options(["srun"], python) == [f"--mpi={plugin}"]
    assert launch_argv(4, [python, "x.py"], ["srun", "--kill-on-bad-exit=1"]) == [
        "srun", "--kill-on-bad-exit=1", f"--mpi={plugin}", "--ntasks", "4", python, "x.py"]


def test_srun_keeps_a_given_plugin_and_other_launchers_get_none(tmp_path):
    python = sys.executable
    assert command.srun_options(["srun", "--mpi=pmix"], python) == []
    assert command.srun_options(["srun", "--mpi", "none"], python) == []
    assert command.srun_options(["/usr/bin/mpiexec"], python) == []
    assert launch_argv(3, [python, "x"], ["srun", "--mpi=pmi2"]) == ["srun", "--mpi=pmi2", "--ntasks", "3",
                                                                    python, "x"]
    # a rendered script's shell expression gets the launcher as it is
    assert launch_argv("$N", [python], ["srun"]) == ["srun", "--ntasks", "$N", python]


def test_srun_without_a_known_library_gets_no_plugin(tmp_path):
    """A Python without mpi4py (here a script that fails): Slurm's MpiDefault applies."""
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    assert command.mpi4py_library(str(fake)) is None
    assert command.srun_options(["srun"], str(fake)) == []
    assert command.mpi4py_library(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("text,family", [
    ("Open MPI v5.0.11, package: Open MPI user@localhost Distribution", "Open MPI"),
    ("MPICH Version:      5.0.2", "MPICH"),
    ("Intel(R) MPI Library 2021.18.1 for Linux* OS", "MPICH"),
    ("MVAPICH Version 3.0", "MPICH"),
    ("CRAY MPICH version 8.1.28", "MPICH"),
    ("Microsoft MPI 10.1", None),
    ("", None),
])
def test_library_families(text, family):
    assert library_family(text) == family
    assert SRUN_PLUGINS.get(family or "") == {"Open MPI": "pmix", "MPICH": "pmi2"}.get(family or "")
