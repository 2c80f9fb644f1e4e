"""The engine's scheduler as a client sees it: which requests run, which wait, and pausing.

vLLM's scheduler has three pause states (`v1/core/sched/interface.py`): UNPAUSED; PAUSED_NEW, where
requests already running go on but new ones stay queued (a sleep with mode abort or wait); and
PAUSED_ALL, where nothing is scheduled and running requests are frozen (mode keep). A request that
arrives while paused is queued, not refused: its HTTP request hangs until the engine resumes.
With LoRA, at most `max_loras` distinct adapters run at once; requests for another adapter wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from .metrics import SimMetrics

UNPAUSED, PAUSED_NEW, PAUSED_ALL = "unpaused", "paused_new", "paused_all"


class Aborted(Exception):
    """The engine aborted the request (a sleep with mode abort): it ends with finish_reason "abort"."""


@dataclass(eq=False)
class Job:
    adapter: str | None = None
    started: bool = False  # scheduled (running) rather than queued
    aborted: bool = False


class Engine:
    def __init__(self, metrics: SimMetrics, max_loras: int | None = None) -> None:
        self.metrics = metrics
        self.max_loras = max_loras  # None: LoRA off, no slot accounting
        self.pause_state = UNPAUSED
        self.jobs: dict[Job, None] = {}  # in arrival order
        self._changed = asyncio.Event()  # set (and replaced) whenever a job may be able to move on

    @property
    def running(self) -> list[Job]:
        return [job for job in self.jobs if job.started]

    @property
    def waiting(self) -> list[Job]:
        return [job for job in self.jobs if not job.started]

    @property
    def paused(self) -> bool:
        return self.pause_state != UNPAUSED

    @contextlib.asynccontextmanager
    async def scheduled(self, adapter: str | None = None) -> AsyncIterator[Job]:
        """A request's time in the engine: queued until it may run, then running until it leaves."""
        job = Job(adapter)
        self.jobs[job] = None
        try:
            await self._until(job, lambda: self._may_start(job))
            job.started = True
            self._record_lora()
            yield job
        finally:
            self.jobs.pop(job, None)
            self._notify()
            self._record_lora()

    async def step(self, job: Job, delay: float) -> None:
        """One decode step: the token delay, then frozen while PAUSED_ALL; `Aborted` once aborted."""
        if delay:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + delay
            while not job.aborted and loop.time() < deadline:
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await changed.wait()  # only an abort cuts the token short
        await self._until(job, lambda: self.pause_state != PAUSED_ALL)

    def pause(self, state: str) -> None:
        self.pause_state = state
        self._notify()

    def resume(self) -> None:
        self.pause_state = UNPAUSED
        self._notify()

    def abort_all(self) -> list[Job]:
        """vLLM's `finish_requests(None, FINISHED_ABORTED)`: every request, running or queued."""
        aborted = list(self.jobs)
        for job in aborted:
            job.aborted = True
        self._notify()
        return aborted

    async def until_gone(self, jobs: list[Job]) -> None:
        """Until these requests have left the engine (their answers are out)."""
        while any(job in self.jobs for job in jobs):
            changed = self._changed
            await changed.wait()

    async def drained(self) -> None:
        """Until no request runs (mode wait); queued ones stay queued."""
        await self.until_gone(self.running)

    def _may_start(self, job: Job) -> bool:
        if self.paused:
            return False
        if self.max_loras is None or job.adapter is None:
            return True
        active = {j.adapter for j in self.jobs if j.started and j.adapter is not None}
        return job.adapter in active or len(active) < self.max_loras

    async def _until(self, job: Job, ready: Callable[[], bool]) -> None:
        while True:
            if job.aborted:
                raise Aborted()
            if ready():
                return
            changed = self._changed
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _record_lora(self) -> None:
        """A scheduler step's stats. vLLM lists every adapter with a request in flight under both
        labels (its per-adapter counts may be 0), in the order they first came."""
        if self.max_loras is not None:
            self.metrics.record_lora_requests(list(dict.fromkeys(j.adapter for j in self.jobs if j.adapter)))
