"""Forwarding: the only code that talks to backends on behalf of clients.

One pass per request: read the body once, resolve `model`, refuse at once what cannot be served,
and hand the rest to an `Exchange` (`app.exchange`), which sends it upstream and relays the answer
as it comes. Timeouts, retries, disconnects, hop-by-hop headers, request ids and request metrics
live in those two modules, once, for every route.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from app import body as bodies
from app.deadline import Deadlines
from app.errors import BadRequest, GatewayError, MethodNotAllowed, ModelNotFound, ServiceUnavailable, send_error
from app.exchange import Exchange, refusal
from app.metrics import GatewayMetrics
from app.metrics.gateway import NO_BACKEND, UNKNOWN_MODEL
from app.registry import Registry, Route
from app.settings import Settings

log = logging.getLogger("vllm_gateway.proxy")


class Proxy:
    def __init__(self, registry: Registry, metrics: GatewayMetrics, settings: Settings) -> None:
        self.registry = registry
        self.metrics = metrics
        self.settings = settings
        self.draining = False  # set when the gateway begins to shut down
        self._deadlines: Deadlines | None = None  # every request's timeouts, behind one loop timer

    def deadlines(self, loop: asyncio.AbstractEventLoop) -> Deadlines:
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:  # tests run one app in several loops
            deadlines = self._deadlines = Deadlines(loop)
        return deadlines

    def begin_shutdown(self) -> None:
        """New requests get 503 from now on; in-flight ones run on for the grace period."""
        self.draining = True

    # -- entry point -------------------------------------------------------------------------
    async def handle(self, scope: dict, receive: Any, send: Any, endpoint: str, multipart: bool) -> None:
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = _request_id(headers)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed on {endpoint}; use POST")
            if self.draining:
                raise ServiceUnavailable("the gateway is shutting down; retry against another instance",
                                         headers={"Retry-After": "1"}, code="shutting_down")
            route, upstream_body = await self._route(receive, headers, multipart)
        except GatewayError as error:
            self.metrics.for_request(UNKNOWN_MODEL, NO_BACKEND, endpoint).count(error.status)
            await send_error(send, error, request_id)
            return
        except bodies.ClientGone:
            return
        model_label = route[1]
        backend = route[0].backend
        recorder = self.metrics.for_request(model_label, backend.name, endpoint)
        refused = refusal(backend)
        if refused is not None:
            recorder.count(refused.status)
            await send_error(send, refused, request_id)
            return
        exchange = Exchange(self, scope, send, endpoint, backend, upstream_body, headers, request_id, recorder, started)
        try:
            await exchange.run(receive)
        except Exception:
            log.exception("unexpected failure forwarding %s to backend %r", endpoint, backend.name)
            if exchange.response_started:
                raise  # the status is out: dropping the connection is all that is left
            await send_error(send, GatewayError("the gateway failed unexpectedly; see its log"), request_id)

    async def _route(self, receive: Any, headers: list[tuple[bytes, bytes]], multipart: bool) -> tuple[tuple[Route, str], bytes]:
        limit = self.settings.max_upload_bytes if multipart else self.settings.max_body_bytes
        raw = await bodies.read_body(receive, headers, limit)
        if multipart:
            model, span = bodies.multipart_model(raw, headers)
            data = None
        else:
            data = bodies.parse_json_object(raw, headers)
            model = bodies.model_of(data)
            span = None
        defaulted = model is None
        if defaulted:
            model = self.settings.default_model
            if model is None:
                raise BadRequest(
                    "`model` is required: name one of " + _model_list(self.registry.model_names()),
                    param="model", code="missing_model",
                )
        route = self.registry.resolve(model)
        if route is None:
            raise ModelNotFound(
                f"The model `{model}` does not exist. Available models: {_model_list(self.registry.model_names())}",
                param="model",
            )
        upstream_name = route.upstream_model or model
        if data is not None:
            if upstream_name != model or defaulted:
                raw = bodies.with_model(data, upstream_name)
        elif span is not None and upstream_name != model:
            raw = bodies.replace_span(raw, span, upstream_name)
        return (route, model), raw


def _request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    given = bodies.header(headers, b"x-request-id")
    if given and len(given) <= 128 and given.isascii() and all(33 <= c <= 126 for c in given):
        return given
    return os.urandom(16).hex().encode()


def _model_list(names: list[str]) -> str:
    if not names:
        return "(no models: no backend has reported any yet; see GET /status)"
    return ", ".join(sorted(names))
