"""The pieces one simulator is made of, built once and handed to each group of routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from . import shapes
from .config import SimulatorConfig
from .engine import Engine, Job
from .intake import Intake
from .lifecycle import Lifecycle
from .lora import LoRAManager
from .metrics import SimMetrics
from .models import ServedModels, Target
from .sleep import SleepMode
from .state import SimulatorState


@dataclass
class Parts:
    config: SimulatorConfig
    state: SimulatorState
    metrics: SimMetrics
    engine: Engine
    sleep: SleepMode
    lora: LoRAManager
    models: ServedModels
    intake: Intake
    lifecycle: Lifecycle

    @classmethod
    def build(cls, config: SimulatorConfig) -> Parts:
        state = SimulatorState()
        metrics = SimMetrics(config.models[0], config.max_loras if config.enable_lora else None)
        engine = Engine(metrics, config.max_loras if config.enable_lora else None)
        lora = LoRAManager(config, state)
        models = ServedModels(config, lora)
        return cls(config, state, metrics, engine, SleepMode(config, engine, metrics, state), lora, models,
                   Intake(config, state, models), Lifecycle(state, metrics))

    @contextlib.asynccontextmanager
    async def running(self, target: Target) -> AsyncIterator[Job]:
        """On the engine: queued while it sleeps or no LoRA slot is free, the adapter read in if
        it fell out of CPU memory (`LoadFailed` if that fails), then running."""
        async with self.engine.scheduled(target.adapter) as job:
            if target.loaded is not None:
                await self.lora.activate(target.loaded)
            yield job

    def vocabulary(self, target: Target) -> tuple[str, ...]:
        return shapes.vocabulary(target.adapter, garbage=not self.sleep.weights_valid)
