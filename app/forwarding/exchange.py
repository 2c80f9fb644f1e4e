"""One forwarded request: send it upstream (with retries), relay the answer, watch the client.

Every exchange watches its client, so a client that goes away (mid-stream or while a long
non-streaming generation is still running) closes the upstream connection at once and vLLM
aborts the generation. The backend address is reached through the forwarding seam
(`http.sender`); one watchdog per request (`forwarding.deadline`) enforces the response-head,
stream-idle and total timeouts, whatever the sender does; every upstream failure is mapped by
one table (`forwarding.failures`). A request for an on-demand backend first waits for it to be
awake (`residency.manager`), within its timeouts and `launch.max_wait`, and holds it awake until done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from ..adapters.client import unknown_model
from ..adapters.manager import LoadUnreachable
from ..errors import GatewayError, GatewayTimeout, ServiceUnavailable, error_body, send_error, sse_error_event
from ..http.downstream import downstream_of
from ..http.sender import ReadReply, Reply
from ..metrics import RequestMetrics
from ..routing.backend import Backend, Upstream
from . import failures
from .affinity import RESPONSE_ID, Holder, id_in_stream
from .context import ForwardingContext
from .headers import NOT_RELAYED_DOWN, upstream_headers

if TYPE_CHECKING:
    from ..residency.manager import ResidencyManager

_EVENT_STREAM = b"text/event-stream"
_JSON = b"application/json"
_DONE = b"data: [DONE]\n\n"
CLIENT_CLOSED = 499  # nginx's code for "client closed request": only ever a metric label


class Retryable(Exception):
    """A failure that is safe to try again: nothing reached the backend's model, nothing the client."""

    def __init__(self, error: GatewayError) -> None:
        self.error = error


