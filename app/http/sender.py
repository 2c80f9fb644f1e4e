"""The forwarding seam: how a forwarded request reaches one backend address, and how its answer
is read (`Sender`, `Reply`). Two implementations: the gateway's own HTTP client
(`http.client.OriginSender`, for the plain-http backends it connects to itself) and `HttpxSender`
below, for any other httpx transport (tests inject `httpx.MockTransport`; https backends). Which
one an address gets is decided once, when the address is built (`routing.backend.make_upstream`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx


class Reply(Protocol):
    """A response whose head has arrived; the body is read as it comes."""

    status: int
    headers: list[tuple[bytes, bytes]]  # raw pairs, names as the backend sent them
    complete: bool  # the whole body is already here
    pipes: bool  # `pipe` can hand chunks over from the connection's own callback

    async def read_all(self) -> bytes: ...

    async def next_chunk(self) -> bytes | None: ...

    async def pipe(self, sink: Callable[[bytes], bool]) -> None: ...

    async def aclose(self) -> None: ...


class Sender(Protocol):
    """One backend address. `send` returns once the response head is in; whoever awaits it bounds
    that wait (the exchange's watchdog, `forwarding.deadline`)."""

    def send(self, method: bytes, path: str, headers: list[tuple[bytes, bytes]],
             body: bytes) -> Awaitable[Reply]: ...


class HttpxReply:
    """A response from an httpx transport, read through `Reply`'s members."""

    __slots__ = ("response", "status", "headers", "complete", "_chunks")
    pipes = False

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = response.headers.raw
        self.complete = False  # unknown until read: the watchdog bounds the read
        self._chunks: Any = None

    def _stream(self) -> httpx.AsyncByteStream:
        stream = self.response.stream
        assert isinstance(stream, httpx.AsyncByteStream)  # an async transport's response
        return stream

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self._stream()])

    async def next_chunk(self) -> bytes | None:
        if self._chunks is None:
            self._chunks = self._stream().__aiter__()
        try:
            chunk: bytes = await self._chunks.__anext__()
        except StopAsyncIteration:
            return None
        return chunk

    async def pipe(self, sink: Callable[[bytes], bool]) -> None:
        return None  # nothing handed over: the exchange reads on with next_chunk()

    async def aclose(self) -> None:
        await self.response.aclose()


class ReadReply:
    """A reply whose body was read already (to look at it before relaying): the same members."""

    __slots__ = ("status", "headers", "body")
    complete = True
    pipes = False

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    async def read_all(self) -> bytes:
        return self.body

    async def next_chunk(self) -> bytes | None:
        body, self.body = self.body, b""
        return body or None

    async def pipe(self, sink: Callable[[bytes], bool]) -> None:
        return None

    async def aclose(self) -> None:
        return None


class HttpxSender:
    """An address reached through any httpx transport, with the timeouts httpx understands."""

    __slots__ = ("transport", "base", "timeout", "_urls")

    def __init__(self, transport: httpx.AsyncBaseTransport, base_url: str, timeout: dict[str, float | None]) -> None:
        self.transport, self.base, self.timeout = transport, base_url, timeout
        self._urls: dict[str, httpx.URL] = {}

    def url_for(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(self.base + path)
            if len(self._urls) < 1024:  # paths with query strings vary: keep the cache bounded
                self._urls[path] = url
        return url

    async def send(self, method: bytes, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> HttpxReply:
        request = httpx.Request(method.decode(), self.url_for(path), content=body, headers=headers,
                                extensions={"timeout": self.timeout})
        return HttpxReply(await self.transport.handle_async_request(request))


__all__ = ["HttpxReply", "HttpxSender", "ReadReply", "Reply", "Sender"]
