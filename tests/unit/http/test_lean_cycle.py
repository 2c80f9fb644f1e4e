"""`http.lean_cycle.LeanCycle`: what uvicorn's cycle promises a client, kept, against a recording
transport (the real server path is in tests/e2e/test_lean_path.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from vllm_gateway.http.downstream import HeadHoldingTransport
from vllm_gateway.http.lean_cycle import LeanCycle

DATE = [(b"date", b"Sun, 22 Nov 2026 20:00:00 GMT")]


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _cycle(keep_alive: bool = True) -> tuple[LeanCycle, Recorder, list[int]]:
    transport = Recorder()
    responses: list[int] = []
    loop = asyncio.get_running_loop()
    # Under the gateway's protocol the cycle writes through its head-holding transport.
    cycle = LeanCycle({"method": "POST"}, HeadHoldingTransport(transport, loop), FlowControl(transport), loop, DATE,
                      keep_alive, lambda: responses.append(1), logging.getLogger("test"))
    return cycle, transport, responses


@pytest.mark.anyio
async def test_a_sized_answer_leaves_in_one_write_with_the_default_headers_and_keeps_the_connection() -> None:
    async def scenario() -> None:
        cycle, transport, responses = _cycle()
        await cycle.send({"type": "http.response.start", "status": 200,
                          "headers": [(b"Content-Type", b"application/json"), (b"content-length", b"2")]})
        await cycle.send({"type": "http.response.body", "body": b"{}"})
        assert transport.writes == [b"HTTP/1.1 200 OK\r\ndate: Sun, 22 Nov 2026 20:00:00 GMT\r\n"
                                    b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"]
        assert cycle.response_complete and responses == [1] and not transport.closed
        with pytest.raises(RuntimeError):
            await cycle.send({"type": "http.response.body", "body": b"late"})

    await scenario()


@pytest.mark.anyio
async def test_a_stream_is_chunked_and_its_head_waits_for_the_first_chunk() -> None:
    async def scenario() -> None:
        cycle, transport, _ = _cycle()
        await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await cycle.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        assert len(transport.writes) == 1
        assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
        await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})
        assert transport.writes[1] == b"0\r\n\r\n" and cycle.response_complete

    await scenario()


@pytest.mark.anyio
async def test_a_head_alone_goes_out_at_the_end_of_the_loop_iteration() -> None:
    async def scenario() -> None:
        cycle, transport, _ = _cycle()
        await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
        assert transport.writes == []
        await asyncio.sleep(0)
        assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")

    await scenario()


@pytest.mark.anyio
async def test_connection_close_is_said_and_done() -> None:
    async def scenario() -> None:
        cycle, transport, responses = _cycle(keep_alive=False)  # the client asked for it
        await cycle.send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await cycle.send({"type": "http.response.body", "body": b""})
        assert b"connection: close\r\n" in transport.writes[0] and transport.closed and responses == [1]
        cycle, transport, _ = _cycle()  # the app asked for it
        await cycle.send({"type": "http.response.start", "status": 503,
                          "headers": [(b"connection", b"Close"), (b"content-length", b"0")]})
        await cycle.send({"type": "http.response.body", "body": b""})
        assert transport.writes[0].count(b"onnection: ") == 1 and transport.closed

    await scenario()


@pytest.mark.parametrize("header", [(b"x-evil", b"a\r\nset-cookie: b"), (b"x-evil\r\nset-cookie", b"b"), (b"x", b"\0")])
@pytest.mark.anyio
async def test_header_injection_is_refused(header: tuple[bytes, bytes]) -> None:
    async def scenario() -> None:
        cycle, transport, _ = _cycle()
        with pytest.raises(RuntimeError):
            await cycle.send({"type": "http.response.start", "status": 200, "headers": [header]})
        assert transport.writes == []

    await scenario()


@pytest.mark.anyio
async def test_a_body_longer_or_shorter_than_its_length_is_an_error() -> None:
    async def scenario() -> None:
        cycle, _, _ = _cycle()
        await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        with pytest.raises(RuntimeError):
            await cycle.send({"type": "http.response.body", "body": b"abc"})
        cycle, _, _ = _cycle()
        await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        with pytest.raises(RuntimeError):
            await cycle.send({"type": "http.response.body", "body": b"a"})

    await scenario()


@pytest.mark.anyio
async def test_receive_returns_the_body_as_it_arrives_then_waits_for_the_client_to_leave() -> None:
    async def scenario() -> None:
        cycle, _, _ = _cycle()
        cycle.body += b"part one, "  # what the protocol's on_body does
        assert await cycle.receive() == {"type": "http.request", "body": b"part one, ", "more_body": True}
        waiting = asyncio.create_task(cycle.receive())
        await asyncio.sleep(0)
        assert not waiting.done()
        cycle.body += b"part two"
        cycle.more_body = False  # on_message_complete
        cycle.message_event.set()
        assert await waiting == {"type": "http.request", "body": b"part two", "more_body": False}
        after = asyncio.create_task(cycle.receive())
        await asyncio.sleep(0)
        assert not after.done()  # the request is read: the next message is the client leaving
        cycle.disconnected = True  # connection_lost
        cycle.message_event.set()
        assert await after == {"type": "http.disconnect"}

    await scenario()


@pytest.mark.anyio
async def test_nothing_is_written_after_the_client_left() -> None:
    async def scenario() -> None:
        cycle, transport, _ = _cycle()
        cycle.disconnected = True
        await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
        await cycle.send({"type": "http.response.body", "body": b"x"})
        await asyncio.sleep(0)
        assert transport.writes == []

    await scenario()


@pytest.mark.anyio
async def test_an_endpoint_that_fails_gets_a_500_before_answering_and_a_closed_connection_after() -> None:
    async def fails_early(scope, receive, send) -> None:
        raise ValueError("boom")

    async def fails_late(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError("boom")

    async def forgets(scope, receive, send) -> None:
        return None

    async def scenario() -> None:
        for endpoint in (fails_early, forgets):
            cycle, transport, _ = _cycle()
            await cycle.run_asgi(endpoint)
            assert transport.writes[0].startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
            assert transport.writes[0].endswith(b"Internal Server Error") and transport.closed
        cycle, transport, _ = _cycle()
        await cycle.run_asgi(fails_late)
        assert transport.closed and not cycle.response_complete

    await scenario()