class Exchange:
    """One forwarded request: send upstream, relay downstream, watch for the client leaving.

    Timeouts: `watchdog` cancels this task when the current phase's deadline passes (response
    head; whole body; each gap in a stream; `total` for all of it); the phase that was waiting
    turns that cancellation into its timeout error (`_timed_out`)."""

    task: asyncio.Task[None]
    loop: asyncio.AbstractEventLoop
    pipe_chunk: Callable[[bytes], bool]
    __slots__ = ("ctx", "scope", "send", "endpoint", "backend", "body", "headers", "request_id", "recorder",
                 "started", "status", "response_started", "finished", "client_gone", "streaming", "delivered",
                 "upstream", "task", "loop", "watchdog", "total_deadline", "pipe_chunk", "method", "pinned",
                 "stored_as", "adapter", "holding", "first_byte_at", "usage", "tail_prev", "tail_last", "evicted")

    def __init__(self, ctx: ForwardingContext, scope: dict[str, Any], send: Any, endpoint: str, backend: Backend,
                 body: bytes, headers: list[tuple[bytes, bytes]], request_id: bytes, recorder: RequestMetrics,
                 started: float, *, method: bytes = b"POST", pinned: Upstream | None = None,
                 stored_as: str | None = None, adapter: str | None = None) -> None:
        self.ctx, self.scope, self.send, self.endpoint = ctx, scope, send, endpoint
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
        self.adapter = adapter  # a configured LoRA adapter: loaded where the request goes, first
        self.holding: Upstream | None = None  # where `adapter` is counted in flight for this request
        # For the operator page's Activity (`ui.activity`): when the first byte went out, the JSON
        # answer's usage, a stream's last two chunks (its usage event is at the end).
        self.first_byte_at = 0.0
        self.usage: Any = None
        self.tail_prev = self.tail_last = b""
        self.evicted: GatewayError | None = None  # the residency manager ended it (its backend must sleep)

    async def run(self, receive: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        loop = self.loop = task.get_loop()
        self.watchdog = self.ctx.deadlines(loop).watchdog(task)
        total = self.backend.timeouts.total
        # In loop time, from when the request arrived.
        self.total_deadline = loop.time() + total - (time.perf_counter() - self.started) if total else None
        # The gateway's server protocol calls back when the client leaves (`http.downstream`);
        # under any other server, a task watches `receive()` for it.
        downstream = downstream_of(self.scope)
        watcher = None
        if downstream is None or not downstream.watch_lost(self._client_lost):
            watcher = loop.create_task(self._watch(receive))
        recorder = self.recorder
        recorder.in_flight.inc()
        limit = self.backend.limit
        acquired = False
        residency = self.ctx.residency if self.backend.residency is not None else None
        holding = False
        try:
            if residency is not None:
                await self._until_awake(residency)
                holding = True
            if limit is not None:
                await limit.acquire()
                acquired = True
            reply = await self._send_with_retries()
            try:
                await self._relay(reply)
            finally:
                await reply.aclose()
                if self.upstream is not None:
                    self.upstream.outstanding -= 1
                if self.holding is not None:
                    self._release_adapter()
        except asyncio.CancelledError:
            if self.client_gone:
                task.uncancel()
                if not self.delivered:
                    recorder.disconnects.inc()
                    self.status = CLIENT_CLOSED
            elif self.ctx.draining:
                # The shutdown grace period ran out: end the response cleanly instead of cutting it.
                task.uncancel()
                await self._close_for_shutdown()
            elif self.evicted is not None:
                task.uncancel()
                await self._close_early(self.evicted)
            else:
                raise
        except GatewayError as error:
            if self.response_started:
                raise  # headers are out: nothing left to do but drop the connection
            self.status = error.status
            await send_error(self.send, error, self.request_id)
        finally:
            self.watchdog.stop()
            if acquired and limit is not None:
                limit.release()
            if holding and residency is not None:
                residency.leave(self.backend, self)
            self.finished = True
            if watcher is not None:
                watcher.cancel()
            elif downstream is not None:
                downstream.forget()
            recorder.in_flight.dec()
            if self.status:
                recorder.count(self.status)
            ended = time.perf_counter()
            recorder.duration.observe(ended - self.started)
            if self.ctx.activity is not None:
                self.ctx.activity.finished(self, ended)

    async def _close_for_shutdown(self) -> None:
        await self._close_early(ServiceUnavailable("the gateway shut down before this response was complete; retry",
                                                   headers={"Retry-After": "1"}, code="shutting_down"))

    async def _close_early(self, error: GatewayError) -> None:
        """End the response with `error`: its answer when none was sent yet, else a final SSE event."""
        if not self.response_started:
            self.status = error.status
            await send_error(self.send, error, self.request_id)
        elif self.streaming:
            await self.send({"type": "http.response.body", "body": sse_error_event(error), "more_body": False})

    async def _until_awake(self, residency: ResidencyManager) -> None:
        """Wait for an on-demand backend's wake, bounded by `launch.max_wait`, the response-head
        timeout and `timeouts.total` (the earliest wins); then 503 with Retry-After."""
        backend = self.backend
        launch = backend.config.launch
        assert launch is not None
        deadline, which = self._phase_deadline(min(launch.max_wait, backend.timeouts.response_head))
        if which == "":
            which = "launch.max_wait" if launch.max_wait <= backend.timeouts.response_head else "timeouts.response_head"
        began = self.loop.time()
        self.watchdog.move(deadline)
        try:
            await residency.enter(backend, self)
        except asyncio.CancelledError:
            if not self._timed_out():
                raise
            raise residency.wait_timed_out(backend, self.loop.time() - began, which) from None
        finally:
            self.watchdog.stop()

    def evict(self, error: GatewayError) -> None:
        """The residency manager ends this request: its backend must sleep and the drain ran out."""
        if not self.finished and self.evicted is None:
            self.evicted = error
            self.task.cancel()

    async def _watch(self, receive: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._client_lost()
                return

    @property
    def model(self) -> str:
        return self.recorder.model

    @property
    def backend_name(self) -> str:
        return self.backend.name

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

    def _fail(self, phase: str, cause: str, detail: str = "") -> GatewayError:
        failure, error = failures.failed(self.ctx.metrics, self.backend, phase, cause, detail)
        assert error is not None
        if failure.retryable:
            raise Retryable(error)
        return error

    # -- upstream ------------------------------------------------------------------------------
    async def _send_with_retries(self) -> Reply:
        retries = self.ctx.retries
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

    async def _attempt(self, last: bool) -> Reply:
        """One try on the least busy address; that address counts the request until it is relayed."""
        adapter = self.adapter
        if adapter is None:
            upstream = self.pinned or self.backend.pick()
        else:  # an address holding the adapter, if one does
            upstream = self.pinned or self.backend.pick(self.ctx.adapters.holders(self.backend, adapter))
        upstream.outstanding += 1
        try:
            reply = await (self._send(upstream, last) if adapter is None else self._send_to_adapter(upstream, adapter, last))
        except BaseException:
            upstream.outstanding -= 1
            raise
        self.upstream = upstream
        return reply

    # -- LoRA adapters (`adapters.manager`) ----------------------------------------------------
    async def _send_to_adapter(self, upstream: Upstream, adapter: str, last: bool) -> Reply:
        """Load the adapter there (or wait for its load), then send. When vLLM answers that it does
        not hold an adapter the gateway counted as loaded (an external backend restarted), load it
        again and send once more: nothing was generated."""
        try:
            await self._load_adapter(upstream, adapter)
            reply = await self._send(upstream, last)
            if reply.status == 404:
                status, headers = reply.status, list(reply.headers)  # the connection is reused once closed
                payload = await self._read_error(reply)
                if not (unknown_model(payload, adapter) and self.ctx.adapters.forget(self.backend, upstream, adapter)):
                    return ReadReply(status, headers, payload)
                self._release_adapter()
                await self._load_adapter(upstream, adapter)
                reply = await self._send(upstream, last)
        except BaseException:
            if self.holding is not None:
                self._release_adapter()
            raise
        return reply

    async def _read_error(self, reply: Reply) -> bytes:
        """A small error body, read whole, then the reply closed."""
        try:
            return await self._read_body(reply)
        finally:
            await reply.aclose()

    async def _read_body(self, reply: Reply, encoding: bytes | None = None) -> bytes:
        """The whole body (decoded from `encoding`), under the stream-idle limit capped by `total`;
        a timeout or a broken body mapped as a body's failure (`forwarding.failures`)."""
        watchdog = self.watchdog
        if not reply.complete:
            watchdog.move(self._phase_deadline(self.backend.timeouts.stream_idle)[0])
        try:
            payload = await reply.read_all()
            if encoding is not None:
                # Decoded: the client gets identity (httpx's decoders, as for any httpx response).
                payload = httpx.Response(reply.status, headers=[(b"content-encoding", encoding)], content=payload).content
            return payload
        except asyncio.CancelledError:
            if not self._timed_out():
                raise
            raise self._fail(failures.BODY, failures.DEADLINE) from None
        except httpx.HTTPError as exc:
            raise self._fail(failures.BODY, *failures.while_reading(exc)) from None
        finally:
            watchdog.stop()

    async def _load_adapter(self, upstream: Upstream, adapter: str) -> None:
        """`adapters.acquire`, bounded like waiting for a response head (`timeouts.response_head`, capped by
        `total`); a load others wait on goes on when this request gives up."""
        deadline, which = self._phase_deadline(self.backend.timeouts.response_head)
        allowed = f"{max(0.0, deadline - self.loop.time()):g} s ({which or 'timeouts.response_head'})"
        self.watchdog.move(deadline)
        try:
            await self.ctx.adapters.acquire(self.backend, upstream, adapter)
        except asyncio.CancelledError:
            if not self._timed_out():
                raise
            raise GatewayTimeout(f"adapter `{adapter}` was not loaded on backend {self.backend.name!r} within {allowed}; "
                                 f"the load goes on: retry shortly", code="adapter_load_timeout") from None
        except LoadUnreachable as failure:
            if isinstance(failure.cause, httpx.HTTPError):
                cause, detail = failures.cause_of(failure.cause)
                raise self._fail(failures.HEAD, cause, detail or "timeouts.response_head") from None
            if failure.cause is None:  # answered 502-504: busy
                raise self._fail(failures.HEAD, failures.ANSWERED_503, failure.detail) from None
            raise GatewayError(failure.detail) from None
        finally:
            self.watchdog.stop()
        self.holding = upstream

    def _release_adapter(self) -> None:
        assert self.holding is not None and self.adapter is not None
        self.ctx.adapters.release(self.backend, self.holding, self.adapter)
        self.holding = None

    async def _send(self, upstream: Upstream, last: bool) -> Reply:
        backend, watchdog = self.backend, self.watchdog
        path = self.endpoint
        query = self.scope.get("query_string")
        if query:
            path = f"{path}?{query.decode('latin-1')}"
        deadline, which = self._phase_deadline(backend.timeouts.response_head)
        allowed = f"{max(0.0, deadline - self.loop.time()):g} s ({which or 'timeouts.response_head'})"
        watchdog.move(deadline)
        try:
            reply = await upstream.sender.send(self.method, path,
                                               upstream_headers(self.headers, upstream.default_headers,
                                                                self.request_id), self.body)
        except asyncio.CancelledError:
            if not self._timed_out():
                raise
            raise self._fail(failures.HEAD, failures.DEADLINE, allowed) from None
        except httpx.HTTPError as exc:
            cause, detail = failures.cause_of(exc)
            raise self._fail(failures.HEAD, cause, allowed if cause == failures.READ_TIMEOUT else detail) from None
        finally:
            watchdog.stop()
        backend.answered()
        if reply.status == 503 and not last:
            await reply.aclose()
            self._fail(failures.HEAD, failures.ANSWERED_503)
        if reply.status >= 500:
            failures.failed(self.ctx.metrics, backend, failures.HEAD, failures.ANSWERED_5XX)
        return reply

    # -- downstream ----------------------------------------------------------------------------
    async def _relay(self, reply: Reply) -> None:
        relayed = []
        content_type = b""
        encoding = None
        for name, value in reply.headers:
            name = name.lower()
            if name in NOT_RELAYED_DOWN:
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

    async def _relay_whole(self, reply: Reply, headers: list[tuple[bytes, bytes]], content_type: bytes,
                           encoding: bytes | None) -> None:
        status = reply.status
        payload = await self._read_body(reply, encoding)
        if content_type.startswith(_JSON):
            try:
                decoded = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise self._fail(failures.BODY, failures.NOT_JSON) from None
            if status >= 400:
                payload = _openai_shaped(decoded, status, payload, self.endpoint)
            elif self.stored_as is not None and isinstance(decoded, dict) and isinstance(decoded.get("id"), str):
                self._remember(decoded["id"])
            if isinstance(decoded, dict):
                self.usage = decoded.get("usage")
        self.first_byte_at = time.perf_counter()
        self.recorder.ttfb.observe(self.first_byte_at - self.started)
        if encoding is not None:
            headers = [(k, v) for k, v in headers if k != b"content-encoding"]
        headers.append((b"content-length", b"%d" % len(payload)))
        self.response_started = True
        self.status = status
        send = self.send
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    def _remember(self, response_id: str | None) -> None:
        if response_id is not None and RESPONSE_ID.match(response_id) and self.upstream is not None:
            self.ctx.affinity.remember(response_id, Holder(self.backend.name, self.upstream.url, self.stored_as or ""))

    def _relayed(self, chunk: bytes) -> None:
        """After each stream chunk reaches the client: the end seen, and the next gap allowed."""
        if chunk.endswith(_DONE):
            self.delivered = True
        self.tail_prev, self.tail_last = self.tail_last, chunk
        self._allow_gap()

    def _allow_gap(self) -> None:
        """The gap allowed before the next stream chunk, the client's send included; moving the
        deadline later is a store (`forwarding.deadline`), not a timer per chunk."""
        when = self.loop.time() + self.backend.timeouts.stream_idle
        total = self.total_deadline
        self.watchdog.move(when if total is None or when < total else total)

    def _through_pipe(self, chunk: bytes) -> bool:
        """One chunk through the pipe (`Reply.pipe`): the stream loop's work, without its task."""
        keep_piping: bool = self.pipe_chunk(chunk)
        self._relayed(chunk)
        return keep_piping

    async def _relay_stream(self, reply: Reply, headers: list[tuple[bytes, bytes]]) -> None:
        send, watchdog, loop = self.send, self.watchdog, self.loop
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
                self.first_byte_at = time.perf_counter()
                self.recorder.ttfb.observe(self.first_byte_at - self.started)
                if self.stored_as is not None and reply.status < 400:
                    self._remember(id_in_stream(chunk))
            pipe_tried = not reply.pipes
            while chunk is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._relayed(chunk)
                if not pipe_tried:
                    # From here on, chunks go from the backend's socket to the client's in the
                    # backend connection's callback; this task wakes at the end (or when the
                    # client reads too slowly, then carries on through `send`).
                    pipe_tried = True
                    downstream = downstream_of(self.scope)
                    pipe = downstream.open_pipe() if downstream is not None else None
                    if pipe is not None:
                        self.pipe_chunk = pipe.push
                        await reply.pipe(self._through_pipe)
                chunk = await next_chunk()
        except asyncio.CancelledError:
            if not self._timed_out():
                raise
            limit = "timeouts.total" if total is not None and loop.time() >= total - 0.001 else "timeouts.stream_idle"
            failure = self._fail(failures.STREAM, failures.DEADLINE, limit)
        except httpx.HTTPError as exc:
            failure = self._fail(failures.STREAM, *failures.while_reading(exc))
        finally:
            watchdog.stop()
        tail = sse_error_event(failure) if failure is not None else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})


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


__all__ = ["CLIENT_CLOSED", "Exchange", "Retryable"]
