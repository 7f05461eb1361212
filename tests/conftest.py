"""Test-suite root. MPI tests run under ``mpiexec -n N python -m pytest --with-mpi``.

Layout: ``unit/`` pure logic (plain pytest), ``mpi/`` tests that communicate
(under mpiexec, at 1, 2 and 3 ranks), ``launch/`` the launcher, runner, faults
and README programs, ``jobs/`` the example jobs end to end, ``slurm/`` jobs on a
real Slurm cluster. Shared helpers are in ``helpers.py``; the ``ctx`` and
``mpi_tmp_path`` fixtures come from hpcpar's pytest plugin
(``hpcpar.testing.plugin``, registered through the ``pytest11`` entry point).
"""
