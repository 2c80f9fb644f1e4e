"""Backpressure per backend: at most `max_concurrency` requests in flight, a bounded FIFO queue.

Off by default (vLLM queues by itself). When set, a request over the limit waits its turn in
arrival order; when the queue is full, or its wait exceeds `queue_timeout`, it gets 429 with
`Retry-After` instead of piling up in the gateway.
"""

from __future__ import annotations

import asyncio
import collections

from ..errors import TooManyRequests


class ConcurrencyLimit:
    def __init__(self, backend: str, max_concurrency: int, max_queue: int, queue_timeout: float) -> None:
        self.backend = backend
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.active = 0
        self.rejected = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.active < self.max_concurrency and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.max_queue:
            self.rejected += 1
            raise self._reject(f"its queue of {self.max_queue} is full")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter
        except TimeoutError:
            self.rejected += 1
            raise self._reject(f"no slot freed within queue_timeout={self.queue_timeout:g} s") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed to us as we left: pass it on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the next in line; `active` is unchanged
                return
        self.active -= 1

    def _reject(self, why: str) -> TooManyRequests:
        return TooManyRequests(
            f"backend {self.backend!r} is at its limit of {self.max_concurrency} concurrent requests and {why}; "
            f"retry shortly",
            headers={"Retry-After": "1"},
        )

    def status(self) -> dict[str, int | float]:
        return {"max_concurrency": self.max_concurrency, "active": self.active, "waiting": self.waiting,
                "max_queue": self.max_queue, "rejected": self.rejected}
