"""The hang watchdog's messages between ranks: a coordinator and a tree, O(P) per event.

:mod:`hpcpar.core.watchdog` sends two kinds of news: that a rank has finished its
main function (so that ranks blocked in a collective including it end the job),
and that a rank timed out (so that every rank dumps its stacks and says what it
is doing). Sending either to every other rank from every rank that has it costs
P² messages when all ranks have it at once, which is the usual case (every rank
waits at the end for a late one; every rank times out in the collective a hung
rank never joins). Here each goes through a **coordinator**, world rank 0 of the
watchdog's communicator, and a **tree**: a :data:`FANOUT`-ary tree over the ranks,
rooted at the coordinator, :func:`depth` hops deep; each rank forwards what it
receives from its parent to its :func:`children`. Counts for P ranks, per event:

* **Finished notice** (per final check, i.e. per ``hpcpar.run``): each rank that
  waits in it longer than a moment sends 1 message to the coordinator (P-1 at
  most; the coordinator notes itself without one). The coordinator pushes the
  finished set down the tree **once per final check**, when it first hears of a
  finished rank and unless every rank has finished: P-1 messages. A rank blocked
  in a collective of a context that includes none of the ranks it knows to have
  finished (a sub-communicator) asks the coordinator, once per context and final
  check, whether one of that context's ranks has finished: 1 message, and at
  most 1 answer, sent when one has. Total: at most 2(P-1), plus 2 per rank and
  sub-context asked about; the all-to-all it replaces sent P(P-1).
* **Dump request** (once per job, which then ends): each rank that times out
  sends 1 request to the coordinator: at most P-1. The coordinator starts one
  dump round for the first request (later ones are dropped): P-1 messages down
  the tree, carrying the rank that asked (the round's *origin*); every rank that
  receives it dumps its stacks and sends 1 report straight to the origin: P-1.
  The usual total is 3(P-1), where the all-to-all with every rank timing out
  cost 2P(P-1).

Robustness, when a rank cannot run its watchdog (busy in C code holding the GIL):
a rank that saw no sign of a round after a while sends its request to a
**backup coordinator**, world rank :data:`BACKUP`, which starts its own round, at
most one, down the same tree rooted at itself (the coordinator is a leaf of it):
at most P-1 more requests, P-1 more forwards and P-1 more reports. An origin
asks the ranks whose report is still missing halfway through its wait directly,
1 message each (the ranks below a silent rank of the tree): at most P-1 per
origin, at most two origins. So never more than 8(P-1) in all, and a rank that
hears nothing at all still ends the job after its wait, with what it knows.
Finished notices have no backup: a silent coordinator withholds the push from
every rank, a silent rank inside the tree from the ranks below it. Those ranks
then end at the timeout, if one is set; a rank that never answers is a hang of
its own, which only the timeout ends anyway.

Everything here runs in the watchdog thread (and in :func:`hpcpar.core.watchdog.stop`
once that thread has ended); nothing is thread-safe on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mpi4py import MPI

__all__ = ["FANOUT", "COORDINATOR", "BACKUP", "children", "depth", "Net"]

#: Children per rank in the tree of pushes and dump rounds.
FANOUT = 4
#: World ranks of the coordinator and of the backup coordinator for dump rounds.
COORDINATOR, BACKUP = 0, 1

(_TAG_DUMP, _TAG_REPORT, _TAG_PUSH, _TAG_NOTICE, _TAG_ASK, _TAG_ANSWER,
 _TAG_REQUEST) = range(9001, 9008)


def children(rank: int, size: int, root: int = COORDINATOR, fanout: int = FANOUT) -> list[int]:
    """The ranks ``rank`` forwards to in the tree over ``size`` ranks rooted at ``root``. **Local**.

    Ranks are numbered from the root (``v = (rank - root) % size``); ``v`` has the
    children ``fanout*v + 1 ... fanout*v + fanout`` below ``size``. Every rank but
    the root has exactly one parent, so a broadcast costs ``size - 1`` messages;
    the rank just before the root (``v = size - 1``) is always a leaf.
    """
    v = (rank - root) % size
    first = fanout * v + 1
    return [(root + c) % size for c in range(first, min(first + fanout, size))]


def depth(size: int, fanout: int = FANOUT) -> int:
    """Hops from the root to the deepest rank of the tree over ``size`` ranks. **Local**."""
    hops, last = 0, 0  # last: the highest tree number at this depth
    while last < size - 1:
        last = fanout * last + fanout
        hops += 1
    return hops


class Net:
    """This rank's end of the watchdog's messages on ``comm``, a duplicate of ``COMM_WORLD``.

    Args:
        comm: the watchdog's private communicator (ranks as in ``COMM_WORLD``).
        learn: called with ``(epoch, ranks)`` when this rank learns that those
            ranks wait in the final check ``epoch``.
        dump: called with the origin's rank when a dump round or request reaches
            this rank; dumps this rank's stacks (once) and returns what it is doing
            and its host name.
    """

    def __init__(self, comm: MPI.Comm, learn: Callable[[int, list[int]], None],
                 dump: Callable[[int], tuple[str, str]]) -> None:
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.learn, self.dump = learn, dump
        self.sent = 0  # messages this rank has sent
        self.sends: list[MPI.Request] = []
        self.epoch = 0  # this rank's final checks completed, as of the last serve()
        # the coordinator's record: finished ranks, pushes made, open questions, per epoch
        self.known: dict[int, set[int]] = {}
        self.pushed: set[int] = set()
        self.asks: dict[int, dict[tuple[int, ...], set[int]]] = {}
        # dump rounds
        self.rounds: dict[int, int] = {}  # root -> origin, for each round this rank forwarded
        self.others: set[int] = set()  # origins other than this rank it heard of
        self.answered: set[int] = set()  # origins this rank has reported to
        self.reports: dict[int, tuple[str, str]] = {}  # rank -> (what it does, host)

    # ---- sending and receiving ---------------------------------------------------
    def send(self, obj: Any, dest: int, tag: int) -> None:
        """Send ``obj`` to ``dest`` without waiting, and count it."""
        self.sends.append(self.comm.isend(obj, dest=dest, tag=tag))
        self.sent += 1
        if len(self.sends) > 64:  # tiny messages: sent eagerly, complete almost at once
            self.sends = [req for req in self.sends if not req.Test()]

    def serve(self, epoch: int) -> None:
        """Handle every message that has arrived; ``epoch``: this rank's completed final checks."""
        self.epoch = epoch
        comm, status = self.comm, MPI.Status()
        while comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            src, tag = status.Get_source(), status.Get_tag()
            msg = comm.recv(source=src, tag=tag)
            if tag == _TAG_PUSH:  # (epoch, ranks) from the parent
                for child in children(self.rank, self.size):
                    self.send(msg, child, _TAG_PUSH)
                self.learn(msg[0], msg[1])
            elif tag == _TAG_ANSWER:  # (epoch, ranks) from the coordinator
                self.learn(msg[0], msg[1])
            elif tag == _TAG_NOTICE:  # at the coordinator: (rank, epoch)
                self._add(msg[1], [msg[0]])
            elif tag == _TAG_ASK:  # at the coordinator: (epoch, the context's ranks)
                self._ask(src, msg[0], tuple(msg[1]))
            elif tag == _TAG_REQUEST:  # at a coordinator: rank msg timed out
                self.start_round(msg)
            elif tag == _TAG_DUMP:  # (root, origin); root None: straight from the origin
                self._round(msg[0], msg[1])
            elif tag == _TAG_REPORT:  # (rank, (what it does, host))
                self.reports[msg[0]] = msg[1]
        if self.rank == COORDINATOR:
            self._push()

    def close(self) -> None:
        """Receive what is left and complete the sends (before ``MPI_Finalize``)."""
        status = MPI.Status()
        try:
            while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
                self.comm.recv(source=status.Get_source(), tag=status.Get_tag())
        except Exception:
            pass
        for req in self.sends:
            try:
                req.Test()
            except Exception:
                pass
        self.sends.clear()

    # ---- finished notices --------------------------------------------------------
    def notice(self, epoch: int) -> None:
        """Tell the coordinator that this rank waits in final check ``epoch``: 1 message."""
        if self.rank == COORDINATOR:
            self._add(epoch, [self.rank])
        else:
            self.send((self.rank, epoch), COORDINATOR, _TAG_NOTICE)

    def ask(self, epoch: int, ranks: tuple[int, ...]) -> None:
        """Ask the coordinator to answer once one of ``ranks`` waits in final check ``epoch``."""
        if self.rank != COORDINATOR:  # the coordinator learns every notice as it comes
            self.send((epoch, list(ranks)), COORDINATOR, _TAG_ASK)

    def _add(self, epoch: int, ranks: list[int]) -> None:
        if epoch < self.epoch:  # a final check the coordinator has completed: every rank reached it
            return
        have = self.known.setdefault(epoch, set())
        new = set(ranks) - have
        if not new:
            return
        have |= new
        self.learn(epoch, sorted(have))
        waiting = self.asks.get(epoch, {})
        for key in [key for key in waiting if new.intersection(key)]:
            for rank in waiting.pop(key):
                self.send((epoch, sorted(have)), rank, _TAG_ANSWER)

    def _ask(self, src: int, epoch: int, key: tuple[int, ...]) -> None:
        if epoch < self.epoch:
            return
        have = self.known.get(epoch, set())
        if have.intersection(key):
            self.send((epoch, sorted(have)), src, _TAG_ANSWER)
        else:
            self.asks.setdefault(epoch, {}).setdefault(key, set()).add(src)

    def _push(self) -> None:
        for old in [e for e in self.known if e < self.epoch]:
            del self.known[old]
            self.asks.pop(old, None)
        for epoch, have in self.known.items():
            if epoch not in self.pushed and 0 < len(have) < self.size:
                self.pushed.add(epoch)
                for child in children(self.rank, self.size):
                    self.send((epoch, sorted(have)), child, _TAG_PUSH)

    # ---- dump rounds -------------------------------------------------------------
    def request(self, coordinator: int) -> None:
        """Ask ``coordinator`` for a dump round with this rank as origin: 1 message."""
        if self.rank == coordinator:
            self.start_round(self.rank)
        else:
            self.send(self.rank, coordinator, _TAG_REQUEST)

    def start_round(self, origin: int) -> None:
        """Start the dump round rooted at this rank for ``origin``, unless it started one."""
        if self.rank not in self.rounds:
            self._round(self.rank, origin)

    def _round(self, root: int | None, origin: int) -> None:
        if root is not None:
            if root in self.rounds:
                return
            self.rounds[root] = origin
            for child in children(self.rank, self.size, root):
                self.send((root, origin), child, _TAG_DUMP)
        what = self.dump(origin)
        if origin == self.rank:
            self.reports[self.rank] = what
        else:
            self.others.add(origin)
            if origin not in self.answered:
                self.answered.add(origin)
                self.send((self.rank, what), origin, _TAG_REPORT)

    def origin(self) -> bool:
        """True once this rank knows that a dump round answers to it."""
        return bool(self.reports) or self.rank in self.rounds.values()

    def heard(self) -> bool:
        """True once this rank knows of any dump round."""
        return bool(self.rounds or self.others or self.reports)

    def repair(self, missing: list[int]) -> None:
        """Ask the ranks in ``missing`` for their reports directly: 1 message each."""
        for rank in missing:
            self.send((None, self.rank), rank, _TAG_DUMP)
