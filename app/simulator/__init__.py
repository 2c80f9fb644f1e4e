"""A vLLM-compatible server for the demo and the tests (no GPU, no model weights).

`Simulator(SimulatorConfig(...))` is the ASGI app; `app.py` says which routes it has and the
other modules say how each behaves and which vLLM source it follows.
"""

from .adapters import write_adapter
from .app import Simulator
from .config import (
           CHAT,
           EMBEDDING,
           LoRAModule,
           SimulatorConfig,
           environment_flags,
           parse_lora_module,
)
from .state import SimulatorState

__all__ = ["CHAT", "EMBEDDING", "LoRAModule", "Simulator", "SimulatorConfig", "SimulatorState", "environment_flags",
           "parse_lora_module", "write_adapter"]
