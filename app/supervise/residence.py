"""The seam between a supervised process and the residency manager (`residency.manager`).

The supervisor writes lifecycles, the manager residencies; neither writes the other's. What they
ask of each other goes through here:
- the supervisor asks the manager (`Residence`) before it starts an on-demand backend's process
  (`admit`: room is made within the budget first), tells it when the process is ready
  (`loaded`), and asks, when a process ended, whether to start it again or leave it parked
  (`keep_running`);
- the manager asks a unit to end its process and stay down (`park`) or to start it again
  (`unpark`), through the unit's `Parking`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..routing.backend import Backend


class Residence(Protocol):
    async def admit(self, backend: Backend) -> None:
        """Return once `backend` may load (its share is free and counted for it)."""

    def loaded(self, backend: Backend) -> None:
        """Its process answered /health (and was warmed up)."""

    def keep_running(self, backend: Backend) -> bool:
        """After its process ended: True to restart it as usual, False to leave it parked."""


class Parking:
    """Whether a unit's process should be down on purpose, and the waits on that.

    `wanted` is the manager's request; the unit's task reaches it (`reached`) and reports each
    start that follows an unpark (`start_result`)."""

    def __init__(self, parked: bool) -> None:
        self.wanted = parked
        self.is_parked = False
        self._changed = asyncio.Event()
        self._reached = asyncio.Event()
        self._start: asyncio.Future[str | None] | None = None

    def request(self) -> None:
        self.wanted = True
        self._changed.set()

    async def until_parked(self) -> None:
        await self._reached.wait()

    def release(self) -> asyncio.Future[str | None]:
        """Start it again: the future gets None once it is ready, else why the attempt failed."""
        self.wanted = False
        if self._start is None or self._start.done():
            self._start = asyncio.get_running_loop().create_future()
        self._changed.set()
        return self._start

    def reached(self) -> None:
        self.is_parked = True
        self._reached.set()

    async def until_released(self) -> None:
        while self.wanted:
            self._changed.clear()
            await self._changed.wait()
        self.is_parked = False
        self._reached.clear()

    async def until_requested(self) -> None:
        while not self.wanted:
            self._changed.clear()
            await self._changed.wait()

    def start_result(self, error: str | None) -> None:
        start = self._start
        if start is not None and not start.done():
            start.set_result(error)


__all__ = ["Parking", "Residence"]
