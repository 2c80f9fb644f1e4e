"""Forwarding: the only code that talks to backends on behalf of clients.

One pass per request: read the body once, resolve `model`, send upstream, relay the answer as it
comes. A disconnect watcher runs beside every forwarded request, so a client that goes away
(mid-stream or while a long non-streaming generation is still running) closes the upstream
connection at once and vLLM aborts the generation. Timeouts, retries, hop-by-hop headers,
request ids and request metrics live here, once, for every route.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import httpx
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_random_exponential

from app import body as bodies
from app.errors import (
    BadGateway,
    BadRequest,
    GatewayError,
    GatewayTimeout,
    MethodNotAllowed,
    ModelNotFound,
    ServiceUnavailable,
    error_body,
    sse_error_event,
)
from app.metrics import GatewayMetrics
from app.metrics.gateway import NO_BACKEND, UNKNOWN_MODEL
from app.registry import Backend, Registry, Route, Upstream
from app.settings import Settings

log = logging.getLogger("vllm_gateway.proxy")

# Never forwarded in either direction (RFC 9110 7.6.1), plus headers the gateway sets itself.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect",
})
_NOT_FORWARDED_UP = _HOP_BY_HOP | {b"authorization", b"x-request-id", b"x-api-key", b"cookie"}
_NOT_RELAYED_DOWN = _HOP_BY_HOP | {b"date", b"server", b"x-request-id"}
_EVENT_STREAM = b"text/event-stream"
_JSON = b"application/json"
CLIENT_CLOSED = 499  # nginx's code for "client closed request": only ever a metric label


class Retryable(Exception):
    """A failure that is safe to try again: nothing reached the backend's model, nothing the client."""

    def __init__(self, error: GatewayError, kind: str) -> None:
        self.error, self.kind = error, kind


class Proxy:
    def __init__(self, registry: Registry, metrics: GatewayMetrics, settings: Settings) -> None:
        self.registry = registry
        self.metrics = metrics
        self.settings = settings
        self.draining = False  # set when the gateway begins to shut down

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
        refusal = _refusal(backend)
        if refusal is not None:
            recorder.count(refusal.status)
            await send_error(send, refusal, request_id)
            return
        exchange = _Exchange(self, scope, send, endpoint, backend, upstream_body, headers, request_id, recorder, started)
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


