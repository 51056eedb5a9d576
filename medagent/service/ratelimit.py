"""Token buckets: per API key for requests, per client address for failed logins.

A bucket holds up to ``burst`` tokens and gains ``rate_per_s`` a second; a request takes one. An empty
bucket answers how long until the next token, which the service sends as ``429`` with ``Retry-After``
(whole seconds, rounded up). Buckets live in memory, per process, and the least recently used are
forgotten past a bound (a forgotten bucket comes back full: a brief allowance, never a lock-out).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

MAX_BUCKETS: Final = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, *, max_buckets: int = MAX_BUCKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._max_buckets = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str, *, rate_per_s: float | None = None, burst: int | None = None) -> float:
        """Take one token from ``key``'s bucket: 0.0 when taken, else the seconds until one is there.
        ``rate_per_s`` and ``burst`` override the limiter's defaults for this key."""
        rate, capacity = rate_per_s or self.rate_per_s, burst or self.burst
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens=float(capacity), updated=now)
                while len(self._buckets) > self._max_buckets:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                bucket.tokens = min(float(capacity), bucket.tokens + (now - bucket.updated) * rate)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / rate


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, never 0 (a client told 0 would retry at once and be refused again)."""
    return str(max(1, math.ceil(seconds)))
