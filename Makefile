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

.PHONY: all venv run test test-unit test-mpi test-slurm bench clean

all: test

$(VENV)/.installed: pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[mpich,test,plot,progress]'
	touch $@

venv: $(VENV)/.installed

## run: the main job on 4 ranks
run: venv
	$(BIN)/hpcpar run -n 4 jobs/pi.py

## test: pure logic with plain pytest, then everything that communicates at 1, 2 and 3 ranks
test: test-unit test-mpi

test-unit: venv
	$(TIMEOUT) 1800 $(PYTEST) tests -m "not mpi and not slurm"

test-mpi: venv
	@set -e; for n in $(RANKS); do \
	  echo "== MPI tests on $$n ranks"; \
	  $(TIMEOUT) 1200 $(MPIEXEC) -n $$n $(BIN)/python -m pytest -p no:cacheprovider --with-mpi -m mpi tests; \
	done

## test-slurm: start the local Slurm cluster (as root), submit real jobs, stop it even on failure
test-slurm: venv
	@trap 'bash slurm/local-cluster/stop.sh' EXIT; \
	bash slurm/local-cluster/start.sh && \
	HPCPAR_TEST_SLURM=1 $(TIMEOUT) 600 $(PYTEST) tests -m slurm --timeout=180

## bench: the collectives benchmark at 2 and 3 ranks
bench: venv
	$(MPIEXEC) -n 2 $(BIN)/hpcpar bench collectives
	$(MPIEXEC) -n 3 $(BIN)/hpcpar bench collectives

clean:
	rm -rf $(VENV) build *.egg-info