class _Exchange:
    """One forwarded request: send upstream, relay downstream, watch for the client leaving."""

    __slots__ = ("proxy", "scope", "send", "endpoint", "backend", "body", "headers", "request_id", "recorder",
                 "started", "status", "response_started", "finished", "client_gone", "streaming", "delivered",
                 "upstream")

    def __init__(self, proxy: Proxy, scope: dict, send: Any, endpoint: str, backend: Backend, body: bytes,
                 headers: list[tuple[bytes, bytes]], request_id: bytes, recorder: Any, started: float) -> None:
        self.proxy, self.scope, self.send, self.endpoint = proxy, scope, send, endpoint
        self.backend, self.body, self.headers, self.request_id = backend, body, headers, request_id
        self.recorder, self.started = recorder, started
        self.status = 0
        self.response_started = False
        self.finished = False
        self.client_gone = False
        self.streaming = False
        self.delivered = False  # the whole answer reached the client (a close after it is no disconnect)
        self.upstream: Upstream | None = None  # the address the response came from, counted outstanding

    async def run(self, receive: Any) -> None:
        task = asyncio.current_task()
        watcher = asyncio.get_running_loop().create_task(self._watch(receive, task))
        recorder = self.recorder
        recorder.in_flight.inc()
        limit = self.backend.limit
        acquired = False
        try:
            if limit is not None:
                await limit.acquire()
                acquired = True
            await self._exchange()
        except asyncio.CancelledError:
            if self.client_gone:
                task.uncancel()
                if not self.delivered:
                    recorder.disconnects.inc()
                    self.status = CLIENT_CLOSED
            elif self.proxy.draining:
                # The shutdown grace period ran out: end the response cleanly instead of cutting it.
                task.uncancel()
                await self._close_for_shutdown()
            else:
                raise
        except GatewayError as error:
            if self.response_started:
                raise  # headers are out: nothing left to do but drop the connection
            self.status = error.status
            await send_error(self.send, error, self.request_id)
        finally:
            if acquired:
                limit.release()
            self.finished = True
            watcher.cancel()
            recorder.in_flight.dec()
            if self.status:
                recorder.count(self.status)
            recorder.duration.observe(time.perf_counter() - self.started)

    async def _close_for_shutdown(self) -> None:
        error = ServiceUnavailable("the gateway shut down before this response was complete; retry",
                                   headers={"Retry-After": "1"}, code="shutting_down")
        if not self.response_started:
            self.status = error.status
            await send_error(self.send, error, self.request_id)
        elif self.streaming:
            await self.send({"type": "http.response.body", "body": sse_error_event(error), "more_body": False})

    async def _watch(self, receive: Any, task: asyncio.Task) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.finished:
                    self.client_gone = True
                    task.cancel()
                return

    async def _exchange(self) -> None:
        response = await self._send_with_retries()
        try:
            await self._relay(response)
        finally:
            await response.aclose()
            self.upstream.outstanding -= 1

    # -- upstream ------------------------------------------------------------------------------
    async def _send_with_retries(self) -> httpx.Response:
        retries = self.proxy.settings.retries
        try:
            return await self._attempt(last=retries.attempts <= 1)
        except Retryable as failure:
            if retries.attempts <= 1:
                raise failure.error from None
        retrying = AsyncRetrying(
            stop=stop_after_attempt(retries.attempts - 1) | stop_after_delay(retries.max_wait),
            wait=wait_random_exponential(multiplier=retries.backoff_initial, max=retries.backoff_max),
            retry=retry_if_exception_type(Retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    final = attempt.retry_state.attempt_number >= retries.attempts - 1
                    return await self._attempt(last=final)
        except Retryable as failure:
            raise failure.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, last: bool) -> httpx.Response:
        """One try on the least busy address; that address counts the request until it is relayed."""
        upstream = self.backend.pick()
        upstream.outstanding += 1
        try:
            response = await self._send(upstream, last)
        except BaseException:
            upstream.outstanding -= 1
            raise
        self.upstream = upstream
        return response

    async def _send(self, upstream: Upstream, last: bool) -> httpx.Response:
        proxy, backend = self.proxy, self.backend
        path = self.endpoint
        query = self.scope.get("query_string")
        if query:
            path = f"{path}?{query.decode('latin-1')}"
        request = httpx.Request("POST", upstream.url_for(path), content=self.body,
                                headers=self._upstream_headers(upstream), extensions={"timeout": upstream.timeout})
        timeouts = backend.timeouts
        head_timeout, which = timeouts.response_head, "timeouts.response_head"
        if timeouts.total is not None:
            remaining = timeouts.total - (time.perf_counter() - self.started)
            if remaining < head_timeout:
                head_timeout, which = max(remaining, 0.0), "timeouts.total"
        try:
            async with asyncio.timeout(head_timeout):
                response = await upstream.transport.handle_async_request(request)
        except httpx.ConnectTimeout:
            proxy.metrics.upstream_error(backend.name, "connect_timeout")
            backend.breaker.record_failure()
            raise Retryable(_unavailable(backend, "did not accept a connection in time"), "connect_timeout") from None
        except httpx.ConnectError:
            proxy.metrics.upstream_error(backend.name, "connect")
            backend.breaker.record_failure()
            raise Retryable(_unavailable(backend, "refused the connection"), "connect") from None
        except (TimeoutError, httpx.TimeoutException):
            proxy.metrics.upstream_error(backend.name, "timeout")
            raise GatewayTimeout(
                f"backend {backend.name!r} sent no response within {head_timeout:g} s "
                f"({which}); the request was cancelled upstream"
            ) from None
        except httpx.HTTPError as exc:
            proxy.metrics.upstream_error(backend.name, "protocol")
            raise BadGateway(f"backend {backend.name!r} answered with a broken HTTP response ({type(exc).__name__})") from None
        backend.answered()
        if response.status_code == 503 and not last:
            await response.aclose()
            proxy.metrics.upstream_error(backend.name, "status_5xx")
            raise Retryable(_unavailable(backend, "answered 503"), "status_503")
        if response.status_code >= 500:
            proxy.metrics.upstream_error(backend.name, "status_5xx")
        return response

    def _upstream_headers(self, upstream: Upstream) -> list[tuple[bytes, bytes]]:
        drop = _NOT_FORWARDED_UP
        connection = bodies.header(self.headers, b"connection")
        if connection:
            drop = drop | {token.strip().lower() for token in connection.split(b",")}
        forwarded = [(k, v) for k, v in self.headers if k not in drop]
        sent = {k for k, _ in forwarded}
        forwarded.extend((k, v) for k, v in upstream.default_headers.items() if k not in sent)
        forwarded.append((b"x-request-id", self.request_id))
        return forwarded

    # -- downstream ----------------------------------------------------------------------------
    async def _relay(self, response: httpx.Response) -> None:
        status = response.status_code
        relayed = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _NOT_RELAYED_DOWN]
        relayed.append((b"x-request-id", self.request_id))
        content_type = response.headers.get("content-type", "").encode("latin-1").lower()
        if content_type.startswith(_EVENT_STREAM):
            await self._relay_stream(response, status, relayed)
        else:
            await self._relay_whole(response, status, relayed, content_type)

    async def _relay_whole(self, response: httpx.Response, status: int, headers: list, content_type: bytes) -> None:
        backend = self.backend
        encoded = b"content-encoding" in {k for k, _ in headers}
        try:
            async with asyncio.timeout(backend.timeouts.stream_idle):
                if encoded:
                    payload = await response.aread()  # decoded: the client gets identity
                else:
                    payload = b"".join([chunk async for chunk in response.stream])
        except (TimeoutError, httpx.TimeoutException):
            self.proxy.metrics.upstream_error(backend.name, "timeout")
            raise GatewayTimeout(f"backend {backend.name!r} stopped sending its response") from None
        except httpx.HTTPError as exc:
            self.proxy.metrics.upstream_error(backend.name, "disconnect")
            raise BadGateway(f"backend {backend.name!r} broke off its response ({type(exc).__name__})") from None
        if content_type.startswith(_JSON):
            try:
                decoded = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self.proxy.metrics.upstream_error(backend.name, "invalid_response")
                raise BadGateway(f"backend {backend.name!r} promised JSON but sent something else") from None
            if status >= 400:
                payload = _openai_shaped(decoded, status, payload, self.endpoint)
        self.recorder.ttfb.observe(time.perf_counter() - self.started)
        if encoded:
            headers = [(k, v) for k, v in headers if k != b"content-encoding"]
        headers.append((b"content-length", str(len(payload)).encode()))
        self.response_started = True
        self.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _relay_stream(self, response: httpx.Response, status: int, headers: list) -> None:
        backend, send = self.backend, self.send
        idle = backend.timeouts.stream_idle
        total = backend.timeouts.total
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total if total else None
        self.response_started = True
        self.streaming = True
        self.status = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        chunks = response.stream.__aiter__()
        first = True
        failure: GatewayError | None = None
        try:
            async with asyncio.timeout(None) as timer:
                while True:
                    when = loop.time() + idle
                    timer.reschedule(when if deadline is None else min(when, deadline))
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    if first:
                        first = False
                        self.recorder.ttfb.observe(time.perf_counter() - self.started)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if chunk.endswith(b"data: [DONE]\n\n"):
                        self.delivered = True
        except TimeoutError:
            self.proxy.metrics.upstream_error(backend.name, "stream_timeout")
            limit = "timeouts.total" if deadline is not None and loop.time() >= deadline else "timeouts.stream_idle"
            failure = GatewayTimeout(f"backend {backend.name!r} stream stopped: {limit} exceeded; the stream was closed")
        except httpx.HTTPError as exc:
            self.proxy.metrics.upstream_error(backend.name, "disconnect")
            failure = BadGateway(f"backend {backend.name!r} broke off the stream ({type(exc).__name__})")
        tail = sse_error_event(failure) if failure is not None else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})


