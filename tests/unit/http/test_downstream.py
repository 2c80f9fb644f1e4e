"""The client connection beneath ASGI (`http.downstream`): a response head written with its body,
stream chunks piped straight to the client's socket, and the client's leaving reported."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from vllm_gateway.http import downstream
from vllm_gateway.http.lean_cycle import LeanCycle


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: object = None) -> str:
        return f"info:{name}"

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def _holding() -> tuple[FakeTransport, downstream.HeadHoldingTransport, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    real = FakeTransport()
    return real, downstream.HeadHoldingTransport(real, loop), loop


def test_head_and_body_leave_in_one_write() -> None:
    real, holding, loop = _holding()
    holding.write(HEAD)
    assert real.writes == []
    holding.write(b"ok")
    assert real.writes == [HEAD + b"ok"]
    loop.run_until_complete(asyncio.sleep(0))  # the scheduled flush finds nothing left
    assert real.writes == [HEAD + b"ok"]
    loop.close()


def test_a_head_alone_goes_out_in_the_next_loop_iteration() -> None:
    real, holding, loop = _holding()
    holding.write(HEAD)
    loop.run_until_complete(asyncio.sleep(0))
    assert real.writes == [HEAD]
    holding.write(b"5\r\nhello\r\n")  # later body bytes pass straight through
    assert real.writes == [HEAD, b"5\r\nhello\r\n"]
    loop.close()


def test_close_sends_a_held_head_first_and_abort_drops_it() -> None:
    real, holding, loop = _holding()
    holding.write(HEAD)
    holding.close()
    assert real.writes == [HEAD] and real.closed
    real, holding, loop2 = _holding()
    holding.write(HEAD)
    holding.abort()
    loop2.run_until_complete(asyncio.sleep(0))
    assert real.writes == [] and real.aborted
    assert holding.get_extra_info("peername") == "info:peername"  # everything else passes through
    assert holding.get_extra_info("socket") is None  # uvicorn then reads the addresses from the above
    loop.close()
    loop2.close()


def test_a_pipe_writes_chunks_in_chunked_framing_until_the_client_falls_behind() -> None:
    real = FakeTransport()
    flow = FlowControl(real)
    pipe = downstream.ChunkPipe(real, flow)
    assert pipe.push(b"data: 1\n\n") is True
    assert real.writes == [b"9\r\ndata: 1\n\n\r\n"]
    flow.pause_writing()  # the client's buffer is over uvicorn's high-water mark
    assert pipe.push(b"data: 2\n\n") is False  # this one is written, then the caller goes back to send()
    assert real.writes[-1] == b"9\r\ndata: 2\n\n\r\n"
    real.close()
    assert pipe.push(b"data: 3\n\n") is False and len(real.writes) == 2  # gone: nothing written


class _Cycle(SimpleNamespace):
    """A stand-in for uvicorn's response cycle (which, like this, can be weakly referenced)."""

    __slots__ = ("__weakref__",)


def _scope(cycle) -> dict:
    scope: dict = {}
    downstream.offer(scope, cycle)  # as the gateway's protocol does
    return scope


def open_pipe(scope: dict) -> downstream.ChunkPipe | None:
    offered = downstream.downstream_of(scope)
    return offered.open_pipe() if offered is not None else None


def _uvicorn_cycle(transport, chunked=True, **state):
    fields = {"chunked_encoding": chunked, "disconnected": False, "response_complete": False,
              "transport": transport, "flow": FlowControl(transport), **state}
    return _Cycle(**fields)


def test_open_pipe_needs_the_gateway_protocol_and_a_chunked_response_under_way() -> None:
    real, holding, loop = _holding()
    assert open_pipe({}) is None  # another server: relay through ASGI
    for unfit in (_uvicorn_cycle(holding, chunked=None), _uvicorn_cycle(holding, chunked=False),
                  _uvicorn_cycle(holding, disconnected=True), _uvicorn_cycle(holding, response_complete=True)):
        assert open_pipe(_scope(unfit)) is None
    cycle = _uvicorn_cycle(holding)
    holding.write(HEAD)  # a head still held goes out before the first piped chunk
    pipe = open_pipe(_scope(cycle))
    pipe.push(b"x")
    assert real.writes == [HEAD, b"1\r\nx\r\n"]
    cycle.flow.pause_writing()
    assert open_pipe(_scope(cycle)) is None  # a slow client: not now
    loop.close()


@pytest.mark.anyio
async def test_open_pipe_on_a_lean_cycle_flushes_its_held_head() -> None:
    real = FakeTransport()
    loop = asyncio.get_running_loop()
    cycle = LeanCycle({}, downstream.HeadHoldingTransport(real, loop), FlowControl(real), loop, [], True,
                      lambda: None, None)
    await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    assert real.writes == []
    pipe = open_pipe(_scope(cycle))
    pipe.push(b"x")
    assert real.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and real.writes[1] == b"1\r\nx\r\n"


def test_on_client_lost_registers_only_where_the_server_can_call_back() -> None:
    calls = []
    assert downstream.downstream_of({}) is None  # another server: the exchange watches receive() instead
    gone = _Cycle(disconnected=True)
    assert downstream.downstream_of(_scope(gone)).watch_lost(lambda: calls.append(1)) is False
    cycle = _Cycle(disconnected=False)
    offered = downstream.downstream_of(_scope(cycle))
    assert offered.watch_lost(lambda: calls.append(1)) is True
    offered.lost()  # what the protocol's connection_lost calls
    assert calls == [1]
    offered.lost()  # once only
    assert calls == [1]
    assert offered.watch_lost(lambda: calls.append(2)) is True
    offered.forget()  # the caller is done: the offer no longer holds its callback
    offered.lost()
    assert calls == [1]
