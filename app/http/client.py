"""An HTTP/1.1 client for one job: many requests to a few plain-http backends.

httpcore's pool scans every pooled connection (polling each idle socket) for every request it
places, so its cost grows with the number of connections (bench/NOTES.md sections 2 and 3:
most of the gateway's CPU under concurrent load). This module replaces what is below httpx:

- one `asyncio.Protocol` per connection, responses parsed by httptools (C, from uvicorn[standard]);
- idle connections in a LIFO deque per origin: checkout and release are O(1), and a connection
  the server closes is marked dead by `connection_lost`, so nothing polls sockets;
- a response closed before its end aborts its connection, so the backend sees the client leave;
- a request on a reused idle connection that the server had just closed is sent again once
  (nothing reached the model: no response byte arrived).

Two ways in. `LeanTransport` is an `httpx.AsyncBaseTransport` (`httpx.Request` in,
`httpx.Response` out, httpx's exceptions), used by the gateway's own calls through
`httpx.AsyncClient` (health checks, model lists, metrics); there each wait is bounded by one loop
timer from the request's `timeout` extension. `OriginSender` implements the forwarding seam
(`http.sender.Sender`) for forwarded requests: raw header pairs and body in, the
`Connection` (which reads as a `http.sender.Reply`) out, with no httpx objects built per
request and no timer per wait: the exchange bounds itself with one watchdog
(`forwarding.deadline`); bench/NOTES.md section 3 has the figures.

https:// URLs go to httpx's own transport (and forwarded requests to them through
`http.sender.HttpxSender`). Not handled, because the gateway never needs them: pipelining,
`Expect: 100-continue`, responses to HEAD, trailers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools
import httpx

_HIGH_WATER = 1 << 20  # stop reading from the backend while this much body waits unsent
_SINGLE_WRITE = 1 << 16
_TIMED_OUT = object()


class Connection(asyncio.Protocol):
    """One connection to a backend and, while a request is out on it, that request's response,
    read through the members of `http.sender.Reply`."""

    pipes = True  # `pipe` hands chunks to a sink from `data_received`

    __slots__ = ("loop", "pool", "key", "parser", "transport", "dead", "idle_since", "waiter", "request", "busy",
                 "status", "headers", "chunks", "buffered", "complete", "error", "paused", "keep_alive", "sink")

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: LeanTransport, key: tuple[str, int]) -> None:
        self.loop, self.pool, self.key = loop, pool, key
        self.transport: asyncio.Transport | None = None
        self.dead = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future | None = None
        self.request: httpx.Request | None = None  # only for httpx's exceptions (httpx's interface)
        self.busy = False  # a request is out on this connection
        self.sink: Callable[[bytes], bool] | None = None  # see pipe()
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.error: Exception | None = None
        self.paused = False
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # data after the connection was lost
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(httpx.RemoteProtocolError("backend switched protocols", request=self.request))
        except httptools.HttpParserError as exc:
            self.fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}", request=self.request))
        sink = self.sink
        if sink is not None and self.chunks and not sink(self.take()):
            self.sink = None
            self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self.parser = None  # it holds this object (callbacks): no reference cycle left for the collector
        if not self.busy or self.complete:
            return
        if self.status and not self._framed():
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        else:
            self.fail(httpx.RemoteProtocolError("backend closed the connection mid-response", request=self.request))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None  # it is the caller
        self.status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.sink is not None:
            return  # data_received hands everything to the sink once the parser is done
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        waiter = self.waiter  # _wake(), inlined: once per relayed stream chunk
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    def _framed(self) -> bool:
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
                return True
        return self.status in (204, 304) or 100 <= self.status < 200

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.abort()
        self._wake()

    def abort(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None = None, what: str = "") -> None:
        """Until the parser makes progress or the connection fails. With `timeout`, at most that
        long (httpx's interface); without, whoever awaits bounds the wait (the exchange's watchdog)."""
        waiter = self.waiter = self.loop.create_future()
        if timeout is None:
            try:
                await waiter
            finally:
                self.waiter = None
            return
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            timer.cancel()
        if waiter.result() is _TIMED_OUT:
            error = httpx.ReadTimeout(f"backend sent no {what} in {timeout:g} s", request=self.request)
            self.fail(error)
            raise self.error or error  # the first failure, if one came before

    # -- the response, as the exchange reads it ------------------------------------------------
    def take(self) -> bytes:
        """Every body byte that has arrived, as one piece: under load, fewer awaits and writes."""
        chunks = self.chunks
        if len(chunks) == 1:
            data = chunks.popleft()
        else:
            data = b"".join(chunks)
            chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def next_chunk(self) -> bytes | None:
        """The body bytes that arrived since the last call (waiting for some); None at the end."""
        while True:
            if self.chunks:
                return self.take()
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            waiter = self.waiter = self.loop.create_future()  # wait(), inlined: once per stream chunk
            try:
                await waiter
            finally:
                self.waiter = None

    async def pipe(self, sink: Callable[[bytes], bool]) -> None:
        """Hand body bytes to `sink` as they arrive, from `data_received` itself (all that one
        read brought, as one piece), until the body ends, the connection fails, or `sink` returns
        False (it took those bytes, and wants no more). No task runs per chunk: the caller wakes
        once, at the end; what the parser produced last, if anything, then waits in `chunks`
        for `next_chunk()` as usual, like the end or the failure."""
        self.sink = sink
        try:
            while self.sink is not None and not self.complete and self.error is None:
                waiter = self.waiter = self.loop.create_future()
                try:
                    await waiter
                finally:
                    self.waiter = None
        finally:
            self.sink = None

    async def read_all(self) -> bytes:
        """The whole body (as the backend encoded it)."""
        parts = []
        while True:
            if self.chunks:
                parts.append(self.take())
            if self.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if self.error is not None:
                raise self.error
            await self.wait()

    def release(self) -> None:
        """Back to the pool when the response was read to its end; otherwise closed, so the
        backend sees the client leave (vLLM aborts the generation)."""
        if not self.busy:
            return
        self.busy = False
        self.request = None
        if self.complete and self.keep_alive and not self.dead and self.error is None:
            self.pool.checkin(self.key, self)
        else:
            self.abort()

    async def aclose(self) -> None:
        self.release()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


class _Body(httpx.AsyncByteStream):
    """The response body through httpx's interface: each wait bounded by the `body` (else `read`) timeout."""

    __slots__ = ("conn", "timeout")

    def __init__(self, conn: Connection, timeout: float | None) -> None:
        self.conn, self.timeout = conn, timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.complete:
                break
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(self.timeout, "body bytes")
        conn.release()

    async def aclose(self) -> None:
        self.conn.release()


