"""A small thread-safe LRU cache bounded by entry count and by bytes.

Format views and parsed circuits are derived data: recomputable, so a bounded cache in
memory is all they need. Worker threads fill it, hence the lock.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    def __init__(
        self, max_entries: int, max_bytes: int = 0, sizeof: Callable[[V], int] = lambda _: 0
    ) -> None:
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._sizeof = sizeof
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def peek(self, key: Hashable) -> V | None:
        """The value if cached, without counting a hit or a miss or refreshing it."""
        with self._lock:
            return self._data.get(key)

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= self._sizeof(old)
            self._data[key] = value
            self._bytes += self._sizeof(value)
            while len(self._data) > self._max_entries or (
                self._max_bytes and self._bytes > self._max_bytes and len(self._data) > 1
            ):
                _, evicted = self._data.popitem(last=False)
                self._bytes -= self._sizeof(evicted)
