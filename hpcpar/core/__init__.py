"""The core: :class:`~hpcpar.core.context.Context` and its checked collectives, the
runner, the watchdog and stop requests. Importing a module of this layer loads MPI.

``context``
    :class:`Context`: the private communicator and the checked collectives.
``protocol``
    the header every rank sends before a collective (:class:`~.protocol.Call`,
    :class:`~.protocol.Field`, :class:`~.protocol.Plan`), its exchange and checks.
``largecount``, ``callsite``, ``cache``
    messages beyond ``2**31 - 1`` bytes; debug mode's call sites; the bounded cache.
``runner``, ``abort``, ``watchdog``, ``preempt``
    running ``main`` on every rank; ending the job; the hang watchdog; stop requests.
``watchnet``
    the watchdog's messages between ranks: a coordinator and a tree, O(P) per event.
"""
