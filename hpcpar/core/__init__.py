"""The core: :class:`~hpcpar.core.context.Context` and its checked collectives, the
runner, the watchdog and stop requests. Importing a module of this layer loads MPI.

``context``
    :class:`Context`: the private communicator, barrier, bcast and reductions.
``blocks``
    scatter, gather and allgather of blocks along an axis (checked or unchecked).
``agreement``
    the fixed-size ``Allreduce`` that every checked collective starts with.
``protocol``
    calls, payload kinds and plans (:class:`~.protocol.Call`, :class:`~.protocol.Plan`);
    the per-rank headers and checks of the error path (:class:`~.protocol.Exchange`).
``announce``
    root's geometry and small payloads in one fixed-size ``Bcast`` (unchecked calls).
``largecount``, ``callsite``, ``cache``
    messages beyond ``2**31 - 1`` bytes; debug mode's call sites; the bounded cache.
``runner``, ``abort``, ``watchdog``, ``preempt``
    running ``main`` on every rank; ending the job; the hang watchdog; stop requests.
``watchnet``
    the watchdog's messages between ranks: a coordinator and a tree, O(P) per event.
"""

from ..observe.info import preflight

# Before any module of this layer loads MPI: a launcher of another MPI than mpi4py's
# gets a clear message here rather than a failing MPI_Init or N one-rank jobs.
preflight()
