"""One forwarded request: send it upstream (with retries), relay the answer, watch the client.

Every exchange watches its client, so a client that goes away (mid-stream or while
a long non-streaming generation is still running) closes the upstream connection at once and
vLLM aborts the generation.

Backends behind the gateway's own transport (`app.transport.LeanTransport`, the default) are
called through its direct door: no httpx Request/Response per request. Any other httpx transport
(tests inject `httpx.MockTransport`; https backends) goes through httpx, behind `HttpxReply`,
which reads the same as the direct door's reply. Either way one watchdog per request
(`app.deadline`) enforces the response-head, stream-idle and total timeouts, whatever the
transport does.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_random_exponential

from . import body as bodies
from .affinity import RESPONSE_ID, Holder, id_in_stream
from .errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    ServiceUnavailable,
    error_body,
    send_error,
    sse_error_event,
)
from .registry import Backend, Upstream
from .downstream import forget_client_lost, on_client_lost, open_pipe
from .transport import LeanTransport, Reply

if TYPE_CHECKING:
    from .proxy import Proxy

# Never forwarded in either direction (RFC 9110 7.6.1), plus headers the gateway sets itself.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect",
})
_NOT_FORWARDED_UP = _HOP_BY_HOP | {b"authorization", b"x-request-id", b"x-api-key", b"cookie"}
_PLAIN_CONNECTION = frozenset({b"close", b"keep-alive"})  # name no header: nothing more to drop
_NOT_RELAYED_DOWN = _HOP_BY_HOP | {b"date", b"server", b"x-request-id"}
_EVENT_STREAM = b"text/event-stream"
_JSON = b"application/json"
_DONE = b"data: [DONE]\n\n"
CLIENT_CLOSED = 499  # nginx's code for "client closed request": only ever a metric label


class Retryable(Exception):
    """A failure that is safe to try again: nothing reached the backend's model, nothing the client."""

    def __init__(self, error: GatewayError, kind: str) -> None:
        self.error, self.kind = error, kind


class HttpxReply:
    """A response from any other httpx transport, read through the members the proxy uses on
    `app.transport.Reply` (the direct door's): status, raw headers, complete, read_all(),
    next_chunk(), aclose()."""

    __slots__ = ("response", "status", "headers", "complete", "_chunks")

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = response.headers.raw
        self.complete = False  # unknown until read: the watchdog bounds the read
        self._chunks: Any = None

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self.response.stream])

    async def next_chunk(self) -> bytes | None:
        if self._chunks is None:
            self._chunks = self.response.stream.__aiter__()
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None

    async def aclose(self) -> None:
        await self.response.aclose()


