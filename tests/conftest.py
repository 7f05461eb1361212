"""Test-suite root. MPI tests run under ``mpiexec -n N python -m pytest --with-mpi``.

Layout: ``unit/`` pure logic (plain pytest), ``mpi/`` tests that communicate
(under mpiexec, at 1, 2 and 3 ranks), ``launch/`` the launcher, runner, faults
and README programs, ``jobs/`` the example jobs end to end, ``slurm/`` jobs on a
real Slurm cluster. Shared helpers are in ``helpers.py``; the ``ctx`` and
``mpi_tmp_path`` fixtures come from hpcpar's pytest plugin
(``hpcpar.testing.plugin``, registered through the ``pytest11`` entry point).

Tests marked ``checks`` test the agreement checks themselves (an error raised
on every rank when ranks disagree, or when one rank alone sees a bad argument);
they are skipped when ``HPCPAR_CHECKS=0`` turns the checks off (``make
test-mpi-unchecked``). Every rank reads the same variable, so every rank skips
the same tests.
"""

import pytest

from hpcpar import env


def pytest_collection_modifyitems(config, items):
    if env.flag(env.HPCPAR_CHECKS, True):
        return
    skip = pytest.mark.skip(reason="tests the agreement checks, which HPCPAR_CHECKS=0 turns off")
    for item in items:
        if item.get_closest_marker("checks") is not None:
            item.add_marker(skip)
