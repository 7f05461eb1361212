"""Rank-aware logging: standard :mod:`logging` with ``[rank R/N]`` on every record."""

from __future__ import annotations

import logging
import sys

from .. import env

__all__ = ["get_logger"]

_FORMAT = "[rank {rank}/{size}] %(levelname)s %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, all_ranks: bool):
        super().__init__()
        self.rank, self.all_ranks = rank, all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        return self.all_ranks or self.rank == 0


def get_logger(name: str = "hpcpar", level: int | str | None = None) -> logging.Logger:
    """A :class:`logging.Logger` whose records say which rank wrote them. **Local**.

    By default only rank 0 emits (one copy of each message, not N). Set
    ``HPCPAR_LOG_ALL=1`` to hear every rank. The level comes from ``level``, else
    ``HPCPAR_LOG_LEVEL`` (``DEBUG``, ``INFO`` …), else ``INFO``. Records go to
    stderr; the handler is added once per logger.
    """
    from mpi4py import MPI

    logger = logging.getLogger(name)
    if not getattr(logger, "_hpcpar", False):
        comm = MPI.COMM_WORLD
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT.format(rank=comm.rank, size=comm.size)))
        handler.addFilter(_RankFilter(comm.rank, env.get(env.HPCPAR_LOG_ALL, "0") not in ("0", "")))
        logger.addHandler(handler)
        logger.propagate = False
        logger._hpcpar = True  # type: ignore[attr-defined]
    chosen: int | str
    if level is not None:
        chosen = level
    else:
        from_env = env.get(env.HPCPAR_LOG_LEVEL, "INFO")
        assert from_env is not None  # a default is given
        chosen = from_env
    if isinstance(chosen, str):
        value = logging.getLevelName(chosen.upper())
        if not isinstance(value, int):
            raise ValueError(f"unknown log level {chosen!r}; use DEBUG, INFO, WARNING or ERROR")
        chosen = value
    logger.setLevel(chosen)
    return logger
