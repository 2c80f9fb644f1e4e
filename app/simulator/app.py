"""The simulator's ASGI entry: lifespan, WebSocket, and HTTP routing as `vllm serve` registers it.

Routes exist only where vLLM registers them: generation routes on a chat model, pooling routes on
an embedding model, the dev routes with `dev_mode` (VLLM_SERVER_DEV_MODE=1), the LoRA routes with
`runtime_lora_updating` (VLLM_ALLOW_RUNTIME_LORA_UPDATING). Anything else is FastAPI's plain 404;
a dev or LoRA route asked with the wrong method is its 405. `/v1` routes want the API key if set.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import shapes
from .audio import Audio
from .config import CHAT, SimulatorConfig
from .dev import DevRoutes
from .generation import Generation
from .metrics import CONTENT_TYPE
from .parts import Parts
from .pooling import Pooling
from .realtime import Realtime
from .responses import PREFIX, Responses
from .state import Controls
from .tokens import Tokens
from .wire import (
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    Handler,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    respond,
)


class Simulator:
    """The ASGI application."""

    def __init__(self, config: SimulatorConfig) -> None:
        config.check()
        self.config = config
        self.parts = parts = Parts.build(config)
        parts.lora.load_static()
        self.state, self.metrics = parts.state, parts.metrics
        self.responses = Responses(parts)
        self.realtime = Realtime(parts)
        routes: dict[str, Handler] = {"/health": self._health, "/ping": self._health, "/v1/models": parts.models.route,
                                      "/version": self._version, "/load": self._load, "/metrics": self._metrics}
        routes.update(Controls(parts.state, lambda: {"lora_adapters": parts.lora.stats()}).routes())
        routes.update(Tokens(parts).routes())
        if config.kind == CHAT:
            routes.update(Generation(parts).routes())
            routes.update(self.responses.routes())
            routes.update(Audio(parts).routes())
        else:
            routes.update(Pooling(parts).routes())
        self.methods: dict[str, str] = {}  # the routes that answer one method only
        guarded = {}
        if config.dev_mode:
            guarded.update(DevRoutes(parts.sleep, parts.engine, parts.metrics).routes())
        if config.runtime_lora_updating:
            guarded.update(parts.lora.routes())
        for path, (method, handler) in guarded.items():
            routes[path], self.methods[path] = handler, method
        self.routes = routes

    @property
    def stored_responses(self) -> dict[str, dict[str, Any]]:
        return self.responses.stored

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] == "websocket":
            await self.realtime(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.state.saw(path)
        handler = self.routes.get(path)
        if handler is None and self.config.kind == CHAT and path.startswith(PREFIX):
            handler = self.responses.stored_response
        if handler is None:
            await respond(send, 404, NOT_FOUND)
            return
        key = self.config.api_key
        if key and path.startswith(("/v1", "/v2")) and header(scope, b"authorization") != f"Bearer {key}".encode():
            await respond(send, 401, b'{"error":"Unauthorized"}')
            return
        if path in self.methods and scope["method"] != self.methods[path]:
            await respond(send, 405, METHOD_NOT_ALLOWED)
            return
        body: bytes | None = b""
        if scope["method"] == "POST":
            body = await read_body(receive)
        if body is None:
            return
        self.metrics.http.labels(path, scope["method"], "2xx").inc()
        await self._dispatch(handler, scope, receive, send, body)

    async def _dispatch(self, handler: Handler, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await handler(scope, receive, tracked, body)
        except Exception as exc:  # a field of the wrong type: vLLM's schema validation answers 400
            if started:
                raise
            message = f"1 validation error:\n  {type(exc).__name__}: {exc}"
            await respond(send, 400, shapes.error(message, "Bad Request", 400))

    async def _health(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        status = self.state.health_status
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def _version(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        await respond(send, 200, orjson.dumps({"version": shapes.VLLM_VERSION}))

    async def _load(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        await respond(send, 200, orjson.dumps({"server_load": self.state.running}))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        waiting = len(self.parts.engine.waiting)
        self.metrics.running.set(self.state.running - waiting)
        self.metrics.waiting.set(waiting)
        await respond(send, 200, self.metrics.page(), CONTENT_TYPE)
