"""Parallel sample sort of distributed 1-D keys (sorting by regular sampling).

Each rank sorts its keys, takes regular samples, and every rank picks the same
``size - 1`` splitters from the gathered samples; one ``Alltoallv`` sends every
key to the rank of its bucket, which merges the sorted runs it receives. Ties
are broken by (rank, position) of the sampled key, so duplicates — even all keys
equal — are spread over the ranks instead of piling up on one.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..core import watchdog
from ..core.context import Context
from ..errors import Problem, agree, agree_equal, fail

__all__ = ["sample_sort"]

#: dtype kinds sample_sort accepts: bool, signed and unsigned ints, floats, datetimes, timedeltas.
KINDS = "biufmM"


def sample_sort(ctx: Context, keys: np.ndarray, oversample: int | None = None) -> np.ndarray:
    """Sort keys spread over the ranks. **Collective**.

    Concatenating the results in rank order gives ``np.sort`` of the
    concatenated inputs (NaNs last, as NumPy sorts them). The number of keys a
    rank returns differs from its input; with the default sampling the parts
    are near the average size, whatever the duplicates.

    Args:
        keys: this rank's 1-D array of keys (may be empty); every rank passes the
            same dtype, of kind bool, int, uint, float, datetime or timedelta.
            It is not modified.
        oversample: regular samples per rank (default: the number of ranks, at
            least 64); more samples balance the buckets better.

    Returns:
        This rank's part of the sorted keys: a new array of the same dtype.

    Raises:
        ValueError: on every rank, when some rank's keys are not a 1-D array of a
            sortable dtype (a ``TypeError`` too when not an array or not sortable), or
            the dtypes differ between ranks.
    """
    with watchdog.watching("sample_sort", ctx):
        return _sort(ctx, keys, oversample)


def _sort(ctx: Context, keys: np.ndarray, oversample: int | None) -> np.ndarray:
    where = "hpcpar.sample_sort"
    problem: Problem | None = None
    if not isinstance(keys, np.ndarray):
        problem = "TypeError", f"keys must be a 1-D NumPy array, got {_desc(keys)}"
    elif keys.ndim != 1:
        problem = "ValueError", f"keys must be a 1-D NumPy array, got {_desc(keys)}"
    elif keys.dtype.kind not in KINDS:
        problem = ("TypeError", f"keys have dtype {keys.dtype}; sample_sort sorts bool, integer, "
                   "float, datetime and timedelta keys")
    agree(ctx.comm, where, problem, name_ranks=True)
    agree_equal(ctx.comm, where, keys.dtype, "dtype of keys")
    if oversample is not None and (isinstance(oversample, bool) or not isinstance(oversample, int)
                                   or oversample < 1):
        fail(where, f"oversample must be a positive int, got {oversample!r}",
             ValueError if isinstance(oversample, int) else TypeError)

    local = np.sort(keys)
    p, me = ctx.size, ctx.rank
    if p == 1:
        return local
    comm = ctx.comm
    n = local.size

    # regular samples of the sorted local keys, tagged with (rank, position)
    s = oversample or max(p, 64)
    pos = (np.arange(1, s + 1, dtype=np.int64) * n) // (s + 1) if n else np.empty(0, np.int64)
    counts = comm.allgather(int(pos.size))
    all_vals = ctx.allgather(np.ascontiguousarray(local[pos]))
    all_pos = ctx.allgather(pos)
    total = sum(counts)
    if total == 0:  # no rank holds a key
        return local
    all_rank = np.repeat(np.arange(p, dtype=np.int64), counts)
    order = np.lexsort((all_pos, all_rank, all_vals))
    # sample j sits near quantile (j + 1) / (total + 1); splitter k near quantile k / p
    at = np.rint(np.arange(1, p) * (total + 1) / p).astype(np.int64) - 1
    picks = order[np.clip(at, 0, total - 1)]

    # this rank's cut before each splitter (v, q, i): keys < v, then ties by (rank, position)
    cuts = np.empty(p + 1, np.int64)
    cuts[0], cuts[-1] = 0, n
    for j, k in enumerate(picks, start=1):
        v, q = all_vals[k:k + 1], all_rank[k]
        if me < q:
            cuts[j] = np.searchsorted(local, v, side="right")[0]
        elif me > q:
            cuts[j] = np.searchsorted(local, v, side="left")[0]
        else:
            cuts[j] = all_pos[k]
    cuts = np.maximum.accumulate(cuts)  # a no-op for consistent splitters; keeps counts >= 0
    sendcounts = np.diff(cuts)
    recvcounts = np.empty(p, np.int64)
    comm.Alltoall(sendcounts, recvcounts)

    isz = local.dtype.itemsize
    out = np.empty(int(recvcounts.sum()), local.dtype)
    sdispl = cuts[:-1]
    rdispl = np.concatenate(([0], np.cumsum(recvcounts)[:-1]))
    comm.Alltoallv([local, (sendcounts * isz).tolist(), (sdispl * isz).tolist(), MPI.BYTE],
                   [out, (recvcounts * isz).tolist(), (rdispl * isz).tolist(), MPI.BYTE])
    # p sorted runs: a stable (run-detecting merge) sort merges them
    out.sort(kind="stable")
    return out


def _desc(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"a {x.ndim}-D array of shape {x.shape}"
    return type(x).__name__
