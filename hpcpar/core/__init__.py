"""The core: :class:`~hpcpar.core.context.Context` and its checked collectives, the
runner, the watchdog and stop requests. Importing a module of this layer loads MPI."""
