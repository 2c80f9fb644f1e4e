"""A circuit breaker per backend, fed by real traffic and by health checks.

Closed: requests flow. After `failure_threshold` consecutive connection failures it opens: the
backend's models answer 503 at once instead of every client waiting on connect timeouts. After
`reset_timeout` one request (or a passing health check) is let through half-open; its success
closes the breaker, its failure opens it again. Only failures to reach the backend count: an
answer, even a 4xx or a 500, proves the backend is there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    __slots__ = ("threshold", "reset_timeout", "state", "failures", "opened_at", "_clock")

    def __init__(self, threshold: int, reset_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_timeout = reset_timeout
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._clock = clock

    def allow(self) -> bool:
        """May a request go through now? In half-open state only one trial is let through."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self._clock() - self.opened_at >= self.reset_timeout:
            self.state = HALF_OPEN
            return True
        return False

    def record_success(self) -> None:
        self.state = CLOSED
        self.failures = 0

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self.state = OPEN
            self.opened_at = self._clock()

    def trip(self) -> None:
        """Open now (a failed health check): traffic probes half-open after `reset_timeout`."""
        if self.state != OPEN:
            self.state = OPEN
            self.opened_at = self._clock()

    def retry_after(self) -> float:
        if self.state != OPEN:
            return 1.0
        return max(1.0, self.reset_timeout - (self._clock() - self.opened_at))
