"""Which names the simulator serves, `/v1/models`, and which model a request's `model` means.

As vLLM's `OpenAIServingModels`: the base model under each `--served-model-name` (answers carry the
first), then the adapters: those the config lists by name and those loaded from disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from . import shapes
from .config import SimulatorConfig
from .lora import Adapter, LoRAManager
from .wire import Receive, Scope, Send, respond


@dataclass(frozen=True)
class Target:
    """What a request runs on: the name its answer carries, and the adapter if any."""

    name: str
    adapter: str | None = None
    loaded: Adapter | None = None  # a runtime or `--lora-modules` adapter (needs the engine's copy)


class ServedModels:
    def __init__(self, config: SimulatorConfig, lora: LoRAManager) -> None:
        self.config, self.lora = config, lora

    @property
    def base(self) -> str:
        return self.config.models[0]

    def resolve(self, model: str | None) -> Target | None:
        """None when nothing by that name is served (vLLM's 404)."""
        if not model or model in self.config.models:
            return Target(self.base)
        if not isinstance(model, str):
            return None
        if model in self.lora.adapters:
            return Target(model, model, self.lora.adapters[model])
        if model in self.config.lora_adapters:
            return Target(model, model)
        return None

    def unknown(self, model: str, pooling: bool = False) -> bytes:
        if pooling:  # vLLM's pooling routes word it differently
            return shapes.error(f"The model `{model}` does not exist.", "NotFoundError", 404)
        message = f"The model `{model}` does not exist. Valid aliases: {', '.join(self.config.models)}."
        return shapes.error(message, "NotFoundError", 404, "model")

    def cards(self) -> list[dict]:
        root = self.config.root or self.base
        length = self.config.max_model_len
        cards = [shapes.model_card(name, root, length) for name in self.config.models]
        cards += [shapes.model_card(name, f"/adapters/{name}", length, parent=self.base)
                  for name in self.config.lora_adapters]
        cards += [shapes.model_card(a.name, a.path, length, parent=a.base_model_name or self.base)
                  for a in self.lora.adapters.values()]
        return cards

    async def route(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        await respond(send, 200, orjson.dumps({"object": "list", "data": self.cards()}))
