"""The forwarding seam of the gateway's own client (`http.client`: `OriginSender.send` -> `Connection`), against a raw HTTP
server on loopback whose every answer the test scripts byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tests.garbage import cyclic_garbage
from vllm_gateway.http.client import LeanTransport

Answer = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """Answers each request with `answer(index on its connection, request head, writer)`."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.closed = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.reader: asyncio.StreamReader | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            index = 0
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                               if line.startswith(b"content-length:")), 0)
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                self.reader = reader
                await self.answer(index, head, writer)
                index += 1
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()


async def _serving(answer: Answer) -> tuple[Server, asyncio.base_events.Server, str]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    return server, listener, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def _pooled(answer: Answer) -> AsyncIterator[tuple[Server, LeanTransport, str]]:
    """A server answering with `answer` and a pool to it, both closed at the end, even on failure."""
    server, listener, base = await _serving(answer)
    transport = LeanTransport()
    try:
        yield server, transport, base
    finally:
        await transport.aclose()
        listener.close()


async def _ok(index: int, head: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")


async def _send(transport: LeanTransport, base: str, body: bytes = b'{"model":"m"}', path: str = "/v1/chat/completions"):
    sender = transport.sender(base, 5.0)
    assert sender is not None
    return await sender.send(b"POST", path, [(b"content-type", b"application/json"), (b"x-request-id", b"abc")], body)


@pytest.mark.anyio
async def test_a_request_goes_out_as_given_and_its_connection_is_reused() -> None:
    async def scenario() -> None:
        async with _pooled(_ok) as (server, transport, base):
            for _ in range(3):
                reply = await _send(transport, base, path="/v1/chat/completions?x=1")
                assert reply.status == 200 and (b"content-type", b"application/json") in reply.headers
                assert await reply.read_all() == b'{"ok":true}'
                await reply.aclose()
            assert server.connections == 1
            head = server.heads[0].lower()
            assert head.startswith(b"post /v1/chat/completions?x=1 http/1.1\r\n")
            assert b"\r\nhost: 127.0.0.1:" in head and b"\r\ncontent-length: 13\r\n" in head
            assert b"\r\nx-request-id: abc\r\n" in head and server.bodies[0] == b'{"model":"m"}'

    await scenario()


@pytest.mark.anyio
async def test_a_reply_closed_before_its_end_closes_the_connection() -> None:
    server: Server | None = None

    async def endless(index: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"6\r\ndata: \r\n")
        await server.reader.read()  # until the client hangs up

    async def scenario() -> None:
        nonlocal server
        async with _pooled(endless) as (server, transport, base):
            reply = await _send(transport, base)
            assert await reply.next_chunk() == b"data: "
            await reply.aclose()
            for _ in range(100):
                if server.closed:
                    break
                await asyncio.sleep(0.01)
            assert server.closed == 1  # the backend sees the client leave

    await scenario()


def _paced_stream(events: list[bytes]) -> Answer:
    async def stream(index: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for event in events:
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")

    return stream


@pytest.mark.anyio
async def test_a_stream_comes_in_pieces_then_ends() -> None:
    async def scenario() -> None:
        async with _pooled(_paced_stream([b"data: 1\n\n", b"data: [DONE]\n\n"])) as (server, transport, base):
            reply = await _send(transport, base)
            pieces = []
            while (piece := await reply.next_chunk()) is not None:
                pieces.append(piece)
            assert b"".join(pieces) == b"data: 1\n\ndata: [DONE]\n\n" and len(pieces) == 2
            await reply.aclose()
            reply = await _send(transport, base)  # complete: the connection went back to the pool
            await reply.read_all()
            await reply.aclose()
            assert server.connections == 1

    await scenario()


@pytest.mark.anyio
async def test_a_body_that_ends_with_the_connection_is_read_whole() -> None:
    async def unframed(index: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with _pooled(unframed) as (_, transport, base):
            reply = await _send(transport, base)
            assert await reply.read_all() == b"all of it"
            await reply.aclose()

    await scenario()


@pytest.mark.anyio
async def test_an_idle_connection_the_backend_closed_as_it_was_reused_is_retried_once() -> None:
    async def once_per_connection(index: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        if index == 0:
            await _ok(index, head, writer)
        else:
            writer.close()  # a keep-alive timeout racing the next request: nothing answered

    async def scenario() -> None:
        async with _pooled(once_per_connection) as (server, transport, base):
            for _ in range(2):
                reply = await _send(transport, base)
                assert await reply.read_all() == b'{"ok":true}'
                await reply.aclose()
            assert server.connections == 2

    await scenario()


@pytest.mark.parametrize("answer", [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",  # cut short
                                    b"NOT HTTP AT ALL\r\n\r\n"])
@pytest.mark.anyio
async def test_broken_responses_raise_httpx_protocol_errors(answer: bytes) -> None:
    async def broken(index: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with _pooled(broken) as (_, transport, base):
            with pytest.raises(httpx.RemoteProtocolError):
                reply = await _send(transport, base)
                await reply.read_all()

    await scenario()


@pytest.mark.anyio
async def test_nothing_listening_is_a_connect_error() -> None:
    async def scenario() -> None:
        _, listener, base = await _serving(_ok)
        listener.close()
        await listener.wait_closed()
        transport = LeanTransport()
        with pytest.raises(httpx.ConnectError):
            await _send(transport, base)
        await transport.aclose()

    await scenario()


def test_https_is_left_to_httpx() -> None:
    assert LeanTransport().sender("https://example.invalid:8443", 1.0) is None


EVENTS = [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n", b"data: [DONE]\n\n"]


@pytest.mark.anyio
async def test_a_pipe_hands_every_piece_to_its_sink_from_the_connection_and_returns_at_the_end() -> None:
    async def scenario() -> None:
        async with _pooled(_paced_stream(EVENTS)) as (server, transport, base):
            reply = await _send(transport, base)
            first = await reply.next_chunk()
            piped: list[bytes] = []
            await reply.pipe(lambda piece: piped.append(piece) or True)
            assert first + b"".join(piped) == b"".join(EVENTS) and len(piped) >= 2
            assert reply.sink is None and await reply.next_chunk() is None
            await reply.aclose()

    await scenario()


@pytest.mark.anyio
async def test_a_sink_that_wants_no_more_hands_the_rest_back_to_next_chunk() -> None:
    async def scenario() -> None:
        async with _pooled(_paced_stream(EVENTS)) as (server, transport, base):
            reply = await _send(transport, base)
            first = await reply.next_chunk()
            piped: list[bytes] = []
            await reply.pipe(lambda piece: piped.append(piece) and False)  # takes one piece, then stops
            assert len(piped) == 1 and reply.sink is None
            rest = []
            while (piece := await reply.next_chunk()) is not None:
                rest.append(piece)
            assert first + piped[0] + b"".join(rest) == b"".join(EVENTS) and rest
            await reply.aclose()

    await scenario()


def test_a_closed_connection_leaves_nothing_for_the_cyclic_collector() -> None:
    """A connection's parser calls back into it: unless that cycle is cut when the connection
    closes, every closed backend connection waits for a full collection to be freed."""
    async def answer_and_close(index: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}")
        writer.close()

    async def scenario() -> None:
        async with _pooled(answer_and_close) as (server, transport, base):
            for _ in range(3):
                reply = await _send(transport, base)
                assert await reply.read_all() == b"{}"
                await reply.aclose()
            await asyncio.sleep(0.05)  # the closes reach connection_lost
            assert server.connections == 3

    assert cyclic_garbage(lambda: asyncio.run(scenario()))["vllm_gateway.http.client.Connection"] == 0
