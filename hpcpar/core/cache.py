"""A small bounded mapping that forgets its oldest entries."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["BoundedCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A dict of at most ``maxsize`` entries; adding one more forgets the oldest one.

    **Local**. Used for every cache of the checked collectives (headers, plans, call
    sites), so no cache grows without bound in a long run whatever the calls. A
    lookup is a plain dict lookup (it sits on the hot path of every collective);
    only adding an entry costs more.

    Args:
        maxsize: the most entries kept (>= 1).

    Attributes:
        get: ``get(key)``: the value stored under ``key``, or None.
    """

    __slots__ = ("maxsize", "_data", "get")

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"BoundedCache maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._data: dict[K, V] = {}
        self.get = self._data.get

    def put(self, key: K, value: V) -> V:
        """Store ``value`` under ``key``, forgetting the oldest entry when full; return ``value``."""
        data = self._data
        if key not in data and len(data) >= self.maxsize:
            del data[next(iter(data))]
        data[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        """Forget every entry."""
        self._data.clear()
