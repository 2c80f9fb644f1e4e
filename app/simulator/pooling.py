"""The pooling routes of an embedding model: embeddings (and `/pooling`), classify, score, rerank.

They run on the engine like a generation: queued while it sleeps, and a vector made from garbage
weights (a level-2 wake-up without reload) differs from the real one.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import shapes
from .engine import Aborted
from .lifecycle import injected_fault
from .lora import LoadFailed
from .models import Target
from .parts import Parts
from .wire import Handler, Receive, Scope, Send, respond


class Pooling:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def routes(self) -> dict[str, Handler]:
        return {"/v1/embeddings": self.embeddings, "/pooling": self.embeddings, "/classify": self.classify,
                "/score": self.score, "/v1/score": self.score, "/rerank": self.rerank, "/v1/rerank": self.rerank}

    async def embeddings(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        data, target = await self.parts.intake.parse(scope, send, body)
        if data is None or await injected_fault(scope, send) == "done":
            return
        raw = data.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            await respond(send, 400, shapes.error("1 validation error:\n  input must be a string or a list of strings",
                                                  "Bad Request", 400, "body.input"))
            return
        await self.parts.lifecycle.run_with_cancellation(receive, send, self._embed(target, inputs, data))

    async def _embed(self, target: Target, inputs: list[str], data: dict[str, Any]) -> tuple[int, bytes]:
        salt = await self._on_engine(target)
        if isinstance(salt, LoadFailed):
            return salt.status, salt.body
        self.parts.metrics.prompt.inc(sum(shapes.tokens_for(t) for t in inputs))
        payload = shapes.embeddings(shapes.request_id("embd", None), target.name, inputs, self.parts.config.embedding_dim,
                                    base64_encoded=data.get("encoding_format") == "base64", salt=salt)
        return 200, orjson.dumps(payload)

    async def classify(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        data, target = await self.parts.intake.parse(scope, send, body)
        if data is None or await self._failed(send, target):
            return
        await respond(send, 200, orjson.dumps({"id": shapes.request_id("classify", None), "object": "list",
                                               "model": target.name, "data": [{"index": 0, "label": "LABEL_0",
                                                                               "probs": [1.0], "num_classes": 1}]}))

    async def score(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        data, target = await self.parts.intake.parse(scope, send, body)
        if data is None or await self._failed(send, target):
            return
        await respond(send, 200, orjson.dumps({"id": shapes.request_id("score", None), "object": "list",
                                               "model": target.name,
                                               "data": [{"index": 0, "object": "score", "score": 0.5}]}))

    async def rerank(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        data, target = await self.parts.intake.parse(scope, send, body)
        if data is None or await self._failed(send, target):
            return
        documents = data.get("documents") or []
        results = [{"index": i, "document": {"text": d if isinstance(d, str) else ""}, "relevance_score": 1.0 / (i + 1)}
                   for i, d in enumerate(documents)]
        await respond(send, 200, orjson.dumps({"id": shapes.request_id("rerank", None), "model": target.name,
                                               "results": results}))

    async def _on_engine(self, target: Target) -> str | LoadFailed:
        """Wait for the engine; the text prefix that makes vectors those of the weights it has."""
        try:
            async with self.parts.running(target):
                garbage = not self.parts.sleep.weights_valid
        except Aborted:
            garbage = False
        except LoadFailed as exc:
            return exc
        return ("\ufffd" if garbage else "") + (f"{target.adapter}:" if target.adapter else "")

    async def _failed(self, send: Send, target: Target) -> bool:
        outcome = await self._on_engine(target)
        if isinstance(outcome, LoadFailed):
            await respond(send, outcome.status, outcome.body)
            return True
        return False