@dataclass(eq=False)
class Origin:
    """A backend base URL, parsed once: where to connect, the Host header, and request targets."""

    key: tuple[str, int]
    netloc: bytes
    base: str
    targets: dict[str, bytes] = field(default_factory=dict)

    def target(self, path: str) -> bytes:
        """The request target for `path` (with its query), as httpx would send it."""
        target = self.targets.get(path)
        if target is None:
            target = httpx.URL(self.base + path).raw_path
            if len(self.targets) < 1024:  # paths with query strings vary: keep the cache bounded
                self.targets[path] = target
        return target


class OriginSender:
    """`http.sender.Sender` for one plain-http backend address of a `LeanTransport`."""

    __slots__ = ("transport", "origin", "connect_timeout")

    def __init__(self, transport: LeanTransport, origin: Origin, connect_timeout: float | None) -> None:
        self.transport, self.origin, self.connect_timeout = transport, origin, connect_timeout

    async def send(self, method: bytes, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Connection:
        """`headers` go out as given (the exchange filtered them; the client's come through the
        server's parser, which refuses CR/LF in them), after Host and Content-Length. Nothing here
        bounds the wait for the head except the connect timeout: the caller's watchdog does."""
        origin = self.origin
        head = b"".join((method, b" ", origin.target(path), b" HTTP/1.1\r\nhost: ", origin.netloc,
                         b"\r\ncontent-length: ", b"%d" % len(body), b"\r\n",
                         *[b"%s: %s\r\n" % pair for pair in headers], b"\r\n"))
        return await self.transport.exchange(origin.key, head, body, self.connect_timeout, None, None)


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, keepalive_expiry: float = 4.0, max_idle_per_origin: int = 1024) -> None:
        self.keepalive_expiry = keepalive_expiry
        self.max_idle = max_idle_per_origin
        self._idle: dict[tuple[str, int], deque[Connection]] = {}
        self._fallback: httpx.AsyncBaseTransport | None = None
        self._closed = False

    # -- the pool ------------------------------------------------------------------------------
    def checkout(self, key: tuple[str, int]) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_ok = time.monotonic() - self.keepalive_expiry
        while idle:
            conn = idle.pop()  # most recently used first: warm, least likely to have expired
            if conn.dead:
                continue
            if conn.idle_since < oldest_ok:
                conn.abort()
                while idle:  # LIFO: everything left of it is older still
                    idle.pop().abort()
                return None
            return conn
        return None

    def checkin(self, key: tuple[str, int], conn: Connection) -> None:
        if self._closed:
            conn.abort()
            return
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = deque()
        if len(idle) >= self.max_idle:
            idle.popleft().abort()
        conn.reset()
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def _connect(self, key: tuple[str, int], timeout: float | None, request: httpx.Request | None) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: Connection(loop, self, key), key[0], key[1])
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection within {timeout:g} s", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect: {exc.strerror or exc}", request=request) from None
        return conn

    async def exchange(self, key: tuple[str, int], head: bytes, body: bytes, connect_timeout: float | None,
                        head_timeout: float | None, request: httpx.Request | None) -> Connection:
        """Send one request; its connection once the response head is in."""
        retried = False
        while True:
            conn = self.checkout(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key, connect_timeout, request)
            conn.busy = True
            conn.request = request
            transport = conn.transport
            assert transport is not None  # connected
            if len(body) < _SINGLE_WRITE:
                transport.write(head + body)
            else:
                transport.write(head)
                transport.write(body)
            try:
                while not conn.status:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(head_timeout, "response head")
            except httpx.RemoteProtocolError:
                conn.abort()
                if reused and not conn.status and not retried:
                    retried = True
                    continue  # the backend closed this idle connection as we reused it
                raise
            except BaseException:
                conn.abort()
                raise
            return conn

    # -- forwarded requests ----------------------------------------------------------------------
    def sender(self, base_url: str, connect_timeout: float | None) -> OriginSender | None:
        """The forwarding seam for `base_url`; None for what this client does not serve (https)."""
        url = httpx.URL(base_url)
        if url.scheme != "http":
            return None
        return OriginSender(self, Origin((url.host, url.port or 80), url.netloc, base_url), connect_timeout)

    # -- httpx's interface ------------------------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
        timeouts = request.extensions.get("timeout", {})
        read = timeouts.get("read")
        try:
            body = request.content
        except httpx.RequestNotRead:
            stream = request.stream
            assert isinstance(stream, httpx.AsyncByteStream)  # what httpx.AsyncClient sends
            body = b"".join([part async for part in stream])
        head = b"".join((request.method.encode(), b" ", url.raw_path, b" HTTP/1.1\r\n",
                         *[b"%s: %s\r\n" % pair for pair in request.headers.raw], b"\r\n"))
        conn = await self.exchange((url.host, url.port or 80), head, body, timeouts.get("connect"), read, request)
        return httpx.Response(conn.status, headers=conn.headers, stream=_Body(conn, timeouts.get("body", read)),
                              extensions={"http_version": b"HTTP/1.1"}, request=request)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().abort()
        if self._fallback is not None:
            await self._fallback.aclose()
