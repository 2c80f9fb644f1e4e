"""A relayed realtime session: `/v1/realtime` WebSockets routed to the backend serving `model`.

vLLM's realtime transcription (`vllm/entrypoints/speech_to_text/realtime`) greets a connection
with `session.created`, learns the model from the client's first `session.update`
(`{"type": "session.update", "model": ...}`), then takes `input_audio_buffer.append` /
`input_audio_buffer.commit` events and answers `transcription.delta` / `transcription.done`.

The route is only known once that `session.update` arrives, so the gateway answers the greeting
itself (a client may wait for it before sending anything), holds what the client sends until then
(`Opening`, bounded), resolves the model as the HTTP routes do (aliases rewritten in the event,
`default_model` when it names none), opens a WebSocket to the least busy address of that backend,
replays the held messages and then relays frames both ways, text and binary, until either side
closes; the close code goes on to the other side. The backend's own `session.created` is not
relayed: the client already has one.

Failures the gateway answers itself are OpenAI-realtime-shaped error events
(`{"type": "error", "error": {"message", "type", "param", "code"}}`) followed by a close:
1008 (policy violation) for what the client must change, 1013 (try again later) when the backend
cannot take the session now, 1011 when the backend broke the session.

A session for an on-demand backend that is asleep waits for its wake, as an HTTP request does
(within `launch.max_wait`; else 1013), and holds the backend awake while it lasts; if the backend
must sleep for another model and the session outlasts `launch.drain_timeout`, it is ended with an
error event and 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ..errors import BadRequest, ClientGone, GatewayError, PayloadTooLarge, ServiceUnavailable
from ..metrics.gateway import NO_BACKEND, UNKNOWN_MODEL, GatewayMetrics
from ..routing.admission import refusal
from ..routing.backend import Backend, Upstream
from ..routing.models import resolve_model
from ..routing.registry import Registry, Target
from . import failures
from .context import ForwardingContext
from .exchange import CLIENT_CLOSED
from .headers import request_id

if TYPE_CHECKING:
    from ..residency.manager import ResidencyManager

log = logging.getLogger("vllm_gateway.realtime")

PATH = "/v1/realtime"
SWITCHED = 101  # the metrics status of a session relayed to its backend
# What a client may send before its `session.update`: audio appends arrive early in practice.
MAX_HELD_MESSAGES = 64
MAX_HELD_BYTES = 1 << 20
# How long a connected client may take to name its model (its session.update).
OPENING_TIMEOUT = 60.0
# uvicorn's own default `ws_max_size`, so a frame the client side accepts fits the backend side.
MAX_FRAME = 16 * 1024 * 1024
POLICY_VIOLATION, INTERNAL_ERROR, TRY_AGAIN_LATER = 1008, 1011, 1013
# Codes that may not appear in a close frame (RFC 6455 7.4.1): replaced when passed on.
_RESERVED = frozenset({1004, 1005, 1006, 1015})

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Opening:
    """The client's messages up to and including its first `session.update` that routes it.

    Held in order and replayed to the backend once it is known; bounded so that a client that
    never names a model cannot make the gateway hold an unbounded amount for it."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0

    def add(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Hold one `websocket.receive` message; the event when it is the routing session.update."""
        text, data = message.get("text"), message.get("bytes")
        size = len(text.encode()) if text is not None else len(data or b"")
        if len(self.messages) >= MAX_HELD_MESSAGES or self.size + size > MAX_HELD_BYTES:
            raise PayloadTooLarge(
                f"send session.update with `model` first: at most {MAX_HELD_MESSAGES} messages "
                f"({MAX_HELD_BYTES} bytes) are held before it", param="model", code="session_update_required")
        self.messages.append(message)
        self.size += size
        if text is None:
            return None
        event = _json_object(text)
        if event is not None and event.get("type") == "session.update":
            return event
        return None


def resolve(registry: Registry, event: dict[str, Any], query_model: str | None,
            default_model: str | None) -> tuple[Target, str, str | None]:
    """The target of a session.update: (target, the name the client used, the event to send instead).

    The model comes from the event, else from the connection's `?model=` (the OpenAI SDK puts it
    there), else `default_model`; the backend gets the event with its own name for it (vLLM
    requires `model` in session.update before audio is committed). The replacement is None when
    the event already names the upstream model."""
    given = event.get("model")
    named = given if isinstance(given, str) and given else query_model
    target, model = resolve_model(registry, named, default_model, missing="session.update must name `model`")
    upstream_name = target.upstream_model or model
    replacement = None if given == upstream_name else orjson.dumps({**event, "model": upstream_name}).decode()
    return target, model, replacement


def error_event(error: GatewayError) -> str:
    """An OpenAI-realtime error event for a failure the gateway answers itself."""
    return orjson.dumps({
        "type": "error",
        "event_id": f"event_{os.urandom(8).hex()}",
        "error": {"type": error.type, "code": error.code, "message": error.message, "param": error.param,
                  "event_id": None},
    }).decode()


def session_created() -> str:
    """The greeting vLLM sends on connect (its `SessionCreated` fields)."""
    return orjson.dumps({"type": "session.created", "id": f"sess-{os.urandom(16).hex()}",
                         "created": int(time.time())}).decode()


def websocket_url(http_url: str) -> str:
    """The backend's realtime address from its HTTP one (http -> ws, https -> wss)."""
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://"):].rstrip("/") + PATH
    if http_url.startswith("http://"):
        return "ws://" + http_url[len("http://"):].rstrip("/") + PATH
    raise ValueError(f"not an http(s) url: {http_url!r}")


