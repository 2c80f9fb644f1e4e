"""Forwarding: the only code that talks to backends on behalf of HTTP clients.

One pass per request: read the body once, resolve `model`, refuse at once what cannot be served,
and hand the rest to an `Exchange` (`forwarding.exchange`), which sends it upstream and relays
the answer as it comes. Timeouts, retries, disconnects, hop-by-hop headers, request ids and
request metrics live in that module, once, for every route.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import (
    BadRequest,
    ClientGone,
    GatewayError,
    MethodNotAllowed,
    ResponseNotFound,
    ServiceUnavailable,
    send_error,
)
from ..metrics import RequestMetrics
from ..metrics.gateway import NO_BACKEND, UNKNOWN_MODEL
from ..routing.admission import refusal
from ..routing.backend import Backend
from ..routing.models import resolve_model
from ..routing.registry import Registry, Target
from . import request_body as bodies
from .affinity import RESPONSE_ID, StoredResponses
from .context import ForwardingContext
from .exchange import Exchange
from .headers import request_id as request_id_of

log = logging.getLogger("vllm_gateway.forwarding")
RESPONSES = "/v1/responses"
# The stateful Responses API routes without a model, by action, as their metrics label.
STORED_RESPONSE_ROUTES = {"retrieve": "/v1/responses/{response_id}", "cancel": "/v1/responses/{response_id}/cancel"}


class Forwarder:
    def __init__(self, registry: Registry, ctx: ForwardingContext) -> None:
        self.registry = registry
        self.ctx = ctx
        self.metrics = ctx.metrics
        self.settings = ctx.settings
        self.stored = StoredResponses(ctx.affinity)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any, endpoint: str, multipart: bool) -> None:
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = request_id_of(headers)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed on {endpoint}; use POST")
            self._refuse_if_draining()
            target, model, upstream_body, data = await self._route(receive, headers, multipart)
        except GatewayError as error:
            self.metrics.for_request(UNKNOWN_MODEL, NO_BACKEND, endpoint).count(error.status)
            self._note_refusal(UNKNOWN_MODEL, NO_BACKEND, endpoint, error.status, request_id, started)
            await send_error(send, error, request_id)
            return
        except ClientGone:
            return
        backend = target.backend
        recorder = self.metrics.for_request(model, backend.name, endpoint)
        if await self._refused(backend, recorder, send, request_id, endpoint, started):
            return
        pinned = stored_as = None
        if endpoint == RESPONSES:
            stored_as = model
            previous = data.get("previous_response_id") if data is not None else None
            if isinstance(previous, str) and len(backend.upstreams) > 1 and RESPONSE_ID.match(previous):
                # The conversation so far is stored by the process that made the previous answer.
                found = await self.stored.holder(previous, [backend])
                pinned = found[1] if found is not None else None
        exchange = Exchange(self.ctx, scope, send, endpoint, backend, upstream_body, headers, request_id, recorder,
                            started, pinned=pinned, stored_as=stored_as, adapter=target.adapter)
        await self._run(exchange, receive, request_id)

    async def handle_stored_response(self, scope: dict[str, Any], receive: Any, send: Any, response_id: str,
                                     action: str) -> None:
        """`GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`: to the address holding it."""
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = request_id_of(headers)
        label = STORED_RESPONSE_ROUTES[action]
        try:
            self._refuse_if_draining()
            if not RESPONSE_ID.match(response_id):
                raise BadRequest(f"`{response_id[:80]}` is not a response id (they look like resp_...)",
                                 param="response_id", code="invalid_response_id")
            body = await bodies.read_body(receive, headers, self.settings.max_body_bytes)
            found = await self.stored.holder(response_id, [b for b in self.registry.backends.values() if b.routable])
            if found is None:
                raise ResponseNotFound(
                    f"Response with id '{response_id}' not found on any backend (responses are stored by the vLLM "
                    f"process that made them, with VLLM_ENABLE_RESPONSES_API_STORE=1, until it restarts)",
                    param="response_id")
        except GatewayError as error:
            self.metrics.for_request(UNKNOWN_MODEL, NO_BACKEND, label).count(error.status)
            self._note_refusal(UNKNOWN_MODEL, NO_BACKEND, label, error.status, request_id, started)
            await send_error(send, error, request_id)
            return
        except ClientGone:
            return
        backend, upstream, model = found
        recorder = self.metrics.for_request(model, backend.name, label)
        if await self._refused(backend, recorder, send, request_id, label, started):
            return
        path = f"{RESPONSES}/{response_id}" + ("/cancel" if action == "cancel" else "")
        exchange = Exchange(self.ctx, scope, send, path, backend, body, headers, request_id, recorder, started,
                            method=scope["method"].encode(), pinned=upstream)
        await self._run(exchange, receive, request_id)

    def _refuse_if_draining(self) -> None:
        if self.ctx.draining:
            raise ServiceUnavailable("the gateway is shutting down; retry against another instance",
                                     headers={"Retry-After": "1"}, code="shutting_down")

    async def _refused(self, backend: Backend, recorder: RequestMetrics, send: Any, request_id: bytes, endpoint: str,
                       started: float) -> bool:
        """Answered at once because the backend cannot take it now (down, or its circuit open)."""
        refused = refusal(backend)
        if refused is None:
            return False
        recorder.count(refused.status)
        self._note_refusal(recorder.model, backend.name, endpoint, refused.status, request_id, started)
        await send_error(send, refused, request_id)
        return True

    def _note_refusal(self, model: str, backend: str, endpoint: str, status: int, request_id: bytes,
                      started: float) -> None:
        """The operator page's Activity lists what the gateway refused by itself too."""
        if self.ctx.activity is not None:
            self.ctx.activity.refused(model, backend, endpoint, status, request_id, started)

    async def _run(self, exchange: Exchange, receive: Any, request_id: bytes) -> None:
        try:
            await exchange.run(receive)
        except Exception:
            log.exception("unexpected failure forwarding %s to backend %r", exchange.endpoint, exchange.backend.name)
            if exchange.response_started:
                raise  # the status is out: dropping the connection is all that is left
            await send_error(exchange.send, GatewayError("the gateway failed unexpectedly; see its log"), request_id)

    async def _route(self, receive: Any, headers: list[tuple[bytes, bytes]],
                     multipart: bool) -> tuple[Target, str, bytes, dict[str, Any] | None]:
        limit = self.settings.max_upload_bytes if multipart else self.settings.max_body_bytes
        raw = await bodies.read_body(receive, headers, limit)
        data: dict[str, Any] | None = None
        span = None
        if multipart:
            given, span = bodies.multipart_model(raw, headers)
        else:
            data = bodies.parse_json_object(raw, headers)
            given = bodies.model_of(data)
        target, model = resolve_model(self.registry, given, self.settings.default_model)
        upstream_name = target.upstream_model or model
        if data is not None:
            if upstream_name != model or given is None:
                raw = bodies.with_model(data, upstream_name)
        elif span is not None and upstream_name != model:
            raw = bodies.replace_span(raw, span, upstream_name)
        return target, model, raw, data


__all__ = ["Forwarder", "RESPONSES", "STORED_RESPONSE_ROUTES"]
