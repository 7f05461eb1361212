"""A small bounded mapping that forgets its least recently used entries."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["LRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A dict of at most ``maxsize`` entries; adding one more forgets the least recently used.

    **Local**. Used for every cache of the checked collectives (headers, plans, call
    sites), so no cache grows without bound in a long run whatever the calls.

    Args:
        maxsize: the most entries kept (>= 1).
    """

    __slots__ = ("maxsize", "_data")

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"LRU maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        data = self._data
        value = data.get(key)
        if value is not None:
            data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> V:
        """Store ``value`` under ``key``, forgetting the oldest entry when full; return ``value``."""
        data = self._data
        data[key] = value
        data.move_to_end(key)
        if len(data) > self.maxsize:
            data.popitem(last=False)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        """Forget every entry."""
        self._data.clear()