def passable(code: int | None, instead: int = 1000) -> int:
    """A close code that may be sent on: a received one unless it is reserved or absent."""
    if code is None or code in _RESERVED or not (1000 <= code <= 4999):
        return instead
    return code


def handshake_headers(upstream: Upstream, request_id: bytes | None) -> dict[str, str]:
    """What the backend gets in its handshake: the backend's own headers (its API key), never
    the client's Authorization; the request id so both logs can be matched."""
    headers = {k.decode(): v.decode() for k, v in upstream.default_headers.items() if k != b"accept-encoding"}
    if request_id:
        headers["x-request-id"] = request_id.decode("latin-1")
    return headers


def count(metrics: GatewayMetrics, model: str, backend: str, status: int) -> None:
    """One session in `gateway_requests` (endpoint `/v1/realtime`; status 101 when relayed).

    Not through `GatewayMetrics.for_request`: that also makes latency histogram series, which a
    session of minutes would only distort. `model` is a name the registry knows, or `unknown`."""
    metrics.requests.labels(model, backend, PATH, str(status)).inc()


class RealtimeEndpoint:
    """The ASGI endpoint of `/v1/realtime` (a WebSocket route)."""

    def __init__(self, registry: Registry, ctx: ForwardingContext) -> None:
        self.registry, self.ctx = registry, ctx

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        metrics = self.ctx.metrics
        try:
            await _send_text(send, session_created())
            target, model, held = await self._open(scope, receive)
        except ClientGone:
            count(metrics, UNKNOWN_MODEL, NO_BACKEND, CLIENT_CLOSED)
            return
        except GatewayError as error:
            count(metrics, UNKNOWN_MODEL, NO_BACKEND, error.status)
            await _refuse(send, error)
            return
        backend = target.backend
        refused = refusal(backend)
        if refused is not None:
            count(metrics, model, backend.name, refused.status)
            await _refuse(send, refused)
            return
        residency = self.ctx.residency if backend.residency is not None else None
        if residency is None:
            await self._relay(backend, model, held, scope, send, receive, target.adapter)
            return
        holder = _Holder()
        try:
            await _until_awake(residency, backend, holder)
        except GatewayError as error:
            count(metrics, model, backend.name, error.status)
            await _refuse(send, error)
            return
        try:
            await self._relay(backend, model, held, scope, send, receive, target.adapter)
        except asyncio.CancelledError:
            if holder.evicted is None:
                raise
            holder.task.uncancel()
            await _refuse(send, holder.evicted)
        finally:
            residency.leave(backend, holder)

    async def _relay(self, backend: Backend, model: str, held: list[dict[str, Any]], scope: dict, send: Send,
                     receive: Receive, adapter: str | None) -> None:
        metrics, adapters = self.ctx.metrics, self.ctx.adapters
        upstream = backend.pick() if adapter is None else backend.pick(adapters.holders(backend, adapter))
        upstream.outstanding += 1
        holding = False
        try:
            try:
                if adapter is not None:  # loaded where the session goes, and held until it ends
                    await adapters.acquire_within(backend, upstream, adapter, backend.timeouts.response_head)
                    holding = True
                connection = await self._connect(backend, upstream, request_id(scope["headers"]))
            except GatewayError as error:
                count(metrics, model, backend.name, error.status)
                await _refuse(send, error)
                return
            count(metrics, model, backend.name, SWITCHED)
            in_flight = metrics.in_flight.labels(model, backend.name)
            in_flight.inc()
            try:
                await Relay(connection, receive, send, backend, metrics).run(held)
            finally:
                in_flight.dec()
                await connection.close()
        finally:
            upstream.outstanding -= 1
            if holding and adapter is not None:
                adapters.release(backend, upstream, adapter)

    async def _open(self, scope: dict, receive: Receive) -> tuple[Target, str, list[dict[str, Any]]]:
        """Hold the client's messages until a session.update routes the session."""
        if self.ctx.draining:
            raise ServiceUnavailable("the gateway is shutting down; reconnect to another instance",
                                     code="shutting_down")
        opening = Opening()
        settings = self.ctx.settings
        query_model = _query_model(scope)
        try:
            async with asyncio.timeout(OPENING_TIMEOUT):
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        raise ClientGone()
                    if message["type"] != "websocket.receive":
                        continue
                    event = opening.add(message)
                    if event is None:
                        continue
                    target, model, replacement = resolve(self.registry, event, query_model, settings.default_model)
                    if replacement is not None:
                        opening.messages[-1] = {"type": "websocket.receive", "text": replacement}
                    return target, model, opening.messages
        except TimeoutError:
            raise BadRequest(f"no session.update with `model` within {OPENING_TIMEOUT:g} s of connecting",
                             param="model", code="session_update_timeout") from None

    async def _connect(self, backend: Backend, upstream: Upstream, request_id: bytes | None) -> ClientConnection:
        """The backend's WebSocket; its failures are mapped like HTTP ones (`forwarding.failures`)."""
        try:
            connection = await websockets.connect(
                websocket_url(upstream.url),
                additional_headers=handshake_headers(upstream, request_id),
                open_timeout=backend.timeouts.connect,
                close_timeout=2.0,
                max_size=MAX_FRAME,
                compression=None,  # loopback: deflating audio would only cost CPU
                proxy=None,  # never through an HTTP(S)_PROXY from the environment
                user_agent_header=None,
            )
        except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as exc:
            cause, detail = failures.cause_of(exc)
            if cause in (failures.ANSWERED_503, failures.ANSWERED_5XX, failures.REFUSED_SESSION):
                backend.answered()
            error = failures.failed(self.ctx.metrics, backend, failures.SESSION, cause, detail)[1]
            assert error is not None
            raise error from None
        backend.answered()
        return connection


