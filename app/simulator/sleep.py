"""vLLM's sleep mode (`v1/engine/core.py` sleep/wake_up/is_sleeping, `v1/executor/abstract.py`).

A sleep first pauses the scheduler (mode abort: every request ends with finish_reason "abort";
wait: running requests finish first; keep: they freeze and go on after the wake-up). Level 0 stops
there. Level 1 and 2 then put the memory tags "weights" and "kv_cache" to sleep: level 1 offloads
the weights to CPU memory, level 2 discards them, so after a level-2 wake-up the weights are
garbage until `POST /collective_rpc {"method": "reload_weights"}`. Only `--enable-sleep-mode`
(the cumem allocator) makes this free GPU memory; without it the weights never leave and a level-2
sleep loses nothing. A wake-up names tags or wakes all; scheduling resumes once no tag sleeps.
"""

from __future__ import annotations

import asyncio

from . import shapes
from .config import SimulatorConfig
from .engine import PAUSED_ALL, PAUSED_NEW, Engine
from .metrics import SimMetrics
from .state import SimulatorState

SLEEP_TAGS = frozenset(("weights", "kv_cache"))
HANG_LIMIT = 600.0  # a hung operation gives up after this long even without /_sim/release


class OperationFailed(Exception):
    """An engine utility call failed: vLLM's API answers 500 with this message."""


class SleepMode:
    def __init__(self, config: SimulatorConfig, engine: Engine, metrics: SimMetrics, state: SimulatorState) -> None:
        self.config, self.engine, self.metrics, self.state = config, engine, metrics, state
        self.sleeping_tags: set[str] = set()
        self.weights_valid = True  # False after a level-2 sleep that really discarded them

    @property
    def is_sleeping(self) -> bool:
        return self.engine.paused or bool(self.sleeping_tags)

    async def sleep(self, level: int, mode: str) -> None:
        await self._pause(mode)
        fault = self.state.take_fault("sleep")
        await self._apply(fault, "sleep")
        if level >= 1 and "weights" not in self.sleeping_tags:  # vLLM: "Executor is already sleeping."
            await asyncio.sleep(self.config.sleep_delay)
            self.sleeping_tags |= SLEEP_TAGS
            if self.config.enable_sleep_mode:
                self.state.memory_freed()
                if level == 2:
                    self.weights_valid = False
        self.metrics.record_sleep_state(asleep=True, level=level)
        self.state.sleeps += 1

    async def wake_up(self, tags: list[str] | None) -> bool:
        """Returns whether it is fully awake; a partial wake leaves the scheduler paused."""
        if tags is not None and "scheduling" in tags:
            tags = [tag for tag in tags if tag != "scheduling"]
        if (tags is None or tags) and self.sleeping_tags and all(t in self.sleeping_tags for t in tags or ()):
            await self._wake_memory(tags)
        fully_awake = not self.sleeping_tags
        if fully_awake:
            self.engine.resume()
            self.metrics.record_sleep_state(asleep=False, level=0)
            self.state.wakes += 1
        return fully_awake

    def release_kv_cache(self) -> None:
        """`/release_kv_cache_memory`: only after a completed pause with all memory resident."""
        if not self.engine.paused or self.engine.jobs:
            raise OperationFailed(shapes.call_failed("release_kv_cache_memory", "release_kv_cache_memory() requires "
                                                     "a completed pause first", in_worker=False))
        if self.sleeping_tags:
            raise OperationFailed(shapes.call_failed("release_kv_cache_memory", "release_kv_cache_memory() requires "
                                                     "all executor memory to be resident", in_worker=False))
        self.sleeping_tags.add("kv_cache")
        self.metrics.record_sleep_state(asleep=True, level=0)

    def reload_weights(self) -> None:
        if "weights" in self.sleeping_tags and self.config.enable_sleep_mode:
            reason = "CUDA error: an illegal memory access was encountered (the weights are asleep: wake_up tags=weights first)"
            raise OperationFailed(shapes.call_failed("collective_rpc", reason, self.config.executor_backend))
        self.weights_valid = True

    async def _pause(self, mode: str) -> None:
        if mode == "abort":
            aborted = self.engine.abort_all()
            self.engine.pause(PAUSED_NEW)
            await self.engine.until_gone(aborted)  # vLLM sends the abort outputs before answering
        elif mode == "wait":
            self.engine.pause(PAUSED_NEW)
            await self.engine.drained()
        else:
            self.engine.pause(PAUSED_ALL)

    async def _wake_memory(self, tags: list[str] | None) -> None:
        if self.config.enable_sleep_mode:
            self.state.memory_taken()  # from the first mapped byte: an overlap check must see it
        try:
            await self._apply(self.state.take_fault("wake"), "wake_up")
        except OperationFailed:
            if self.config.enable_sleep_mode and self.sleeping_tags == SLEEP_TAGS:
                self.state.memory_freed()
            raise
        await asyncio.sleep(self.config.wake_delay)
        self.sleeping_tags -= set(tags) if tags else self.sleeping_tags

    async def _apply(self, fault: str | None, method: str) -> None:
        if fault == "hang":
            await self.state.hold(HANG_LIMIT)
        elif fault == "fail":
            reason = "CUDA error: out of memory (simulated by POST /_sim/faults)"
            raise OperationFailed(shapes.call_failed(method, reason, self.config.executor_backend))
