"""Which MPI a launcher and a library belong to, and the message when they differ (pure)."""

from __future__ import annotations

from hpcpar.launch.family import MPICH, OPEN_MPI, conflict, launcher_family, mismatch

OMPI_ENV = {"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "0", "PMIX_RANK": "0"}
HYDRA_ENV = {"PMI_SIZE": "3", "PMI_RANK": "1"}


def test_launcher_families():
    assert launcher_family(OMPI_ENV) == OPEN_MPI
    assert launcher_family(HYDRA_ENV) == MPICH
    assert launcher_family({"PMIX_RANK": "0", "SLURM_NTASKS": "4"}) is None  # srun --mpi=pmix
    assert launcher_family({}) is None


def test_conflict_before_mpi_starts():
    text = conflict(MPICH, OMPI_ENV)
    assert text is not None and "Open MPI's launcher" in text and "one of 3 (OMPI_COMM_WORLD_SIZE=3)" in text
    assert "mpi4py uses MPICH" in text and "--mpi=pmi2" in text
    text = conflict(OPEN_MPI, HYDRA_ENV)
    assert text is not None and "PMI_SIZE=3" in text and "--mpi=pmix" in text
    assert conflict(MPICH, HYDRA_ENV) is None and conflict(OPEN_MPI, OMPI_ENV) is None
    assert conflict(None, OMPI_ENV) is None  # unknown library: MPI itself decides
    assert conflict(MPICH, {"OMPI_COMM_WORLD_SIZE": "1"}) is None  # one process: nothing to lose


def test_mismatch_after_mpi_started():
    lib = "Open MPI v5.0.11, package: Open MPI user@localhost Distribution"
    text = mismatch(1, lib, HYDRA_ENV)
    assert text is not None and text.startswith("hpcpar: MPI says this process is rank 0 of 1, but its "
                                                "launcher started 3 processes (PMI_SIZE=3)")
    assert "mpi4py uses Open MPI v5.0.11: different MPI implementations" in text
    text = mismatch(1, "Some MPI 1.0", {"PMIX_SIZE": "2"})
    assert text is not None and "do not speak to each other" in text and "--mpi=" not in text
    assert mismatch(3, lib, OMPI_ENV) is None  # MPI sees the whole job
    assert mismatch(1, lib, {}) is None  # a plain one-process run
    assert mismatch(1, lib, {"SLURM_NTASKS": "4"}) is None  # a batch script, no launcher