class _Holder:
    """A session holding an on-demand backend awake; evicting it ends the session."""

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.evicted: GatewayError | None = None

    def evict(self, error: GatewayError) -> None:
        if self.evicted is None:
            self.evicted = error
            self.task.cancel()


async def _until_awake(residency: ResidencyManager, backend: Backend, holder: _Holder) -> None:
    launch = backend.config.launch
    assert launch is not None
    began = time.monotonic()
    try:
        async with asyncio.timeout(launch.max_wait):
            await residency.enter(backend, holder)
    except TimeoutError:
        raise residency.wait_timed_out(backend, time.monotonic() - began, "launch.max_wait") from None


class Relay:
    """Frames both ways between the client (ASGI) and the backend (`websockets`), one task each
    way; whichever side ends first ends the other, and its close code goes on."""

    def __init__(self, connection: ClientConnection, receive: Receive, send: Send, backend: Backend,
                 metrics: GatewayMetrics) -> None:
        self.connection, self.receive, self.send = connection, receive, send
        self.backend, self.metrics = backend, metrics

    async def run(self, held: list[dict[str, Any]]) -> None:
        connection = self.connection
        try:
            for message in held:
                await connection.send(_payload(message))
        except ConnectionClosed:
            pass  # the backend already closed: its close is passed on below
        up = asyncio.create_task(self._client_to_backend())
        down = asyncio.create_task(self._backend_to_client())
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        for task in (up, down):
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("realtime relay with backend %r failed", self.backend.name, exc_info=task.exception())
        client_close = up.result() if up.done() and not up.cancelled() and up.exception() is None else None
        if client_close is not None:
            code, reason = client_close
            await connection.close(passable(code), reason)
            return
        await self._pass_backend_close()

    async def _client_to_backend(self) -> tuple[int, str] | None:
        """Until the client leaves: its close code and reason. None when the backend closed first."""
        receive, connection = self.receive, self.connection
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                return message.get("code") or 1000, message.get("reason") or ""
            if kind == "websocket.receive":
                try:
                    await connection.send(_payload(message))
                except ConnectionClosed:
                    return None

    async def _backend_to_client(self) -> None:
        """Until the backend closes (or the client cannot be written to any more)."""
        send = self.send
        first = True
        try:
            async for data in self.connection:
                if first:
                    first = False
                    if isinstance(data, str) and _is_greeting(data):
                        continue  # the client had the gateway's session.created
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
        except ConnectionClosed:
            pass
        except OSError:  # the client is gone: its disconnect ends the other direction
            await asyncio.Event().wait()

    async def _pass_backend_close(self) -> None:
        received = self.connection.protocol.close_rcvd
        if received is None:  # no close frame: the backend broke off
            error = failures.failed(self.metrics, self.backend, failures.SESSION, failures.CUT_OFF)[1]
            assert error is not None
            await _refuse(self.send, error)
            return
        await _close(self.send, passable(received.code), received.reason)


