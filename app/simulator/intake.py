"""A model route's first steps, as vLLM takes them: the JSON body, the record of it, the model."""

from __future__ import annotations

from typing import Any

from .config import CHAT, SimulatorConfig
from .models import ServedModels, Target
from .state import SimulatorState
from .validation import json_object
from .wire import Scope, Send, respond


class Intake:
    def __init__(self, config: SimulatorConfig, state: SimulatorState, models: ServedModels) -> None:
        self.config, self.state, self.models = config, state, models

    async def parse(self, scope: Scope, send: Send, body: bytes) -> tuple[dict[str, Any] | None, Target]:
        """The body and what it runs on, or None after answering with vLLM's error."""
        data = await json_object(scope, send, body)
        if data is None:
            return None, Target("")
        self.record(scope, data)
        model = data.get("model")
        target = self.models.resolve(model)
        if target is None:
            await respond(send, 404, self.models.unknown(str(model), pooling=self.config.kind != CHAT))
            return None, Target("")
        return data, target

    def record(self, scope: Scope, data: Any) -> None:
        self.state.received += 1
        self.state.requests.append({
            "path": scope["path"],
            "client": scope.get("client"),  # the peer address: which connection it came on
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "body": data,
        })