async def send_error(send: Any, error: GatewayError, request_id: bytes | None = None) -> None:
    payload = error.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if request_id is not None:
        headers.append((b"x-request-id", request_id))
    headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items())
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _refusal(backend: Backend) -> ServiceUnavailable | None:
    """Why this backend cannot take a request right now, if it cannot."""
    if not backend.routable:
        return _unavailable(backend)
    if not backend.breaker.allow():
        return _unavailable(backend, "is failing (circuit open)", backend.breaker.retry_after())
    return None


def _request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    given = bodies.header(headers, b"x-request-id")
    if given and len(given) <= 128 and given.isascii() and all(33 <= c <= 126 for c in given):
        return given
    return os.urandom(16).hex().encode()


def _unavailable(backend: Backend, what: str | None = None, retry_after_s: float | None = None) -> ServiceUnavailable:
    retry_after = max(1, round(retry_after_s if retry_after_s is not None else backend_retry_hint(backend)))
    detail = what or f"is {backend.state}"
    return ServiceUnavailable(
        f"backend {backend.name!r} {detail}; retry in {retry_after} s (GET /status shows backend states)",
        headers={"Retry-After": str(retry_after)},
    )


def backend_retry_hint(backend: Backend) -> float:
    return 5.0 if backend.launched else 1.0


def _model_list(names: list[str]) -> str:
    if not names:
        return "(no models: no backend has reported any yet; see GET /status)"
    return ", ".join(sorted(names))


def _openai_shaped(decoded: Any, status: int, payload: bytes, endpoint: str) -> bytes:
    """vLLM answers some errors outside the OpenAI shape (FastAPI's `{"detail": ...}` for a route
    its model does not serve, `{"error": "..."}` for auth); give clients one shape."""
    if isinstance(decoded, dict):
        error = decoded.get("error")
        if isinstance(error, dict):
            return payload
        if isinstance(decoded.get("detail"), str) and status in (404, 405):
            return error_body(
                f"the model's backend does not serve {endpoint} ({decoded['detail']}); "
                f"check that this model supports this kind of request", "invalid_request_error", None,
                "unsupported_endpoint" if status == 404 else "method_not_allowed",
            )
        if isinstance(error, str):
            return error_body(f"backend answered: {error}", "upstream_error", None, status)
    return payload
