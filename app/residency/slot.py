"""One on-demand backend as the residency manager keeps it: who waits for its wake, who holds it awake.

The manager owns every `Slot` and calls these methods from its own code only, so the in-flight
count and the waiters change in one place. Requests waiting for one backend form a queue in arrival
order; when it wakes they are let through together, each with its in-flight place taken for it at
that moment (so the backend cannot be chosen to sleep before the request's task runs).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import GatewayError
from ..routing.backend import Backend
from ..routing.state import Residency
from ..settings import LaunchConfig
from ..supervise.residence import Parking
from .client import SleepClient


class Holder(Protocol):
    """A request or session that holds a backend awake; `evict` ends it (its drain ran out)."""

    def evict(self, error: GatewayError) -> None: ...


class Unit(Protocol):
    """What the manager uses of a supervisor unit (`supervise.supervisor.Unit`)."""

    backend: Backend
    parking: Parking

    @property
    def running(self) -> bool: ...

    async def park(self) -> None: ...

    def unpark(self) -> asyncio.Future[str | None]: ...


@dataclass(eq=False)
class Waiter:
    since: float
    future: asyncio.Future[None]
    request: bool  # a request (its in-flight place is kept for it when let through), else an operator's wake


@dataclass(eq=False)
class Slot:
    backend: Backend
    residency: Residency
    launch: LaunchConfig
    sleeper: SleepClient
    unit: Unit | None = None
    waiters: collections.deque[Waiter] = field(default_factory=collections.deque)
    holders: set[Holder] = field(default_factory=set)
    admission: asyncio.Future[None] | None = None  # the supervisor waits to start it
    admission_since: float = 0.0
    sleep_waiters: list[asyncio.Future[None]] = field(default_factory=list)  # the operator's sleeps
    draining_since: float | None = None

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def wanted_since(self) -> float | None:
        """The oldest request, start or operator waiting for it to be awake."""
        since = [waiter.since for waiter in self.waiters]
        if self.admission is not None:
            since.append(self.admission_since)
        return min(since) if since else None

    def wait_for_wake(self, now: float, request: bool) -> Waiter:
        waiter = Waiter(now, asyncio.get_running_loop().create_future(), request)
        self.waiters.append(waiter)
        self.residency.waiting += request
        return waiter

    def forget(self, waiter: Waiter) -> bool:
        """A waiter that left (timed out, cancelled); True when it was still queued."""
        if waiter not in self.waiters:
            return False
        self.waiters.remove(waiter)
        self.residency.waiting -= waiter.request
        return True

    def let_through(self, now: float) -> None:
        """Every waiter, in arrival order."""
        while self.waiters:
            waiter = self.waiters.popleft()
            self.residency.waiting -= waiter.request
            if waiter.future.done():
                continue
            if waiter.request:
                self.count_in(now)
            waiter.future.set_result(None)

    def fail_waiters(self, error: GatewayError) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            self.residency.waiting -= waiter.request
            if not waiter.future.done():
                waiter.future.set_exception(error)
        for future in self.sleep_waiters:
            if not future.done():
                future.set_exception(error)
        self.sleep_waiters.clear()

    def count_in(self, now: float) -> None:
        residency = self.residency
        residency.in_flight += 1
        residency.last_used = now
        residency.used_since_wake = True

    def count_out(self, now: float) -> bool:
        """One request fewer; True when none is left in flight."""
        residency = self.residency
        residency.in_flight -= 1
        residency.last_used = now
        return residency.in_flight == 0


__all__ = ["Holder", "Slot", "Unit", "Waiter"]
