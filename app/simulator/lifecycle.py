"""One request's life as vLLM's API server runs it: watched for a client that leaves, and the
test hook that makes it fail on purpose.

`x-sim-fault` (a request header): status_503, status_500, garbage_json answer at once; hang_head,
hang_stream, close_mid_stream, slow and hold are acted on by the generation (see generation.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from . import shapes
from .metrics import SimMetrics
from .state import SimulatorState
from .wire import Receive, Scope, Send, header, respond, until_disconnect

SSE = b"text/event-stream; charset=utf-8"


async def injected_fault(scope: Scope, send: Send) -> str | None:
    """The request's `x-sim-fault`; "done" when it has already been answered."""
    fault = (header(scope, b"x-sim-fault") or b"").decode()
    if fault == "status_503":
        await respond(send, 503, shapes.error("The engine is currently busy and cannot accept new requests.",
                                              "Service Unavailable", 503))
        return "done"
    if fault == "status_500":
        await respond(send, 500, shapes.error("The server had an error while processing your request.",
                                              "InternalServerError", 500))
        return "done"
    if fault == "garbage_json":
        await respond(send, 200, b"<html>not json at all")
        return "done"
    return fault or None


class Lifecycle:
    def __init__(self, state: SimulatorState, metrics: SimMetrics) -> None:
        self.state, self.metrics = state, metrics

    async def run_with_cancellation(self, receive: Receive, send: Send, work: Awaitable[tuple[int, bytes]]) -> None:
        """A non-streaming answer: computed while the client is watched, then sent whole."""
        finished, result = await self._unless_client_leaves(receive, work)
        if finished:
            await respond(send, *result)

    async def run_streaming(self, receive: Receive, send: Send, chunks: AsyncIterator[bytes]) -> None:
        await self._unless_client_leaves(receive, self._pump(send, chunks))

    async def _unless_client_leaves(self, receive: Receive, work: Awaitable[Any]) -> tuple[bool, Any]:
        """vLLM's `with_cancellation`: the work races a task that waits for the client to leave;
        if the client wins, the work is cancelled (vLLM aborts the generation)."""
        state = self.state
        state.start()
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(until_disconnect(receive))
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                task.cancel()
                state.disconnects += 1
                self.metrics.success.labels(*self.metrics.key, "abort").inc()
                return False, None
            result = task.result()
            state.completed += 1
            return True, result
        finally:
            watcher.cancel()
            task.cancel()
            state.running -= 1

    @staticmethod
    async def _pump(send: Send, chunks: AsyncIterator[bytes]) -> None:
        """The SSE head at once (Starlette's StreamingResponse), then each chunk as it comes."""
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", SSE)]})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:  # a cancelled stream must leave the engine now, not at garbage collection
                await aclose()
