"""PROTOTYPE (bench only): a lean HTTP/1.1 transport for httpx, for plain-http upstreams on loopback.

Why: under load the gateway spends most of its CPU in httpcore's connection pool, which scans
every pooled connection (and, through anyio, polls each idle socket) for every request it
assigns: O(connections) per request with a quadratic `is_idle` count inside, plus an anyio cancel
scope per socket operation. This transport keeps the httpx API (`httpx.Request` in,
`httpx.Response` out, httpx exceptions) and replaces the pool and the I/O underneath:

- one asyncio.Protocol per connection, responses parsed by httptools (C, already installed with
  uvicorn[standard]);
- idle connections in a LIFO deque per origin: checkout and release are O(1); a connection the
  server closes is marked dead by `connection_lost`, so nothing polls sockets;
- timeouts are one loop timer per wait (`call_later`), not a cancel scope per operation;
- a response closed before its end aborts the connection (client gone -> vLLM aborts).

https:// URLs fall back to httpx's own transport. Not yet handled: HTTP/1.1 pipelining,
`Expect: 100-continue`, responses to HEAD, trailers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import AsyncIterator

import httptools
import httpx

_HIGH_WATER = 1 << 20  # pause reading from upstream while this much body waits unread
_LOW_WATER = 1 << 18


class _Connection(asyncio.Protocol):
    __slots__ = ("loop", "parser", "transport", "dead", "idle_since", "waiter", "status", "reason", "headers",
                 "chunks", "buffered", "complete", "error", "paused", "keep_alive", "request")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.dead = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future | None = None
        self.request: httpx.Request | None = None
        self.parser = httptools.HttpResponseParser(self)  # llhttp resets itself between responses
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.error: Exception | None = None
        self.paused = False
        self.keep_alive = True

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("upstream switched protocols", request=self.request))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}", request=self.request))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        if self.request is not None and not self.complete:
            if self.status and not self._framed():
                self.complete = True  # body delimited by the end of the connection
                self._wake()
            else:
                self._fail(httpx.RemoteProtocolError("upstream closed the connection mid-response", request=self.request))

    def pause_writing(self) -> None:  # large request bodies: asyncio buffers them for us
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- helpers -----------------------------------------------------------------------------
    def _framed(self) -> bool:
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
                return True
        return self.status in (204, 304) or 100 <= self.status < 200

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.dead = True
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None, what: str) -> None:
        """Until the parser makes progress (or the connection fails), at most `timeout` seconds."""
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, waiter) if timeout else None
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()
        if waiter.result() is _TIMED_OUT:
            self._fail(httpx.ReadTimeout(f"upstream sent no {what} in {timeout:g} s", request=self.request))
            raise self.error  # type: ignore[misc]

    def abort(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.abort()


_TIMED_OUT = object()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


class _Body(httpx.AsyncByteStream):
    __slots__ = ("pool", "key", "conn", "timeout", "released")

    def __init__(self, pool: LeanTransport, key: tuple, conn: _Connection, timeout: float | None) -> None:
        self.pool, self.key, self.conn, self.timeout = pool, key, conn, timeout
        self.released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while True:
            chunks = conn.chunks
            if chunks:
                # Whatever has arrived goes out as one piece: fewer awaits under load.
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                conn.buffered = 0
                if conn.paused:
                    conn.paused = False
                    conn.transport.resume_reading()
                yield data
            elif conn.complete:
                break
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(self.timeout, "body bytes")
        self._release()

    def _release(self) -> None:
        if self.released:
            return
        self.released = True
        conn = self.conn
        conn.request = None
        if conn.complete and conn.keep_alive and not conn.dead and conn.error is None:
            self.pool._checkin(self.key, conn)
        else:
            conn.abort()

    async def aclose(self) -> None:
        if not self.released:
            if not self.conn.complete:
                self.conn.abort()  # the reader left early: drop the connection, upstream aborts
            self._release()


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, keepalive_expiry: float = 4.0, max_idle_per_origin: int = 1024,
                 fallback: httpx.AsyncBaseTransport | None = None) -> None:
        self.keepalive_expiry = keepalive_expiry
        self.max_idle = max_idle_per_origin
        self._idle: dict[tuple, deque[_Connection]] = {}
        self._fallback = fallback
        self._closed = False

    # -- pool --------------------------------------------------------------------------------
    def _checkout(self, key: tuple) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_ok = time.monotonic() - self.keepalive_expiry
        while idle:
            conn = idle.pop()  # most recently used first: warm, least likely to have expired
            if conn.dead:
                continue
            if conn.idle_since < oldest_ok:
                conn.abort()  # LIFO: everything left of it is older still
                while idle:
                    idle.pop().abort()
                return None
            return conn
        return None

    def _checkin(self, key: tuple, conn: _Connection) -> None:
        if self._closed:
            conn.abort()
            return
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= self.max_idle:
            idle.popleft().abort()
        conn._reset()
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def _connect(self, host: str, port: int, timeout: float | None, request: httpx.Request) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop), host, port)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {timeout:g} s", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}", request=request) from None
        return conn

    # -- httpx transport API -------------------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
        timeouts = request.extensions.get("timeout", {})
        port = url.port or 80
        key = (url.host, port)
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        head = b"".join((request.method.encode(), b" ", url.raw_path, b" HTTP/1.1\r\n",
                         *[b"%s: %s\r\n" % pair for pair in request.headers.raw], b"\r\n"))
        read = timeouts.get("read")
        retried = False
        while True:
            conn = self._checkout(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(url.host, port, timeouts.get("connect"), request)
            conn.request = request
            transport = conn.transport
            if len(body) < 65536:
                transport.write(head + body)
            else:
                transport.write(head)
                transport.write(body)
            try:
                while not conn.status:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(read, "response head")
            except httpx.RemoteProtocolError:
                conn.abort()
                if reused and not conn.status and not retried:
                    retried = True
                    continue  # the server closed an idle connection as we reused it: nothing was processed
                raise
            except BaseException:
                conn.abort()
                raise
            break
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_Body(self, key, conn, read),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().abort()
        if self._fallback is not None:
            await self._fallback.aclose()
