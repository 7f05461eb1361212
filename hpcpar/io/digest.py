"""Checksums of distributed arrays that any partition of the array computes alike.

A field's digest is the sum, modulo 2**64, of one 64-bit hash per element, each
mixing the element's bytes with its flat index in the global array. The sum
does not depend on how the array is cut into boxes, so the ranks that save a
checkpoint and the (possibly more or fewer) ranks that load it each hash only
their own box and add the results with one reduction of one ``uint64`` per field
(:func:`hpcpar.io.checkpoint.Checkpoint`): ``O(n / P)`` local work, a message of
fixed size. It detects flipped, lost or moved bytes (a collision has odds of
about 2**-64); it is no defence against a deliberate forgery.

Pure NumPy; nothing here communicates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["box_digest", "meta_digest"]

#: Elements hashed per pass (bounds the temporary memory to about 64 bytes each).
_CHUNK = 1 << 20
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        return _mix_unchecked(x)


def _mix_unchecked(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def box_digest(block: Any, start: Sequence[int], gshape: Sequence[int]) -> int:
    """The digest of ``block``, the box at ``start`` of a global array of shape ``gshape``. **Local**.

    The digests of the boxes of any partition of an array add up (modulo 2**64)
    to the same number. A 0-d ``block`` (a scalar) is the element at index 0.

    Returns:
        An int in ``[0, 2**64)``.
    """
    a = np.asarray(block)
    if a.size == 0:
        return 0
    if a.ndim == 0:
        a, start, gshape = a.reshape(1), (0,), (1,)
    a = np.ascontiguousarray(a)
    size, words = a.dtype.itemsize, -(-a.dtype.itemsize // 8)
    weights = _mix(np.arange(1, words + 1, dtype=np.uint64) * _GOLDEN)
    last = a.shape[-1]
    nrows = a.size // last
    # the flat global index of the first element of every row of the box
    lead = np.unravel_index(np.arange(nrows), a.shape[:-1]) if a.ndim > 1 else ()
    firsts = tuple(i + s for i, s in zip(lead, start[:-1])) + (np.full(nrows, start[-1]),)
    bases = np.ravel_multi_index(firsts, tuple(gshape)).astype(np.uint64)
    flat_all = a.reshape(-1).view(np.uint8).reshape(-1, size)
    total = np.zeros(1, np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, a.size, _CHUNK):
            part = flat_all[lo:lo + _CHUNK]
            if size % 8:
                padded = np.zeros((part.shape[0], words * 8), np.uint8)
                padded[:, :size] = part
                part = padded
            words_of = part.view("<u8")
            h = words_of[:, 0] * weights[0]
            for w in range(1, words):
                h += words_of[:, w] * weights[w]
            e = np.arange(lo, lo + part.shape[0], dtype=np.int64)
            flat = bases[e // last] + (e % last).astype(np.uint64)
            total += _mix(h ^ _mix(flat + _GOLDEN)).sum(dtype=np.uint64)
    return int(total[0])


def meta_digest(items: dict[str, Any]) -> str:
    """A hex digest (BLAKE2b, 16 bytes) of ``items``' ``repr``, keys sorted. **Local**."""
    text = repr(sorted((str(k), repr(v)) for k, v in items.items()))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
