"""A request rate limit per API key: a token bucket per key, held in this process.

The bucket holds a minute's worth of requests and refills continuously, so a
key may burst up to its per-minute limit and then go on at the steady rate.
With several API processes, each enforces the limit on its own: a key may make
up to N times the limit across N processes (divide the setting by N to hold
the total).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def acquire(self, key_id: int) -> float | None:
        """Take one request from the key's bucket: None if allowed, else seconds to wait."""
        if not self.enabled:
            return None
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                bucket = self._buckets[key_id] = _Bucket(float(self.per_minute), now)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(self.per_minute), bucket.tokens + elapsed * self._rate)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return (1.0 - bucket.tokens) / self._rate


def retry_after_seconds(wait_seconds: float) -> int:
    """Retry-After takes whole seconds: round up, and never say 0."""
    return max(1, math.ceil(wait_seconds))