class Exchange:
    """One forwarded request: send upstream, relay downstream, watch for the client leaving.

    Timeouts: `watchdog` cancels this task when the current phase's deadline passes (response
    head; whole body; each gap in a stream; `total` for all of it); the phase that was waiting
    turns that cancellation into its timeout error (`_timed_out`)."""

    __slots__ = ("proxy", "scope", "send", "endpoint", "backend", "body", "headers", "request_id", "recorder",
                 "started", "status", "response_started", "finished", "client_gone", "streaming", "delivered",
                 "upstream", "task", "loop", "watchdog", "total_deadline", "pipe_chunk", "method", "pinned",
                 "stored_as")

    def __init__(self, proxy: Proxy, scope: dict, send: Any, endpoint: str, backend: Backend, body: bytes,
                 headers: list[tuple[bytes, bytes]], request_id: bytes, recorder: Any, started: float, *,
                 method: bytes = b"POST", pinned: Upstream | None = None, stored_as: str | None = None) -> None:
        self.proxy, self.scope, self.send, self.endpoint = proxy, scope, send, endpoint
        self.backend, self.body, self.headers, self.request_id = backend, body, headers, request_id
        self.recorder, self.started = recorder, started
        self.method = method
        self.pinned = pinned  # the address that must answer (a stored response lives there), else the least busy
        self.stored_as = stored_as  # a Responses API answer: remember its address, under this model
        self.status = 0
        self.response_started = False
        self.finished = False
        self.client_gone = False
        self.streaming = False
        self.delivered = False  # the whole answer reached the client (a close after it is no disconnect)
        self.upstream: Upstream | None = None  # the address the response came from, counted outstanding

    async def run(self, receive: Any) -> None:
        task = self.task = asyncio.current_task()
        loop = self.loop = task.get_loop()
        self.watchdog = self.proxy.deadlines(loop).watchdog(task)
        total = self.backend.timeouts.total
        # In loop time, from when the request arrived.
        self.total_deadline = loop.time() + total - (time.perf_counter() - self.started) if total else None
        # The server calls back when the client leaves (`app.downstream`); under any other, a task
        # watches `receive()` for it.
        watcher = None if on_client_lost(self.scope, self._client_lost) else loop.create_task(self._watch(receive, task))
        recorder = self.recorder
        recorder.in_flight.inc()
        limit = self.backend.limit
        acquired = False
        try:
            if limit is not None:
                await limit.acquire()
                acquired = True
            reply = await self._send_with_retries()
            try:
                await self._relay(reply)
            finally:
                await reply.aclose()
                self.upstream.outstanding -= 1
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
            self.watchdog.stop()
            if acquired:
                limit.release()
            self.finished = True
            if watcher is not None:
                watcher.cancel()
            else:
                forget_client_lost(self.scope)
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
                self._client_lost()
                return

    def _client_lost(self) -> None:
        if not self.finished:
            self.client_gone = True
            self.task.cancel()

    def _timed_out(self) -> bool:
        """After a CancelledError: was it the watchdog's? Then take it back; True unless the
        client has left too (that cancellation is run()'s to handle)."""
        watchdog = self.watchdog
        if not watchdog.fired:
            return False
        watchdog.fired = False
        self.task.uncancel()
        return not self.client_gone

    def _phase_deadline(self, seconds: float) -> tuple[float, str]:
        """Loop time at which a phase allowed `seconds` ends, capped by `total`, and which limit that is."""
        when = self.loop.time() + seconds
        total = self.total_deadline
        if total is not None and total < when:
            return total, "timeouts.total"
        return when, ""

    # -- upstream ------------------------------------------------------------------------------
    async def _send_with_retries(self) -> Any:
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

    async def _attempt(self, last: bool) -> Any:
        """One try on the least busy address; that address counts the request until it is relayed."""
        upstream = self.pinned or self.backend.pick()
        upstream.outstanding += 1
        try:
            reply = await self._send(upstream, last)
        except BaseException:
            upstream.outstanding -= 1
            raise
        self.upstream = upstream
        return reply

    async def _send(self, upstream: Upstream, last: bool) -> Any:
        proxy, backend, watchdog = self.proxy, self.backend, self.watchdog
        path = self.endpoint
        query = self.scope.get("query_string")
        if query:
            path = f"{path}?{query.decode('latin-1')}"
        deadline, which = self._phase_deadline(backend.timeouts.response_head)
        which = which or "timeouts.response_head"
        allowed = max(0.0, deadline - self.loop.time())
        watchdog.move(deadline)
        transport = upstream.transport
        origin = transport.origin(upstream.url) if type(transport) is LeanTransport else None
        try:
            if origin is not None:
                reply = await transport.send(origin, self.method, origin.target(path), self._upstream_headers(upstream),
                                             self.body, upstream.timeout.get("connect"))
            else:
                request = httpx.Request(self.method.decode(), upstream.url_for(path), content=self.body,
                                        headers=self._upstream_headers(upstream),
                                        extensions={"timeout": upstream.timeout})
                reply = HttpxReply(await transport.handle_async_request(request))
        except asyncio.CancelledError:
            if not self._timed_out():
                raise
            proxy.metrics.upstream_error(backend.name, "timeout")
            raise GatewayTimeout(
                f"backend {backend.name!r} sent no response within {allowed:g} s ({which}); "
                f"the request was cancelled upstream"
            ) from None
        except httpx.ConnectTimeout:
            proxy.metrics.upstream_error(backend.name, "connect_timeout")
            backend.breaker.record_failure()
            raise Retryable(unavailable(backend, "did not accept a connection in time"), "connect_timeout") from None
        except httpx.ConnectError:
            proxy.metrics.upstream_error(backend.name, "connect")
            backend.breaker.record_failure()
            raise Retryable(unavailable(backend, "refused the connection"), "connect") from None
        except httpx.TimeoutException:
            proxy.metrics.upstream_error(backend.name, "timeout")
            raise GatewayTimeout(
                f"backend {backend.name!r} sent no response within {allowed:g} s ({which}); "
                f"the request was cancelled upstream"
            ) from None
        except httpx.HTTPError as exc:
            proxy.metrics.upstream_error(backend.name, "protocol")
            raise BadGateway(f"backend {backend.name!r} answered with a broken HTTP response ({type(exc).__name__})") from None
        finally:
            watchdog.stop()
        backend.answered()
        if reply.status == 503 and not last:
            await reply.aclose()
            proxy.metrics.upstream_error(backend.name, "status_5xx")
            raise Retryable(unavailable(backend, "answered 503"), "status_503")
        if reply.status >= 500:
            proxy.metrics.upstream_error(backend.name, "status_5xx")
        return reply

    def _upstream_headers(self, upstream: Upstream) -> list[tuple[bytes, bytes]]:
        drop = _NOT_FORWARDED_UP
        connection = bodies.header(self.headers, b"connection")
        if connection and connection.lower() not in _PLAIN_CONNECTION:
            # Headers the client named as hop-by-hop go no further (RFC 9110 7.6.1).
            drop = drop | {token.strip().lower() for token in connection.split(b",")}
        forwarded = [(k, v) for k, v in self.headers if k not in drop]
        defaults = upstream.default_headers
        if defaults:
            sent = {k for k, _ in forwarded}
            forwarded.extend((k, v) for k, v in defaults.items() if k not in sent)
        forwarded.append((b"x-request-id", self.request_id))
        return forwarded

    # -- downstream ----------------------------------------------------------------------------
    async def _relay(self, reply: Any) -> None:
        relayed = []
        content_type = b""
        encoding = None
        for name, value in reply.headers:
            name = name.lower()
            if name in _NOT_RELAYED_DOWN:
                continue
            if name == b"content-type":
                content_type = value.lower()
            elif name == b"content-encoding":
                encoding = value
            relayed.append((name, value))
        relayed.append((b"x-request-id", self.request_id))
        if content_type.startswith(_EVENT_STREAM):
            await self._relay_stream(reply, relayed)
        else:
            await self._relay_whole(reply, relayed, content_type, encoding)

    async def _relay_whole(self, reply: Any, headers: list, content_type: bytes, encoding: bytes | None) -> None:
        backend, watchdog = self.backend, self.watchdog
        status = reply.status
        if not reply.complete:
            watchdog.move(self._phase_deadline(backend.timeouts.stream_idle)[0])
        try:
            payload = await reply.read_all()
            if encoding is not None:
                # Decoded: the client gets identity (httpx's decoders, as for any httpx response).
                payload = httpx.Response(status, headers=[(b"content-encoding", encoding)], content=payload).content
        except asyncio.CancelledError:
            if not self._timed_out():
                raise
            self.proxy.metrics.upstream_error(backend.name, "timeout")
            raise GatewayTimeout(f"backend {backend.name!r} stopped sending its response") from None
        except httpx.TimeoutException:
            self.proxy.metrics.upstream_error(backend.name, "timeout")
            raise GatewayTimeout(f"backend {backend.name!r} stopped sending its response") from None
        except httpx.HTTPError as exc:
            self.proxy.metrics.upstream_error(backend.name, "disconnect")
            raise BadGateway(f"backend {backend.name!r} broke off its response ({type(exc).__name__})") from None
        finally:
            watchdog.stop()
        if content_type.startswith(_JSON):
            try:
                decoded = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self.proxy.metrics.upstream_error(backend.name, "invalid_response")
                raise BadGateway(f"backend {backend.name!r} promised JSON but sent something else") from None
            if status >= 400:
                payload = _openai_shaped(decoded, status, payload, self.endpoint)
            elif self.stored_as is not None and isinstance(decoded, dict) and isinstance(decoded.get("id"), str):
                self._remember(decoded["id"])
        self.recorder.ttfb.observe(time.perf_counter() - self.started)
        if encoding is not None:
            headers = [(k, v) for k, v in headers if k != b"content-encoding"]
        headers.append((b"content-length", b"%d" % len(payload)))
        self.response_started = True
        self.status = status
        send = self.send
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    def _remember(self, response_id: str | None) -> None:
        if response_id is not None and RESPONSE_ID.match(response_id):
            self.proxy.affinity.remember(response_id, Holder(self.backend.name, self.upstream.url, self.stored_as))

    def _relayed(self, chunk: bytes) -> None:
        """After each stream chunk reaches the client: the end seen, and the next gap allowed."""
        if chunk.endswith(_DONE):
            self.delivered = True
        self._allow_gap()

    def _allow_gap(self) -> None:
        """The gap allowed before the next stream chunk, the client's send included; moving the
        deadline later is a store (app.deadline), not a timer per chunk."""
        when = self.loop.time() + self.backend.timeouts.stream_idle
        total = self.total_deadline
        self.watchdog.move(when if total is None or when < total else total)

    def _through_pipe(self, chunk: bytes) -> bool:
        """One chunk through the pipe (`Reply.pipe`): the stream loop's work, without its task."""
        keep_piping = self.pipe_chunk(chunk)
        self._relayed(chunk)
        return keep_piping

    async def _relay_stream(self, reply: Any, headers: list) -> None:
        backend, send, watchdog, loop = self.backend, self.send, self.watchdog, self.loop
        total = self.total_deadline
        self.response_started = True
        self.streaming = True
        self.status = reply.status
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        next_chunk = reply.next_chunk
        failure: GatewayError | None = None
        try:
            self._allow_gap()
            chunk = await next_chunk()
            if chunk is not None:
                self.recorder.ttfb.observe(time.perf_counter() - self.started)
                if self.stored_as is not None and reply.status < 400:
                    self._remember(id_in_stream(chunk))
            pipe_tried = type(reply) is not Reply  # only the direct door's reply can feed a pipe
            while chunk is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._relayed(chunk)
                if not pipe_tried:
                    # From here on, chunks go from the backend's socket to the client's in the
                    # backend connection's callback; this task wakes at the end (or when the
                    # client reads too slowly, then carries on through `send`).
                    pipe_tried = True
                    pipe = open_pipe(self.scope)
                    if pipe is not None:
                        self.pipe_chunk = pipe.push
                        await reply.pipe(self._through_pipe)
                chunk = await next_chunk()
        except asyncio.CancelledError:
            if not self._timed_out():
                raise
            self.proxy.metrics.upstream_error(backend.name, "stream_timeout")
            limit = "timeouts.total" if total is not None and loop.time() >= total - 0.001 else "timeouts.stream_idle"
            failure = GatewayTimeout(f"backend {backend.name!r} stream stopped: {limit} exceeded; the stream was closed")
        except httpx.TimeoutException:
            self.proxy.metrics.upstream_error(backend.name, "stream_timeout")
            failure = GatewayTimeout(f"backend {backend.name!r} stream stopped: timeouts.stream_idle exceeded; "
                                     f"the stream was closed")
        except httpx.HTTPError as exc:
            self.proxy.metrics.upstream_error(backend.name, "disconnect")
            failure = BadGateway(f"backend {backend.name!r} broke off the stream ({type(exc).__name__})")
        finally:
            watchdog.stop()
        tail = sse_error_event(failure) if failure is not None else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def refusal(backend: Backend) -> ServiceUnavailable | None:
    """Why this backend cannot take a request right now, if it cannot."""
    if not backend.routable:
        return unavailable(backend)
    if not backend.breaker.allow():
        return unavailable(backend, "is failing (circuit open)", backend.breaker.retry_after())
    return None


def unavailable(backend: Backend, what: str | None = None, retry_after_s: float | None = None) -> ServiceUnavailable:
    if what is None and backend.given_up:
        return ServiceUnavailable(
            f"backend {backend.name!r} failed and is no longer restarted; GET /status shows why; "
            f"it serves again once the cause is fixed and the gateway restarted",
            headers={"Retry-After": "60"})
    retry_after = max(1, round(retry_after_s if retry_after_s is not None else backend_retry_hint(backend)))
    detail = what or f"is {backend.state}"
    return ServiceUnavailable(
        f"backend {backend.name!r} {detail}; retry in {retry_after} s (GET /status shows backend states)",
        headers={"Retry-After": str(retry_after)},
    )


def backend_retry_hint(backend: Backend) -> float:
    return 5.0 if backend.launched else 1.0


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
