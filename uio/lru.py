"""A bounded least-recently-used cache measured in bytes (memories kept in RAM or on the GPU, prompt heads).

Documents differ in size by orders of magnitude (a leaflet's memories are
kilobytes, a 1,000-page book's hundreds of megabytes), so a count of entries
says nothing about the RAM used; the bound is in bytes.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """At most ``capacity`` bytes of values; the least recently used go first.

    ``size`` tells a value's bytes. A value larger than the whole capacity is
    not kept (it would evict everything and then itself).
    """

    def __init__(self, capacity: int, size: Callable[[V], int]):
        self.capacity, self._size = max(0, int(capacity)), size
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.nbytes = 0
        self._lock = threading.RLock()  # UI sessions may look up memories while another question loads some

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: V) -> None:
        n = int(self._size(value))
        with self._lock:
            self.pop(key)
            if n > self.capacity:
                return
            self._items[key] = (value, n)
            self.nbytes += n
            while self.nbytes > self.capacity:
                _, (_, dropped) = self._items.popitem(last=False)
                self.nbytes -= dropped

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self.nbytes -= item[1]
            return item[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._items)
