"""Each backend's last minute: requests per second, errors, and latency percentiles.

Sixty one-second slots per backend and one running histogram over them: adding a request is a
few list operations; a slot older than the minute is subtracted from the running total when it
is reused or read. Latencies fall in logarithmic buckets 25 % wide (0.1 ms to ~10 min), so a
percentile is exact to within 12 % (a bucket's middle), which is what a p50/p99 on a page needs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

WINDOW = 60  # seconds
_SMALLEST = 1e-4  # seconds: the first bucket's upper edge
_GROWTH = 1.25
_BUCKETS = 72  # 1e-4 * 1.25**71 is about 760 s
_SCALE = 1 / math.log(_GROWTH)
NO_BACKEND = "none"  # requests refused before a backend was known (`metrics.gateway.NO_BACKEND`)


def _bucket(seconds: float) -> int:
    if seconds <= _SMALLEST:
        return 0
    return min(_BUCKETS - 1, 1 + int(math.log(seconds / _SMALLEST) * _SCALE))


def _middle(bucket: int) -> float:
    """A bucket's geometric middle: within 12 % of any latency that fell in it."""
    if bucket == 0:
        return _SMALLEST
    return _SMALLEST * _GROWTH ** (bucket - 0.5)


class _Minute:
    __slots__ = ("second", "count", "errors", "slot_hist", "total", "total_errors", "hist")

    def __init__(self) -> None:
        self.second = [-1] * WINDOW
        self.count = [0] * WINDOW
        self.errors = [0] * WINDOW
        self.slot_hist = [[0] * _BUCKETS for _ in range(WINDOW)]
        self.total = 0
        self.total_errors = 0
        self.hist = [0] * _BUCKETS

    def add(self, now: int, seconds: float, error: bool) -> None:
        i = now % WINDOW
        if self.second[i] != now:
            self._drop(i)
            self.second[i] = now
        bucket = _bucket(seconds)
        self.count[i] += 1
        self.slot_hist[i][bucket] += 1
        self.hist[bucket] += 1
        self.total += 1
        if error:
            self.errors[i] += 1
            self.total_errors += 1

    def _drop(self, i: int) -> None:
        if self.second[i] == -1:
            return
        if self.count[i]:
            hist, slot = self.hist, self.slot_hist[i]
            for bucket, n in enumerate(slot):
                if n:
                    hist[bucket] -= n
                    slot[bucket] = 0
            self.total -= self.count[i]
            self.total_errors -= self.errors[i]
            self.count[i] = self.errors[i] = 0
        self.second[i] = -1

    def expire(self, now: int) -> None:
        for i, second in enumerate(self.second):
            if second != -1 and second <= now - WINDOW:
                self._drop(i)

    def percentile(self, fraction: float) -> float | None:
        if not self.total:
            return None
        rank = fraction * self.total
        seen = 0
        for bucket, n in enumerate(self.hist):
            seen += n
            if seen >= rank:
                return _middle(bucket)
        return _middle(_BUCKETS - 1)  # pragma: no cover


class Traffic:
    """The last minute of every backend, fed by `activity.Activity` as requests finish."""

    __slots__ = ("_minutes", "_clock", "_born")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._minutes: dict[str, _Minute] = {}
        self._clock = clock
        self._born = clock()

    def add(self, backend: str, seconds: float, status: int) -> None:
        if backend == NO_BACKEND:
            return
        minute = self._minutes.get(backend)
        if minute is None:
            minute = self._minutes[backend] = _Minute()
        minute.add(int(self._clock()), seconds, status >= 500)

    def last_minute(self, backend: str) -> dict[str, Any]:
        """Requests and errors per second, p50 and p99 duration (seconds) over the last minute."""
        now = self._clock()
        span = max(1.0, min(float(WINDOW), now - self._born))
        minute = self._minutes.get(backend)
        if minute is None:
            return {"requests_per_s": 0.0, "errors_per_s": 0.0, "p50_s": None, "p99_s": None, "window_s": round(span)}
        minute.expire(int(now))
        p50, p99 = minute.percentile(0.5), minute.percentile(0.99)
        return {"requests_per_s": round(minute.total / span, 2), "errors_per_s": round(minute.total_errors / span, 2),
                "p50_s": round(p50, 4) if p50 is not None else None, "p99_s": round(p99, 4) if p99 is not None else None,
                "window_s": round(span)}


__all__ = ["Traffic", "WINDOW"]
