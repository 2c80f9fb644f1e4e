"""The Responses API: `POST /v1/responses`, and `GET /v1/responses/{id}`, `POST .../{id}/cancel`
on the responses this process keeps (vLLM's in-memory store, `VLLM_ENABLE_RESPONSES_API_STORE=1`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from . import shapes
from .engine import Aborted
from .lora import LoadFailed
from .models import Target
from .parts import Parts
from .wire import METHOD_NOT_ALLOWED, Handler, Receive, Scope, Send, respond

PREFIX = "/v1/responses/"


class Responses:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.stored: dict[str, dict[str, Any]] = {}  # response id -> the response

    def routes(self) -> dict[str, Handler]:
        return {"/v1/responses": self.create}

    async def create(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        """A four-word answer, kept unless `store` is false; `previous_response_id` must name one
        this process keeps. It waits for the engine like any generation (an abort is not modelled)."""
        data, target = await self.parts.intake.parse(scope, send, body)
        if data is None:
            return
        previous = data.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            await respond(send, 404, shapes.error(f"Response with id '{previous}' not found.", "invalid_request_error",
                                                  404, "previous_response_id"))
            return
        try:
            words = await self._words(target)
        except LoadFailed as exc:
            await respond(send, exc.status, exc.body)
            return
        response: dict[str, Any] = {
            "id": f"resp_{uuid.uuid4().hex[:16]}", "object": "response", "created_at": int(time.time()),
            "model": target.name, "status": "completed", "previous_response_id": previous,
            "output": [{"type": "message", "id": "msg_sim", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": shapes.text(words, 4), "annotations": []}]}],
            "usage": {"input_tokens": 4, "output_tokens": 4, "total_tokens": 8},
        }
        if data.get("store", True):
            self.stored[response["id"]] = response
        if not data.get("stream"):
            await respond(send, 200, orjson.dumps(response))
            return
        await self.parts.lifecycle.run_streaming(receive, send, self._events(response, words))

    async def _words(self, target: Target) -> tuple[str, ...]:
        with contextlib.suppress(Aborted):
            async with self.parts.running(target):
                return self.parts.vocabulary(target)
        return shapes.vocabulary(target.adapter)

    async def _events(self, response: dict[str, Any], words: tuple[str, ...]) -> AsyncIterator[bytes]:
        started = {**response, "status": "in_progress", "output": []}
        events: list[tuple[str, dict[str, Any]]] = [("response.created", {"response": started})]
        events += [("response.output_text.delta", {"item_id": "msg_sim", "output_index": 0, "content_index": 0,
                                                   "delta": words[i]}) for i in range(4)]
        events.append(("response.completed", {"response": response}))
        for number, (kind, fields) in enumerate(events):
            payload = orjson.dumps({"type": kind, "sequence_number": number, **fields})
            yield b"event: %s\ndata: %s\n\n" % (kind.encode(), payload)
            await asyncio.sleep(self.parts.config.token_delay)

    async def stored_response(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        response_id, _, action = scope["path"][len(PREFIX):].partition("/")
        self.parts.intake.record(scope, {"response_id": response_id, "action": action or "retrieve"})
        if (scope["method"], action) not in (("GET", ""), ("POST", "cancel")):
            await respond(send, 405 if action in ("", "cancel") else 404, METHOD_NOT_ALLOWED)
            return
        response = self.stored.get(response_id)
        if response is None:
            await respond(send, 404, shapes.error(f"Response with id '{response_id}' not found.",
                                                  "invalid_request_error", 404, "response_id"))
            return
        if action == "cancel":
            response = {**response, "status": "cancelled"}
        await respond(send, 200, orjson.dumps(response))
