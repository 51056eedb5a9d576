"""A process-wide model cache with a memory budget and least-recently-used eviction."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class _Entry:
    value: Any
    size_bytes: int


def torch_module_bytes(module: Any) -> int:
    """Bytes held by a torch module's parameters and buffers."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        total += tensor.numel() * tensor.element_size()
    return total


class ModelCache:
    """Loads each key once (single flight), keeps the most recently used within ``budget_bytes``.

    The entry just loaded is never evicted by its own insertion, so a model larger than
    the budget still serves its caller; it is evicted by the next load.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(entry.size_bytes for entry in self._entries.values())

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def get_or_load(self, key: str, loader: Callable[[], T], size_of: Callable[[T], int]) -> T:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key].value
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one loader per key; others wait and then hit
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return self._entries[key].value
            value = loader()
            size = int(size_of(value))
            with self._lock:
                self.misses += 1
                self._entries[key] = _Entry(value, size)
                self._evict_locked(keep=key)
            return value

    def _evict_locked(self, keep: str) -> None:
        while sum(e.size_bytes for e in self._entries.values()) > self.budget_bytes:
            victim = next((k for k in self._entries if k != keep), None)
            if victim is None:
                return
            del self._entries[victim]
            self.evictions += 1

    def evict(self, key: str) -> bool:
        with self._lock:
            return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_shared: dict[int, ModelCache] = {}
_shared_lock = threading.Lock()


def shared_cache(budget_mb: int = 4096) -> ModelCache:
    """The cache all sessions of this budget (``Settings.model_cache_mb``) share in this process, created on
    first use: a session configured with another budget gets its own instead of silently sharing the first."""
    with _shared_lock:
        if budget_mb not in _shared:
            _shared[budget_mb] = ModelCache(budget_mb * 1024 * 1024)
        return _shared[budget_mb]
