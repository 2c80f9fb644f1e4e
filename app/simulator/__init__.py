"""A vLLM-compatible server for the demo and the tests (no GPU, no model weights)."""

from .server import CHAT, EMBEDDING, Simulator, SimulatorConfig, SimulatorState

__all__ = ["CHAT", "EMBEDDING", "Simulator", "SimulatorConfig", "SimulatorState"]
