"""`/v1/chat/completions` and `/v1/completions`: vLLM's bodies, its SSE framing, its errors.

Faults (`x-sim-fault`): hang_head never answers; hang_stream stalls after two tokens;
close_mid_stream drops the connection there; slow makes tokens ten times slower; hold parks the
generation (after a stream's head) until `POST /_sim/release`.
A request the engine aborts (a sleep with mode abort) ends as vLLM's does: a stream gets a last
chunk with empty content and finish_reason "abort" (none when no token was out yet), then its
usage chunk if asked and `[DONE]`; a whole answer is a 200 with the text so far and "abort".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from . import shapes
from .engine import Aborted
from .lifecycle import injected_fault
from .lora import LoadFailed
from .models import Target
from .parts import Parts
from .wire import Handler, Receive, Scope, Send, header, respond


@dataclass
class Ask:
    """One generation request, checked."""

    rid: str
    target: Target
    chat: bool
    max_tokens: int
    prompt_tokens: int
    delay: float
    fault: str | None
    include_usage: bool = False


class Generation:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def routes(self) -> dict[str, Handler]:
        return {"/v1/chat/completions": self.chat, "/v1/completions": self.completions}

    async def chat(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        await self._generate(scope, receive, send, body, chat=True)

    async def completions(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        await self._generate(scope, receive, send, body, chat=False)

    async def _generate(self, scope: Scope, receive: Receive, send: Send, body: bytes, chat: bool) -> None:
        data, target = await self.parts.intake.parse(scope, send, body)
        if data is None:
            return
        fault = await injected_fault(scope, send)
        if fault == "done":
            return
        ask = await self._check(scope, send, data, target, chat, fault)
        if ask is None:
            return
        lifecycle = self.parts.lifecycle
        if data.get("stream"):
            ask.include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
            await lifecycle.run_streaming(receive, send, self._stream(ask))
        else:
            await lifecycle.run_with_cancellation(receive, send, self._complete(ask))

    async def _check(self, scope: Scope, send: Send, data: dict[str, Any], target: Target, chat: bool,
                     fault: str | None) -> Ask | None:
        config = self.parts.config
        if chat and not isinstance(data.get("messages"), list):
            await respond(send, 400, shapes.missing_field_error("messages", data))
            return None
        if not chat and not data.get("prompt"):
            await respond(send, 400, shapes.error("Either prompt or prompt_embeds must be provided and non-empty. "
                                                  "(parameter=prompt)", "BadRequestError", 400, "prompt"))
            return None
        max_tokens = data.get("max_tokens") or data.get("max_completion_tokens") or config.default_max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            await respond(send, 400, shapes.error("max_tokens must be at least 1", "BadRequestError", 400, "max_tokens"))
            return None
        if max_tokens > config.max_model_len:
            message = (f"max_tokens={max_tokens} cannot be greater than max_model_len={config.max_model_len}. "
                       f"Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})")
            await respond(send, 400, shapes.error(message, "BadRequestError", 400, "max_tokens"))
            return None
        prompt_tokens = shapes.tokens_for(orjson.dumps(data.get("messages") if chat else data.get("prompt")).decode())
        rid = shapes.request_id("chatcmpl" if chat else "cmpl", (header(scope, b"x-request-id") or b"").decode() or None)
        delay = config.token_delay * (10 if fault == "slow" else 1)
        return Ask(rid, target, chat, max_tokens, prompt_tokens, delay, fault)

    async def _stream(self, ask: Ask) -> AsyncIterator[bytes]:
        created, started = int(time.time()), time.perf_counter()
        name, chat, metrics = ask.target.name, ask.chat, self.parts.metrics
        if ask.fault == "hold":
            await self.parts.state.hold()
        emitted, role_sent = 0, False
        try:
            async with self.parts.running(ask.target) as job:
                words = self.parts.vocabulary(ask.target)
                if chat:
                    role_sent = True
                    yield shapes.chat_chunk(ask.rid, created, name, {"role": "assistant", "content": ""}, None, first=True)
                for i in range(ask.max_tokens):
                    await self.parts.engine.step(job, ask.delay)
                    if i == 0:
                        metrics.ttft.observe(time.perf_counter() - started)
                    if i == 2 and ask.fault == "hang_stream":
                        await asyncio.sleep(3600)
                    if i == 2 and ask.fault == "close_mid_stream":
                        raise ConnectionAbortedError("simulated backend crash mid-stream")
                    finish = "length" if i == ask.max_tokens - 1 else None
                    marked = finish is not None and not ask.include_usage
                    piece = words[i % len(words)]
                    if chat:
                        yield shapes.chat_chunk(ask.rid, created, name, {"content": piece}, finish, fingerprint=marked)
                    else:
                        yield shapes.text_chunk(ask.rid, created, name, piece, finish, fingerprint=marked)
                    emitted += 1
            reason = "length"
        except Aborted:
            reason = "abort"
            if chat and not role_sent:  # vLLM sends the role chunk with the first output, the abort
                yield shapes.chat_chunk(ask.rid, created, name, {"role": "assistant", "content": ""}, None, first=True)
            if emitted:
                marked = not ask.include_usage
                if chat:
                    yield shapes.chat_chunk(ask.rid, created, name, {"content": ""}, "abort", fingerprint=marked)
                else:
                    yield shapes.text_chunk(ask.rid, created, name, "", "abort", fingerprint=marked)
        except LoadFailed as exc:
            yield b"data: " + exc.body + b"\n\n" + shapes.DONE
            return
        metrics.count_tokens(ask.prompt_tokens, emitted, started, reason)
        if ask.include_usage:
            yield shapes.usage_chunk(ask.rid, created, name, "chat.completion.chunk" if chat else "text_completion",
                                     ask.prompt_tokens, emitted)
        yield shapes.DONE

    async def _complete(self, ask: Ask) -> tuple[int, bytes]:
        started = time.perf_counter()
        if ask.fault == "hang_head":
            await asyncio.sleep(3600)
        if ask.fault == "hold":
            await self.parts.state.hold()
        emitted, reason, words = 0, "length", shapes.vocabulary()
        try:
            async with self.parts.running(ask.target) as job:
                words = self.parts.vocabulary(ask.target)
                for _ in range(ask.max_tokens):
                    await self.parts.engine.step(job, ask.delay)
                    emitted += 1
        except Aborted:
            reason = "abort"
        except LoadFailed as exc:
            return exc.status, exc.body
        metrics = self.parts.metrics
        metrics.ttft.observe(time.perf_counter() - started)
        metrics.count_tokens(ask.prompt_tokens, emitted, started, reason)
        build = shapes.chat_completion if ask.chat else shapes.text_completion
        return 200, orjson.dumps(build(ask.rid, ask.target.name, shapes.text(words, emitted), ask.prompt_tokens,
                                       emitted, reason))
