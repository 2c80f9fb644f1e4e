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

import httpx
import orjson

from . import body as bodies
from .affinity import RESPONSE_ID, Holder, ResponseAffinity
from .deadline import Deadlines
from .errors import (BadRequest, GatewayError, MethodNotAllowed, ModelNotFound, ResponseNotFound,
                        ServiceUnavailable, send_error)
from .exchange import Exchange, refusal
from .metrics import GatewayMetrics
from .metrics.gateway import NO_BACKEND, UNKNOWN_MODEL
from .registry import Backend, Registry, Route, Upstream
from .settings import Settings

log = logging.getLogger("vllm_gateway.proxy")
RESPONSES = "/v1/responses"
# The stateful Responses API routes without a model, by action, as their metrics label.
STORED_RESPONSE_ROUTES = {"retrieve": "/v1/responses/{response_id}", "cancel": "/v1/responses/{response_id}/cancel"}


class Proxy:
    def __init__(self, registry: Registry, metrics: GatewayMetrics, settings: Settings) -> None:
        self.registry = registry
        self.metrics = metrics
        self.settings = settings
        self.draining = False  # set when the gateway begins to shut down
        self.affinity = ResponseAffinity()  # which address holds each stored response (app.affinity)
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
            self._refuse_if_draining()
            route, upstream_body, data = await self._route(receive, headers, multipart)
        except GatewayError as error:
            self.metrics.for_request(UNKNOWN_MODEL, NO_BACKEND, endpoint).count(error.status)
            await send_error(send, error, request_id)
            return
        except bodies.ClientGone:
            return
        model_label = route[1]
        backend = route[0].backend
        recorder = self.metrics.for_request(model_label, backend.name, endpoint)
        if await self._refused(backend, recorder, send, request_id):
            return
        pinned = stored_as = None
        if endpoint == RESPONSES:
            stored_as = model_label
            previous = data.get("previous_response_id") if data is not None else None
            if isinstance(previous, str) and len(backend.upstreams) > 1 and RESPONSE_ID.match(previous):
                # The conversation so far is stored by the process that made the previous answer.
                found = await self._holder(previous, [backend])
                pinned = found[1] if found is not None else None
        exchange = Exchange(self, scope, send, endpoint, backend, upstream_body, headers, request_id, recorder, started,
                            pinned=pinned, stored_as=stored_as)
        await self._run(exchange, receive, request_id)

    async def handle_stored_response(self, scope: dict, receive: Any, send: Any, response_id: str, action: str) -> None:
        """`GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`: to the address holding it."""
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = _request_id(headers)
        label = STORED_RESPONSE_ROUTES[action]
        try:
            self._refuse_if_draining()
            if not RESPONSE_ID.match(response_id):
                raise BadRequest(f"`{response_id[:80]}` is not a response id (they look like resp_...)",
                                 param="response_id", code="invalid_response_id")
            body = await bodies.read_body(receive, headers, self.settings.max_body_bytes)
            found = await self._holder(response_id, [b for b in self.registry.backends.values() if b.routable])
            if found is None:
                raise ResponseNotFound(
                    f"Response with id '{response_id}' not found on any backend (responses are stored by the vLLM "
                    f"process that made them, with VLLM_ENABLE_RESPONSES_API_STORE=1, until it restarts)",
                    param="response_id")
        except GatewayError as error:
            self.metrics.for_request(UNKNOWN_MODEL, NO_BACKEND, label).count(error.status)
            await send_error(send, error, request_id)
            return
        except bodies.ClientGone:
            return
        backend, upstream, model = found
        recorder = self.metrics.for_request(model, backend.name, label)
        if await self._refused(backend, recorder, send, request_id):
            return
        path = f"{RESPONSES}/{response_id}" + ("/cancel" if action == "cancel" else "")
        exchange = Exchange(self, scope, send, path, backend, body, headers, request_id, recorder, started,
                            method=scope["method"].encode(), pinned=upstream)
        await self._run(exchange, receive, request_id)

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise ServiceUnavailable("the gateway is shutting down; retry against another instance",
                                     headers={"Retry-After": "1"}, code="shutting_down")

    @staticmethod
    async def _refused(backend: Backend, recorder: Any, send: Any, request_id: bytes) -> bool:
        """Answered at once because the backend cannot take it now (down, or its circuit open)."""
        refused = refusal(backend)
        if refused is None:
            return False
        recorder.count(refused.status)
        await send_error(send, refused, request_id)
        return True

    async def _run(self, exchange: Exchange, receive: Any, request_id: bytes) -> None:
        try:
            await exchange.run(receive)
        except Exception:
            log.exception("unexpected failure forwarding %s to backend %r", exchange.endpoint, exchange.backend.name)
            if exchange.response_started:
                raise  # the status is out: dropping the connection is all that is left
            await send_error(exchange.send, GatewayError("the gateway failed unexpectedly; see its log"), request_id)

    async def _holder(self, response_id: str, backends: list[Backend]) -> tuple[Backend, Upstream, str] | None:
        """Which of `backends`' addresses holds this stored response, and under which model:
        remembered from when the gateway relayed it, else asked of every address at once
        (`GET /v1/responses/{id}`); with a single address, that one (it answers 404 itself)."""
        holder = self.affinity.holder(response_id)
        if holder is not None:
            for backend in backends:
                if backend.name == holder.backend:
                    for upstream in backend.upstreams:
                        if upstream.url == holder.url:
                            return backend, upstream, holder.model
            return None
        addresses = [(b, u) for b in backends for u in b.upstreams]
        if len(addresses) == 1:
            backend, upstream = addresses[0]
            return backend, upstream, _served_model(backend)
        answers = await asyncio.gather(*(_holds(u, response_id, b.timeouts.response_head) for b, u in addresses))
        for (backend, upstream), model in zip(addresses, answers):
            if model is not None:
                model = model if model in _models_of(backend) else _served_model(backend)
                self.affinity.remember(response_id, Holder(backend.name, upstream.url, model))
                return backend, upstream, model
        return None

    async def _route(self, receive: Any, headers: list[tuple[bytes, bytes]],
                     multipart: bool) -> tuple[tuple[Route, str], bytes, dict[str, Any] | None]:
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
        return (route, model), raw, data


async def _holds(upstream: Upstream, response_id: str, timeout: float) -> str | None:
    """Whether this address holds the stored response: its model if so (a bounded metrics label)."""
    try:
        answer = await upstream.client.get(f"{RESPONSES}/{response_id}", timeout=timeout)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    try:
        model = orjson.loads(answer.content).get("model")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return model if isinstance(model, str) else ""


def _models_of(backend: Backend) -> list[str]:
    return [c["id"] for c in backend.cards] or list(backend.config.models)


def _served_model(backend: Backend) -> str:
    models = _models_of(backend)
    return models[0] if models else backend.name


def _request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    given = bodies.header(headers, b"x-request-id")
    if given and len(given) <= 128 and given.isascii() and all(33 <= c <= 126 for c in given):
        return given
    return os.urandom(16).hex().encode()


def _model_list(names: list[str]) -> str:
    if not names:
        return "(no models: no backend has reported any yet; see GET /status)"
    return ", ".join(sorted(names))