def _payload(message: dict[str, Any]) -> str | bytes:
    text = message.get("text")
    return text if text is not None else (message.get("bytes") or b"")


def _is_greeting(text: str) -> bool:
    event = _json_object(text)
    return event is not None and event.get("type") == "session.created"


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _query_model(scope: dict) -> str | None:
    query = scope.get("query_string") or b""
    if b"model=" not in query:
        return None
    values = parse_qs(query.decode("latin-1")).get("model")
    return values[0] if values and values[0] else None


async def _send_text(send: Send, text: str) -> None:
    try:
        await send({"type": "websocket.send", "text": text})
    except OSError:
        raise ClientGone() from None


def close_code(error: GatewayError) -> int:
    """1013 (try again later) when the backend cannot take the session now, 1011 when it or the
    gateway failed, else 1008 (policy violation): the client must change what it sends."""
    if error.status == 503:
        return TRY_AGAIN_LATER
    return INTERNAL_ERROR if error.status >= 500 else POLICY_VIOLATION


async def _refuse(send: Send, error: GatewayError) -> None:
    """The error event, then the close: what a refused session sees."""
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.send", "text": error_event(error)})
    await _close(send, close_code(error), error.code or "")


async def _close(send: Send, code: int, reason: str) -> None:
    # A close reason is at most 123 bytes (RFC 6455 5.5: control frames carry 125).
    reason = reason.encode()[:123].decode(errors="ignore")
    with contextlib.suppress(OSError, RuntimeError):  # the client may be gone already
        await send({"type": "websocket.close", "code": code, "reason": reason})


__all__ = ["MAX_HELD_BYTES", "MAX_HELD_MESSAGES", "PATH", "Opening", "RealtimeEndpoint", "Relay", "close_code",
           "count", "error_event", "handshake_headers", "passable", "resolve", "session_created", "websocket_url"]
