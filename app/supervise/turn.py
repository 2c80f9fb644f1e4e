"""The one-at-a-time turn for everything that moves GPU memory: a start, a restart, a sleep, a wake.

vLLM instances that profile GPU memory while another one allocates or frees it on the same GPU
mis-size their KV caches or fail to start (vLLM issues 14376 and 55827; its maintainers: "avoid
stopping or sleeping another instance on the same GPU while one is starting"). The supervisor
takes the turn to load a process; the residency manager takes it to put one to sleep or wake
it. First come, first served (asyncio's lock wakes its waiters in order).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class LoadingTurn:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.holder: str | None = None  # who has the turn now, for logs and tests

    def locked(self) -> bool:
        return self._lock.locked()

    def taken_by(self, who: str) -> _Taken:
        """`async with turn.taken_by("wake chat-a"):` names the holder; `async with turn:` does not."""
        return _Taken(self, who)

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        self.holder = None
        self._lock.release()


class _Taken:
    def __init__(self, turn: LoadingTurn, who: str) -> None:
        self.turn, self.who = turn, who

    async def __aenter__(self) -> None:
        await self.turn.__aenter__()
        self.turn.holder = self.who

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.turn.__aexit__(kind, error, trace)


__all__ = ["LoadingTurn"]
